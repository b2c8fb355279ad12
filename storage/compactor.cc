// Compactor: sealed log -> partial states in memory -> one ViewStore step per memory budget
// (see compactor.h); and the log retention plan.
#include "storage/compactor.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <utility>

#include "model/generation.h"
#include "model/clock.h"
#include "model/record.h"
#include "model/view_router.h"
#include "storage/log_reader.h"

namespace runnel::storage {
namespace {

// Row ids remembered as named in "series" at most (16 MiB); then the set starts over.
constexpr size_t kMaxKnownRows = size_t{1} << 20;
constexpr size_t kMinStepEntries = 1024;

// murmur3's 64-bit finalizer.
uint64_t mix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

}  // namespace

void CompactionStats::add(const CompactionStats& o) {
  steps += o.steps;
  records += o.records;
  bytes += o.bytes;
  updates += o.updates;
  states += o.states;
  invalid_records += o.invalid_records;
  step_splits += o.step_splits;
  seconds += o.seconds;
  caught_up = o.caught_up;
}

// ---------------------------------------------------------------------------------------------
// PartialStates: the states of one step, keyed (target, row, width, bucket start), in a flat
// open-addressing hash map (linear probing) whose 32-byte slots hold the key inline, so a hit
// touches one slot and its state. States live in a byte arena in insertion order, and each
// new key is also appended to an entry list (the commit sorts that, never the slots).
// Everything is allocated once from the memory budget, in transparent huge pages where the
// kernel allows (fewer TLB misses on random probes); a step clears it without freeing.
//
// Only the widths a target takes directly are aggregated per event: the finest, and any width
// that is not a multiple of it. The others are rolled up at commit from the step's states of
// the widest smaller width that divides them (1h from 1m from 1s; AggregateLayout::merge, the
// monoid every layer relies on), which cuts the updates per event of the default view from
// three per field to one.
//
// Hot path: updates are queued (add), and applied in batches (apply): first every queued key's
// slot is prefetched, then probed, then every state prefetched, then updated, so the cache
// misses of a batch overlap instead of following each other. No lock; no allocation unless
// one record overshoots the budget.

class Compactor::PartialStates {
 public:
  explicit PartialStates(size_t budget_bytes) : budget_(std::max<size_t>(budget_bytes, 1 << 16)) {
    pending_.reserve(kBatch * 2);
  }

  void set_targets(std::vector<const AggregateLayout*> layouts, const std::vector<ViewDef>& defs) {
    layouts_ = std::move(layouts);
    widths_.clear();
    rolled_.clear();
    rollup_bytes_per_entry_ = 0;
    for (size_t t = 0; t < defs.size(); ++t) {
      const std::vector<int64_t>& w = defs[t].widths_ns;
      widths_.push_back(w);
      uint32_t rolled = 0;
      for (size_t i = 1; i < w.size(); ++i) {
        if (w[i] % w[0] == 0) rolled |= uint32_t{1} << i;
      }
      rolled_.push_back(rolled);
      // Each state of the finest width may start one rolled-up state per rolled width.
      rollup_bytes_per_entry_ =
          std::max(rollup_bytes_per_entry_,
                   static_cast<size_t>(std::popcount(rolled)) * layouts_[t]->state_bytes());
    }
    size_t min_state = SIZE_MAX;
    for (const AggregateLayout* l : layouts_) min_state = std::min(min_state, l->state_bytes());
    if (layouts_.empty()) min_state = 8;
    min_state += rollup_bytes_per_entry_;
    // At most half the slots are used; slots take at most a quarter of the budget.
    size_t slots = 1024;
    while (slots * 2 * sizeof(Slot) <= budget_ / 4) slots *= 2;
    const size_t per_entry = 2 * sizeof(Entry) + min_state;  // entry list + its sorted copy
    const size_t by_bytes = (budget_ - slots * sizeof(Slot)) / per_entry;
    max_entries_ = std::max<size_t>(kMinStepEntries, std::min(slots / 2, by_bytes));
    limit_entries_ = std::min(limit_entries_ ? limit_entries_ : max_entries_, max_entries_);
    if (slot_count_ != slots) {
      slots_ = allocate<Slot>(slots);
      std::memset(static_cast<void*>(slots_.get()), 0, slots * sizeof(Slot));
      slot_count_ = slots;
    }
    entries_.reserve(max_entries_);
    if (arena_capacity_ < budget_) {
      arena_ = allocate<std::byte>(budget_);
      arena_capacity_ = budget_;
    }
    clear();
  }

  // Whether updates of `width` go through add() (else they are rolled up at commit).
  bool direct(uint32_t target, size_t width) const { return (rolled_[target] >> width & 1) == 0; }

  // Queues one update of (target, row, width, bucket); applied by apply() or when the queue
  // holds a batch.
  void add(uint32_t target, uint64_t row, uint8_t width, int64_t bucket, double value, int64_t ts,
           uint64_t distinct_hash, bool has_distinct) {
    const uint64_t h = hash(target, row, width, bucket);
    __builtin_prefetch(&slots_[h & (slot_count_ - 1)]);
    pending_.push_back(Pending{row, bucket, value, ts, distinct_hash, h, 0, target, width, has_distinct});
    if (pending_.size() >= kBatch) apply();
  }

  void apply() {
    for (Pending& p : pending_) {
      p.state_offset = find_or_add(p.hash, p.target, p.row, p.width, p.bucket);
      __builtin_prefetch(arena_.get() + p.state_offset);
    }
    for (const Pending& p : pending_) {
      const AggregateLayout& layout = *layouts_[p.target];
      layout.update(std::span<std::byte>(arena_.get() + p.state_offset, layout.state_bytes()), p.value,
                    p.ts, p.distinct_hash, p.has_distinct);
    }
    pending_.clear();
  }

  // Bytes held: slots, entries (and their sorted copy), states and staged row names.
  size_t used_bytes() const {
    return slot_count_ * sizeof(Slot) +
           entries_.size() * (2 * sizeof(Entry) + rollup_bytes_per_entry_) + arena_used_ +
           series_bytes_.size() + series_.size() * sizeof(Staged);
  }
  // Time to commit: checked between records, with room for a few more records' states.
  bool full() const { return entries_.size() >= limit_entries_ || used_bytes() + budget_ / 16 >= budget_; }
  // After MDB_TXN_FULL: commit steps of half as many states.
  bool halve_limit() {
    if (limit_entries_ <= kMinStepEntries) return false;
    limit_entries_ = std::max(kMinStepEntries, limit_entries_ / 2);
    return true;
  }

  void stage_series(uint64_t row, std::span<const std::byte> key) {
    series_.push_back(Staged{row, series_bytes_.size(), key.size()});
    series_bytes_.insert(series_bytes_.end(), key.begin(), key.end());
  }

  // Applies what is queued and fills out[target] with the states in key order (valid until
  // clear()), rolled-up widths included. A counting sort by (target, top 16 bits of the row id)
  // leaves groups small enough to sort in cache.
  void sorted(std::vector<std::vector<PartialState>>* out, std::vector<SeriesName>* series) {
    apply();
    const size_t groups = layouts_.size() << 16;
    counts_.assign(groups + 1, 0);
    for (const Entry& e : entries_) ++counts_[group_of(e) + 1];
    for (size_t g = 1; g <= groups; ++g) counts_[g] += counts_[g - 1];
    sorted_.resize(entries_.size());
    for (const Entry& e : entries_) sorted_[counts_[group_of(e)]++] = e;
    size_t begin = 0;
    for (size_t g = 0; g < groups; ++g) {  // counts_[g] is now the end of group g
      const size_t end = counts_[g];
      if (end - begin > 1) std::sort(sorted_.begin() + begin, sorted_.begin() + end, less);
      begin = end;
    }
    out->resize(layouts_.size());
    for (size_t t = 0; t < layouts_.size(); ++t) {
      (*out)[t].clear();
      (*out)[t].reserve(entries_.size() * (1 + static_cast<size_t>(std::popcount(rolled_[t]))));
    }
    rollup_used_ = 0;
    const size_t n = sorted_.size();
    for (size_t i = 0; i < n;) {
      // The entries of one (target, row) are [i, end), those of its finest width [i, fine_end).
      const uint64_t row = sorted_[i].row;
      const uint32_t target = sorted_[i].target_width >> 8;
      size_t end = i;
      while (end < n && sorted_[end].row == row && sorted_[end].target_width >> 8 == target) ++end;
      size_t fine_end = i;
      while (fine_end < end && (sorted_[fine_end].target_width & 0xff) == 0) ++fine_end;
      std::vector<PartialState>& o = (*out)[target];
      const AggregateLayout& layout = *layouts_[target];
      const size_t bytes = layout.state_bytes();
      auto state_of = [&](const Entry& e) {
        return std::span<std::byte>(arena_.get() + e.state_offset, bytes);
      };
      auto start_of = [](const Entry& e) {
        return static_cast<int64_t>(e.bucket_biased ^ kBucketSignBit);
      };
      // from[w], to[w]: the row's states of width w in o. A rolled-up width folds the states of
      // the widest width below it that divides it (1h from 1m), else the finest's.
      size_t from[ViewDef::kMaxWidths], to[ViewDef::kMaxWidths];
      const std::vector<int64_t>& widths = widths_[target];
      from[0] = o.size();
      for (size_t k = i; k < fine_end; ++k) {
        o.push_back(PartialState{{row, 0, start_of(sorted_[k])}, state_of(sorted_[k])});
      }
      to[0] = o.size();
      size_t k = fine_end;
      for (size_t w = 1; w < widths.size(); ++w) {
        const auto width = static_cast<uint8_t>(w);
        from[w] = o.size();
        if (direct(target, w)) {
          for (; k < end && (sorted_[k].target_width & 0xff) == w; ++k) {
            o.push_back(PartialState{{row, width, start_of(sorted_[k])}, state_of(sorted_[k])});
          }
          to[w] = o.size();
          continue;
        }
        size_t source = 0;
        for (size_t s = w - 1; s > 0; --s) {
          if (widths[w] % widths[s] == 0) {
            source = s;
            break;
          }
        }
        std::span<std::byte> rolled;
        for (size_t f = from[source]; f < to[source]; ++f) {
          const int64_t start = bucket_start(o[f].key.bucket_start_ns, widths[w]);
          if (rolled.empty() || o.back().key.bucket_start_ns != start) {
            rolled = std::span<std::byte>(rollup_alloc(bytes), bytes);
            layout.init(rolled);
            o.push_back(PartialState{{row, width, start}, rolled});
          }
          layout.merge(rolled, o[f].state);
        }
        to[w] = o.size();
      }
      i = end;
    }
    series->clear();
    for (const Staged& st : series_) {
      series->push_back(SeriesName{st.row, std::span<const std::byte>(series_bytes_).subspan(st.offset, st.bytes)});
    }
  }

  // Drops everything, queued updates included (a step redone from the log).
  void clear() {
    for (const Entry& e : entries_) slots_[e.slot].used = 0;
    entries_.clear();
    pending_.clear();
    arena_used_ = 0;
    series_.clear();
    series_bytes_.clear();
  }

 private:
  static constexpr size_t kBatch = 64;
  static constexpr size_t kRollupChunk = size_t{4} << 20;
  static constexpr size_t kHugePage = size_t{2} << 20;

  struct Slot {
    uint64_t row;
    int64_t bucket;
    uint64_t state_offset;  // in arena_
    uint32_t target;
    uint8_t width;
    uint8_t used;
  };
  static_assert(sizeof(Slot) == 32, "two slots per cache line");
  // One key of the step, in insertion order; sorted at commit.
  struct Entry {
    uint64_t row;
    uint64_t bucket_biased;  // bucket start XOR the sign bit: unsigned order = time order
    uint64_t state_offset;
    uint32_t target_width;  // target << 8 | width
    uint32_t slot;
  };
  struct Pending {
    uint64_t row;
    int64_t bucket;
    double value;
    int64_t ts;
    uint64_t distinct_hash;
    uint64_t hash;
    uint64_t state_offset;
    uint32_t target;
    uint8_t width;
    bool has_distinct;
  };
  struct Staged {
    uint64_t row;
    size_t offset;
    size_t bytes;
  };
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  template <typename T>
  using Buffer = std::unique_ptr<T[], Free>;

  // Uninitialized, 2 MiB aligned, in transparent huge pages if the kernel grants them.
  template <typename T>
  static Buffer<T> allocate(size_t count) {
    const size_t bytes = (count * sizeof(T) + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, bytes);
    if (p == nullptr) throw std::bad_alloc();
    ::madvise(p, bytes, MADV_HUGEPAGE);
    return Buffer<T>(static_cast<T*>(p));
  }

  // Room for one rolled-up state, valid until the next sorted(). Chunks are kept across steps.
  std::byte* rollup_alloc(size_t n) {
    if (rollup_chunks_.empty() || (rollup_used_ % kRollupChunk) + n > kRollupChunk) {
      rollup_used_ = (rollup_used_ + kRollupChunk - 1) / kRollupChunk * kRollupChunk;
      if (rollup_used_ / kRollupChunk >= rollup_chunks_.size()) {
        rollup_chunks_.push_back(allocate<std::byte>(kRollupChunk));
      }
    }
    std::byte* p = rollup_chunks_[rollup_used_ / kRollupChunk].get() + rollup_used_ % kRollupChunk;
    rollup_used_ += n;
    return p;
  }

  static uint64_t hash(uint32_t target, uint64_t row, uint8_t width, int64_t bucket) {
    return row ^ mix64(static_cast<uint64_t>(bucket) + (uint64_t{width} << 48) + (uint64_t{target} << 56));
  }
  static size_t group_of(const Entry& e) { return ((e.target_width >> 8) << 16) | (e.row >> 48); }
  static bool less(const Entry& a, const Entry& b) {
    if (a.row != b.row) return a.row < b.row;
    if (a.target_width != b.target_width) return a.target_width < b.target_width;
    return a.bucket_biased < b.bucket_biased;
  }

  // Offset in the arena of the state of (target, row, width, bucket), initialized empty when new.
  uint64_t find_or_add(uint64_t h, uint32_t target, uint64_t row, uint8_t width, int64_t bucket) {
    const size_t mask = slot_count_ - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      Slot& slot = slots_[i];
      if (slot.used == 0) {
        if (entries_.size() + 1 > slot_count_ * 3 / 4) {
          rehash();  // only when one record overshoots the step limit by far
          return find_or_add(h, target, row, width, bucket);
        }
        const AggregateLayout& layout = *layouts_[target];
        const size_t n = layout.state_bytes();
        if (arena_used_ + n > arena_capacity_) grow_arena(n);
        layout.init(std::span<std::byte>(arena_.get() + arena_used_, n));
        slot = Slot{row, bucket, arena_used_, target, width, 1};
        entries_.push_back(Entry{row, static_cast<uint64_t>(bucket) ^ kBucketSignBit, arena_used_,
                                 (target << 8) | width, static_cast<uint32_t>(i)});
        arena_used_ += n;
        return slot.state_offset;
      }
      if (slot.row == row && slot.bucket == bucket && slot.width == width && slot.target == target) {
        return slot.state_offset;
      }
    }
  }

  void rehash() {
    const size_t count = slot_count_ * 2;
    Buffer<Slot> bigger = allocate<Slot>(count);
    std::memset(static_cast<void*>(bigger.get()), 0, count * sizeof(Slot));
    for (Entry& e : entries_) {
      const Slot& s = slots_[e.slot];
      size_t i = hash(s.target, s.row, s.width, s.bucket) & (count - 1);
      while (bigger[i].used != 0) i = (i + 1) & (count - 1);
      bigger[i] = s;
      e.slot = static_cast<uint32_t>(i);
    }
    slots_ = std::move(bigger);
    slot_count_ = count;
    // Queued hashes stay valid: they are hashes, not slot indices.
  }

  void grow_arena(size_t n) {
    const size_t capacity = std::max(arena_capacity_ * 2, arena_used_ + n);
    Buffer<std::byte> bigger = allocate<std::byte>(capacity);
    std::memcpy(bigger.get(), arena_.get(), arena_used_);
    arena_ = std::move(bigger);
    arena_capacity_ = capacity;
  }

  size_t budget_;
  size_t max_entries_ = 0;
  size_t limit_entries_ = 0;
  std::vector<const AggregateLayout*> layouts_;
  std::vector<std::vector<int64_t>> widths_;  // per target
  std::vector<uint32_t> rolled_;              // per target: bit w set = width w is rolled up
  size_t rollup_bytes_per_entry_ = 0;
  std::vector<Buffer<std::byte>> rollup_chunks_;
  size_t rollup_used_ = 0;  // bytes into the chunks, counting skipped chunk tails
  Buffer<Slot> slots_;
  size_t slot_count_ = 0;
  std::vector<Entry> entries_;  // the step's keys, in insertion order
  std::vector<Entry> sorted_;   // ... in key order (commit)
  std::vector<uint32_t> counts_;
  std::vector<Pending> pending_;
  Buffer<std::byte> arena_;
  size_t arena_capacity_ = 0;
  size_t arena_used_ = 0;
  std::vector<Staged> series_;
  std::vector<std::byte> series_bytes_;
};

// Row ids already named in "series": an exact open-addressing set, small enough to stay in
// cache at usual cardinalities. It starts over rather than grow past kMaxKnownRows; a row it
// forgot is only named again, which the store ignores.
class Compactor::KnownRows {
 public:
  KnownRows() { clear(); }
  // true when `row` was not in the set (it is now).
  bool insert(uint64_t row) {
    if (row == 0) return !std::exchange(has_zero_, true);
    size_t mask = slots_.size() - 1;
    size_t i = mix64(row) & mask;
    for (; slots_[i] != 0; i = (i + 1) & mask) {
      if (slots_[i] == row) return false;
    }
    if ((count_ + 1) * 2 > slots_.size()) {
      if (slots_.size() * 2 > kMaxKnownRows * 2) {
        clear();
      } else {
        grow();
      }
      return insert(row);
    }
    slots_[i] = row;
    ++count_;
    return true;
  }
  void clear() {
    slots_.assign(4096, 0);
    count_ = 0;
    has_zero_ = false;
  }

 private:
  void grow() {
    std::vector<uint64_t> old(slots_.size() * 2, 0);
    old.swap(slots_);
    const size_t mask = slots_.size() - 1;
    for (uint64_t row : old) {
      if (row == 0) continue;
      size_t i = mix64(row) & mask;
      while (slots_[i] != 0) i = (i + 1) & mask;
      slots_[i] = row;
    }
  }
  std::vector<uint64_t> slots_;
  size_t count_ = 0;
  bool has_zero_ = false;
};

// What one pass reads and where it folds: the current versions (compaction) or one version
// being built (rebuild).
struct Compactor::Pass {
  uint64_t rebuild_version = 0;
  std::string view;  // rebuild only
  std::vector<uint64_t> versions;  // target index -> version; ViewRouter view index = target
  std::vector<ViewDef> defs;
  std::vector<const AggregateLayout*> layouts;
  uint64_t from = 0;  // the stored coverage
  uint64_t end = 0;   // read records below this log offset
  // Reading may begin at the oldest retained record when `from` precedes it: a rebuild, or a
  // store that has absorbed nothing yet. Otherwise that is records lost before absorption.
  bool may_skip_missing = false;
  // A compaction pass: steps end only where the generation changes (model/generation.h), so
  // the watermark never splits a generation between the batch views and the live tables.
  bool generation_aligned = false;
};

namespace {

uint64_t record_generation(const Record& r) { return generation_of(r.ring_epoch, r.ring_pos); }

// The start of the last generation that begins in [from, end): where a generation-aligned pass
// over [from, end) must stop, since that generation may go on past `end` (from itself when the
// whole range is one generation). Scans the range backwards one segment at a time, so usually
// only the newest segment is read.
Result<uint64_t> last_generation_start(const std::filesystem::path& log_dir,
                                       const std::vector<SegmentInfo>& segments, uint64_t from,
                                       uint64_t end) {
  if (from >= end) return from;
  auto reader = LogReader::open(log_dir);
  if (!reader.ok()) return reader.status();
  std::optional<uint64_t> later_generation;  // of the records in [chunk end, end)
  uint64_t chunk_end = end;
  for (auto seg = segments.rbegin(); seg != segments.rend(); ++seg) {
    if (seg->base_offset >= chunk_end) continue;
    const uint64_t chunk_start = std::max(from, seg->base_offset);
    if (Status s = reader->seek(chunk_start); !s.ok()) return s;
    std::optional<uint64_t> last_change, first_gen, last_gen;
    Record rec;
    while (reader->position() < chunk_end) {
      auto got = reader->next(&rec);
      if (!got.ok()) return got.status();
      if (!*got) return Status::Corruption(log_dir.string() + ": the log ends at offset " +
                                           std::to_string(reader->position()) + ", inside the sealed range");
      const uint64_t g = record_generation(rec);
      if (last_gen && g != *last_gen) last_change = rec.offset;
      if (!first_gen) first_gen = g;
      last_gen = g;
    }
    if (!last_gen) {  // an empty chunk
      chunk_end = chunk_start;
      if (chunk_start == from) return from;
      continue;
    }
    if (later_generation && *last_gen != *later_generation) return chunk_end;
    if (last_change) return *last_change;
    later_generation = first_gen;
    chunk_end = chunk_start;
    if (chunk_start == from) return from;
  }
  return from;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Compactor

Compactor::Compactor(ViewStore& store, CompactorOptions options)
    : store_(store),
      options_(std::move(options)),
      partial_(std::make_unique<PartialStates>(options_.memory_budget_bytes)),
      known_rows_(std::make_unique<KnownRows>()) {}

Compactor::~Compactor() = default;

Result<uint64_t> Compactor::oldest_log_offset() const {
  const uint64_t watermark = store_.watermark().log_offset;
  auto segments = list_segments(options_.log_dir);
  if (segments.status().code() == Status::Code::kNotFound) return watermark;
  if (!segments.ok()) return segments.status();
  if (segments->empty()) return watermark;
  return std::min(watermark, segments->front().base_offset);
}

Result<std::unique_ptr<Compactor>> Compactor::open(ViewStore& store, const std::vector<ViewDef>& views,
                                                   CompactorOptions options, ReconcileReport* report) {
  ReconcileReport local;
  if (report == nullptr) report = &local;
  std::unique_ptr<Compactor> c(new Compactor(store, std::move(options)));
  auto start = c->oldest_log_offset();
  if (!start.ok()) return start.status();
  for (const ViewDef& def : views) {
    Status s = def.validate();
    if (!s.ok()) return s;
    c->configured_.push_back(def);
    const ViewMeta* vm = store.state().find_view(def.name);
    const VersionMeta* current = vm ? store.state().find_version(vm->current_version) : nullptr;
    const VersionMeta* building = vm ? store.state().find_version(vm->building_version) : nullptr;
    if (current && current->layout && same_batch_states(current->def, def)) {
      if (building) s = store.cancel_build(def.name);
      if (s.ok() && current->canonical != def.canonical()) {
        s = store.update_definition(def);
        report->updated.push_back(def.name);
      } else {
        report->kept.push_back(def.name);
      }
    } else if (building && building->layout && same_batch_states(building->def, def)) {
      report->rebuilding.push_back(def.name);  // resumes where it stopped
    } else {
      auto v = store.begin_version(def, *start);
      s = v.status();
      report->rebuilding.push_back(def.name);
    }
    if (!s.ok()) return s;
  }
  std::vector<std::string> stale;
  for (const ViewMeta& vm : store.state().views) {
    const bool configured = std::any_of(views.begin(), views.end(),
                                        [&](const ViewDef& d) { return d.name == vm.name; });
    if (!configured) stale.push_back(vm.name);
  }
  for (const std::string& name : stale) {
    Status s = store.remove_view(name);
    if (!s.ok()) return s;
    report->removed.push_back(name);
  }
  Status s = c->switch_caught_up(report);
  if (!s.ok()) return s;
  return c;
}

Status Compactor::switch_caught_up(ReconcileReport* report) {
  std::vector<std::string> ready;
  for (const ViewMeta& vm : store_.state().views) {
    const VersionMeta* b = store_.state().find_version(vm.building_version);
    if (b && b->covered_offset == store_.watermark().log_offset) ready.push_back(vm.name);
  }
  for (const std::string& name : ready) {
    Status s = store_.switch_version(name);
    if (!s.ok()) return s;
    if (report) report->switched.push_back(name);
    // A rebuild resumed under a definition that differs only in live-side settings.
    for (const ViewDef& def : configured_) {
      const ViewMeta* vm = store_.state().find_view(name);
      const VersionMeta* cur = vm ? store_.state().find_version(vm->current_version) : nullptr;
      if (def.name == name && cur && cur->canonical != def.canonical()) {
        s = store_.update_definition(def);
        if (!s.ok()) return s;
      }
    }
  }
  auto dropped = store_.drop_retired();
  return dropped.status();
}

bool Compactor::rebuilding() const {
  for (const ViewMeta& vm : store_.state().views) {
    if (vm.building_version != 0) return true;
  }
  return false;
}

Status Compactor::start_rebuild(const ViewDef& def) {
  Status s = def.validate();
  if (!s.ok()) return s;
  auto it = std::find_if(configured_.begin(), configured_.end(),
                         [&](const ViewDef& d) { return d.name == def.name; });
  if (it == configured_.end()) {
    configured_.push_back(def);
  } else {
    *it = def;
  }
  auto start = oldest_log_offset();
  if (!start.ok()) return start.status();
  auto v = store_.begin_version(def, *start);
  if (!v.ok()) return v.status();
  return switch_caught_up(nullptr);
}

Result<CompactionStats> Compactor::compact(const RunLimits& limits) {
  Pass pass;
  for (const ViewMeta& vm : store_.state().views) {
    const VersionMeta* v = store_.state().find_version(vm.current_version);
    // A current version this build cannot merge into (it is being rebuilt) is left as it is.
    if (v == nullptr || !v->layout) continue;
    pass.versions.push_back(v->version);
    pass.defs.push_back(v->def);
    pass.layouts.push_back(v->layout.get());
  }
  pass.from = store_.watermark().log_offset;
  pass.may_skip_missing = store_.watermark().records == 0;
  pass.generation_aligned = true;
  auto segments = list_segments(options_.log_dir);
  if (!segments.ok() && segments.status().code() != Status::Code::kNotFound) return segments.status();
  pass.end = pass.from;
  if (segments.ok()) {
    for (const SegmentInfo& seg : *segments) {
      if (seg.sealed) pass.end = std::max(pass.end, seg.end_offset());
    }
  }
  // The newest sealed generation may continue in the active segment: it waits.
  if (pass.end > pass.from) {
    auto boundary = last_generation_start(options_.log_dir, *segments, pass.from, pass.end);
    if (!boundary.ok()) return boundary.status();
    pass.end = *boundary;
  }
  uint64_t steps_left = limits.max_steps;
  return run_pass(pass, limits, &steps_left);
}

Result<CompactionStats> Compactor::rebuild(const RunLimits& limits) {
  CompactionStats total;
  uint64_t steps_left = limits.max_steps;
  for (;;) {
    const VersionMeta* building = nullptr;
    for (const ViewMeta& vm : store_.state().views) {
      const VersionMeta* b = store_.state().find_version(vm.building_version);
      if (b && b->layout) {
        building = b;
        break;
      }
    }
    if (building == nullptr) break;
    Pass pass;
    pass.rebuild_version = building->version;
    pass.view = building->view;
    pass.versions = {building->version};
    pass.defs = {building->def};
    pass.layouts = {building->layout.get()};
    pass.from = building->covered_offset;
    pass.end = store_.watermark().log_offset;
    pass.may_skip_missing = true;
    auto stats = run_pass(pass, limits, &steps_left);
    if (!stats.ok()) return stats.status();
    total.add(*stats);
    if (!stats->caught_up) {
      total.caught_up = false;
      return total;
    }
    Status s = switch_caught_up(nullptr);
    if (!s.ok()) return s;
  }
  auto dropped = store_.drop_retired();
  if (!dropped.ok()) return dropped.status();
  total.caught_up = true;
  return total;
}

Result<CompactionStats> Compactor::run_pass(Pass& pass, const RunLimits& limits, uint64_t* steps_left) {
  const auto t0 = std::chrono::steady_clock::now();
  CompactionStats stats;
  auto finish = [&]() -> Result<CompactionStats> {
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return stats;
  };
  if (pass.from >= pass.end) {
    stats.caught_up = true;
    return finish();
  }
  ViewRouter router(pass.defs);
  partial_->set_targets(pass.layouts, pass.defs);
  auto reader = LogReader::open(options_.log_dir);
  if (!reader.ok()) return reader.status();

  // Positions the reader at `offset`, or at the oldest retained record when that is later and
  // the pass may skip (see Pass::may_skip_missing). false: no record is retained below the end.
  auto seek = [&](uint64_t offset) -> Result<bool> {
    Status s = reader->seek(offset);
    if (s.ok()) return true;
    if (s.code() != Status::Code::kNotFound) return s;
    auto segments = list_segments(options_.log_dir);
    if (!segments.ok()) return segments.status();
    const uint64_t oldest = segments->empty() ? pass.end : segments->front().base_offset;
    if (!pass.may_skip_missing || oldest < offset) {
      return Status::Corruption(options_.log_dir.string() + ": the batch views absorbed the log up to offset " +
                                std::to_string(offset) + " but the oldest retained segment starts at " +
                                std::to_string(oldest) + ": records between were deleted unabsorbed");
    }
    if (oldest >= pass.end) return false;
    s = reader->seek(oldest);
    if (!s.ok()) return s;
    return true;
  };

  // The step being accumulated: records [step_from, reader position).
  uint64_t step_from = pass.from;
  StepReport step;
  LogPosition last;
  std::vector<std::vector<PartialState>> sorted;
  std::vector<SeriesName> series;
  auto reset_step = [&] {
    step = StepReport{};
    step.version = pass.rebuild_version;
    step.view = pass.view;
    step.from_offset = step_from;
    partial_->clear();
  };
  auto first = seek(step_from);
  if (!first.ok()) return first.status();
  const bool readable = *first;
  reset_step();

  // Commits the step up to `to_offset`. Returns false (with ok status) when the step was too
  // large for one transaction and must be redone smaller from step_from.
  auto commit = [&](uint64_t to_offset) -> Result<bool> {
    partial_->sorted(&sorted, &series);
    StepWrite w;
    w.rebuild_version = pass.rebuild_version;
    w.from_offset = step_from;
    w.to = last;
    w.to.end_offset = to_offset;
    w.records = step.records;
    w.series = series;
    step.states = 0;
    for (size_t t = 0; t < sorted.size(); ++t) {
      if (sorted[t].empty()) continue;
      w.targets.push_back(StepTarget{pass.versions[t], sorted[t]});
      step.states += sorted[t].size();
    }
    step.to_offset = to_offset;
    if (options_.before_commit) options_.before_commit(step);
    CommitError why = CommitError::kNone;
    Status cs = store_.commit_step(w, &why);
    if (!cs.ok()) {
      known_rows_->clear();  // names staged in the step were not written
      if (why == CommitError::kTxnFull && partial_->halve_limit()) {
        ++stats.step_splits;
        auto again = seek(step_from);
        if (!again.ok()) return again.status();
        reset_step();
        return false;
      }
      return cs;
    }
    ++stats.steps;
    stats.records += step.records;
    stats.bytes += step.bytes;
    stats.updates += step.updates;
    stats.states += step.states;
    if (options_.after_commit) options_.after_commit(step);
    step_from = to_offset;
    reset_step();
    return true;
  };

  const auto accept_all = [](uint64_t) { return true; };
  Record rec;
  for (;;) {
    const bool at_end = !readable || reader->position() >= pass.end;
    if (readable && reader->position() > pass.end) {
      return Status::Corruption(options_.log_dir.string() + ": a record crosses log offset " +
                                std::to_string(pass.end) + ", which should be a record boundary");
    }
    const bool stop = limits.stop != nullptr && limits.stop->load(std::memory_order_relaxed);
    const bool step_full =
        partial_->full() || (options_.max_step_records != 0 && step.records >= options_.max_step_records);
    // An aligned pass commits at the next change of generation (below); stopping drops the
    // uncommitted step, which the next pass reads again.
    if (pass.generation_aligned && stop && !at_end) return finish();
    if (at_end || stop || (step_full && !pass.generation_aligned)) {
      if (step.records == 0 && !at_end) {
        if (stop) return finish();
      } else if (step.records > 0 || step_from < pass.end) {
        // At the end the step's coverage is the pass end (a record boundary: the reader read
        // every record below it), also when its last records routed nowhere.
        auto committed = commit(at_end ? pass.end : last.end_offset);
        if (!committed.ok()) return committed.status();
        if (!*committed) continue;  // redo smaller
        if (at_end) {
          stats.caught_up = true;
          return finish();
        }
        if (stop || (*steps_left != 0 && --*steps_left == 0)) return finish();
      }
      if (at_end) {
        stats.caught_up = true;
        return finish();
      }
    }
    auto got = reader->next(&rec);
    if (!got.ok()) return got.status();
    if (!*got) {
      return Status::Corruption(options_.log_dir.string() + ": the log ends at offset " +
                                std::to_string(reader->position()) + ", inside the sealed range that ends at " +
                                std::to_string(pass.end));
    }
    if (pass.generation_aligned && step_full && step.records > 0 &&
        record_generation(rec) != generation_of(last.ring_epoch, last.ring_pos)) {
      // The step ends before the first record of a new generation, which opens the next one.
      auto committed = commit(rec.offset);
      if (!committed.ok()) return committed.status();
      if (!*committed) continue;  // redo smaller: the reader went back to step_from
      if (*steps_left != 0 && --*steps_left == 0) return finish();
    }
    ++step.records;
    step.bytes += rec.next_offset - rec.offset;
    last = LogPosition{rec.next_offset, rec.offset, rec.ring_epoch, rec.ring_pos};
    RecordView view;
    const char* reason = "";
    if (!RecordView::validate(rec.payload, &view, &reason)) {
      ++stats.invalid_records;  // the speed path skips it too
      continue;
    }
    const int64_t ts = view.ts_ns();
    step.updates += router.route(view, accept_all, [&](const RowUpdate& u) {
      const ViewDef& def = pass.defs[u.view];
      for (size_t wi = 0; wi < def.widths_ns.size(); ++wi) {
        if (!partial_->direct(u.view, wi)) continue;
        partial_->add(u.view, u.row_id, static_cast<uint8_t>(wi), bucket_start(ts, def.widths_ns[wi]),
                      u.value, ts, u.distinct_hash, u.has_distinct);
      }
      if (known_rows_->insert(u.row_id)) {
        partial_->stage_series(u.row_id, router.row_key(view, u.view, u.field));
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Log retention

Result<SegmentRetentionPlan> plan_segment_retention(const std::filesystem::path& log_dir,
                                                    uint64_t absorbed_offset,
                                                    const SegmentRetention& retention, int64_t now_ns) {
  auto segments = list_segments(log_dir);
  if (!segments.ok()) return segments.status();
  uint64_t total = 0;
  for (const SegmentInfo& seg : *segments) total += seg.file_bytes;
  SegmentRetentionPlan plan;
  for (const SegmentInfo& seg : *segments) {
    // Only a prefix can go (LogWriter removes everything ending at or below one offset).
    if (!seg.sealed || seg.end_offset() > absorbed_offset) break;
    bool too_old = false;
    if (retention.max_age_ns > 0) {
      struct stat st;
      if (::stat(seg.path.c_str(), &st) != 0) return Status::Errno(seg.path.string() + ": stat", errno);
      const int64_t mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
      too_old = now_ns - mtime_ns > retention.max_age_ns;
    }
    const bool too_big = retention.max_total_bytes > 0 && total > retention.max_total_bytes;
    if (!too_old && !too_big) break;
    plan.remove_below_offset = seg.end_offset();
    ++plan.segments;
    plan.bytes += seg.file_bytes;
    total -= seg.file_bytes;
  }
  return plan;
}

}  // namespace runnel::storage
