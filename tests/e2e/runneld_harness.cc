// Implementation of the end-to-end harness (see runneld_harness.h).
#include "tests/e2e/runneld_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <string_view>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "model/record.h"
#include "storage/log_reader.h"

namespace runnel::e2e {
namespace {

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what + ": " + std::strerror(errno));
}

void send_stream(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    check(n > 0, "send");
    done += static_cast<size_t>(n);
  }
  shutdown(fd, SHUT_WR);
  // Wait for the daemon to close its side: then it has read everything.
  char buf[64];
  while (::recv(fd, buf, sizeof buf, 0) > 0) {
  }
  close(fd);
}

std::atomic<int> g_instance{0};

// A NULL-terminated string array for execve, built before fork(). The tests fork from several
// threads: a child may then only make async-signal-safe calls until it execs, since another
// thread may have held the allocator's lock at the fork and a child that allocates hangs.
class ExecStrings {
 public:
  explicit ExecStrings(std::vector<std::string> strings) : strings_(std::move(strings)) {
    for (auto& s : strings_) ptrs_.push_back(s.data());
    ptrs_.push_back(nullptr);
  }
  // Not copied or moved: ptrs_ points into strings_ (a moved short string leaves its buffer).
  // Returned by value only as a prvalue (guaranteed elision).
  ExecStrings(const ExecStrings&) = delete;
  ExecStrings& operator=(const ExecStrings&) = delete;
  char* const* get() const { return ptrs_.data(); }

 private:
  std::vector<std::string> strings_;
  std::vector<char*> ptrs_;
};

// This process's environment with `overrides` set ("KEY=value" each).
ExecStrings environment_with(const std::map<std::string, std::string>& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    if (!overrides.contains(std::string(entry.substr(0, entry.find('='))))) env.emplace_back(entry);
  }
  for (const auto& [k, v] : overrides) env.push_back(k + "=" + v);
  return ExecStrings(std::move(env));
}

ExecStrings runnelctl_argv(const std::vector<std::string>& args) {
  std::vector<std::string> a = {RUNNELCTL_PATH};
  a.insert(a.end(), args.begin(), args.end());
  return ExecStrings(std::move(a));
}

// In a forked child: becomes `argv` (async-signal-safe calls only).
[[noreturn]] void exec(const ExecStrings& argv, const ExecStrings& env) {
  execve(argv.get()[0], argv.get(), env.get());
  _exit(127);
}

}  // namespace

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

uint16_t free_port(int type) {
  int fd = socket(AF_INET, type, 0);
  check(fd >= 0, "socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  check(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "bind");
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

Runneld::Runneld() {
  const std::string id = std::to_string(getpid()) + "-" + std::to_string(g_instance++);
  dir_ = std::filesystem::temp_directory_path() / ("runnel-e2e-" + id);
  std::filesystem::remove_all(dir_);
  std::filesystem::create_directories(dir_);
  data_dir_ = dir_ / "data";
  notify_path_ = dir_ / "notify.sock";
  stderr_path_ = dir_ / "runneld.stderr";
  unix_path_ = (dir_ / "ingest.sock").string();
  shm_name_ = "runnel-e2e-" + id;
  tcp_port_ = free_port(SOCK_STREAM);
  udp_port_ = free_port(SOCK_DGRAM);
  notify_fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  check(notify_fd_ >= 0, "notify socket");
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, notify_path_.c_str(), sizeof a.sun_path - 1);
  check(bind(notify_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "bind notify socket");
}

Runneld::~Runneld() {
  if (pid_ > 0) kill9();
  if (notify_fd_ >= 0) close(notify_fd_);
  for (const char* suffix : {".ring", ".stats", ".live", ".series"}) {
    std::filesystem::remove("/dev/shm/" + shm_name_ + suffix);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void Runneld::start(const std::string& config_toml, const std::vector<std::string>& extra_args,
                    const std::map<std::string, std::string>& env) {
  // Messages of an earlier run must not satisfy waits for this one.
  drain_notify(std::chrono::milliseconds(0));
  notify_.clear();
  const auto config_path = dir_ / "runneld.toml";
  std::ofstream(config_path) << config_toml;
  std::vector<std::string> args = {RUNNELD_PATH,
                                   "--config", config_path.string(),
                                   "--data-dir", data_dir_.string(),
                                   "--shm-name", shm_name_,
                                   "--listen", "tcp://127.0.0.1:" + std::to_string(tcp_port_),
                                   "--listen", "udp://127.0.0.1:" + std::to_string(udp_port_),
                                   "--listen", "unix://" + unix_path_};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  const ExecStrings argv(std::move(args));
  std::map<std::string, std::string> overrides = env;
  overrides["NOTIFY_SOCKET"] = notify_path_;
  const ExecStrings envp = environment_with(overrides);
  pid_t pid = fork();
  check(pid >= 0, "fork");
  if (pid == 0) {
    int err = open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (err >= 0) {
      dup2(err, 2);
      dup2(err, 1);
    }
    exec(argv, envp);
  }
  pid_ = pid;
}

void Runneld::drain_notify(std::chrono::milliseconds timeout) {
  pollfd p{notify_fd_, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return;
  char buf[4096];
  while (true) {
    ssize_t n = recv(notify_fd_, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return;
    notify_.emplace_back(buf, static_cast<size_t>(n));
  }
}

bool Runneld::wait_notify(const std::string& needle, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  size_t seen = 0;
  while (true) {
    for (; seen < notify_.size(); ++seen) {
      if (notify_[seen].find(needle) != std::string::npos) return true;
    }
    if (std::chrono::steady_clock::now() > deadline) return false;
    if (pid_ > 0) {  // do not wait for a message from a process that died
      int st;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        drain_notify(std::chrono::milliseconds(0));
        continue;
      }
    } else {
      drain_notify(std::chrono::milliseconds(0));
      for (; seen < notify_.size(); ++seen) {
        if (notify_[seen].find(needle) != std::string::npos) return true;
      }
      return false;
    }
    drain_notify(std::chrono::milliseconds(20));
  }
}

int Runneld::wait_exit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  int st = 0;
  const bool done = wait_until(
      [&] {
        drain_notify(std::chrono::milliseconds(0));
        return waitpid(pid_, &st, WNOHANG) == pid_;
      },
      timeout);
  if (!done) return -1;
  pid_ = -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int Runneld::stop(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  return wait_exit(timeout);
}

void Runneld::kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int st;
  waitpid(pid_, &st, 0);
  pid_ = -1;
}

uint64_t Runneld::counter(ipc::Counter c) const {
  auto seg = ipc::StatsSegment::open_read_only(shm_name_);
  return seg.ok() ? (*seg)->block().get(c) : 0;
}

std::string Runneld::stderr_text() const {
  std::ifstream in(stderr_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Runneld::log_lines() const {
  std::vector<std::string> lines;
  auto reader = storage::LogReader::open(data_dir_ / "log");
  if (!reader.ok()) throw std::runtime_error(reader.status().ToString());
  storage::Record rec;
  std::string line;
  while (true) {
    auto more = reader->next(&rec);
    if (!more.ok()) throw std::runtime_error(more.status().ToString());
    if (!more.value()) break;
    auto view = RecordView::parse(rec.payload);
    if (!view.ok()) throw std::runtime_error(view.status().ToString());
    line.clear();
    format_line_protocol(view.value(), &line);
    line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

void send_tcp(uint16_t port, const std::string& data) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  check(fd >= 0, "socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  check(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "connect tcp");
  send_stream(fd, data);
}

void send_unix(const std::string& path, const std::string& data) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  check(fd >= 0, "socket");
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  check(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "connect unix");
  send_stream(fd, data);
}

void send_udp(uint16_t port, const std::vector<std::string>& datagrams) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  check(fd >= 0, "socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (const auto& d : datagrams) {
    check(sendto(fd, d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a) ==
              static_cast<ssize_t>(d.size()),
          "sendto");
  }
  close(fd);
}

std::string run_runnelctl(const std::vector<std::string>& args, int* exit_code) {
  int pipefd[2];
  check(pipe(pipefd) == 0, "pipe");
  const ExecStrings argv = runnelctl_argv(args);
  const ExecStrings envp = environment_with({});
  pid_t pid = fork();
  check(pid >= 0, "fork");
  if (pid == 0) {
    dup2(pipefd[1], 1);
    close(pipefd[0]);
    close(pipefd[1]);
    exec(argv, envp);
  }
  close(pipefd[1]);
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(pipefd[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  *exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return out;
}

namespace {

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

RunnelctlProcess::RunnelctlProcess(const std::vector<std::string>& args) {
  static std::atomic<int> n{0};
  dir_ = std::filesystem::temp_directory_path() /
         ("runnelctl-e2e-" + std::to_string(getpid()) + "-" + std::to_string(n++));
  std::filesystem::create_directories(dir_);
  const std::string out = (dir_ / "stdout").string(), err = (dir_ / "stderr").string();
  const ExecStrings argv = runnelctl_argv(args);
  const ExecStrings envp = environment_with({});
  pid_t pid = fork();
  check(pid >= 0, "fork");
  if (pid == 0) {
    int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0 || e < 0) _exit(126);
    dup2(o, 1);
    dup2(e, 2);
    exec(argv, envp);
  }
  pid_ = pid;
}

RunnelctlProcess::~RunnelctlProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int st;
    waitpid(pid_, &st, 0);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string RunnelctlProcess::stdout_text() const { return read_file(dir_ / "stdout"); }
std::string RunnelctlProcess::stderr_text() const { return read_file(dir_ / "stderr"); }

void RunnelctlProcess::signal(int sig) const {
  if (pid_ > 0) kill(pid_, sig);
}

int RunnelctlProcess::wait_exit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  int st = 0;
  if (!wait_until([&] { return waitpid(pid_, &st, WNOHANG) == pid_; }, timeout)) return -1;
  pid_ = -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

bool wait_speed_caught_up(const Runneld& d, uint64_t points, std::chrono::milliseconds timeout) {
  return wait_until(
      [&] {
        const uint64_t accepted = d.counter(ipc::Counter::kPointsAccepted);
        return accepted >= points && d.counter(ipc::Counter::kSpeedRecords) == accepted;
      },
      timeout);
}

bool send_tcp_logged(const Runneld& d, const std::string& lines, uint64_t n,
                     std::chrono::milliseconds timeout) {
  const uint64_t before = d.counter(ipc::Counter::kLogRecords);
  send_tcp(d.tcp_port(), lines);
  return wait_until([&] { return d.counter(ipc::Counter::kLogRecords) >= before + n; }, timeout);
}

}  // namespace runnel::e2e
