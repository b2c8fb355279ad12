// The live tables: creation and validation of the object, the shard writers (probing, seqlock
// writes, eviction), lock-free seqlock reads, and change notification. Layout:
// live_table_layout.h.
#include "ipc/live_table.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <new>
#include <thread>

#include "ipc/futex.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace runnel::ipc {

namespace {

constexpr std::string_view kKind = "live tables";
// Seqlock read attempts per slot: spins, then yields, then short sleeps, so that a writer
// preempted mid-write (a few ms on a loaded host) is waited out before a read reports busy.
constexpr uint32_t kSpinAttempts = 64;
constexpr uint32_t kYieldAttempts = 64;
constexpr uint32_t kSleepAttempts = 100;
constexpr auto kSleep = std::chrono::microseconds(50);
constexpr uint32_t kReadAttempts = kSpinAttempts + kYieldAttempts + kSleepAttempts;

std::string object_name(const std::string& shm_name) { return shm_name + ".live"; }

// The seqlock's fences. On x86 (TSO) a release or acquire thread fence emits no instruction; it
// only restrains the compiler, which is what a signal fence does. ThreadSanitizer does not
// support thread fences (-Wtsan), so TSan builds on x86 use the signal fence: the same machine
// code, and since every access under the seqlock is atomic, TSan still checks each of them.
#if defined(__SANITIZE_THREAD__) && (defined(__x86_64__) || defined(__i386__))
void release_fence() { std::atomic_signal_fence(std::memory_order_release); }
void acquire_fence() { std::atomic_signal_fence(std::memory_order_acquire); }
#else
void release_fence() { std::atomic_thread_fence(std::memory_order_release); }
void acquire_fence() { std::atomic_thread_fence(std::memory_order_acquire); }
#endif

void backoff(uint32_t attempt) {
  if (attempt >= kSpinAttempts + kYieldAttempts) {
    std::this_thread::sleep_for(kSleep);
    return;
  }
  if (attempt >= kSpinAttempts) {
    std::this_thread::yield();
    return;
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// State words are read and written atomically (relaxed), so a copy racing with the writer is
// not a data race; the seqlock (seq loads and fences) orders them.
void load_state(const std::byte* src, std::byte* dst, uint32_t n) {
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t w =
        __atomic_load_n(reinterpret_cast<const uint64_t*>(src + i), __ATOMIC_RELAXED);
    std::memcpy(dst + i, &w, 8);
  }
  if (i < n) {
    const uint64_t w =
        __atomic_load_n(reinterpret_cast<const uint64_t*>(src + i), __ATOMIC_RELAXED);
    std::memcpy(dst + i, &w, n - i);
  }
}

void store_words(std::byte* dst, const std::byte* src, uint32_t n) {
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, src + i, 8);
    __atomic_store_n(reinterpret_cast<uint64_t*>(dst + i), w, __ATOMIC_RELAXED);
  }
  if (i < n) {
    uint64_t w = 0;  // the padding after the state stays zero
    std::memcpy(&w, src + i, n - i);
    __atomic_store_n(reinterpret_cast<uint64_t*>(dst + i), w, __ATOMIC_RELAXED);
  }
}

ShardCounters* shard_counters(std::byte* base, const ViewDescriptor& d) {
  return std::launder(reinterpret_cast<ShardCounters*>(base + d.area_offset));
}
std::byte* initial_state(std::byte* base, const ViewDescriptor& d) {
  return base + d.area_offset + initial_state_offset(d.shard_count);
}
char* definition(std::byte* base, const ViewDescriptor& d) {
  return reinterpret_cast<char*>(base + d.area_offset +
                                 definition_offset(d.shard_count, d.state_bytes));
}
LiveEntry* entry_at(std::byte* base, const ViewDescriptor& d, uint32_t shard, uint64_t i) {
  return std::launder(reinterpret_cast<LiveEntry*>(
      base + d.area_offset + entries_offset(d.shard_count, d.state_bytes, d.definition_bytes) +
      (uint64_t{shard} * d.shard_capacity + i) * d.entry_bytes));
}

std::string_view view_name(const ViewDescriptor& d) {
  return {d.name, strnlen(d.name, kViewNameBytes)};
}

enum class SlotRead : uint8_t { kMatch, kEmpty, kOther, kBusy };

// A consistent look at one slot. kMatch: occupied and (want == nullptr or its key is *want, of
// any generation with `any_generation`); then *meta is filled and, if out_state is not null, the
// state copied into it. kEmpty: an empty slot (ends a probe chain). kOther: a tombstone or
// another key.
SlotRead read_slot(const LiveEntry* e, uint32_t state_bytes, const EntryKey* want,
                   std::byte* out_state, EntryMeta* meta, bool any_generation = false) {
  for (uint32_t attempt = 0; attempt < kReadAttempts; ++attempt) {
    // Acquire: pairs with the release store of the even seq in end_write().
    const uint64_t s1 = e->seq.load(std::memory_order_acquire);
    if ((s1 & 1) != 0) {
      backoff(attempt);
      continue;
    }
    // Relaxed loads below: ordered by the acquire above and the acquire fence after them.
    const uint32_t flags = e->flags.load(std::memory_order_relaxed);
    EntryMeta m;
    SlotRead r = SlotRead::kOther;
    if (flags == kSlotEmpty) {
      r = SlotRead::kEmpty;
    } else if (flags == kSlotOccupied) {
      m.key.series_id = e->series_id.load(std::memory_order_relaxed);
      m.key.width_index = e->width_index.load(std::memory_order_relaxed);
      m.key.bucket_start_ns = e->bucket_start_ns.load(std::memory_order_relaxed);
      m.key.generation = e->generation.load(std::memory_order_relaxed);
      if (want == nullptr || m.key == *want ||
          (any_generation && m.key.series_id == want->series_id &&
           m.key.width_index == want->width_index &&
           m.key.bucket_start_ns == want->bucket_start_ns)) {
        r = SlotRead::kMatch;
        m.first_pos = e->first_pos.load(std::memory_order_relaxed);
        m.last_pos = e->last_pos.load(std::memory_order_relaxed);
        m.update_count = e->update_count.load(std::memory_order_relaxed);
        if (out_state != nullptr) {
          load_state(reinterpret_cast<const std::byte*>(e) + kEntryHeaderBytes, out_state,
                     state_bytes);
        }
      }
    }
    // Pairs with the release fence in begin_write(): had any load above seen a write made after
    // a begin_write, this load sees that begin_write's odd seq (or later).
    acquire_fence();
    if (e->seq.load(std::memory_order_relaxed) == s1) {
      if (r == SlotRead::kMatch) *meta = m;
      return r;
    }
    backoff(attempt);
  }
  return SlotRead::kBusy;
}

Status check_spec(const LiveViewSpec& s, size_t index) {
  auto bad = [&](const std::string& why) {
    return Status::Invalid(fmt::format("live view {} ('{}'): {}", index, s.name, why));
  };
  if (s.name.empty() || s.name.size() >= kViewNameBytes || s.name.find('\0') != std::string::npos)
    return bad(fmt::format("name must be 1-{} bytes without NUL", kViewNameBytes - 1));
  if (s.state_bytes == 0 || s.state_bytes > kMaxStateBytes)
    return bad(fmt::format("state_bytes {} must be in [1, {}]", s.state_bytes, kMaxStateBytes));
  if (s.widths_ns.empty() || s.widths_ns.size() > kMaxWidths)
    return bad(fmt::format("{} bucket widths, must be 1-{}", s.widths_ns.size(), kMaxWidths));
  for (int64_t w : s.widths_ns)
    if (w <= 0) return bad(fmt::format("bucket width {} ns must be positive", w));
  if (s.shard_count == 0 || s.shard_count > kMaxShards)
    return bad(fmt::format("shard_count {} must be in [1, {}]", s.shard_count, kMaxShards));
  if (s.capacity_entries < s.shard_count || s.capacity_entries / s.shard_count >= kMaxShardCapacity)
    return bad(fmt::format("capacity {} entries must be in [shard_count, {} per shard)",
                           s.capacity_entries, kMaxShardCapacity));
  if (s.max_probe == 0 || s.max_probe > kMaxProbeLimit)
    return bad(fmt::format("max_probe {} must be in [1, {}]", s.max_probe, kMaxProbeLimit));
  if (s.definition.size() > kMaxDefinitionBytes)
    return bad(fmt::format("definition of {} bytes, at most {}", s.definition.size(),
                           kMaxDefinitionBytes));
  if (!s.initial_state.empty() && s.initial_state.size() != s.state_bytes)
    return bad(fmt::format("initial_state is {} bytes, state_bytes {}", s.initial_state.size(),
                           s.state_bytes));
  return Status::Ok();
}

uint64_t directory_end(uint32_t view_count) {
  return round_up(kLiveHeaderBytes + uint64_t{view_count} * kViewDescriptorBytes, 64);
}

// Checks the header and every descriptor against the object's size, so that no offset a reader
// derives from them can leave the mapping.
Status validate(const ShmObject& shm) {
  if (Status st = shm.validate_prefix(kLiveMagic, kLiveLayoutVersion, kLiveHeaderBytes); !st.ok())
    return st;
  const auto* h = reinterpret_cast<const LiveHeader*>(shm.data());
  const uint64_t size = shm.size();
  if (h->descriptor_bytes != kViewDescriptorBytes || h->view_count > kMaxLiveViews ||
      directory_end(h->view_count) > size) {
    return Status::Corruption(fmt::format("{}: directory of {} views of {} bytes does not fit",
                                          shm.where(), h->view_count, h->descriptor_bytes));
  }
  const auto* dirs = reinterpret_cast<const ViewDescriptor*>(shm.data() + kLiveHeaderBytes);
  for (uint32_t i = 0; i < h->view_count; ++i) {
    const ViewDescriptor& d = dirs[i];
    const size_t name_len = strnlen(d.name, kViewNameBytes);
    const char* why = nullptr;
    if (name_len == 0 || name_len == kViewNameBytes) {
      why = "name is not 1-63 bytes and NUL-terminated";
    } else if (d.width_count == 0 || d.width_count > kMaxWidths ||
               std::any_of(d.widths_ns, d.widths_ns + d.width_count,
                           [](int64_t w) { return w <= 0; })) {
      why = "bad bucket widths";
    } else if (d.shard_count == 0 || d.shard_count > kMaxShards || d.state_bytes == 0 ||
               d.state_bytes > kMaxStateBytes || d.entry_bytes != entry_bytes_for(d.state_bytes) ||
               d.definition_bytes > kMaxDefinitionBytes) {
      why = "bad shard count, state, entry or definition size";
    } else if (d.shard_capacity == 0 || d.shard_capacity >= kMaxShardCapacity || d.max_probe == 0 ||
               d.max_probe > kMaxProbeLimit || d.max_probe > d.shard_capacity) {
      why = "bad shard capacity or probe bound";
    } else if (d.area_offset % 64 != 0 || d.area_offset < directory_end(h->view_count) ||
               d.area_bytes != view_area_bytes(d.shard_count, d.state_bytes, d.definition_bytes,
                                               d.shard_capacity) ||
               d.area_offset > size || d.area_bytes > size - d.area_offset) {
      why = "entry area outside the object";
    }
    if (why != nullptr) {
      return Status::Corruption(fmt::format("{}: view {} ('{}'): {}", shm.where(), i,
                                            std::string_view(d.name, name_len), why));
    }
  }
  return Status::Ok();
}

}  // namespace

uint64_t key_hash(uint64_t series_id, uint32_t width_index, int64_t bucket_start_ns) {
  unsigned char key[24];
  const uint64_t width = width_index;
  std::memcpy(key, &series_id, 8);
  std::memcpy(key + 8, &bucket_start_ns, 8);
  std::memcpy(key + 16, &width, 8);
  return XXH3_64bits(key, sizeof key);
}

// ---------------------------------------------------------------------------------------------
// LiveTablesView

LiveTablesView::LiveTablesView(std::byte* base)
    : base_(base),
      descriptors_(std::launder(reinterpret_cast<ViewDescriptor*>(base + kLiveHeaderBytes))),
      view_count_(reinterpret_cast<const LiveHeader*>(base)->view_count) {}

std::optional<uint32_t> LiveTablesView::find_view(std::string_view name) const {
  for (uint32_t i = 0; i < view_count_; ++i)
    if (view_name(desc(i)) == name) return i;
  return std::nullopt;
}

LiveViewInfo LiveTablesView::info(uint32_t view) const {
  const ViewDescriptor& d = desc(view);
  LiveViewInfo i;
  i.name = view_name(d);
  i.view_id = d.view_id;
  i.definition_hash = d.definition_hash;
  i.definition = std::string_view(definition(base_, d), d.definition_bytes);
  i.state_bytes = d.state_bytes;
  i.widths_ns = std::span<const int64_t>(d.widths_ns, d.width_count);
  i.shard_count = d.shard_count;
  i.shard_capacity = d.shard_capacity;
  i.max_probe = d.max_probe;
  return i;
}

uint32_t LiveTablesView::shard_of(uint32_t view, uint64_t series_id) const {
  return static_cast<uint32_t>(series_id % desc(view).shard_count);
}

uint64_t LiveTablesView::instance_id() const {
  if (base_ == nullptr) return 0;
  return reinterpret_cast<const LiveHeader*>(base_)->prefix.instance_id;
}

bool LiveTablesView::retired() const {
  if (base_ == nullptr) return false;
  // Acquire: pairs with the successor's release store in ShmObject::replace.
  return reinterpret_cast<const LiveHeader*>(base_)->prefix.retired.load(
             std::memory_order_acquire) != 0;
}

ReadStatus LiveTablesView::read(uint32_t view, const EntryKey& key, std::span<std::byte> out_state,
                                EntryMeta* meta) const {
  if (view >= view_count_) return ReadStatus::kInvalid;
  const ViewDescriptor& d = desc(view);
  if (key.width_index >= d.width_count || out_state.size() < d.state_bytes)
    return ReadStatus::kInvalid;
  const uint32_t shard = static_cast<uint32_t>(key.series_id % d.shard_count);
  uint64_t i = home_slot(key.series_id, key.width_index, key.bucket_start_ns, d.shard_capacity);
  EntryMeta m;
  for (uint32_t n = 0; n < d.max_probe; ++n) {
    switch (read_slot(entry_at(base_, d, shard, i), d.state_bytes, &key, out_state.data(), &m)) {
      case SlotRead::kMatch:
        if (meta != nullptr) *meta = m;
        return ReadStatus::kFound;
      case SlotRead::kEmpty:
        return ReadStatus::kNotFound;
      case SlotRead::kBusy:
        return ReadStatus::kBusy;
      case SlotRead::kOther:
        break;
    }
    if (++i == d.shard_capacity) i = 0;
  }
  return ReadStatus::kNotFound;
}

ScanResult LiveTablesView::scan(uint32_t view, std::optional<uint32_t> shard,
                                const EntryFn& fn) const {
  ScanResult r;
  if (view >= view_count_) return r;
  const ViewDescriptor& d = desc(view);
  if (shard && *shard >= d.shard_count) return r;
  std::vector<std::byte> state(d.state_bytes);
  const uint32_t first = shard.value_or(0);
  const uint32_t last = shard ? *shard + 1 : d.shard_count;
  for (uint32_t s = first; s < last; ++s) {
    for (uint64_t i = 0; i < d.shard_capacity; ++i) {
      EntryMeta m;
      const SlotRead sr =
          read_slot(entry_at(base_, d, s, i), d.state_bytes, nullptr, state.data(), &m);
      if (sr == SlotRead::kMatch) {
        fn(m, state);
        ++r.entries;
      } else if (sr == SlotRead::kBusy) {
        ++r.busy;
      }
    }
  }
  return r;
}

ScanResult LiveTablesView::read_range(uint32_t view, uint64_t series_id, uint32_t width_index,
                                      int64_t from_ns, int64_t to_ns, const EntryFn& fn) const {
  ScanResult r;
  if (view >= view_count_) return r;
  const ViewDescriptor& d = desc(view);
  if (width_index >= d.width_count || to_ns <= from_ns) return r;
  const int64_t width = d.widths_ns[width_index];
  // The first bucket start >= from_ns: ceil(from_ns / width) * width, if that fits an i64.
  int64_t q = from_ns / width;
  if (from_ns % width > 0) {
    if (q + 1 > std::numeric_limits<int64_t>::max() / width) return r;
    ++q;
  }
  const int64_t first = q * width;
  if (first >= to_ns) return r;
  // Bucket starts in [first, to_ns), counted in unsigned arithmetic (the span may exceed i64).
  const uint64_t span = static_cast<uint64_t>(to_ns) - static_cast<uint64_t>(first);
  const uint64_t buckets = span / static_cast<uint64_t>(width) + (span % width != 0 ? 1 : 0);

  std::vector<int64_t> starts;
  const bool probe = buckets <= d.shard_capacity / 4;
  if (!probe) {
    // Fewer slots to look at than bucket starts: collect the starts present (keys only).
    const uint32_t shard = static_cast<uint32_t>(series_id % d.shard_count);
    for (uint64_t i = 0; i < d.shard_capacity; ++i) {
      EntryMeta m;
      const SlotRead sr =
          read_slot(entry_at(base_, d, shard, i), d.state_bytes, nullptr, nullptr, &m);
      if (sr == SlotRead::kBusy) ++r.busy;
      if (sr == SlotRead::kMatch && m.key.series_id == series_id &&
          m.key.width_index == width_index && m.key.bucket_start_ns >= first &&
          m.key.bucket_start_ns < to_ns)
        starts.push_back(m.key.bucket_start_ns);
    }
    std::sort(starts.begin(), starts.end());
    starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
  }
  std::vector<std::byte> state(d.state_bytes);
  const uint32_t shard = static_cast<uint32_t>(series_id % d.shard_count);
  const uint64_t count = probe ? buckets : starts.size();
  for (uint64_t k = 0; k < count; ++k) {
    const EntryKey key{
        series_id, width_index,
        probe ? static_cast<int64_t>(static_cast<uint64_t>(first) + k * width) : starts[k], 0};
    // Every generation of the bucket lies on the chain from its home slot to an empty slot.
    uint64_t i = home_slot(key.series_id, key.width_index, key.bucket_start_ns, d.shard_capacity);
    for (uint32_t n = 0; n < d.max_probe; ++n) {
      EntryMeta m;
      const SlotRead sr = read_slot(entry_at(base_, d, shard, i), d.state_bytes, &key,
                                    state.data(), &m, /*any_generation=*/true);
      if (sr == SlotRead::kEmpty) break;
      if (sr == SlotRead::kMatch) {
        fn(m, state);
        ++r.entries;
      } else if (sr == SlotRead::kBusy) {
        ++r.busy;
      }
      if (++i == d.shard_capacity) i = 0;
    }
  }
  return r;
}

LiveViewStats LiveTablesView::stats(uint32_t view) const {
  const ViewDescriptor& d = desc(view);
  const ShardCounters* c = shard_counters(base_, d);
  LiveViewStats s;
  s.capacity_entries = d.shard_capacity * d.shard_count;
  for (uint32_t i = 0; i < d.shard_count; ++i) {
    // Relaxed: statistics; each value is untorn, no snapshot across them is promised.
    s.entries_used += c[i].entries_used.load(std::memory_order_relaxed);
    s.tombstones += c[i].tombstones.load(std::memory_order_relaxed);
    s.inserts += c[i].inserts.load(std::memory_order_relaxed);
    s.overflow += c[i].overflow.load(std::memory_order_relaxed);
    s.evictions += c[i].evictions.load(std::memory_order_relaxed);
    s.late_events += c[i].late_events.load(std::memory_order_relaxed);
  }
  return s;
}

uint64_t LiveTablesView::evicted_generation(uint32_t view) const {
  // Acquire: pairs with the release store in publish_evicted_generation().
  return desc(view).evicted_generation.load(std::memory_order_acquire);
}

std::string_view LiveTablesView::batch_dir() const {
  if (base_ == nullptr) return {};
  const auto* h = reinterpret_cast<const LiveHeader*>(base_);
  return {h->batch_dir, std::min<size_t>(h->batch_dir_len, kMaxBatchDirBytes)};
}

uint32_t LiveTablesView::change_seq(uint32_t view) const {
  // Acquire: pairs with the release increment in LiveTables::end_batch().
  return desc(view).change_seq.load(std::memory_order_acquire);
}

WaitStatus LiveTablesView::wait_for_change(uint32_t view, uint32_t last_seen,
                                           std::chrono::nanoseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (retired()) return WaitStatus::kReplaced;
    if (change_seq(view) != last_seen) return WaitStatus::kChanged;
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::nanoseconds::zero()) return WaitStatus::kTimeout;
    futex_wait(&desc(view).change_seq, last_seen, left);
  }
}

// ---------------------------------------------------------------------------------------------
// ShardWriter

ShardWriter::ShardWriter(const LiveTablesView& tables, uint32_t view, uint32_t shard,
                         std::atomic<uint8_t>* claim)
    : desc_(&tables.descriptors_[view]),
      counters_(&shard_counters(tables.base_, *desc_)[shard]),
      initial_state_(initial_state(tables.base_, *desc_)),
      entries_(reinterpret_cast<std::byte*>(entry_at(tables.base_, *desc_, shard, 0))),
      claim_(claim),
      capacity_(desc_->shard_capacity),
      entry_bytes_(desc_->entry_bytes),
      state_bytes_(desc_->state_bytes),
      max_probe_(desc_->max_probe),
      view_(view),
      shard_(shard),
      shard_count_(desc_->shard_count),
      ctrl_(capacity_ + max_probe_ + 8, kCtrlEmpty) {
  // Relaxed: the shard's writers hand it over through claim_ (acquire in attach_writer).
  for (uint64_t i = 0; i < capacity_; ++i) {
    const LiveEntry* e = slot(i);
    const uint32_t flags = e->flags.load(std::memory_order_relaxed);
    if (flags == kSlotTombstone) set_ctrl(i, kCtrlTombstone);
    if (flags != kSlotOccupied) continue;
    set_ctrl(i, tag_of(key_hash(e->series_id.load(std::memory_order_relaxed),
                               e->width_index.load(std::memory_order_relaxed),
                               e->bucket_start_ns.load(std::memory_order_relaxed)),
                        e->generation.load(std::memory_order_relaxed)));
  }
}

ShardWriter::ShardWriter(ShardWriter&& other) noexcept { *this = std::move(other); }

ShardWriter& ShardWriter::operator=(ShardWriter&& other) noexcept {
  if (this != &other) {
    release();
    desc_ = other.desc_;
    counters_ = other.counters_;
    initial_state_ = other.initial_state_;
    entries_ = other.entries_;
    claim_ = std::exchange(other.claim_, nullptr);
    capacity_ = other.capacity_;
    entry_bytes_ = other.entry_bytes_;
    state_bytes_ = other.state_bytes_;
    max_probe_ = other.max_probe_;
    view_ = other.view_;
    shard_ = other.shard_;
    shard_count_ = other.shard_count_;
    queue_ = std::move(other.queue_);
    queue_head_ = other.queue_head_;
    queue_size_ = other.queue_size_;
    ctrl_ = std::move(other.ctrl_);
  }
  return *this;
}

ShardWriter::~ShardWriter() { release(); }

void ShardWriter::release() {
  // Release: pairs with the acquire exchange in attach_writer; the next writer of this shard
  // in this process sees everything this one wrote.
  if (claim_ != nullptr) claim_->store(0, std::memory_order_release);
  claim_ = nullptr;
}

LiveEntry* ShardWriter::slot(uint64_t i) const {
  return std::launder(reinterpret_cast<LiveEntry*>(entries_ + i * entry_bytes_));
}

void ShardWriter::bump(std::atomic<uint64_t>& counter, int64_t delta) const {
  // Relaxed: a statistic with a single writer (this shard's), so no read-modify-write is needed.
  counter.store(counter.load(std::memory_order_relaxed) + static_cast<uint64_t>(delta),
                std::memory_order_relaxed);
}

void ShardWriter::begin_write(LiveEntry* e) {
  // Relaxed: only this thread writes seq; the fence below orders it before the data stores.
  e->seq.store(e->seq.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  release_fence();  // pairs with the reader's acquire_fence() in read_slot()
}

void ShardWriter::end_write(LiveEntry* e) {
  // Release: pairs with the reader's acquire load of seq in read_slot().
  e->seq.store(e->seq.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

void ShardWriter::copy_state(const LiveEntry* e, std::span<std::byte> out) const {
  load_state(reinterpret_cast<const std::byte*>(e) + kEntryHeaderBytes, out.data(),
             static_cast<uint32_t>(std::min<size_t>(out.size(), state_bytes_)));
}

std::span<std::byte> ShardWriter::state(LiveEntry* e) const {
  return {reinterpret_cast<std::byte*>(e) + kEntryHeaderBytes, state_bytes_};
}

void ShardWriter::store_state(LiveEntry* e, std::span<const std::byte> bytes) {
  store_words(reinterpret_cast<std::byte*>(e) + kEntryHeaderBytes, bytes.data(),
              static_cast<uint32_t>(std::min<size_t>(bytes.size(), state_bytes_)));
}

void ShardWriter::note_position(LiveEntry* e, uint64_t pos) {
  // Relaxed, as every store under the seqlock: published by end_write().
  const uint64_t count = e->update_count.load(std::memory_order_relaxed);
  if (count == 0 || pos < e->first_pos.load(std::memory_order_relaxed))
    e->first_pos.store(pos, std::memory_order_relaxed);
  if (count == 0 || pos > e->last_pos.load(std::memory_order_relaxed))
    e->last_pos.store(pos, std::memory_order_relaxed);
  e->update_count.store(count + 1, std::memory_order_relaxed);
}

EntryMeta ShardWriter::meta(const LiveEntry* e) const {
  // Relaxed: the writer reads its own stores.
  EntryMeta m;
  m.key.series_id = e->series_id.load(std::memory_order_relaxed);
  m.key.width_index = e->width_index.load(std::memory_order_relaxed);
  m.key.bucket_start_ns = e->bucket_start_ns.load(std::memory_order_relaxed);
  m.first_pos = e->first_pos.load(std::memory_order_relaxed);
  m.last_pos = e->last_pos.load(std::memory_order_relaxed);
  m.update_count = e->update_count.load(std::memory_order_relaxed);
  m.key.generation = e->generation.load(std::memory_order_relaxed);
  return m;
}

ShardWriter::Home ShardWriter::home(const EntryKey& key) const {
  const uint64_t h = key_hash(key.series_id, key.width_index, key.bucket_start_ns);
  return {slot_of_hash(h, capacity_), tag_of(h, key.generation)};
}

namespace {

// Eight slot-index bytes at p (host order: byte k of the word is slot p + k).
uint64_t load_ctrl8(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  if constexpr (std::endian::native == std::endian::big) w = __builtin_bswap64(w);
  return w;
}

constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7fULL;
constexpr uint64_t kHigh1 = 0x8080808080808080ULL;

// 0x80 in every byte of w that is zero, 0 elsewhere (exact: no carries between bytes).
constexpr uint64_t zero_bytes(uint64_t w) { return ~(((w & kLow7) + kLow7) | w | kLow7); }

}  // namespace

void ShardWriter::prefetch_index(Home home) const {
  if (home.slot < capacity_) __builtin_prefetch(&ctrl_[home.slot]);
}

void ShardWriter::prefetch_tagged(Home home) const {
  if (home.slot >= capacity_) return;
  // The first slot of eight from home whose tag matches; if none does, the first free one
  // (empty or tombstone), where an insert would go; the home slot if neither.
  const uint64_t w = load_ctrl8(ctrl_.data() + home.slot);
  uint64_t m = zero_bytes(w ^ (home.tag * 0x0101010101010101ULL));
  if (m == 0) m = ~w & kHigh1;
  uint64_t i = home.slot + (m == 0 ? 0 : static_cast<unsigned>(std::countr_zero(m)) / 8);
  if (i >= capacity_) i -= capacity_;
  const std::byte* e = entries_ + i * entry_bytes_;
  __builtin_prefetch(e, 1);
  __builtin_prefetch(e + entry_bytes_ - 1, 1);
}

void ShardWriter::set_ctrl(uint64_t i, uint8_t c) {
  // The copy after capacity_ repeats slots 0, 1, ... (more than once in a shard smaller than
  // the probe bound).
  for (uint64_t k = i; k < ctrl_.size(); k += capacity_) ctrl_[k] = c;
}

LiveEntry* ShardWriter::find_or_insert(const EntryKey& key, Home home) {
  if (key.series_id % shard_count_ != shard_ || key.width_index >= desc_->width_count ||
      home.slot >= capacity_)
    return nullptr;
  // The slot index holds the flags of every slot (see ctrl_), eight slots per step: entries
  // are read only where the tag matches. A chain ends at its first empty slot.
  const uint8_t* const base = ctrl_.data() + home.slot;
  const uint64_t tags = home.tag * 0x0101010101010101ULL;
  uint64_t free_slot = capacity_;
  for (uint32_t off = 0; off < max_probe_; off += 8) {
    const uint64_t w = load_ctrl8(base + off);
    const uint32_t left = max_probe_ - off;  // slots of the probe bound from here
    const uint64_t in_bound = left >= 8 ? kHigh1 : kHigh1 >> (8 * (8 - left));
    const uint64_t empty = zero_bytes(w) & in_bound;
    // The slots up to the first empty one (included) are on the chain.
    const uint64_t chain = empty != 0 ? (empty ^ (empty - 1)) & in_bound : in_bound;
    for (uint64_t m = zero_bytes(w ^ tags) & chain; m != 0; m &= m - 1) {
      uint64_t i = home.slot + off + static_cast<unsigned>(std::countr_zero(m)) / 8;
      if (i >= capacity_) i %= capacity_;
      LiveEntry* e = slot(i);
      // Relaxed: this thread is the shard's only writer and reads its own stores.
      if (e->series_id.load(std::memory_order_relaxed) == key.series_id &&
          e->bucket_start_ns.load(std::memory_order_relaxed) == key.bucket_start_ns &&
          e->width_index.load(std::memory_order_relaxed) == key.width_index &&
          e->generation.load(std::memory_order_relaxed) == key.generation)
        return e;
    }
    // Empty and tombstone bytes have the high bit clear, occupied ones set.
    if (const uint64_t free = ~w & chain; free_slot == capacity_ && free != 0) {
      free_slot = home.slot + off + static_cast<unsigned>(std::countr_zero(free)) / 8;
      if (free_slot >= capacity_) free_slot %= capacity_;
    }
    if (empty != 0) break;
  }
  if (free_slot == capacity_) return nullptr;
  LiveEntry* const e = slot(free_slot);
  const bool reused = ctrl_[free_slot] == kCtrlTombstone;
  begin_write(e);
  // Relaxed: published by end_write().
  e->series_id.store(key.series_id, std::memory_order_relaxed);
  e->bucket_start_ns.store(key.bucket_start_ns, std::memory_order_relaxed);
  e->width_index.store(key.width_index, std::memory_order_relaxed);
  e->flags.store(kSlotOccupied, std::memory_order_relaxed);
  e->first_pos.store(0, std::memory_order_relaxed);
  e->last_pos.store(0, std::memory_order_relaxed);
  e->update_count.store(0, std::memory_order_relaxed);
  e->generation.store(key.generation, std::memory_order_relaxed);
  store_state(e, std::span<const std::byte>(initial_state_, state_bytes_));
  end_write(e);
  set_ctrl(free_slot, home.tag);
  bump(counters_->entries_used, 1);
  bump(counters_->inserts, 1);
  if (reused) bump(counters_->tombstones, -1);
  if (!queue_.empty() && queue_size_ < capacity_) {
    // Never full: a queued slot is occupied, and each occupied slot is queued once.
    // Queued as seen with one update: the update that follows the insert is no news.
    queue_[queue_index(queue_size_)] = queue_item(static_cast<uint32_t>(free_slot), 1);
    ++queue_size_;
  }
  return e;
}

void ShardWriter::set_flags(LiveEntry* e, uint32_t flags) {
  begin_write(e);
  e->flags.store(flags, std::memory_order_relaxed);  // published by end_write()
  end_write(e);
}

int64_t ShardWriter::remove(uint64_t i) {
  bump(counters_->entries_used, -1);
  bump(counters_->evictions, 1);
  if (next(i) == i || ctrl_[next(i)] != kCtrlEmpty) {
    set_flags(slot(i), kSlotTombstone);
    set_ctrl(i, kCtrlTombstone);
    return 1;
  }
  // No chain crosses a slot whose next slot is empty; then none crosses the tombstones just
  // before it either.
  set_flags(slot(i), kSlotEmpty);
  set_ctrl(i, kCtrlEmpty);
  int64_t emptied = 0;
  for (uint64_t k = i == 0 ? capacity_ - 1 : i - 1; k != i; k = k == 0 ? capacity_ - 1 : k - 1) {
    if (ctrl_[k] != kCtrlTombstone) break;
    set_flags(slot(k), kSlotEmpty);
    set_ctrl(k, kCtrlEmpty);
    ++emptied;
  }
  return -emptied;
}

uint64_t ShardWriter::evict_if(const std::function<bool(const EntryMeta&)>& pred) {
  // remove() keeps every tombstone followed by a non-empty slot, whatever the order of the
  // evictions, so one pass in slot order leaves no tombstone that bridges nothing.
  uint64_t evicted = 0;
  int64_t tombstones = 0;
  for (uint64_t i = 0; i < capacity_; ++i) {
    if (ctrl_[i] >= kCtrlOccupied && pred(meta(slot(i)))) {
      tombstones += remove(i);
      ++evicted;
    }
  }
  bump(counters_->tombstones, tombstones);
  if (queue_size_ > 0) {
    // Drop the queued slots it emptied (each occupied slot is queued once).
    uint64_t kept = 0;
    for (uint64_t n = 0; n < queue_size_; ++n) {
      const uint64_t item = queue_[queue_index(n)];
      if (ctrl_[queued_slot(item)] >= kCtrlOccupied) {
        queue_[queue_index(kept++)] = item;
      }
    }
    queue_size_ = kept;
  }
  return evicted;
}

uint64_t ShardWriter::inserts() const {
  return counters_->inserts.load(std::memory_order_relaxed);
}

void ShardWriter::track_inserts() {
  if (queue_.empty()) queue_.assign(capacity_, 0);
}

uint64_t ShardWriter::evict_oldest(uint64_t max_looks, const EvictFn& evict,
                                   const std::function<bool(const EntryMeta&)>& more,
                                   bool* stopped) {
  constexpr uint64_t kAhead = 8;  // queued slots prefetched ahead of the one looked at
  uint64_t evicted = 0;
  int64_t tombstones = 0;
  bool stop = false;
  uint64_t n = 0;
  for (; n < max_looks && queue_size_ > 0; ++n) {
    if (queue_size_ > kAhead) {
      // The entry's header (whether the next slot is empty, the slot index says).
      __builtin_prefetch(slot(queued_slot(queue_[queue_index(kAhead)])), 1);
    }
    const uint64_t item = queue_[queue_head_];
    const uint32_t i = queued_slot(item);
    queue_head_ = queue_head_ + 1 == capacity_ ? 0 : queue_head_ + 1;
    --queue_size_;
    if (ctrl_[i] < kCtrlOccupied) continue;
    const EntryMeta m = meta(slot(i));
    const auto updates = static_cast<uint32_t>(m.update_count);
    if (evict(m, updates != queued_updates(item))) {
      tombstones += remove(i);
      ++evicted;
      continue;
    }
    // Back in the queue, whether it goes on or not: at the front, as it was, if it stops here;
    // else at the back, as seen now.
    if (!more(m)) {
      queue_head_ = queue_head_ == 0 ? capacity_ - 1 : queue_head_ - 1;
      queue_[queue_head_] = item;
      ++queue_size_;
      stop = true;
      break;
    }
    queue_[queue_index(queue_size_)] = queue_item(i, updates);
    ++queue_size_;
  }
  bump(counters_->tombstones, tombstones);
  if (stopped != nullptr) *stopped = stop || queue_size_ == 0;
  return evicted;
}

uint64_t ShardWriter::used() const {
  return counters_->entries_used.load(std::memory_order_relaxed);
}

uint64_t ShardWriter::tombstones() const {
  return counters_->tombstones.load(std::memory_order_relaxed);
}

void ShardWriter::add_overflow(uint64_t events) {
  bump(counters_->overflow, static_cast<int64_t>(events));
}

void ShardWriter::add_late(uint64_t events) {
  bump(counters_->late_events, static_cast<int64_t>(events));
}

// ---------------------------------------------------------------------------------------------
// LiveTables

LiveTables::LiveTables(ShmObject shm, const LiveTablesView& view)
    : shm_(std::move(shm)), view_(view) {
  uint64_t shards = 0;
  for (uint32_t v = 0; v < view_.view_count(); ++v) shards += view_.desc(v).shard_count;
  claims_ = std::make_unique<std::atomic<uint8_t>[]>(shards);
}
LiveTables::LiveTables(LiveTables&&) noexcept = default;
LiveTables& LiveTables::operator=(LiveTables&&) noexcept = default;
LiveTables::~LiveTables() = default;

Result<LiveTables> LiveTables::create(const std::string& shm_name,
                                      std::span<const LiveViewSpec> views,
                                      const ShmOptions& options, std::string_view batch_dir) {
  const std::string name = object_name(shm_name);
  if (batch_dir.size() > kMaxBatchDirBytes) {
    return Status::Invalid(fmt::format("{}: batch views directory '{}' is longer than {} bytes",
                                       ShmObject::describe(kKind, name), batch_dir,
                                       kMaxBatchDirBytes));
  }
  if (views.size() > kMaxLiveViews) {
    return Status::Invalid(fmt::format("{}: {} views, at most {}", ShmObject::describe(kKind, name),
                                       views.size(), kMaxLiveViews));
  }
  for (size_t i = 0; i < views.size(); ++i) {
    if (Status st = check_spec(views[i], i); !st.ok()) return st;
    for (size_t j = 0; j < i; ++j) {
      if (views[j].name == views[i].name)
        return Status::Invalid(
            fmt::format("live view {}: name '{}' is also view {}", i, views[i].name, j));
    }
  }
  const uint32_t view_count = static_cast<uint32_t>(views.size());
  std::vector<uint64_t> shard_capacity(view_count), area_offset(view_count);
  uint64_t total = directory_end(view_count);
  for (uint32_t i = 0; i < view_count; ++i) {
    const LiveViewSpec& s = views[i];
    shard_capacity[i] = (s.capacity_entries + s.shard_count - 1) / s.shard_count;
    area_offset[i] = total;
    // < 2^59 each, so the sum cannot wrap before the check.
    total += view_area_bytes(s.shard_count, s.state_bytes,
                             static_cast<uint32_t>(s.definition.size()), shard_capacity[i]);
    if (total > kMaxLiveBytes) {
      return Status::Invalid(fmt::format("live view {} ('{}'): the tables would exceed {} bytes", i,
                                         s.name, kMaxLiveBytes));
    }
  }

  // Wakes the waiters of a previous instance, so they see `retired` at once.
  auto retire = [](ShmObject& old) {
    if (!validate(old).ok()) return;
    const auto* h = reinterpret_cast<const LiveHeader*>(old.data());
    auto* dirs = std::launder(reinterpret_cast<ViewDescriptor*>(old.data() + kLiveHeaderBytes));
    for (uint32_t i = 0; i < h->view_count; ++i) {
      // Release: pairs with the acquire load in change_seq(); the waiter then sees `retired`.
      dirs[i].change_seq.fetch_add(1, std::memory_order_release);
      futex_wake_all(&dirs[i].change_seq);
    }
  };
  ShmOptions reserved = options;
  reserved.reserve = true;  // a full /dev/shm fails here, not with SIGBUS in a worker later
  auto shm = ShmObject::replace(kKind, name, total, reserved, kLiveMagic, retire);
  if (!shm.ok()) return shm.status();

  // The object is zero-filled: every entry is empty (flags 0, seq 0). Construct the header,
  // descriptors and counters in place and fill them; entries need no construction.
  std::byte* base = shm->data();
  auto* h = std::construct_at(reinterpret_cast<LiveHeader*>(base));
  shm->init_prefix(kLiveLayoutVersion, kLiveHeaderBytes);
  h->view_count = view_count;
  h->descriptor_bytes = kViewDescriptorBytes;
  h->batch_dir_len = static_cast<uint32_t>(batch_dir.size());
  if (!batch_dir.empty()) std::memcpy(h->batch_dir, batch_dir.data(), batch_dir.size());
  for (uint32_t i = 0; i < view_count; ++i) {
    const LiveViewSpec& s = views[i];
    auto* d = std::construct_at(reinterpret_cast<ViewDescriptor*>(base + kLiveHeaderBytes) + i);
    std::memcpy(d->name, s.name.data(), s.name.size());
    d->view_id = s.view_id;
    d->state_bytes = s.state_bytes;
    d->definition_hash = s.definition_hash;
    d->width_count = static_cast<uint32_t>(s.widths_ns.size());
    d->shard_count = s.shard_count;
    d->entry_bytes = entry_bytes_for(s.state_bytes);
    d->max_probe = static_cast<uint32_t>(std::min<uint64_t>(s.max_probe, shard_capacity[i]));
    d->shard_capacity = shard_capacity[i];
    d->area_offset = area_offset[i];
    d->definition_bytes = static_cast<uint32_t>(s.definition.size());
    d->area_bytes =
        view_area_bytes(s.shard_count, s.state_bytes, d->definition_bytes, shard_capacity[i]);
    std::copy(s.widths_ns.begin(), s.widths_ns.end(), d->widths_ns);
    for (uint32_t k = 0; k < s.shard_count; ++k)
      std::construct_at(reinterpret_cast<ShardCounters*>(base + d->area_offset) + k);
    if (!s.initial_state.empty())
      std::memcpy(initial_state(base, *d), s.initial_state.data(), s.state_bytes);
    std::memcpy(definition(base, *d), s.definition.data(), s.definition.size());
  }
  // Release: pairs with the acquire load of the magic in ShmObject::open / validate_prefix;
  // publishes every field above.
  h->prefix.magic.store(kLiveMagic, std::memory_order_release);
  const LiveTablesView view(base);
  return LiveTables(std::move(shm).value(), view);
}

Status LiveTables::remove(const std::string& shm_name) {
  return ShmObject::remove(kKind, object_name(shm_name));
}

Result<ShardWriter> LiveTables::attach_writer(uint32_t view, uint32_t shard) {
  if (view >= view_.view_count() || shard >= view_.desc(view).shard_count) {
    return Status::Invalid(fmt::format("{}: no shard {} in view {}", shm_.where(), shard, view));
  }
  uint64_t index = shard;
  for (uint32_t v = 0; v < view; ++v) index += view_.desc(v).shard_count;
  // Acquire: pairs with the release store in ShardWriter::release().
  if (claims_[index].exchange(1, std::memory_order_acquire) != 0) {
    return Status::Busy(fmt::format("{}: view '{}' shard {} already has a writer in this process",
                                    shm_.where(), view_name(view_.desc(view)), shard));
  }
  return ShardWriter(view_, view, shard, &claims_[index]);
}

namespace {

// One FUTEX_WAKE per change_seq value at most: whoever swaps woken_seq from an older value wakes.
void wake_view(ViewDescriptor& d) {
  // Relaxed: the waiters re-read change_seq with acquire themselves; the wake is only a nudge.
  const uint32_t seq = d.change_seq.load(std::memory_order_relaxed);
  if (d.woken_seq.exchange(seq, std::memory_order_relaxed) != seq) futex_wake_all(&d.change_seq);
}

int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void LiveTables::end_batch(uint32_t view) {
  ViewDescriptor& d = view_.descriptors_[view];
  // Release: pairs with the acquire load in LiveTablesView::change_seq().
  d.change_seq.fetch_add(1, std::memory_order_release);
  const int64_t now = monotonic_ns();
  // Relaxed: a rate limit; wake_waiters() catches whatever this skips.
  int64_t last = d.last_wake_ns.load(std::memory_order_relaxed);
  if (now - last >= kWakeInterval.count() &&
      d.last_wake_ns.compare_exchange_strong(last, now, std::memory_order_relaxed))
    wake_view(d);
}

void LiveTables::publish_evicted_generation(uint32_t view, uint64_t g) {
  ViewDescriptor& d = view_.descriptors_[view];
  // Release: pairs with the acquire load in evicted_generation(); the evictions that follow
  // are published by their own seqlock writes, which come after this store.
  if (g > d.evicted_generation.load(std::memory_order_relaxed))
    d.evicted_generation.store(g, std::memory_order_release);
}

void LiveTables::wake_waiters() {
  for (uint32_t v = 0; v < view_.view_count(); ++v) wake_view(view_.descriptors_[v]);
}

// ---------------------------------------------------------------------------------------------
// LiveTableReader

LiveTableReader::LiveTableReader(ShmObject shm, const LiveTablesView& view)
    : shm_(std::move(shm)), view_(view) {}
LiveTableReader::LiveTableReader(LiveTableReader&&) noexcept = default;
LiveTableReader& LiveTableReader::operator=(LiveTableReader&&) noexcept = default;
LiveTableReader::~LiveTableReader() = default;

Result<LiveTableReader> LiveTableReader::open(const std::string& shm_name) {
  auto shm = ShmObject::open(kKind, object_name(shm_name), ShmAccess::kReadOnly, kLiveHeaderBytes);
  if (!shm.ok()) return shm.status();
  if (Status st = validate(*shm); !st.ok()) return st;
  const LiveTablesView view(shm->data());
  return LiveTableReader(std::move(shm).value(), view);
}

}  // namespace runnel::ipc
