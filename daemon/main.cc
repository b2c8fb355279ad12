// runneld: the runnel daemon. Parses the command line and configuration, runs the Daemon until
// SIGTERM/SIGINT, and reports to systemd.
#include <sched.h>
#include <signal.h>
#include <time.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/notify.h"

namespace {

void setup_logging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("runneld");
  // Under systemd, journald adds its own timestamps.
  if (std::getenv("JOURNAL_STREAM") != nullptr) {
    logger->set_pattern("<%l> %v");
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runneld - the runnel daemon: line protocol in, durable log and live views out"};
  std::string config_path;
  bool print_default = false;
  runnel::ConfigOverrides o;
  std::string data_dir, shm_name, log_level;
  app.add_option("-c,--config", config_path, "TOML configuration file")->check(CLI::ExistingFile);
  app.add_flag("--print-default-config", print_default, "Print the default configuration and exit");
  // The last of a repeated flag wins, so wrappers can append overrides.
  app.add_option("--data-dir", data_dir, "Data directory (overrides daemon.data_dir)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--shm-name", shm_name, "Shared-memory name (overrides daemon.shm_name)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--log-level", log_level, "Log level (overrides daemon.log_level)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--listen", o.listen,
                 "Listener URL, repeatable: tcp://HOST:PORT, udp://HOST:PORT, unix:///PATH "
                 "(replaces ingest.listen)");
  app.add_option("--debug-journal-hold-ms", o.debug_journal_hold_ms,
                 "Testing aid: the journal starts consuming the ring only after this delay")
      ->group("");  // hidden from --help
  app.set_version_flag("--version", "runneld 0.1.0");
  CLI11_PARSE(app, argc, argv);

  if (print_default) {
    std::cout << runnel::default_config_toml();
    return 0;
  }
  if (!data_dir.empty()) o.data_dir = data_dir;
  if (!shm_name.empty()) o.shm_name = shm_name;
  if (!log_level.empty()) o.log_level = log_level;

  runnel::Config config;
  try {
    config = runnel::load_config(
        config_path.empty() ? std::nullopt : std::optional<std::filesystem::path>(config_path), o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "runneld: %s\n", e.what());
    return 2;
  }
  setup_logging(config.log_level);

  // Signals are taken synchronously by this thread; every thread started later inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Before any thread starts: they inherit it (and so do io_uring's kernel workers).
  if (config.cpu_scheduling_batch) {
    const sched_param none{};
    if (sched_setscheduler(0, SCHED_BATCH, &none) != 0) {
      spdlog::warn("daemon.cpu_scheduling = batch: sched_setscheduler: {}; running with the default policy",
                   std::strerror(errno));
    }
  }

  runnel::SystemdNotifier notifier;
  runnel::Daemon daemon(config);
  if (runnel::Status s = daemon.start(); !s.ok()) {
    spdlog::critical("start-up failed: {}", s.ToString());
    notifier.status("start-up failed: " + s.ToString());
    (void)daemon.stop();  // releases what start() took; the start error is what matters
    return 1;
  }
  notifier.ready(daemon.status_line());
  spdlog::info("runneld ready: {}", daemon.status_line());

  const auto watchdog = notifier.watchdog_interval();
  const long tick_ms = watchdog ? std::min<long>(100, watchdog->count()) : 100;
  int status_ticks = 0;
  while (true) {
    timespec timeout{.tv_sec = 0, .tv_nsec = tick_ms * 1'000'000};
    siginfo_t info;
    int sig = sigtimedwait(&signals, &info, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("received {}, stopping", strsignal(sig));
      break;
    }
    if (sig == SIGHUP) spdlog::info("SIGHUP: nothing to reload yet; restart to apply a new config");
    if (daemon.failed()) {
      notifier.status("ingest failed; stopping");
      break;
    }
    const bool healthy = daemon.healthy();
    if (watchdog && healthy) notifier.watchdog();
    if (++status_ticks >= 50) {  // every ~5 s
      status_ticks = 0;
      notifier.status(daemon.status_line());
    }
  }
  notifier.stopping("draining the ring into the log");
  if (runnel::Status s = daemon.stop(); !s.ok()) {
    spdlog::error("stop: {}", s.ToString());
    return 1;
  }
  if (daemon.failed()) return 1;
  spdlog::info("runneld stopped cleanly");
  return 0;
}
