// A per-second budget for repetitive log messages (rejected lines, peer errors): the counters
// count everything, the log shows a sample and how many messages it held back.
#pragma once

#include <time.h>

#include <cstdint>
#include <spdlog/spdlog.h>

namespace runnel {

// REQUIRES: external synchronization (one thread).
class RateLimitedLog {
 public:
  explicit RateLimitedLog(uint32_t per_second) : per_second_(per_second) {}

  // True when a message may be logged now. Reports suppressed messages once per second.
  bool allow() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    if (ts.tv_sec != second_) {
      if (suppressed_ > 0) spdlog::warn("{} similar messages suppressed", suppressed_);
      second_ = ts.tv_sec;
      used_ = 0;
      suppressed_ = 0;
    }
    if (used_ < per_second_) {
      ++used_;
      return true;
    }
    ++suppressed_;
    return false;
  }

 private:
  uint32_t per_second_;
  int64_t second_ = -1;
  uint32_t used_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace runnel
