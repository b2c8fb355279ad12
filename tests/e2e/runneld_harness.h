// Test harness for end-to-end tests: starts the real runneld binary with a private data
// directory, shm name, free ports and its own NOTIFY_SOCKET, and offers senders and readers.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ipc/stats.h"

namespace runnel::e2e {

// Polls `pred` (every 2 ms) until it holds or `timeout` passes. Waiting on a condition, never
// on a fixed sleep.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

// A port that was free a moment ago (bound to port 0 and released).
uint16_t free_port(int type);

class Runneld {
 public:
  Runneld();   // picks names, ports and a temp directory; does not start
  ~Runneld();  // kill -9 if still running; removes shm objects and the temp directory
  Runneld(const Runneld&) = delete;
  Runneld& operator=(const Runneld&) = delete;

  // Writes `config_toml` (may be empty) to a file and starts runneld with --config, --data-dir,
  // --shm-name and --listen for TCP, UDP and Unix, plus `extra_args`.
  void start(const std::string& config_toml = "", const std::vector<std::string>& extra_args = {},
             const std::map<std::string, std::string>& env = {});
  // Waits for a notify message containing `needle` (e.g. "READY=1"); messages are kept.
  bool wait_notify(const std::string& needle, std::chrono::milliseconds timeout = std::chrono::seconds(20));
  bool wait_ready() { return wait_notify("READY=1"); }
  // SIGTERM (graceful) and wait; returns the exit status (or -1 on timeout).
  int stop(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  void kill9();
  // Waits for the process to exit on its own; returns its exit code, or -1.
  int wait_exit(std::chrono::milliseconds timeout);
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  uint64_t counter(ipc::Counter c) const;  // 0 when the stats object is not there
  const std::vector<std::string>& notify_messages() const { return notify_; }
  std::string stderr_text() const;  // what runneld logged

  // Every record in the log, formatted as line protocol (one string per record, no '\n').
  std::vector<std::string> log_lines() const;

  uint16_t tcp_port() const { return tcp_port_; }
  uint16_t udp_port() const { return udp_port_; }
  const std::string& unix_path() const { return unix_path_; }
  const std::filesystem::path& data_dir() const { return data_dir_; }
  const std::filesystem::path& dir() const { return dir_; }
  const std::string& shm_name() const { return shm_name_; }

 private:
  void drain_notify(std::chrono::milliseconds timeout);

  std::filesystem::path dir_, data_dir_, notify_path_, stderr_path_;
  std::string shm_name_, unix_path_;
  uint16_t tcp_port_ = 0, udp_port_ = 0;
  int notify_fd_ = -1;
  pid_t pid_ = -1;
  std::vector<std::string> notify_;
};

// Senders. Each opens its own connection/socket, sends everything and closes (TCP/Unix:
// orderly shutdown, so the daemon sees every byte before EOF).
void send_tcp(uint16_t port, const std::string& data);
void send_unix(const std::string& path, const std::string& data);
void send_udp(uint16_t port, const std::vector<std::string>& datagrams);

// Runs `runnelctl` with arguments; returns its stdout, sets *exit_code.
std::string run_runnelctl(const std::vector<std::string>& args, int* exit_code);

// A runnelctl running in the background (tail, watch); stdout and stderr go to files that the
// test reads while it runs. Killed (SIGKILL) on destruction if still running.
class RunnelctlProcess {
 public:
  explicit RunnelctlProcess(const std::vector<std::string>& args);
  ~RunnelctlProcess();
  RunnelctlProcess(const RunnelctlProcess&) = delete;
  RunnelctlProcess& operator=(const RunnelctlProcess&) = delete;

  std::string stdout_text() const;
  std::string stderr_text() const;
  void signal(int sig) const;
  // The exit code (128 + signal when killed), or -1 if it is still running after `timeout`.
  int wait_exit(std::chrono::milliseconds timeout);

 private:
  std::filesystem::path dir_;
  pid_t pid_ = -1;
};

// Waits until the speed path has folded in every accepted point (speed_records ==
// points_accepted) and at least `points` were accepted.
bool wait_speed_caught_up(const Runneld& d, uint64_t points,
                          std::chrono::milliseconds timeout = std::chrono::seconds(20));

// Sends `n` lines over TCP and waits until the log holds `n` more records; false on timeout.
bool send_tcp_logged(const Runneld& d, const std::string& lines, uint64_t n,
                     std::chrono::milliseconds timeout = std::chrono::seconds(20));

}  // namespace runnel::e2e
