// The ring's shared-memory layout: what the daemon, co-located producers and read-only
// subscribers agree on byte for byte. Change a field only together with kRingLayoutVersion.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace runnel::ipc {

// Segment = RingHeader (kRingHeaderBytes) followed by the data area (capacity_bytes, a power of
// two). All integers are host-endian; the segment never leaves the host.
//
// RingHeader, one 4096-byte page:
//   offset size  field
//        0    8  magic              kRingMagic, stored last at creation (release)
//        8    4  layout_version     kRingLayoutVersion
//       12    4  header_bytes       kRingHeaderBytes: the data area starts here
//       16    8  capacity_bytes     power of two, kMinRingCapacity..kMaxRingCapacity
//       24    8  epoch              set at creation (runneld: the log's last epoch + 1); names this ring in the log
//       32    8  created_unix_ns
//       40    4  max_payload_bytes  min(capacity_bytes / 4 - 16, kMaxPayloadLimit)
//       44    4  max_consumers      kMaxConsumers
//       48   16  reserved
//       64    8  claim              next free byte position; CAS by producers
//      128    8  gate               cached lower bound of the gating consumers' positions
//      192    4  data_seq           futex word: consumers sleep here for new records
//      196    4  data_waiters       1 while some consumer may sleep on data_seq
//      256    4  space_seq          futex word: producers sleep here for free space
//      260    4  space_waiters      1 while some producer may sleep on space_seq
//      320    8  full_claims        claims refused because the ring was full
//      328    8  abandoned_claims   zero-copy claims dropped without commit (became padding)
//      384  512  consumers[8]       ConsumerSlot, one cache line each
//      896 3200  reserved
//
// ConsumerSlot, 64 bytes:
//        0    8  position           next byte position this gating consumer will read
//        8    4  active             1 = gating producers; persists across a daemon crash
//       12    4  id                 index of the slot, for diagnostics
//       16    4  owner_pid          last process that attached it, for diagnostics
//       20   44  reserved
//
// Data area: records at 8-byte aligned positions. A position is a 64-bit byte count that never
// wraps; its index in the data area is position & (capacity_bytes - 1). Each record:
//        0    8  commit_pos         == the record's position once committed (release)
//        8    4  length             payload bytes (for padding: bytes skipped after the header)
//       12    4  type               RecordType
//       16    -  payload, then zero to 7 bytes up to the next multiple of 8
// The next record starts at normalize(position + 16 + align8(length)). A record never straddles
// the end of the data area: a producer fills the rest of the lap with a padding record instead,
// and a boundary never sits in the last 8 bytes (normalize skips them), so a header always fits.
// Stale bytes from an earlier lap hold smaller commit_pos values, so laps need no zeroing; the
// creator marks index 0 with kNeverCommitted so that position 0 is not committed by a zero page,
// and recover() fills a discarded tail with 0xff bytes (never a position) before reuse.

inline constexpr uint64_t kRingMagic = 0x474e494c4e4e5552ULL;  // "RUNNLING" little-endian
inline constexpr uint32_t kRingLayoutVersion = 1;
inline constexpr uint32_t kRingHeaderBytes = 4096;
inline constexpr uint32_t kMaxConsumers = 8;
inline constexpr uint64_t kMinRingCapacity = 4096;
inline constexpr uint64_t kMaxRingCapacity = uint64_t{1} << 36;
inline constexpr uint32_t kRecordHeaderBytes = 16;
inline constexpr uint32_t kMaxPayloadLimit = uint32_t{1} << 24;
inline constexpr uint64_t kRecordAlign = 8;
inline constexpr uint64_t kNeverCommitted = ~uint64_t{0};

// Fixed consumer ids: the daemon owns their meaning.
inline constexpr uint32_t kJournalConsumer = 0;
inline constexpr uint32_t kSpeedPathConsumer = 1;

enum class RecordType : uint32_t { kData = 1, kPadding = 2 };

static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "cross-process atomics must be lock-free");
static_assert(std::atomic<uint32_t>::is_always_lock_free,
              "cross-process atomics must be lock-free");
static_assert(sizeof(std::atomic<uint64_t>) == 8 && sizeof(std::atomic<uint32_t>) == 4);

struct alignas(64) ConsumerSlot {
  std::atomic<uint64_t> position;
  std::atomic<uint32_t> active;
  uint32_t id;
  std::atomic<uint32_t> owner_pid;
  uint8_t reserved[44];
};
static_assert(sizeof(ConsumerSlot) == 64);
static_assert(offsetof(ConsumerSlot, position) == 0);
static_assert(offsetof(ConsumerSlot, active) == 8);
static_assert(offsetof(ConsumerSlot, id) == 12);
static_assert(offsetof(ConsumerSlot, owner_pid) == 16);

struct RingHeader {
  std::atomic<uint64_t> magic;
  uint32_t layout_version;
  uint32_t header_bytes;
  uint64_t capacity_bytes;
  uint64_t epoch;
  uint64_t created_unix_ns;
  uint32_t max_payload_bytes;
  uint32_t max_consumers;
  uint8_t reserved0[16];

  alignas(64) std::atomic<uint64_t> claim;
  alignas(64) std::atomic<uint64_t> gate;
  alignas(64) std::atomic<uint32_t> data_seq;
  std::atomic<uint32_t> data_waiters;
  alignas(64) std::atomic<uint32_t> space_seq;
  std::atomic<uint32_t> space_waiters;
  alignas(64) std::atomic<uint64_t> full_claims;
  std::atomic<uint64_t> abandoned_claims;
  alignas(64) ConsumerSlot consumers[kMaxConsumers];
  uint8_t reserved1[3200];
};
static_assert(sizeof(RingHeader) == kRingHeaderBytes);
static_assert(offsetof(RingHeader, magic) == 0);
static_assert(offsetof(RingHeader, layout_version) == 8);
static_assert(offsetof(RingHeader, header_bytes) == 12);
static_assert(offsetof(RingHeader, capacity_bytes) == 16);
static_assert(offsetof(RingHeader, epoch) == 24);
static_assert(offsetof(RingHeader, created_unix_ns) == 32);
static_assert(offsetof(RingHeader, max_payload_bytes) == 40);
static_assert(offsetof(RingHeader, max_consumers) == 44);
static_assert(offsetof(RingHeader, claim) == 64);
static_assert(offsetof(RingHeader, gate) == 128);
static_assert(offsetof(RingHeader, data_seq) == 192);
static_assert(offsetof(RingHeader, data_waiters) == 196);
static_assert(offsetof(RingHeader, space_seq) == 256);
static_assert(offsetof(RingHeader, space_waiters) == 260);
static_assert(offsetof(RingHeader, full_claims) == 320);
static_assert(offsetof(RingHeader, abandoned_claims) == 328);
static_assert(offsetof(RingHeader, consumers) == 384);
static_assert(offsetof(RingHeader, reserved1) == 896);

struct RecordHeader {
  std::atomic<uint64_t> commit_pos;
  std::atomic<uint32_t> length;
  std::atomic<uint32_t> type;
};
static_assert(sizeof(RecordHeader) == kRecordHeaderBytes);
static_assert(offsetof(RecordHeader, commit_pos) == 0);
static_assert(offsetof(RecordHeader, length) == 8);
static_assert(offsetof(RecordHeader, type) == 12);

constexpr uint64_t align8(uint64_t n) { return (n + kRecordAlign - 1) & ~(kRecordAlign - 1); }

// Bytes a record of `payload_bytes` occupies, header and alignment included.
constexpr uint64_t record_span(uint64_t payload_bytes) {
  return kRecordHeaderBytes + align8(payload_bytes);
}

// Where one mapping of a segment lives in this process. Trivially copyable; valid while the
// owning Ring or Subscriber lives. Read-only mappings use it for loads only.
struct RingView {
  RingHeader* header = nullptr;
  std::byte* data = nullptr;
  uint64_t capacity = 0;
  uint64_t mask = 0;
  uint32_t max_payload = 0;

  // Skips the last 8 bytes of a lap, where no 16-byte header fits.
  uint64_t normalize(uint64_t pos) const {
    return (pos & mask) > capacity - kRecordHeaderBytes ? (pos | mask) + 1 : pos;
  }
  RecordHeader* record_header(uint64_t pos) const {
    return reinterpret_cast<RecordHeader*>(data + (pos & mask));
  }
};

// What lies at a position, judged from the record header alone.
struct RecordAt {
  enum class Kind : uint8_t {
    kData,     // committed data record: payload/length valid
    kPadding,  // committed padding: skip to next
    kPending,  // not (yet) committed at this position: claimed-but-unwritten, or beyond claim
    kCorrupt,  // committed header whose length/type cannot be right (or a misaligned position)
  };
  Kind kind = Kind::kPending;
  uint32_t length = 0;
  const std::byte* payload = nullptr;
  uint64_t next = 0;
};

// Reads the record header at `pos` (acquire on commit_pos: pairs with the producer's release
// store in publish(), so a matching commit_pos makes length, type and payload visible). Checks
// everything against the capacity, so it is safe on memory written by untrusted processes.
inline RecordAt record_at(const RingView& v, uint64_t pos) {
  RecordAt r;
  const uint64_t idx = pos & v.mask;
  if ((pos & (kRecordAlign - 1)) != 0 || idx > v.capacity - kRecordHeaderBytes) {
    r.kind = RecordAt::Kind::kCorrupt;
    return r;
  }
  const RecordHeader* h = v.record_header(pos);
  if (h->commit_pos.load(std::memory_order_acquire) != pos) return r;
  // Relaxed: ordered after the acquire load above.
  const uint32_t length = h->length.load(std::memory_order_relaxed);
  const uint32_t type = h->type.load(std::memory_order_relaxed);
  const uint64_t room = v.capacity - idx - kRecordHeaderBytes;  // a multiple of 8
  const bool is_data = type == static_cast<uint32_t>(RecordType::kData);
  const bool is_padding = type == static_cast<uint32_t>(RecordType::kPadding);
  if (length > room || (!is_data && !is_padding) || (is_data && length > v.max_payload)) {
    r.kind = RecordAt::Kind::kCorrupt;
    return r;
  }
  r.kind = is_data ? RecordAt::Kind::kData : RecordAt::Kind::kPadding;
  r.length = length;
  r.payload = v.data + idx + kRecordHeaderBytes;
  r.next = v.normalize(pos + record_span(length));
  return r;
}

}  // namespace runnel::ipc
