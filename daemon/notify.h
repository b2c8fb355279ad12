// systemd notification (sd_notify): READY=1, STATUS=, STOPPING=1 and watchdog pings. Harmless
// when NOTIFY_SOCKET is unset (not run by systemd).
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace runnel {

// REQUIRES: one thread (the daemon's main thread).
class SystemdNotifier {
 public:
  SystemdNotifier();
  void ready(std::string_view status);
  void status(std::string_view status);
  void stopping(std::string_view status);
  void watchdog();
  // Half of WatchdogSec when systemd asked for pings.
  std::optional<std::chrono::milliseconds> watchdog_interval() const { return watchdog_interval_; }

 private:
  void send(const std::string& message);
  std::optional<std::chrono::milliseconds> watchdog_interval_;
};

}  // namespace runnel
