// runnel-sink: the baseline receiver of the ingest benchmark. It accepts TCP connections and only
// counts bytes and newlines, so loadgen -> sink is the ceiling any ingest path can reach here.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

namespace {

// Woken by a finished count and by SIGINT/SIGTERM; written from a signal handler, hence global.
int g_wake_fd = -1;

void on_stop_signal(int) {
  const uint64_t one = 1;
  // Nothing useful to do if it fails; the handler must stay async-signal-safe.
  [[maybe_unused]] ssize_t n = ::write(g_wake_fd, &one, sizeof(one));
}

uint64_t unix_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

void atomic_max(std::atomic<uint64_t>& a, uint64_t value) {
  uint64_t seen = a.load(std::memory_order_relaxed);
  while (seen < value && !a.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

// What all connections received so far. Thread-safe: every receiver thread updates it.
// Relaxed throughout: the main thread reads it only after joining the receivers.
struct Totals {
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> lines{0};
  std::atomic<uint64_t> first_byte_unix_ns{UINT64_MAX};
  std::atomic<uint64_t> last_byte_unix_ns{0};
  std::atomic<uint64_t> done_unix_ns{0};  // when a --lines/--bytes target was first met
};

struct Targets {
  uint64_t lines = 0;  // 0: no target
  uint64_t bytes = 0;  // 0: no target
  bool met(uint64_t got_lines, uint64_t got_bytes) const {
    return (lines != 0 && got_lines >= lines) || (bytes != 0 && got_bytes >= bytes);
  }
};

// Receives one connection until EOF or shutdown, counting into totals.
void receive(int fd, size_t recv_bytes, const Targets& targets, Totals& totals) {
  auto buffer = std::make_unique_for_overwrite<char[]>(recv_bytes);
  for (;;) {
    const ssize_t n = ::recv(fd, buffer.get(), recv_bytes, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // EOF, or the reset/shutdown that ends the run
    const auto now_ns = unix_ns();
    const auto lines = static_cast<uint64_t>(std::count(buffer.get(), buffer.get() + n, '\n'));
    atomic_max(totals.last_byte_unix_ns, now_ns);
    uint64_t unset = UINT64_MAX;
    totals.first_byte_unix_ns.compare_exchange_strong(unset, now_ns, std::memory_order_relaxed);
    const uint64_t all_bytes = totals.bytes.fetch_add(static_cast<uint64_t>(n)) + n;
    const uint64_t all_lines = totals.lines.fetch_add(lines) + lines;
    uint64_t not_done = 0;
    if (targets.met(all_lines, all_bytes) &&
        totals.done_unix_ns.compare_exchange_strong(not_done, now_ns)) {
      on_stop_signal(0);
    }
  }
}

// Connection sockets, closed together at the end. Thread-safe.
class Connections {
 public:
  Connections() = default;
  Connections(const Connections&) = delete;
  Connections& operator=(const Connections&) = delete;
  ~Connections() {
    for (int fd : fds_) ::close(fd);
  }
  void add(int fd) {
    std::lock_guard lock(mu_);
    fds_.push_back(fd);
  }
  // Wakes receivers still blocked in recv().
  void shutdown_all() {
    std::lock_guard lock(mu_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }
  size_t count() {
    std::lock_guard lock(mu_);
    return fds_.size();
  }

 private:
  std::mutex mu_;
  std::vector<int> fds_;
};

// Binds and listens; returns the socket and the bound port, or -1 with a message.
std::pair<int, uint16_t> listen_tcp(const std::string& bind_address, uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (::inet_pton(AF_INET, bind_address.c_str(), &addr.sin_addr) != 1) {
    fmt::print(stderr, "runnel-sink: bad --bind '{}': want an IPv4 address\n", bind_address);
    return {-1, 0};
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 128) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    fmt::print(stderr, "runnel-sink: listen on {}:{} failed: {}\n", bind_address, port,
               std::strerror(errno));
    if (fd >= 0) ::close(fd);
    return {-1, 0};
  }
  return {fd, ntohs(addr.sin_port)};
}

// Publishes the port atomically, so a poller never reads a half-written file.
bool write_port_file(const std::string& path, uint16_t port) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    fmt::print(stderr, "runnel-sink: cannot write {}: {}\n", tmp, std::strerror(errno));
    return false;
  }
  fmt::print(f, "{}\n", port);
  const bool ok = std::fclose(f) == 0 && std::rename(tmp.c_str(), path.c_str()) == 0;
  if (!ok) fmt::print(stderr, "runnel-sink: cannot write {}: {}\n", path, std::strerror(errno));
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runnel-sink: accept TCP connections and only count bytes and lines"};
  std::string bind_address = "127.0.0.1";
  uint16_t port = 0;
  std::string port_file;
  Targets targets;
  size_t recv_bytes = 4 << 20;
  app.add_option("--bind", bind_address, "IPv4 address to listen on")->capture_default_str();
  app.add_option("-p,--port", port, "TCP port; 0 picks a free one")->capture_default_str();
  app.add_option("--port-file", port_file, "write the bound port here once listening");
  app.add_option("--lines", targets.lines, "exit once this many lines arrived (0: never)")
      ->capture_default_str();
  app.add_option("--bytes", targets.bytes, "exit once this many bytes arrived (0: never)")
      ->capture_default_str();
  app.add_option("--recv-bytes", recv_bytes, "buffer per recv() call")
      ->check(CLI::Range(size_t{4096}, size_t{1} << 30))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  g_wake_fd = ::eventfd(0, EFD_CLOEXEC);
  if (g_wake_fd < 0) {
    fmt::print(stderr, "runnel-sink: eventfd failed: {}\n", std::strerror(errno));
    return 1;
  }
  struct sigaction action{};
  action.sa_handler = on_stop_signal;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);

  const auto [listen_fd, bound_port] = listen_tcp(bind_address, port);
  if (listen_fd < 0) return 1;
  if (!port_file.empty() && !write_port_file(port_file, bound_port)) return 1;
  fmt::print(stderr, "runnel-sink: listening on {}:{}\n", bind_address, bound_port);

  Totals totals;
  Connections connections;
  std::vector<std::jthread> receivers;
  pollfd fds[2] = {{listen_fd, POLLIN, 0}, {g_wake_fd, POLLIN, 0}};
  for (;;) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fmt::print(stderr, "runnel-sink: poll failed: {}\n", std::strerror(errno));
      break;
    }
    if (fds[1].revents != 0) break;
    const int conn = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;  // a peer gone before accept is no reason to stop
    connections.add(conn);
    receivers.emplace_back(receive, conn, recv_bytes, std::cref(targets), std::ref(totals));
  }
  ::close(listen_fd);
  connections.shutdown_all();
  receivers.clear();  // joins

  const uint64_t bytes = totals.bytes.load();
  const uint64_t lines = totals.lines.load();
  const bool complete = totals.done_unix_ns.load() != 0;
  const uint64_t first_ns = lines + bytes == 0 ? 0 : totals.first_byte_unix_ns.load();
  // With a target, the run ends when it was met; otherwise at the last byte.
  const uint64_t end_ns = complete ? totals.done_unix_ns.load() : totals.last_byte_unix_ns.load();
  const double seconds = static_cast<double>(end_ns - first_ns) / 1e9;
  const double per_s = seconds > 0 ? 1.0 / seconds : 0.0;
  // Process CPU time, all threads (glibc's clock() reads CLOCK_PROCESS_CPUTIME_ID).
  const double cpu_s = static_cast<double>(std::clock()) / CLOCKS_PER_SEC;
  // One key=value line: readable, and what e2e_ingest.sh parses.
  fmt::print(
      "runnel-sink lines={} bytes={} connections={} seconds={:.3f} lines_per_s={:.0f} "
      "mib_per_s={:.1f} cpu_s={:.3f} complete={} first_byte_unix_ns={} end_unix_ns={}\n",
      lines, bytes, connections.count(), seconds, static_cast<double>(lines) * per_s,
      static_cast<double>(bytes) * per_s / (1 << 20), cpu_s, complete ? 1 : 0, first_ns, end_ns);
  ::close(g_wake_fd);
  const bool has_target = targets.lines != 0 || targets.bytes != 0;
  return has_target && !complete ? 1 : 0;
}
