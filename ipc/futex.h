// Cross-process futex wait/wake on a 32-bit word in shared memory (non-private futexes:
// the word may be mapped at different addresses in different processes).
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <ctime>

namespace runnel::ipc {

// Sleeps while *word == expected, at most `timeout`. Returns false on timeout; true when woken,
// when the word had already changed, or on a signal (callers re-check their condition anyway).
// Works on read-only mappings too: the kernel only reads the word.
inline bool futex_wait(const std::atomic<uint32_t>* word, uint32_t expected,
                       std::chrono::nanoseconds timeout) {
  if (timeout.count() <= 0) return false;
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
  const long rc = syscall(SYS_futex, reinterpret_cast<const uint32_t*>(word), FUTEX_WAIT, expected,
                          &ts, nullptr, 0);
  return !(rc == -1 && errno == ETIMEDOUT);
}

// Wakes every process and thread sleeping on `word`.
inline void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

}  // namespace runnel::ipc
