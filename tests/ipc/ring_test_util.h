// Helpers for the ring tests: unique shm object names removed at scope exit, and self-checking
// records {producer, seq, length, checksum, pattern} that reveal loss, reordering and tearing.
#pragma once

#include <unistd.h>

#include <atomic>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "ipc/ring.h"
#include "ipc/ring_layout.h"

namespace runnel::ipc::testing {

#if defined(__SANITIZE_THREAD__)
inline constexpr uint64_t kScale = 8;  // sanitizers: fewer records, same shapes
#elif defined(__SANITIZE_ADDRESS__)
inline constexpr uint64_t kScale = 2;
#else
inline constexpr uint64_t kScale = 1;
#endif

// A shm object name unique to this process and test; the object is removed on destruction.
class ScopedRingName {
 public:
  explicit ScopedRingName(const std::string& tag) {
    static std::atomic<int> counter{0};
    name_ = "runnel-test-" + std::to_string(getpid()) + "-" + tag + "-" + std::to_string(counter++);
    (void)Ring::remove(name_);
  }
  ~ScopedRingName() { (void)Ring::remove(name_); }
  ScopedRingName(const ScopedRingName&) = delete;
  ScopedRingName& operator=(const ScopedRingName&) = delete;
  const std::string& str() const { return name_; }

 private:
  std::string name_;
};

struct TestRecordHead {
  uint32_t producer;
  uint32_t length;  // whole payload, head included
  uint64_t seq;
  uint64_t checksum;  // FNV-1a of the bytes after the head
};
inline constexpr size_t kTestHeadBytes = sizeof(TestRecordHead);
static_assert(kTestHeadBytes == 24);

inline uint64_t fnv1a(std::span<const std::byte> bytes) {
  uint64_t h = 1469598103934665603ULL;
  for (std::byte b : bytes) h = (h ^ static_cast<uint8_t>(b)) * 1099511628211ULL;
  return h;
}

// Payload length for (producer, seq): 24..227 bytes, varying record to record.
inline size_t test_record_length(uint32_t producer, uint64_t seq) {
  return kTestHeadBytes + static_cast<size_t>((seq * 2654435761ULL + producer * 97ULL) % 204);
}

inline void fill_test_record(std::span<std::byte> out, uint32_t producer, uint64_t seq) {
  for (size_t i = kTestHeadBytes; i < out.size(); ++i)
    out[i] = static_cast<std::byte>(seq * 31 + i * 7 + producer);
  TestRecordHead head{producer, static_cast<uint32_t>(out.size()), seq,
                      fnv1a(out.subspan(kTestHeadBytes))};
  std::memcpy(out.data(), &head, sizeof(head));
}

// Decodes and verifies a record; false if torn or malformed.
inline bool check_test_record(std::span<const std::byte> in, TestRecordHead* head) {
  if (in.size() < kTestHeadBytes) return false;
  std::memcpy(head, in.data(), sizeof(*head));
  if (head->length != in.size() || head->checksum != fnv1a(in.subspan(kTestHeadBytes)))
    return false;
  for (size_t i = kTestHeadBytes; i < in.size(); ++i) {
    if (in[i] != static_cast<std::byte>(head->seq * 31 + i * 7 + head->producer)) return false;
  }
  return true;
}

// A second, raw read-write mapping of a ring, to forge crash states and damage headers.
class RawRing {
 public:
  explicit RawRing(const std::string& name) {
    boost::interprocess::shared_memory_object shm(boost::interprocess::open_only, name.c_str(),
                                                  boost::interprocess::read_write);
    region_ = boost::interprocess::mapped_region(shm, boost::interprocess::read_write);
  }
  RingHeader* header() const { return static_cast<RingHeader*>(region_.get_address()); }
  std::byte* data() const {
    return static_cast<std::byte*>(region_.get_address()) + kRingHeaderBytes;
  }

 private:
  boost::interprocess::mapped_region region_;
};

inline std::span<const std::byte> as_bytes(const std::string& s) {
  return std::as_bytes(std::span(s));
}

inline std::string as_string(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace runnel::ipc::testing
