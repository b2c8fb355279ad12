// sd_notify wrapper; see notify.h.
#include "daemon/notify.h"

#include <systemd/sd-daemon.h>

#include <spdlog/spdlog.h>
#include <string>

namespace runnel {

SystemdNotifier::SystemdNotifier() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    watchdog_interval_ = std::chrono::milliseconds(std::max<uint64_t>(usec / 2000, 1));
  }
}

void SystemdNotifier::send(const std::string& message) {
  if (int r = sd_notify(0, message.c_str()); r < 0) {
    spdlog::warn("sd_notify failed: {}", std::strerror(-r));
  }
}

void SystemdNotifier::ready(std::string_view status) {
  send("READY=1\nSTATUS=" + std::string(status));
}
void SystemdNotifier::status(std::string_view status) { send("STATUS=" + std::string(status)); }
void SystemdNotifier::stopping(std::string_view status) {
  send("STOPPING=1\nSTATUS=" + std::string(status));
}
void SystemdNotifier::watchdog() { send("WATCHDOG=1"); }

}  // namespace runnel
