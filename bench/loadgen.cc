// runnel-loadgen: sends workload W1 (InfluxDB line protocol) over N stream connections as fast
// as the receiver takes it. The byte stream is generated before the timed phase, so only
// sending is measured; every event goes out exactly once, each connection a contiguous range.

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

namespace {

// W1 event time: a fixed start and 360 µs between consecutive events.
constexpr uint64_t kDefaultStartTsNs = 1'700'000'000'000'000'000ULL;
constexpr uint64_t kTsStepNs = 360'000;
// Upper bound of one W1 line; the longest is 82 bytes (20-digit ts, 4-digit host).
constexpr size_t kMaxLineBytes = 96;

struct Target {
  bool is_unix = false;
  std::string host;  // tcp only
  std::string port;  // tcp only, decimal
  std::string path;  // unix only
};

// Accepts tcp://host:port and unix:///absolute/path.
std::optional<Target> parse_target(std::string_view text) {
  constexpr std::string_view kTcp = "tcp://";
  constexpr std::string_view kUnix = "unix://";
  Target target;
  if (text.starts_with(kUnix)) {
    target.is_unix = true;
    target.path = text.substr(kUnix.size());
    if (target.path.empty() || target.path.size() >= sizeof(sockaddr_un::sun_path)) {
      return std::nullopt;
    }
    return target;
  }
  if (!text.starts_with(kTcp)) return std::nullopt;
  std::string_view rest = text.substr(kTcp.size());
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == rest.size()) {
    return std::nullopt;
  }
  target.host = rest.substr(0, colon);
  target.port = rest.substr(colon + 1);
  return target;
}

// Owns one file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// Connects once; returns the socket or an errno.
std::pair<Fd, int> connect_once(const Target& target) {
  if (target.is_unix) {
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return {Fd(), errno};
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, target.path.data(), target.path.size());
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return {Fd(), errno};
    }
    return {std::move(fd), 0};
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(target.host.c_str(), target.port.c_str(), &hints, &found) != 0) {
    return {Fd(), EHOSTUNREACH};
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, &::freeaddrinfo);
  int last_errno = ECONNREFUSED;
  for (addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (fd.get() < 0) {
      last_errno = errno;
      continue;
    }
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) == 0) {
      const int one = 1;
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return {std::move(fd), 0};
    }
    last_errno = errno;
  }
  return {Fd(), last_errno};
}

// Retries refused connections until timeout_ms, so the receiver may still be starting.
std::pair<Fd, int> connect_with_retry(const Target& target, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto [fd, err] = connect_once(target);
    if (err == 0) return {std::move(fd), 0};
    const bool retriable = err == ECONNREFUSED || err == ENOENT || err == EAGAIN;
    if (!retriable || std::chrono::steady_clock::now() >= deadline) return {Fd(), err};
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Writes "<value/100>.<value%100>" with two decimals, e.g. 1234 -> "12.34".
char* write_centi(uint32_t value, char* p) {
  p = std::to_chars(p, p + 8, value / 100).ptr;
  *p++ = '.';
  *p++ = static_cast<char>('0' + value / 10 % 10);
  *p++ = static_cast<char>('0' + value % 10);
  return p;
}

char* append(std::string_view text, char* p) {
  std::memcpy(p, text.data(), text.size());
  return p + text.size();
}

// Writes W1 event i at p (at most kMaxLineBytes) and returns the end:
// cpu,host=h<i%10000>,region=r<i%10> usage_user=<f>,usage_system=<f> <ts_ns>\n
char* write_w1_line(uint64_t i, uint64_t start_ts_ns, char* p) {
  // Field values vary by event but stay reproducible: two 14-bit slices of a Fibonacci hash.
  const uint64_t mix = i * 0x9E3779B97F4A7C15ULL;
  p = append("cpu,host=h", p);
  p = std::to_chars(p, p + 8, i % 10000).ptr;
  p = append(",region=r", p);
  *p++ = static_cast<char>('0' + i % 10);
  p = append(" usage_user=", p);
  p = write_centi(static_cast<uint32_t>((mix >> 32) % 10000), p);
  p = append(",usage_system=", p);
  p = write_centi(static_cast<uint32_t>((mix >> 48) % 10000), p);
  *p++ = ' ';
  p = std::to_chars(p, p + 24, start_ts_ns + i * kTsStepNs).ptr;
  *p++ = '\n';
  return p;
}

// The pre-generated bytes of one connection: events [first, first + count).
struct Stream {
  std::unique_ptr<char[]> bytes;
  size_t size_bytes = 0;
};

Stream generate(uint64_t first, uint64_t count, uint64_t start_ts_ns) {
  Stream stream;
  // Uninitialised on purpose: pages are touched once, by the writes below.
  stream.bytes = std::make_unique_for_overwrite<char[]>(count * kMaxLineBytes + 1);
  char* p = stream.bytes.get();
  for (uint64_t i = first; i < first + count; ++i) p = write_w1_line(i, start_ts_ns, p);
  stream.size_bytes = static_cast<size_t>(p - stream.bytes.get());
  return stream;
}

// Sends all of data in writes of at most batch_bytes, each cut after a newline so that a
// receiver sees whole lines per write where the kernel keeps them together. Returns errno or 0.
int send_all(int fd, const char* data, size_t size, size_t batch_bytes) {
  const char* p = data;
  const char* end = data + size;
  while (p < end) {
    const size_t window = std::min(batch_bytes, static_cast<size_t>(end - p));
    const char* cut = p + window;
    if (cut < end) {
      const void* nl = ::memrchr(p, '\n', window);
      if (nl != nullptr) {
        cut = static_cast<const char*>(nl) + 1;
      } else {
        // A line longer than the batch: send through its end.
        const void* next = std::memchr(cut, '\n', static_cast<size_t>(end - cut));
        cut = next != nullptr ? static_cast<const char*>(next) + 1 : end;
      }
    }
    while (p < cut) {
      const ssize_t n = ::send(fd, p, static_cast<size_t>(cut - p), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      p += n;
    }
  }
  return 0;
}

uint64_t unix_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

struct Worker {
  Stream stream;
  Fd fd;
  int error = 0;          // errno of the first failure, 0 if none
  const char* failed_in = "";  // which step failed
  uint64_t end_unix_ns = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runnel-loadgen: send workload W1 (line protocol) to a stream target"};
  size_t connections = 4;
  uint64_t events = 10'000'000;
  std::string target_text = "tcp://127.0.0.1:8094";
  size_t batch_bytes = 1 << 20;
  uint64_t start_ts_ns = kDefaultStartTsNs;
  int connect_timeout_ms = 10'000;
  app.add_option("-c,--connections", connections, "parallel connections, one thread each")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("-n,--events", events, "total events across all connections")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("-t,--target", target_text, "tcp://host:port or unix:///path")
      ->capture_default_str();
  app.add_option("-b,--batch-bytes", batch_bytes, "bytes per send(), cut at a line end")
      ->check(CLI::Range(size_t{1}, size_t{1} << 30))
      ->capture_default_str();
  app.add_option("--start-ts-ns", start_ts_ns, "event time of event 0, ns since the epoch")
      ->capture_default_str();
  app.add_option("--connect-timeout-ms", connect_timeout_ms,
                 "keep retrying a refused connect for this long")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const std::optional<Target> target = parse_target(target_text);
  if (!target) {
    fmt::print(stderr, "runnel-loadgen: bad --target '{}': want tcp://host:port or unix:///path\n",
               target_text);
    return 2;
  }
  if (connections > events) connections = static_cast<size_t>(events);

  std::vector<Worker> workers(connections);
  std::atomic<bool> connect_failed{false};  // then nobody sends: a partial run measures nothing
  uint64_t start_unix_ns = 0;
  std::chrono::steady_clock::time_point gen_begin = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point send_begin;
  // Everyone generates and connects, then the completion step stamps the start of sending.
  std::barrier ready(static_cast<std::ptrdiff_t>(connections), [&]() noexcept {
    send_begin = std::chrono::steady_clock::now();
    start_unix_ns = unix_ns();
  });

  std::vector<std::jthread> threads;
  threads.reserve(connections);
  for (size_t k = 0; k < connections; ++k) {
    threads.emplace_back([&, k] {
      Worker& w = workers[k];
      const uint64_t first = events * k / connections;
      const uint64_t last = events * (k + 1) / connections;
      w.stream = generate(first, last - first, start_ts_ns);
      auto [fd, err] = connect_with_retry(*target, connect_timeout_ms);
      w.fd = std::move(fd);
      w.error = err;
      w.failed_in = "connect";
      if (err != 0) connect_failed = true;
      ready.arrive_and_wait();
      if (connect_failed) return;
      w.error = send_all(w.fd.get(), w.stream.bytes.get(), w.stream.size_bytes, batch_bytes);
      w.failed_in = "send";
      w.end_unix_ns = unix_ns();
      // Half-close: the receiver sees EOF once it has read everything.
      ::shutdown(w.fd.get(), SHUT_WR);
    });
  }
  threads.clear();  // joins
  const auto send_end = std::chrono::steady_clock::now();

  uint64_t bytes = 0;
  uint64_t end_unix_ns = 0;
  int status = 0;
  for (const Worker& w : workers) {
    bytes += w.stream.size_bytes;
    end_unix_ns = std::max(end_unix_ns, w.end_unix_ns);
    if (w.error != 0) {
      fmt::print(stderr, "runnel-loadgen: {} to {} failed: {}\n", w.failed_in, target_text,
                 std::strerror(w.error));
      status = 1;
    }
  }
  if (status != 0) return status;

  const double gen_seconds = std::chrono::duration<double>(send_begin - gen_begin).count();
  const double seconds = std::chrono::duration<double>(send_end - send_begin).count();
  // Process CPU time, all threads (glibc's clock() reads CLOCK_PROCESS_CPUTIME_ID).
  const double cpu_s = static_cast<double>(std::clock()) / CLOCKS_PER_SEC;
  // One key=value line: readable, and what e2e_ingest.sh parses.
  fmt::print(
      "runnel-loadgen events={} bytes={} connections={} seconds={:.3f} events_per_s={:.0f} "
      "mib_per_s={:.1f} gen_seconds={:.3f} cpu_s={:.3f} start_unix_ns={} end_unix_ns={}\n",
      events, bytes, connections, seconds, static_cast<double>(events) / seconds,
      static_cast<double>(bytes) / seconds / (1 << 20), gen_seconds, cpu_s, start_unix_ns,
      end_unix_ns);
  return 0;
}
