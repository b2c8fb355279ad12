// Workload W1 of the benchmarks: one CPU-usage point per event for 10,000 hosts in 10 regions,
// event time advancing 360 µs per event. runnel-loadgen sends it; runnel-compaction-bench logs it.
#pragma once

#include <charconv>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace runnel::bench {

// W1 event time: a fixed start and 360 µs between consecutive events.
inline constexpr uint64_t kDefaultStartTsNs = 1'700'000'000'000'000'000ULL;
inline constexpr uint64_t kTsStepNs = 360'000;
inline constexpr uint64_t kHosts = 10'000;
// Upper bound of one W1 line; the longest is 82 bytes (20-digit ts, 4-digit host).
inline constexpr size_t kMaxLineBytes = 96;

namespace w1_internal {

// Writes "<value/100>.<value%100>" with two decimals, e.g. 1234 -> "12.34".
inline char* write_centi(uint32_t value, char* p) {
  p = std::to_chars(p, p + 8, value / 100).ptr;
  *p++ = '.';
  *p++ = static_cast<char>('0' + value / 10 % 10);
  *p++ = static_cast<char>('0' + value % 10);
  return p;
}

inline char* append(std::string_view text, char* p) {
  std::memcpy(p, text.data(), text.size());
  return p + text.size();
}

}  // namespace w1_internal

// Writes W1 event i at p (at most kMaxLineBytes) and returns the end:
// cpu,host=h<i%10000>,region=r<i%10> usage_user=<f>,usage_system=<f> <ts_ns>\n
inline char* write_w1_line(uint64_t i, uint64_t start_ts_ns, char* p) {
  using w1_internal::append;
  using w1_internal::write_centi;
  // Field values vary by event but stay reproducible: two 14-bit slices of a Fibonacci hash.
  const uint64_t mix = i * 0x9E3779B97F4A7C15ULL;
  p = append("cpu,host=h", p);
  p = std::to_chars(p, p + 8, i % kHosts).ptr;
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

}  // namespace runnel::bench
