// The ingest ring: segment creation and validation, the lock-free producer path, gating
// consumers, read-only subscribers, and crash recovery. Layout and invariants: ring_layout.h.
#include "ipc/ring.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>

#include "ipc/futex.h"
#include "ipc/shm_object.h"

namespace runnel::ipc {

// Invariants the code below keeps (positions are byte positions, see ring_layout.h):
//  I1  every claim end <= gate + capacity at the time of the claim, and gate never exceeds the
//      minimum active consumer position; so no producer writes bytes a gating consumer still needs.
//  I2  claim and every consumer position are record boundaries (normalized).
//  I3  gate is a record boundary with claim - gate <= capacity: [gate, claim) is intact.

namespace detail {

// Owns one mapping of a segment. Heap-allocated so its address (and attached_ids) stays put when
// the Ring or Subscriber that owns it is moved.
struct Segment {
  explicit Segment(ShmObject s) : shm(std::move(s)) {}
  ShmObject shm;
  std::atomic<uint32_t> attached_ids{0};  // in-process guard: one GatingConsumer per id
};

}  // namespace detail

namespace {

using detail::Segment;

constexpr std::string_view kKind = "ring";

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

uint32_t max_payload_for(uint64_t capacity) {
  return static_cast<uint32_t>(
      std::min<uint64_t>(capacity / 4 - kRecordHeaderBytes, kMaxPayloadLimit));
}

Status check_capacity(const std::string& name, uint64_t capacity) {
  if (!is_power_of_two(capacity) || capacity < kMinRingCapacity || capacity > kMaxRingCapacity) {
    return Status::Invalid(
        fmt::format("ring '{}': capacity {} bytes must be a power of two in [{}, {}]", name,
                    capacity, kMinRingCapacity, kMaxRingCapacity));
  }
  return Status::Ok();
}

RingView make_view(Segment& s) {
  std::byte* base = s.shm.data();
  RingView v;
  v.header = std::launder(reinterpret_cast<RingHeader*>(base));
  v.data = base + kRingHeaderBytes;
  v.capacity = v.header->capacity_bytes;
  v.mask = v.capacity - 1;
  v.max_payload = v.header->max_payload_bytes;
  return v;
}

// Validates a mapped header; `expect_capacity` is 0 when any capacity will do.
Status validate(const Segment& s, uint64_t expect_capacity) {
  const auto* h = reinterpret_cast<const RingHeader*>(s.shm.data());
  const uint64_t size = s.shm.size();
  const std::string where = s.shm.where();
  // Acquires the magic: pairs with the creator's release store, after every other header field.
  if (Status st = s.shm.check_magic_and_version(kRingMagic, kRingLayoutVersion); !st.ok())
    return st;
  if (h->header_bytes != kRingHeaderBytes || h->max_consumers != kMaxConsumers) {
    return Status::Corruption(
        fmt::format("{}: header_bytes {} / max_consumers {}, expected {} / {}", where,
                    h->header_bytes, h->max_consumers, kRingHeaderBytes, kMaxConsumers));
  }
  const uint64_t cap = h->capacity_bytes;
  if (Status st = check_capacity(s.shm.name(), cap); !st.ok())
    return Status::Corruption(where + ": " + st.message());
  if (size != kRingHeaderBytes + cap) {
    return Status::Corruption(fmt::format("{}: object is {} bytes but header {} + capacity {} = {}",
                                          where, size, kRingHeaderBytes, cap,
                                          kRingHeaderBytes + cap));
  }
  if (h->max_payload_bytes != max_payload_for(cap)) {
    return Status::Corruption(fmt::format("{}: max_payload_bytes {} does not match capacity {}",
                                          where, h->max_payload_bytes, cap));
  }
  if (expect_capacity != 0 && cap != expect_capacity) {
    return Status::Invalid(
        fmt::format("{}: exists with capacity {} bytes, asked for {}; "
                    "remove it (Ring::remove) to change the capacity",
                    where, cap, expect_capacity));
  }
  return Status::Ok();
}

// Maps an existing object (waiting briefly for a concurrent creator) and validates it.
Result<std::unique_ptr<Segment>> map_existing(const std::string& name, ShmAccess access,
                                              uint64_t expect_capacity) {
  auto shm = ShmObject::open(kKind, name, access, kRingHeaderBytes);
  if (!shm.ok()) return shm.status();
  auto seg = std::make_unique<Segment>(std::move(shm).value());
  if (Status st = validate(*seg, expect_capacity); !st.ok()) return st;
  return seg;
}

// Creates and initialises a new object; NotFound-free: returns Busy if it already exists.
Result<std::unique_ptr<Segment>> create_segment(const std::string& name, uint64_t capacity,
                                                const RingOptions& options) {
  auto shm = ShmObject::create(kKind, name, kRingHeaderBytes + capacity,
                               ShmOptions{options.mode, options.gid});
  if (!shm.ok()) return shm.status();
  auto seg = std::make_unique<Segment>(std::move(shm).value());
  // The object is zero-filled; construct the header's atomics in place (all zero) and fill it.
  auto* h = std::construct_at(reinterpret_cast<RingHeader*>(seg->shm.data()));
  h->layout_version = kRingLayoutVersion;
  h->header_bytes = kRingHeaderBytes;
  h->capacity_bytes = capacity;
  h->epoch = options.epoch != 0 ? options.epoch : random_instance_id();
  h->created_unix_ns = unix_now_ns();
  h->max_payload_bytes = max_payload_for(capacity);
  h->max_consumers = kMaxConsumers;
  for (uint32_t i = 0; i < kMaxConsumers; ++i) h->consumers[i].id = i;
  auto* first =
      std::construct_at(reinterpret_cast<RecordHeader*>(seg->shm.data() + kRingHeaderBytes));
  first->commit_pos.store(kNeverCommitted, std::memory_order_relaxed);  // published with magic
  // Release: pairs with the acquire load of magic in validate(); publishes every field above.
  h->magic.store(kRingMagic, std::memory_order_release);
  return seg;
}

// Fresh lower bound of the gating positions: min(claim, active positions). The claim is read
// before the slots, so a consumer that attaches at the claim (kNow) while this runs can only be
// given a bound at or below its position (both seq_cst; claim is monotonic).
uint64_t fresh_gate(const RingView& v) {
  RingHeader* h = v.header;
  uint64_t m = h->claim.load(std::memory_order_seq_cst);
  for (ConsumerSlot& s : h->consumers) {
    // seq_cst (acquire at least): pairs with the consumer's release of position in advance(), so
    // its reads of the old bytes happen before a producer overwrites them.
    if (s.active.load(std::memory_order_seq_cst) != 0)
      m = std::min(m, s.position.load(std::memory_order_seq_cst));
  }
  return m;
}

// Raises the shared gate to a fresh bound (monotonic CAS-max) and returns the fresh bound.
uint64_t refresh_gate(const RingView& v) {
  const uint64_t m = fresh_gate(v);
  uint64_t g = v.header->gate.load(std::memory_order_relaxed);  // only the CAS's expected value
  // Release: pairs with the acquire load of gate in claim_space(), carrying the consumers'
  // position releases to producers that use the cached value.
  while (g < m && !v.header->gate.compare_exchange_weak(g, m, std::memory_order_release,
                                                        std::memory_order_relaxed)) {
  }
  return m;
}

// Writes a record header and commits it, then wakes sleeping consumers if any asked to be.
void publish(const RingView& v, uint64_t pos, uint32_t length, RecordType type) {
  RecordHeader* rh = v.record_header(pos);
  // Relaxed: published by the release store of commit_pos below.
  rh->length.store(length, std::memory_order_relaxed);
  rh->type.store(static_cast<uint32_t>(type), std::memory_order_relaxed);
  // Release: pairs with the acquire load of commit_pos in record_at(). seq_cst, with the
  // seq_cst load of data_waiters below: Dekker with GatingConsumer::wait (store waiters, load
  // commit_pos), so either that consumer sees this commit or we see its flag and wake it.
  rh->commit_pos.store(pos, std::memory_order_seq_cst);
  RingHeader* h = v.header;
  if (h->data_waiters.load(std::memory_order_seq_cst) != 0 &&
      h->data_waiters.exchange(0, std::memory_order_seq_cst) != 0) {
    // Release: pairs with the acquire load of data_seq in the waiters.
    h->data_seq.fetch_add(1, std::memory_order_release);
    futex_wake_all(&h->data_seq);
  }
}

// The Subscriber's seqlock. Writer side, after a successful claim: the new claim is visible
// before any byte of the claimed region, so a Subscriber that copied a byte of it sees the claim
// when it re-checks (Subscriber::intact). Reader side: the copy happens before that re-check.
// TSan does not model fences (-Wtsan); the seqlock reader is left out of the TSan run, and the
// gating paths use no fences, so TSan builds compile them out.
#if defined(__SANITIZE_THREAD__)
void seqlock_write_fence() {}
void seqlock_read_fence() {}
#else
void seqlock_write_fence() { std::atomic_thread_fence(std::memory_order_release); }
void seqlock_read_fence() { std::atomic_thread_fence(std::memory_order_acquire); }
#endif

// Wakes producers sleeping in wait_for_space, if any. Call after a seq_cst store of a position
// or of active: Dekker with wait_for_space (seq_cst store of space_waiters, seq_cst slot loads).
void wake_space_waiters(RingHeader* h) {
  if (h->space_waiters.load(std::memory_order_seq_cst) != 0 &&
      h->space_waiters.exchange(0, std::memory_order_seq_cst) != 0) {
    h->space_seq.fetch_add(1, std::memory_order_release);  // pairs with acquire in wait_for_space
    futex_wake_all(&h->space_seq);
  }
}

// Where a claim starting at `c` would end, with `*pad` set to the padding needed before it.
uint64_t claim_end(const RingView& v, uint64_t c, uint64_t span, uint64_t* pad) {
  const uint64_t idx = c & v.mask;
  *pad = idx + span > v.capacity ? v.capacity - idx : 0;
  return v.normalize(c + *pad + span);
}

// The lock-free claim: one CAS on the claim cursor per record, a slot scan only when the cached
// gate says full. On success the padding before the record (if any) is already committed.
WriteStatus claim_space(const RingView& v, size_t payload_bytes, uint64_t* record_pos) {
  if (payload_bytes > v.max_payload) return WriteStatus::kTooLarge;
  RingHeader* h = v.header;
  const uint64_t span = record_span(payload_bytes);
  uint64_t c = h->claim.load(std::memory_order_relaxed);  // a first guess; the CAS decides
  uint64_t gate =
      h->gate.load(std::memory_order_acquire);  // pairs with release CAS in refresh_gate
  for (;;) {
    uint64_t pad = 0;
    const uint64_t end = claim_end(v, c, span, &pad);
    if (end > gate + v.capacity) {
      gate = refresh_gate(v);
      if (end > gate + v.capacity) {
        h->full_claims.fetch_add(1, std::memory_order_relaxed);  // a statistic only
        return WriteStatus::kFull;
      }
      continue;
    }
    // seq_cst: the claim cursor is part of the kNow attach argument in fresh_gate(). Relaxed on
    // failure: c is only the next guess.
    if (h->claim.compare_exchange_weak(c, end, std::memory_order_seq_cst,
                                       std::memory_order_relaxed)) {
      seqlock_write_fence();
      if (pad != 0)
        publish(v, c, static_cast<uint32_t>(pad - kRecordHeaderBytes), RecordType::kPadding);
      *record_pos = c + pad;
      return WriteStatus::kOk;
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Claim

Claim::~Claim() {
  if (length_ != kNone) release(RecordType::kPadding);
}

Claim::Claim(Claim&& other) noexcept
    : view_(other.view_),
      pos_(other.pos_),
      length_(std::exchange(other.length_, kNone)),
      status_(other.status_) {}

Claim& Claim::operator=(Claim&& other) noexcept {
  if (this != &other) {
    if (length_ != kNone) release(RecordType::kPadding);
    view_ = other.view_;
    pos_ = other.pos_;
    length_ = std::exchange(other.length_, kNone);
    status_ = other.status_;
  }
  return *this;
}

std::span<std::byte> Claim::payload() const {
  if (length_ == kNone) return {};
  return {view_.data + (pos_ & view_.mask) + kRecordHeaderBytes, static_cast<size_t>(length_)};
}

void Claim::commit() {
  if (length_ != kNone) release(RecordType::kData);
}

void Claim::release(RecordType type) {
  // Abandoned: padding over the same span (length rounded up keeps the same next position).
  const uint64_t length = type == RecordType::kData ? length_ : align8(length_);
  if (type == RecordType::kPadding)
    view_.header->abandoned_claims.fetch_add(1, std::memory_order_relaxed);  // a statistic
  publish(view_, pos_, static_cast<uint32_t>(length), type);
  length_ = kNone;
}

// ---------------------------------------------------------------------------------------------
// Ring

Ring::Ring(std::unique_ptr<Segment> segment)
    : segment_(std::move(segment)), view_(make_view(*segment_)) {}
Ring::Ring(Ring&&) noexcept = default;
Ring& Ring::operator=(Ring&&) noexcept = default;
Ring::~Ring() = default;

Result<Ring> Ring::open_or_create(const std::string& name, uint64_t capacity_bytes,
                                  const RingOptions& options) {
  if (Status st = ShmObject::check_name(kKind, name); !st.ok()) return st;
  if (Status st = check_capacity(name, capacity_bytes); !st.ok()) return st;
  auto created = create_segment(name, capacity_bytes, options);
  if (created.ok()) return Ring(std::move(created).value());
  if (created.status().code() != Status::Code::kBusy) return created.status();
  auto existing = map_existing(name, ShmAccess::kReadWrite, capacity_bytes);
  if (!existing.ok()) return existing.status();
  return Ring(std::move(existing).value());
}

Result<Ring> Ring::open(const std::string& name) {
  auto existing = map_existing(name, ShmAccess::kReadWrite, 0);
  if (!existing.ok()) return existing.status();
  return Ring(std::move(existing).value());
}

Status Ring::remove(const std::string& name) { return ShmObject::remove(kKind, name); }

const std::string& Ring::name() const { return segment_->shm.name(); }

WriteStatus Ring::try_write(std::span<const std::byte> payload) {
  uint64_t pos = 0;
  const WriteStatus st = claim_space(view_, payload.size(), &pos);
  if (st != WriteStatus::kOk) return st;
  if (!payload.empty())
    std::memcpy(view_.data + (pos & view_.mask) + kRecordHeaderBytes, payload.data(),
                payload.size());
  publish(view_, pos, static_cast<uint32_t>(payload.size()), RecordType::kData);
  return WriteStatus::kOk;
}

Claim Ring::try_claim(size_t payload_bytes) {
  uint64_t pos = 0;
  const WriteStatus st = claim_space(view_, payload_bytes, &pos);
  if (st != WriteStatus::kOk) return Claim(st);
  return Claim(view_, pos, static_cast<uint32_t>(payload_bytes));
}

bool Ring::wait_for_space(size_t payload_bytes, std::chrono::nanoseconds timeout) {
  if (payload_bytes > view_.max_payload) return false;
  RingHeader* h = view_.header;
  auto fits = [&] {  // relaxed claim: an estimate; the claim CAS decides for real
    uint64_t pad = 0;
    const uint64_t end = claim_end(view_, h->claim.load(std::memory_order_relaxed),
                                   record_span(payload_bytes), &pad);
    return end <= refresh_gate(view_) + view_.capacity;
  };
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const uint32_t seq =
        h->space_seq.load(std::memory_order_acquire);  // pairs with wake_space_waiters
    if (fits()) return true;
    h->space_waiters.store(1, std::memory_order_seq_cst);  // Dekker with wake_space_waiters
    if (fits()) return true;
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::nanoseconds::zero() || !futex_wait(&h->space_seq, seq, left))
      return fits();
  }
}

Result<GatingConsumer> Ring::attach_consumer(uint32_t id, StartAt start) {
  if (id >= kMaxConsumers) {
    return Status::Invalid(
        fmt::format("ring '{}': consumer id {} out of range [0, {})", name(), id, kMaxConsumers));
  }
  const uint32_t bit = uint32_t{1} << id;
  // acq_rel on attached_ids: an in-process guard that orders nothing else.
  if ((segment_->attached_ids.fetch_or(bit, std::memory_order_acq_rel) & bit) != 0) {
    return Status::Busy(
        fmt::format("ring '{}': consumer id {} is already attached in this process", name(), id));
  }
  RingHeader* h = view_.header;
  ConsumerSlot& slot = h->consumers[id];
  if (start == StartAt::kNow) {
    // Park at the claim, activate, then re-read the claim: every gate computed without this slot
    // is <= the second claim read (see fresh_gate), so nothing from there on can be overwritten.
    slot.position.store(h->claim.load(std::memory_order_seq_cst), std::memory_order_seq_cst);
    slot.active.store(1, std::memory_order_seq_cst);
    slot.position.store(h->claim.load(std::memory_order_seq_cst), std::memory_order_seq_cst);
  } else if (slot.active.load(std::memory_order_seq_cst) == 0) {
    const uint64_t pos = slot.position.load(std::memory_order_seq_cst);
    const uint64_t claim = h->claim.load(std::memory_order_seq_cst);
    if (pos > claim || claim - pos > view_.capacity || view_.normalize(pos) != pos ||
        pos % kRecordAlign != 0) {
      segment_->attached_ids.fetch_and(~bit, std::memory_order_acq_rel);
      return Status::Invalid(
          fmt::format("ring '{}': consumer {} resume position {} is no longer retained "
                      "(claim {}, capacity {}); set_consumer_position or attach kNow",
                      name(), id, pos, claim, view_.capacity));
    }
    slot.active.store(1, std::memory_order_seq_cst);
    reset_gate();
  }
  slot.owner_pid.store(static_cast<uint32_t>(getpid()),
                       std::memory_order_relaxed);  // diagnostics only
  return GatingConsumer(view_, id, &segment_->attached_ids);
}

void Ring::reset_gate() {
  // Start-up only: may lower the gate (a consumer resumed behind it), which a CAS-max cannot.
  view_.header->gate.store(fresh_gate(view_),
                           std::memory_order_release);  // pairs as in refresh_gate
}

Result<RecoverReport> Ring::recover() {
  RingHeader* h = view_.header;
  RecoverReport report;
  const uint64_t claim = h->claim.load(std::memory_order_seq_cst);
  bool any_active = false;
  uint64_t start = claim;
  for (ConsumerSlot& s : h->consumers) {
    if (s.active.load(std::memory_order_seq_cst) != 0) {
      any_active = true;
      start = std::min(start, s.position.load(std::memory_order_seq_cst));
    }
  }
  // With no gating consumer, [gate, claim) is still intact (I3) and may hold a torn tail.
  if (!any_active) start = std::min(claim, h->gate.load(std::memory_order_seq_cst));
  if (claim - start > view_.capacity || view_.normalize(start) != start ||
      start % kRecordAlign != 0) {
    return Status::Corruption(
        fmt::format("ring '{}': cannot recover: walk start {} vs claim {} (capacity {})", name(),
                    start, claim, view_.capacity));
  }
  uint64_t pos = start;
  while (pos < claim) {
    const RecordAt r = record_at(view_, pos);
    if (r.kind == RecordAt::Kind::kPending || r.kind == RecordAt::Kind::kCorrupt || r.next > claim)
      break;
    pos = r.next;
  }
  for (const ConsumerSlot& s : h->consumers) {
    const uint64_t p = s.position.load(std::memory_order_seq_cst);
    if (s.active.load(std::memory_order_seq_cst) != 0 && p > pos) {
      return Status::Corruption(
          fmt::format("ring '{}': consumer {} is at {}, past the last committed record "
                      "end {}; not recovering",
                      name(), s.id, p, pos));
    }
  }
  const uint64_t discarded = claim - pos;
  if (discarded != 0) {
    // Scrub the discarded bytes: their committed headers carry positions that new records will
    // reuse, and 0xff... is never a position.
    const uint64_t idx = pos & view_.mask;
    const uint64_t first = std::min(discarded, view_.capacity - idx);
    std::memset(view_.data + idx, 0xff, first);
    std::memset(view_.data, 0xff, discarded - first);
    h->claim.store(pos, std::memory_order_seq_cst);
  }
  reset_gate();
  report.start_position = start;
  report.claim_position = pos;
  report.discarded_bytes = discarded;
  return report;
}

Status Ring::set_consumer_position(uint32_t id, uint64_t position) {
  if (id >= kMaxConsumers) {
    return Status::Invalid(
        fmt::format("ring '{}': consumer id {} out of range [0, {})", name(), id, kMaxConsumers));
  }
  RingHeader* h = view_.header;
  position = view_.normalize(position);  // callers may add record_span() to a record's position
  const uint64_t claim = h->claim.load(std::memory_order_seq_cst);
  if (position > claim || claim - position > view_.capacity) {
    return Status::Invalid(fmt::format(
        "ring '{}': consumer {} position {} is outside the retained range [{}, {}]", name(), id,
        position, claim > view_.capacity ? claim - view_.capacity : 0, claim));
  }
  uint64_t pos = position;
  while (pos < claim) {
    const RecordAt r = record_at(view_, pos);
    if (r.kind == RecordAt::Kind::kPending || r.kind == RecordAt::Kind::kCorrupt ||
        r.next > claim) {
      return Status::Invalid(
          fmt::format("ring '{}': consumer {} position {} is not a record boundary followed by "
                      "committed records (stopped at {}, claim {}); recover() first?",
                      name(), id, position, pos, claim));
    }
    pos = r.next;
  }
  h->consumers[id].position.store(position, std::memory_order_seq_cst);
  reset_gate();
  return Status::Ok();
}

uint64_t Ring::claim_position() const {
  // Relaxed: introspection; consumers order themselves through commit_pos.
  return view_.header->claim.load(std::memory_order_relaxed);
}

uint64_t Ring::min_gating_position() const { return fresh_gate(view_); }

RingStats Ring::stats() const {
  const RingHeader* h = view_.header;
  RingStats s;
  s.epoch = h->epoch;
  s.capacity_bytes = view_.capacity;
  // Relaxed throughout: a statistics snapshot orders nothing.
  s.claim_position = h->claim.load(std::memory_order_relaxed);
  s.min_gating_position = s.claim_position;
  for (uint32_t i = 0; i < kMaxConsumers; ++i) {
    ConsumerStats& c = s.consumers[i];
    c.active = h->consumers[i].active.load(std::memory_order_relaxed) != 0;
    c.position = h->consumers[i].position.load(std::memory_order_relaxed);
    if (c.active) {
      c.lag_bytes = s.claim_position > c.position ? s.claim_position - c.position : 0;
      s.min_gating_position = std::min(s.min_gating_position, c.position);
    }
  }
  s.fill_ratio = static_cast<double>(s.claim_position - s.min_gating_position) /
                 static_cast<double>(view_.capacity);
  s.full_claims = h->full_claims.load(std::memory_order_relaxed);
  s.abandoned_claims = h->abandoned_claims.load(std::memory_order_relaxed);
  return s;
}

// ---------------------------------------------------------------------------------------------
// GatingConsumer

GatingConsumer::GatingConsumer(const RingView& view, uint32_t id,
                               std::atomic<uint32_t>* attached_ids)
    : view_(view), slot_(&view.header->consumers[id]), attached_ids_(attached_ids), id_(id) {
  position_ = slot_->position.load(std::memory_order_acquire);  // pairs with the stores in attach
}

GatingConsumer::GatingConsumer(GatingConsumer&& other) noexcept
    : view_(other.view_),
      slot_(std::exchange(other.slot_, nullptr)),
      attached_ids_(std::exchange(other.attached_ids_, nullptr)),
      position_(other.position_),
      id_(other.id_) {}

GatingConsumer& GatingConsumer::operator=(GatingConsumer&& other) noexcept {
  if (this != &other) {
    release_id();
    view_ = other.view_;
    slot_ = std::exchange(other.slot_, nullptr);
    attached_ids_ = std::exchange(other.attached_ids_, nullptr);
    position_ = other.position_;
    id_ = other.id_;
  }
  return *this;
}

GatingConsumer::~GatingConsumer() { release_id(); }

void GatingConsumer::release_id() {
  if (attached_ids_ != nullptr)
    attached_ids_->fetch_and(~(uint32_t{1} << id_), std::memory_order_acq_rel);
  attached_ids_ = nullptr;
}

void GatingConsumer::advance(uint64_t new_position) {
  if (slot_ == nullptr || new_position <= position_) return;
  position_ = new_position;
  // Release: pairs with the seq_cst (acquire) loads in fresh_gate(): our reads of the records
  // before new_position happen before any producer overwrites them. seq_cst: see
  // wake_space_waiters. One store per batch, not per record.
  slot_->position.store(new_position, std::memory_order_seq_cst);
  wake_space_waiters(view_.header);
}

bool GatingConsumer::wait(std::chrono::nanoseconds timeout) {
  if (slot_ == nullptr) return false;
  RingHeader* h = view_.header;
  auto ready = [&] { return record_at(view_, position_).kind != RecordAt::Kind::kPending; };
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const uint32_t seq =
        h->data_seq.load(std::memory_order_acquire);  // pairs with fetch_add in publish
    if (ready()) return true;
    // Dekker with publish(): seq_cst store of the flag, then a seq_cst load of commit_pos.
    h->data_waiters.store(1, std::memory_order_seq_cst);
    if (view_.record_header(position_)->commit_pos.load(std::memory_order_seq_cst) == position_)
      return true;
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::nanoseconds::zero() || !futex_wait(&h->data_seq, seq, left))
      return ready();
  }
}

void GatingConsumer::detach() {
  if (slot_ == nullptr) return;
  slot_->active.store(0, std::memory_order_seq_cst);
  wake_space_waiters(view_.header);
  slot_ = nullptr;
  release_id();
}

// ---------------------------------------------------------------------------------------------
// Subscriber

Subscriber::Subscriber(std::unique_ptr<Segment> segment)
    : segment_(std::move(segment)), view_(make_view(*segment_)), scratch_(view_.max_payload) {}
Subscriber::Subscriber(Subscriber&&) noexcept = default;
Subscriber& Subscriber::operator=(Subscriber&&) noexcept = default;
Subscriber::~Subscriber() = default;

Result<Subscriber> Subscriber::open(const std::string& name, StartAt start) {
  auto existing = map_existing(name, ShmAccess::kReadOnly, 0);
  if (!existing.ok()) return existing.status();
  Subscriber sub(std::move(existing).value());
  // Acquire: pairs with the claim CAS (seq_cst, so also a release) in claim_space.
  sub.position_ = start == StartAt::kNow ? sub.view_.header->claim.load(std::memory_order_acquire)
                                         : sub.oldest_position();
  return sub;
}

std::span<const std::byte> Subscriber::mapping() const {
  return {segment_->shm.data(), segment_->shm.size()};
}

// The oldest position guaranteed to be a retained record boundary: the minimum active gating
// position, else the gate (I3), else the claim. Everything read here is validated.
uint64_t Subscriber::oldest_position() const {
  const RingHeader* h = view_.header;
  // Relaxed: a candidate only; it is bounds-checked against the claim below and every record
  // read from it is re-validated (seqlock), so no ordering is needed.
  uint64_t m = h->gate.load(std::memory_order_relaxed);
  bool any_active = false;
  for (const ConsumerSlot& s : h->consumers) {
    if (s.active.load(std::memory_order_relaxed) != 0) {
      const uint64_t p = s.position.load(std::memory_order_relaxed);
      m = any_active ? std::min(m, p) : p;
      any_active = true;
    }
  }
  // Read after the slots, so a consumer that advanced meanwhile is not mistaken for bogus.
  // Acquire: pairs with the claim CAS in claim_space.
  const uint64_t claim = h->claim.load(std::memory_order_acquire);
  const bool valid =
      m <= claim && claim - m <= view_.capacity && m % kRecordAlign == 0 && view_.normalize(m) == m;
  return valid ? m : claim;
}

// True if no producer can have overwritten any byte at or after `pos` yet: a producer claims
// before it writes (release fence in claim_space) and never past gate + capacity (I1).
bool Subscriber::intact(uint64_t pos) const {
  // Relaxed: ordered after the copy by the acquire fence in next().
  if (pos >= view_.header->gate.load(std::memory_order_relaxed)) return true;
  return view_.header->claim.load(std::memory_order_relaxed) <= pos + view_.capacity;
}

Subscriber::Step Subscriber::next(uint64_t* pos_out, std::span<const std::byte>* payload,
                                  uint64_t* overrun_bytes) {
  for (;;) {
    const uint64_t pos = position_;
    const RecordAt r = record_at(view_, pos);
    if (r.kind == RecordAt::Kind::kPending) {
      // Acquire: pairs with the claim CAS in claim_space.
      const uint64_t claim = view_.header->claim.load(std::memory_order_acquire);
      if (pos > claim) {  // the ring was recovered (truncated) under us; not a loss
        position_ = claim;
        return Step::kEmpty;
      }
      if (pos + view_.capacity >= claim) return Step::kEmpty;  // claimed but not yet committed
    } else if (r.kind != RecordAt::Kind::kCorrupt) {
      if (r.kind == RecordAt::Kind::kData) std::memcpy(scratch_.data(), r.payload, r.length);
      seqlock_read_fence();
      if (intact(pos)) {
        position_ = r.next;
        if (r.kind == RecordAt::Kind::kPadding) continue;
        *pos_out = pos;
        *payload = std::span<const std::byte>(scratch_.data(), r.length);
        return Step::kRecord;
      }
    }
    // Overrun (or a header no producer could have written): jump to a retained boundary.
    uint64_t target = oldest_position();
    if (target <= pos) target = view_.header->claim.load(std::memory_order_acquire);  // as above
    if (target <= pos) return Step::kEmpty;  // cannot happen with a sane header; do not spin
    *overrun_bytes += target - pos;
    overrun_total_ += target - pos;
    position_ = target;
    return Step::kOverrun;
  }
}

bool Subscriber::wait(std::chrono::nanoseconds timeout) {
  const RingHeader* h = view_.header;
  const uint32_t seq =
      h->data_seq.load(std::memory_order_acquire);  // pairs with fetch_add in publish
  if (record_at(view_, position_).kind != RecordAt::Kind::kPending) return true;
  futex_wait(&h->data_seq, seq, timeout);
  return record_at(view_, position_).kind != RecordAt::Kind::kPending;
}

}  // namespace runnel::ipc
