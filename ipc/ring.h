// The ingest ring: a bounded, lock-free, multi-producer ring of variable-length records in POSIX
// shared memory. Producers append; gating consumers (journal, speed path) each see every record
// and hold producers back when behind; read-only subscribers tail it and are told when overrun.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ipc/ring_layout.h"
#include "model/status.h"

namespace runnel::ipc {

namespace detail {
struct Segment;
}

// Outcome of a producer call. An enum, not a Status: the hot path allocates nothing, also when
// full.
enum class WriteStatus : uint8_t {
  kOk,
  kFull,      // gating consumers are a capacity behind; retry, or wait_for_space()
  kTooLarge,  // payload exceeds max_payload_bytes(); never fits
};

struct RingOptions {
  uint32_t mode = 0640;      // permission bits of the shm object
  std::optional<gid_t> gid;  // chown the object to this group, so clients may map it read-only
  // The epoch of a ring this call creates; 0: a random one. runneld passes the log's last
  // epoch + 1, so that epochs increase along the log (model/generation.h).
  uint64_t epoch = 0;
};

struct ConsumerStats {
  bool active = false;
  uint64_t position = 0;
  uint64_t lag_bytes = 0;  // claim - position, when active
};

// A relaxed snapshot; fields may be mutually inconsistent by a few records.
struct RingStats {
  uint64_t epoch = 0;
  uint64_t capacity_bytes = 0;
  uint64_t claim_position = 0;
  uint64_t min_gating_position = 0;  // == claim_position when no consumer is attached
  double fill_ratio = 0;             // (claim - min gating) / capacity
  uint64_t full_claims = 0;
  uint64_t abandoned_claims = 0;
  ConsumerStats consumers[kMaxConsumers];
};

struct RecoverReport {
  uint64_t start_position = 0;   // where the walk began: the minimum gating position
  uint64_t claim_position = 0;   // claim cursor after recovery: end of the last committed record
  uint64_t discarded_bytes = 0;  // claimed but never committed (plus anything after the first hole)
};

// A zero-copy reservation from Ring::try_claim. Used by the one thread that claimed it; move-only.
// commit() publishes it; destroying an uncommitted claim publishes padding instead, so consumers
// never wait forever on it. Commit promptly: gating consumers cannot pass an uncommitted record.
class Claim {
 public:
  Claim() = default;
  ~Claim();
  Claim(Claim&& other) noexcept;
  Claim& operator=(Claim&& other) noexcept;
  Claim(const Claim&) = delete;
  Claim& operator=(const Claim&) = delete;

  WriteStatus status() const { return status_; }
  explicit operator bool() const { return length_ != kNone; }
  uint64_t position() const { return pos_; }
  std::span<std::byte> payload() const;  // exactly the bytes asked for
  void commit();

 private:
  friend class Ring;
  static constexpr uint64_t kNone = ~uint64_t{0};
  Claim(const RingView& view, uint64_t pos, uint32_t length)
      : view_(view), pos_(pos), length_(length) {}
  explicit Claim(WriteStatus why) : status_(why) {}
  void release(RecordType type);

  RingView view_;
  uint64_t pos_ = 0;
  uint64_t length_ = kNone;
  WriteStatus status_ = WriteStatus::kOk;
};

// A gating consumer's handle, from Ring::attach_consumer. One thread at a time; the Ring it came
// from must outlive it. Records are read in place (zero-copy) and stay valid until advance().
// Destroying the handle does not detach: the slot keeps gating, as after a crash, so nothing is
// lost; call detach() to stop gating.
class GatingConsumer {
 public:
  struct Batch {
    size_t records = 0;
    uint64_t end_position = 0;  // pass to advance() to release everything delivered
    bool corrupt = false;       // stopped at a committed header that cannot be valid
  };

  GatingConsumer(GatingConsumer&& other) noexcept;
  GatingConsumer& operator=(GatingConsumer&& other) noexcept;
  GatingConsumer(const GatingConsumer&) = delete;
  GatingConsumer& operator=(const GatingConsumer&) = delete;
  ~GatingConsumer();

  uint32_t id() const { return id_; }
  uint64_t position() const { return position_; }

  // Calls fn(uint64_t position, std::span<const std::byte> payload) for each committed record
  // from position(), in order, stopping at the first one not yet committed. Does not advance.
  // No lock, no allocation.
  template <typename Fn>
  Batch peek(Fn&& fn, size_t max_records = SIZE_MAX) const {
    Batch b;
    uint64_t pos = position_;
    while (slot_ != nullptr && b.records < max_records) {
      const RecordAt r = record_at(view_, pos);
      if (r.kind == RecordAt::Kind::kPending) break;
      if (r.kind == RecordAt::Kind::kCorrupt) {
        b.corrupt = true;
        break;
      }
      if (r.kind == RecordAt::Kind::kData) {
        fn(pos, std::span<const std::byte>(r.payload, r.length));
        ++b.records;
      }
      pos = r.next;
    }
    b.end_position = pos;
    return b;
  }

  // Releases everything before new_position (a Batch::end_position) to producers.
  void advance(uint64_t new_position);

  template <typename Fn>
  Batch poll(Fn&& fn, size_t max_records = SIZE_MAX) {
    Batch b = peek(fn, max_records);
    if (b.end_position != position_) advance(b.end_position);
    return b;
  }

  // Sleeps until a record is committed at position() or the timeout passes; false on timeout.
  // Producers make a futex syscall only while some consumer sleeps.
  bool wait(std::chrono::nanoseconds timeout);

  // Stops gating; the position stays in the segment for a later kResume. The handle is then empty.
  void detach();

 private:
  friend class Ring;
  GatingConsumer(const RingView& view, uint32_t id, std::atomic<uint32_t>* attached_ids);
  void release_id();

  RingView view_;
  ConsumerSlot* slot_ = nullptr;
  std::atomic<uint32_t>* attached_ids_ = nullptr;
  uint64_t position_ = 0;
  uint32_t id_ = 0;
};

// A read-write mapping of a ring. Producer calls: any number of threads in any process, lock-free,
// no allocation. Start-up calls (recover, set_consumer_position, attach kResume of a detached
// slot) REQUIRE that no producer and no other consumer is running: the restarted daemon is the
// only writer. Introspection: any thread.
// With no gating consumer attached, producers overwrite freely, a lap at a time; a producer
// stalled for a whole lap could then land its record over a newer one, so the daemon keeps the
// journal attached whenever it produces.
class Ring {
 public:
  enum class StartAt {
    kResume,  // the position persisted in the slot (0 on a new ring); start-up only unless active
    kNow,     // the claim cursor: only records published from now on; safe with live producers
  };

  // Creates the object exclusively, or opens and validates an existing one. A mismatch (magic,
  // version, sizes, capacity) is an error naming the object; it is never silently recreated.
  static Result<Ring> open_or_create(const std::string& name, uint64_t capacity_bytes,
                                     const RingOptions& options = {});
  // Opens an existing ring read-write (co-located producers); capacity comes from its header.
  static Result<Ring> open(const std::string& name);
  static Status remove(const std::string& name);

  Ring(Ring&&) noexcept;
  Ring& operator=(Ring&&) noexcept;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring();

  // Claim + copy + commit.
  WriteStatus try_write(std::span<const std::byte> payload);
  // Zero-copy: fill claim.payload(), then claim.commit().
  Claim try_claim(size_t payload_bytes);
  // Sleeps until a payload of this size would fit or the timeout passes; false on timeout.
  bool wait_for_space(size_t payload_bytes, std::chrono::nanoseconds timeout);

  // At most one handle per id per process (Busy otherwise). An id that is already active in the
  // segment (left by a crashed daemon) is taken over at its persisted position.
  Result<GatingConsumer> attach_consumer(uint32_t id, StartAt start = StartAt::kResume);

  // Start-up only. Walks committed records from the minimum gating position; a claimed-but-never-
  // committed region (a producer died mid-write) and everything after it is discarded and scrubbed,
  // and the claim cursor is reset to the end of the last committed record.
  Result<RecoverReport> recover();
  // Start-up only. Sets a slot's position, e.g. the journal's resume point from the log (which
  // stores each record's epoch + position), so journaling is exactly-once. `position` must be a
  // record boundary within the last capacity bytes, with every record after it committed.
  Status set_consumer_position(uint32_t id, uint64_t position);

  const std::string& name() const;
  uint64_t epoch() const { return view_.header->epoch; }
  uint64_t capacity_bytes() const { return view_.capacity; }
  uint32_t max_payload_bytes() const { return view_.max_payload; }
  uint64_t claim_position() const;
  uint64_t min_gating_position() const;
  RingStats stats() const;

 private:
  explicit Ring(std::unique_ptr<detail::Segment> segment);
  void reset_gate();

  std::unique_ptr<detail::Segment> segment_;
  RingView view_;
};

// A read-only tail of the ring for client processes (PROT_READ mapping). One thread. It never
// writes to the segment, so it cannot stall the daemon; it trusts nothing it reads (every length
// is bounds-checked, every copy re-validated seqlock-style), and when producers lap it, it jumps
// to the oldest position still retained and reports how many bytes it missed.
class Subscriber {
 public:
  enum class StartAt {
    kOldest,  // the minimum gating position: everything still retained
    kNow,     // the claim cursor
  };
  struct Batch {
    size_t records = 0;
    uint64_t overrun_bytes = 0;  // position jump over lost records; the batch stops there
  };

  static Result<Subscriber> open(const std::string& name, StartAt start = StartAt::kNow);

  Subscriber(Subscriber&&) noexcept;
  Subscriber& operator=(Subscriber&&) noexcept;
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;
  ~Subscriber();

  // Calls fn(uint64_t position, std::span<const std::byte> payload) per record; the payload is a
  // validated copy, valid during the call only. Stops when caught up or after an overrun.
  template <typename Fn>
  Batch poll(Fn&& fn, size_t max_records = SIZE_MAX) {
    Batch b;
    while (b.records < max_records) {
      uint64_t pos = 0;
      std::span<const std::byte> payload;
      const Step s = next(&pos, &payload, &b.overrun_bytes);
      if (s != Step::kRecord) break;
      fn(pos, payload);
      ++b.records;
    }
    return b;
  }

  // A bounded sleep for new records: it wakes early only when a producer wakes a sleeping gating
  // consumer (a read-only mapping cannot ask for a wake-up). Use short timeouts (1-10 ms).
  bool wait(std::chrono::nanoseconds timeout);

  uint64_t position() const { return position_; }
  uint64_t overrun_bytes_total() const { return overrun_total_; }
  uint64_t epoch() const { return view_.header->epoch; }
  // The whole read-only mapping, for diagnostics (and the test that a write to it faults).
  std::span<const std::byte> mapping() const;

 private:
  enum class Step { kRecord, kEmpty, kOverrun };
  explicit Subscriber(std::unique_ptr<detail::Segment> segment);
  Step next(uint64_t* pos, std::span<const std::byte>* payload, uint64_t* overrun_bytes);
  bool intact(uint64_t pos) const;
  uint64_t oldest_position() const;

  std::unique_ptr<detail::Segment> segment_;
  RingView view_;
  std::vector<std::byte> scratch_;  // max_payload bytes, allocated once
  uint64_t position_ = 0;
  uint64_t overrun_total_ = 0;
};

}  // namespace runnel::ipc
