// Latency measurement shared by the read benchmarks: a monotonic clock, percentiles, and the
// baseline every read is compared with, a 64-byte request/response over a Unix socket pair with
// a forked echo process (the least any socket-served store, e.g. Redis over loopback, pays).
#pragma once

#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include <fmt/core.h>

namespace runnel::bench {

inline int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

struct Percentiles {
  double p50, p99, p999;
};

// Sorts `v` (ns samples). REQUIRES: !v.empty().
inline Percentiles percentiles(std::vector<int64_t>& v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    return static_cast<double>(v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))]);
  };
  return {at(0.5), at(0.99), at(0.999)};
}

inline void print_percentiles(const char* what, Percentiles p, double baseline_p50) {
  fmt::print("{:<44} p50 {:>9.0f} ns  p99 {:>9.0f} ns  p99.9 {:>9.0f} ns  p50 vs baseline {:.4f}\n",
             what, p.p50, p.p99, p.p999, p.p50 / baseline_p50);
}

// The baseline: n ping-pongs of 64 bytes with a forked echo process over a Unix socket pair.
inline std::vector<int64_t> socket_round_trips(int n) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) throw std::runtime_error("socketpair");
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    char buf[64];
    while (read(sv[1], buf, sizeof buf) == static_cast<ssize_t>(sizeof buf)) {
      if (write(sv[1], buf, sizeof buf) != static_cast<ssize_t>(sizeof buf)) break;
    }
    _exit(0);
  }
  close(sv[1]);
  std::vector<int64_t> t;
  t.reserve(static_cast<size_t>(n));
  char buf[64] = {};
  for (int i = 0; i < n; ++i) {
    const int64_t a = now_ns();
    if (write(sv[0], buf, sizeof buf) != static_cast<ssize_t>(sizeof buf)) break;
    size_t got = 0;
    while (got < sizeof buf) {
      ssize_t r = read(sv[0], buf + got, sizeof buf - got);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    t.push_back(now_ns() - a);
  }
  close(sv[0]);
  waitpid(pid, nullptr, 0);
  return t;
}

}  // namespace runnel::bench
