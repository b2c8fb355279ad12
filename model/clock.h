// Time as every layer reads it: wall-clock and monotonic readings, and the bucket a timestamp
// falls in (the one bucketing rule of the speed path, the batch layer and the client).
#pragma once

#include <time.h>

#include <cstdint>

namespace runnel {

// CLOCK_REALTIME in ns since the epoch.
inline int64_t realtime_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// CLOCK_MONOTONIC in ms.
inline int64_t monotonic_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

// The bucket a timestamp falls in: floor(ts / width) * width, also for negative timestamps.
// REQUIRES: width_ns > 0 and ts_ns >= INT64_MIN + width_ns (the floor must fit an i64).
constexpr int64_t bucket_start(int64_t ts_ns, int64_t width_ns) {
  const int64_t q = ts_ns / width_ns;
  return (q - ((ts_ns % width_ns) < 0 ? 1 : 0)) * width_ns;
}

}  // namespace runnel
