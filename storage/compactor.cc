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
#include "model/known_rows.h"
#include "model/clock.h"
#include "model/record.h"
#include "model/view_router.h"
#include "storage/log_reader.h"
#include "storage/view_store_internal.h"

namespace runnel::storage {
namespace {

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
// PartialStates: the states of one step, one per (target, row, width, bucket start).
//
// Events come mostly in time order per row, so each (target, row, direct width) is a chain
// that remembers its newest bucket: an event of that bucket updates its state, an event of a
// later bucket starts a state (it cannot exist yet: the chain's buckets only grow), and only an
// event of an earlier bucket (late, or from a stream behind the others) looks its bucket up in a
// flat hash map of such late states. A row is found through an open-addressing map keyed
// (target, row id) that stays in cache at usual cardinalities (W1: 20,000 rows), so the hot path
// hashes once per field and touches memory that was just written. Each new state appends an
// entry (arrival order); the commit orders entries with a counting sort by chain and visits rows
// by id, which leaves each chain in time order unless it took late states (that chain alone is
// then sorted, and a bucket met twice, once in order and once late, merged).
//
// A state that has seen one event is held as that event (i64 ts_ns, f64 value: 16 bytes) inside
// its entry, the compact form the view store writes, and becomes a full AggregateLayout state in
// the arena at its second event; layouts with a distinct count always hold full states (they
// depend on more than the value).
//
// Only the widths a target takes directly are aggregated per event: the finest, and any width
// that is not a multiple of it. The others are rolled up at commit from the step's states of
// the widest smaller width that divides them (1h from 1m from 1s; AggregateLayout::merge, the
// monoid every layer relies on), which cuts the updates per event of the default view from
// three per field to one.
//
// The store takes a step's states in parts of about kPartStates records (StepTarget::more),
// made from the sorted entries as it asks, rolled-up widths included: the records and the
// rolled-up states of one part at a time are held, not a step's worth (W1: 64 bytes per
// one-event state, its entry and its sorted copy). The parts follow the store's key order
// (storage/view_store.h): the row-major widths row by row, then the finest width (time-major)
// block by block, each block's rows in order.
//
// Memory: all of it counts against the budget; buffers are kept across steps, so the hot path
// allocates only while a step needs more than every earlier one did. No lock.

class Compactor::PartialStates {
 public:
  explicit PartialStates(size_t budget_bytes) : budget_(std::max<size_t>(budget_bytes, 1 << 16)) {}

  // `buckets_per_block`: of each target's version (the store's blocks, which order its keys).
  void set_targets(std::vector<const AggregateLayout*> layouts, const std::vector<ViewDef>& defs,
                   const std::vector<uint32_t>& buckets_per_block) {
    layouts_ = std::move(layouts);
    targets_.clear();
    for (size_t t = 0; t < defs.size(); ++t) {
      Target tg;
      tg.widths = defs[t].widths_ns;
      tg.per_block = buckets_per_block[t];
      for (size_t i = 0; i < tg.widths.size(); ++i) {
        if (i > 0 && tg.widths[i] % tg.widths[0] == 0) {
          tg.rolled |= uint32_t{1} << i;
        } else {
          tg.direct.push_back(static_cast<uint8_t>(i));
        }
      }
      tg.bytes = layouts_[t]->state_bytes();
      tg.single = !layouts_[t]->has(AggComponent::kDistinct) && tg.bytes > kEventBytes;
      targets_.push_back(std::move(tg));
    }
    max_entries_ = std::clamp<size_t>(budget_ / kMinEntryBytes, kMinStepEntries, UINT32_MAX / 2);
    limit_entries_ = std::min(limit_entries_ ? limit_entries_ : max_entries_, max_entries_);
    if (arena_capacity_ < budget_) {
      arena_ = allocate<std::byte>(budget_);
      arena_capacity_ = budget_;
    }
    if (row_slots_.empty()) row_slots_.assign(4096, RowSlot{});
    clear();
  }

  // Folds one event into every direct width of (target, row). Returns true when the row is new
  // in this step.
  bool add(uint32_t target, uint64_t row, double value, int64_t ts, uint64_t distinct_hash,
           bool has_distinct) {
    Target& tg = targets_[target];
    bool created = false;
    const uint32_t r = find_row(target, row, &created);
    const Event ev{value, ts, distinct_hash, has_distinct};
    if (ts != tg.buckets_ts || !tg.buckets_valid) {  // the fields of one record share them
      for (size_t k = 0; k < tg.direct.size(); ++k)
        tg.buckets[k] = bucket_start(ts, tg.widths[tg.direct[k]]);
      tg.buckets_ts = ts;
      tg.buckets_valid = true;
    }
    for (size_t k = 0; k < tg.direct.size(); ++k) {
      const int64_t b = tg.buckets[k];
      const uint32_t c = rows_[r].chain_base + static_cast<uint32_t>(k);
      Chain& ch = chains_[c];
      if (ch.last_entry != kNone && b == ch.last_bucket) {
        fold(target, ch.last_entry, ev);
      } else if (ch.last_entry == kNone || b > ch.last_bucket) {
        ch.last_entry = append(target, c, b, ev);
        ch.last_bucket = b;
      } else {
        fold_late(target, c, b, ev);
      }
    }
    return created;
  }

  // Bytes held: the maps, chains, entries with their sorted copy, states and staged row names;
  // and what the commit's parts take (a part's records and rolled-up states, a fixed size).
  size_t used_bytes() const {
    return row_slots_.size() * sizeof(RowSlot) + rows_.size() * sizeof(Row) +
           chains_.size() * sizeof(Chain) + entries_.size() * (2 * sizeof(Entry)) +
           arena_used_ + late_slots_.size() * sizeof(LateSlot) + series_bytes_.size() +
           series_.size() * sizeof(Staged) +
           (part_.capacity() + finest_.capacity()) * sizeof(PartialState) +
           (runs_.capacity() + runs_sorted_.capacity()) * sizeof(Run) +
           run_counts_.capacity() * sizeof(uint32_t) + rollup_chunks_.size() * kRollupChunk;
  }
  // Time to commit: checked between records, with room for a few more records' states.
  bool full() const { return entries_.size() >= limit_entries_ || used_bytes() + budget_ / 16 >= budget_; }
  // After MDB_TXN_FULL: commit steps of half as many states.
  bool halve_limit() {
    const size_t at = std::min(limit_entries_, std::max(entries_.size(), kMinStepEntries));
    if (at <= kMinStepEntries) return false;
    limit_entries_ = std::max(kMinStepEntries, at / 2);
    return true;
  }

  void stage_series(uint64_t row, std::span<const std::byte> key) {
    series_.push_back(Staged{row, series_bytes_.size(), key.size()});
    series_bytes_.insert(series_bytes_.end(), key.begin(), key.end());
  }

  // Orders the step's states for the commit, which takes them from part(); `series`: the
  // staged row names.
  void prepare(std::vector<SeriesName>* series) {
    row_order_.resize(rows_.size());
    for (uint32_t i = 0; i < rows_.size(); ++i) row_order_[i] = i;
    std::sort(row_order_.begin(), row_order_.end(), [&](uint32_t a, uint32_t b) {
      return rows_[a].target != rows_[b].target ? rows_[a].target < rows_[b].target
                                                : rows_[a].row < rows_[b].row;
    });
    // A counting sort of the entries by chain, chains in the order the rows are visited: each
    // chain's entries end up next to each other in arrival order, and part() reads sorted_
    // front to back. One-event states move along (inline), so nothing reads the arena in
    // random order.
    chain_start_.assign(chains_.size() + 1, 0);
    for (const Entry& e : entries_) ++chain_start_[e.chain];
    target_rows_.assign(targets_.size() + 1, 0);
    uint32_t at = 0;
    for (size_t i = 0; i < row_order_.size(); ++i) {
      const Row& rw = rows_[row_order_[i]];
      target_rows_[rw.target + 1] = i + 1;
      for (size_t k = 0; k < targets_[rw.target].direct.size(); ++k) {
        const uint32_t count = chain_start_[rw.chain_base + k];
        chain_start_[rw.chain_base + k] = at;
        at += count;
      }
    }
    for (size_t t = 1; t <= targets_.size(); ++t)
      target_rows_[t] = std::max(target_rows_[t], target_rows_[t - 1]);
    chain_next_.assign(chain_start_.begin(), chain_start_.end() - 1);
    if (sorted_capacity_ < entries_.size()) {  // in huge pages: part() reads it all over
      sorted_capacity_ = std::max(entries_.size(), sorted_capacity_ * 2);
      sorted_ = allocate<Entry>(sorted_capacity_);
    }
    for (const Entry& e : entries_) sorted_[chain_next_[e.chain]++] = e;
    emitted_.assign(targets_.size(), 0);
    series->clear();
    for (const Staged& st : series_) {
      series->push_back(SeriesName{st.row, std::span<const std::byte>(series_bytes_).subspan(st.offset, st.bytes)});
    }
  }

  bool has_states(uint32_t t) const { return target_rows_[t + 1] > target_rows_[t]; }

  // Part k of target t's states in the store's key order, rolled-up widths included
  // (StepTarget::more): first the row-major widths, whole rows in row order; then the finest
  // width (time-major), whole blocks of a row in (block, row) order. About kPartStates records;
  // valid until the next call. REQUIRES: prepare(), and calls for one target at a time with
  // k = 0, 1, 2, ... (0 starts over).
  std::span<const PartialState> part(uint32_t t, size_t k) {
    if (k == 0) {
      part_row_ = target_rows_[t];
      part_run_ = 0;
      runs_.clear();
      runs_ordered_ = false;
      emitted_[t] = 0;
    }
    part_.clear();
    rollup_used_ = 0;
    while (part_row_ < target_rows_[t + 1] && part_.size() < kPartStates) emit_row(part_row_++);
    if (part_row_ == target_rows_[t + 1]) {
      if (!runs_ordered_) order_runs();
      runs_ordered_ = true;
      const Target& tg = targets_[t];
      while (part_run_ < runs_.size() && part_.size() < kPartStates) {
        // Runs lie all over sorted_: fetch ahead.
        constexpr size_t kAhead = 8;
        if (part_run_ + kAhead < runs_.size()) {
          const Run& ahead = runs_[part_run_ + kAhead];
          for (uint32_t at = ahead.begin; at < ahead.end; at += 64 / sizeof(Entry))
            __builtin_prefetch(&sorted_[at]);
        }
        const Run& run = runs_[part_run_++];
        emit_chain(rows_[row_order_[run.row]], run.begin, run.end, 0, false, *layouts_[t], tg,
                   &part_);
      }
    }
    emitted_[t] += part_.size();
    return part_;
  }
  // States handed out by the last complete pass of part() over every target.
  uint64_t emitted() const {
    uint64_t n = 0;
    for (uint64_t e : emitted_) n += e;
    return n;
  }

  // Drops everything (a step committed, or redone from the log).
  void clear() {
    for (const Row& rw : rows_) row_slots_[rw.slot] = RowSlot{};
    rows_.clear();
    chains_.clear();
    entries_.clear();
    if (late_count_ != 0) std::fill(late_slots_.begin(), late_slots_.end(), LateSlot{});
    late_count_ = 0;
    arena_used_ = 0;
    series_.clear();
    series_bytes_.clear();
  }

 private:
  static constexpr size_t kRollupChunk = size_t{4} << 20;
  static constexpr size_t kHugePage = size_t{2} << 20;
  static constexpr size_t kEventBytes = 16;  // i64 ts_ns, f64 value
  static constexpr uint32_t kNone = UINT32_MAX;
  // Bytes a state costs at least (its entry, which holds a one-event state inline, and its copy
  // in the commit's order): the most entries a budget can hold.
  static constexpr size_t kMinEntryBytes = 32 + 32;
  static constexpr size_t kPartStates = 16384;  // records per part() (and one row more at most)
  static constexpr uint64_t kMaxCountedBlocks = 1 << 16;  // order_runs: counting sort up to this

  struct Target {
    std::vector<int64_t> widths;
    std::vector<uint8_t> direct;         // width indices aggregated per event (0 first); the
                                         // others are rolled up at commit
    uint32_t rolled = 0;                 // bit w set: width w is rolled up
    size_t bytes = 0;                    // state_bytes
    uint32_t per_block = 1;              // the version's buckets_per_block
    bool single = false;                 // one-event states are held as the event
    // The bucket start of each direct width for the event time buckets_ts.
    int64_t buckets[ViewDef::kMaxWidths] = {};
    int64_t buckets_ts = 0;
    bool buckets_valid = false;
  };
  struct Event {
    double value;
    int64_t ts;
    uint64_t distinct_hash;
    bool has_distinct;
  };
  struct RowSlot {
    uint64_t row = 0;
    uint32_t target_plus_one = 0;  // 0: empty
    uint32_t index = 0;            // into rows_
  };
  struct Row {
    uint64_t row;
    uint32_t target;
    uint32_t chain_base;   // chains_[chain_base + k]: direct width k
    uint32_t slot;         // in row_slots_
  };
  struct Chain {
    int64_t last_bucket = 0;
    uint32_t last_entry = kNone;  // the state of last_bucket; kNone: no state yet
    bool late = false;            // took a late state: its entries may be out of order
  };
  struct Entry {
    int64_t bucket;
    uint32_t chain;
    uint32_t single;  // 1: `event` holds the bucket's one event, not a state in arena_
    union {
      uint64_t offset;               // of the state in arena_ (not single)
      std::byte event[kEventBytes];  // i64 ts_ns, f64 value (single)
    };
  };
  // The states sorted_[begin, end) of one row (row_order_[row]) in one block of the finest width.
  struct Run {
    int64_t block;
    uint32_t row;
    uint32_t begin;
    uint32_t end;
  };
  struct LateSlot {
    int64_t bucket = 0;
    uint32_t chain_plus_one = 0;  // 0: empty
    uint32_t entry = 0;
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

  uint32_t find_row(uint32_t target, uint64_t row, bool* created) {
    size_t mask = row_slots_.size() - 1;
    size_t i = mix64(row + target) & mask;
    for (;; i = (i + 1) & mask) {
      const RowSlot& s = row_slots_[i];
      if (s.target_plus_one == 0) break;
      if (s.row == row && s.target_plus_one == target + 1) return s.index;
    }
    if ((rows_.size() + 1) * 4 > row_slots_.size() * 3) {
      grow_rows();
      return find_row(target, row, created);
    }
    const Target& tg = targets_[target];
    *created = true;
    const auto index = static_cast<uint32_t>(rows_.size());
    rows_.push_back(
        Row{row, target, static_cast<uint32_t>(chains_.size()), static_cast<uint32_t>(i)});
    chains_.resize(chains_.size() + tg.direct.size());
    row_slots_[i] = RowSlot{row, target + 1, index};
    return index;
  }

  void grow_rows() {
    row_slots_.assign(row_slots_.size() * 2, RowSlot{});
    const size_t mask = row_slots_.size() - 1;
    for (uint32_t r = 0; r < rows_.size(); ++r) {
      size_t i = mix64(rows_[r].row + rows_[r].target) & mask;
      while (row_slots_[i].target_plus_one != 0) i = (i + 1) & mask;
      row_slots_[i] = RowSlot{rows_[r].row, rows_[r].target + 1, r};
      rows_[r].slot = static_cast<uint32_t>(i);
    }
  }

  // A new state of bucket b in chain c, holding the event.
  uint32_t append(uint32_t target, uint32_t c, int64_t b, const Event& ev) {
    const Target& tg = targets_[target];
    const auto e = static_cast<uint32_t>(entries_.size());
    Entry& en = entries_.emplace_back();
    en.bucket = b;
    en.chain = c;
    if (tg.single) {
      en.single = 1;
      std::memcpy(en.event, &ev.ts, 8);
      std::memcpy(en.event + 8, &ev.value, 8);
      return e;
    }
    std::byte* p = room(tg.bytes);
    const std::span<std::byte> state(p, tg.bytes);
    layouts_[target]->init(state);
    layouts_[target]->update(state, ev.value, ev.ts, ev.distinct_hash, ev.has_distinct);
    en.single = 0;
    en.offset = static_cast<uint64_t>(p - arena_.get());
    return e;
  }

  void fold(uint32_t target, uint32_t e, const Event& ev) {
    const AggregateLayout& layout = *layouts_[target];
    const size_t n = targets_[target].bytes;
    if (entries_[e].single != 0) {  // the second event: expand the first into a state
      std::byte* p = room(n);
      layout.init({p, n});
      fold_single(layout, entries_[e].event, {p, n});
      entries_[e].offset = static_cast<uint64_t>(p - arena_.get());
      entries_[e].single = 0;
    }
    layout.update({arena_.get() + entries_[e].offset, n}, ev.value, ev.ts, ev.distinct_hash,
                  ev.has_distinct);
  }

  // An event of a bucket before the chain's newest: its late state, found or made.
  void fold_late(uint32_t target, uint32_t c, int64_t b, const Event& ev) {
    if ((late_count_ + 1) * 2 > late_slots_.size()) grow_late();
    const size_t mask = late_slots_.size() - 1;
    size_t i = mix64(static_cast<uint64_t>(b) ^ (uint64_t{c} << 32)) & mask;
    for (;; i = (i + 1) & mask) {
      LateSlot& s = late_slots_[i];
      if (s.chain_plus_one == 0) break;
      if (s.chain_plus_one == c + 1 && s.bucket == b) return fold(target, s.entry, ev);
    }
    late_slots_[i] = LateSlot{b, c + 1, append(target, c, b, ev)};
    ++late_count_;
    chains_[c].late = true;
  }

  void grow_late() {
    std::vector<LateSlot> old(std::max<size_t>(late_slots_.size() * 2, 4096));
    old.swap(late_slots_);
    const size_t mask = late_slots_.size() - 1;
    for (const LateSlot& s : old) {
      if (s.chain_plus_one == 0) continue;
      size_t i =
          mix64(static_cast<uint64_t>(s.bucket) ^ (uint64_t{s.chain_plus_one - 1} << 32)) & mask;
      while (late_slots_[i].chain_plus_one != 0) i = (i + 1) & mask;
      late_slots_[i] = s;
    }
  }

  std::byte* room(size_t n) {
    if (arena_used_ + n > arena_capacity_) grow_arena(n);
    std::byte* p = arena_.get() + arena_used_;
    arena_used_ += n;
    return p;
  }

  void grow_arena(size_t n) {
    const size_t capacity = std::max(arena_capacity_ * 2, arena_used_ + n);
    Buffer<std::byte> bigger = allocate<std::byte>(capacity);
    std::memcpy(bigger.get(), arena_.get(), arena_used_);
    arena_ = std::move(bigger);
    arena_capacity_ = capacity;
  }

  // dst ⊕= the state `ps` stands for.
  static void fold_into(const AggregateLayout& layout, std::span<std::byte> dst,
                        const PartialState& ps) {
    if (ps.single) {
      fold_single(layout, ps.state.data(), dst);
    } else {
      layout.merge(dst, ps.state);
    }
  }

  // Appends the row-major states of one row to part_ in key order: each direct width's chain,
  // and each rolled-up width from the states of the widest smaller width that divides it (1h
  // from 1m), else the finest's. The finest width's states (time-major, emitted later) go to
  // finest_, only to be rolled up; its chain, left sorted by bucket, is cut into runs_ of one
  // block each. `i`: the row's index in row_order_.
  void emit_row(size_t i) {
    const Row& rw = rows_[row_order_[i]];
    const Target& tg = targets_[rw.target];
    const AggregateLayout& layout = *layouts_[rw.target];
    finest_.clear();
    // from[w], to[w]: the row's states of width w in *out[w].
    size_t from[ViewDef::kMaxWidths], to[ViewDef::kMaxWidths];
    std::vector<PartialState>* out[ViewDef::kMaxWidths];
    size_t k = 0;
    for (size_t w = 0; w < tg.widths.size(); ++w) {
      const auto width = static_cast<uint8_t>(w);
      std::vector<PartialState>& o = time_major(width) ? finest_ : part_;
      out[w] = &o;
      from[w] = o.size();
      if ((tg.rolled >> w & 1) == 0) {
        const uint32_t c = rw.chain_base + static_cast<uint32_t>(k++);
        emit_chain(rw, chain_start_[c], chain_next_[c], width, chains_[c].late, layout, tg, &o);
        if (time_major(width)) add_runs(i, chain_start_[c], chain_next_[c], tg);
        to[w] = o.size();
        continue;
      }
      size_t source = 0;
      for (size_t s = w - 1; s > 0; --s) {
        if (tg.widths[w] % tg.widths[s] == 0) {
          source = s;
          break;
        }
      }
      const std::vector<PartialState>& in = *out[source];
      std::byte* rolled = nullptr;
      int64_t end = 0;  // of the rolled bucket being folded
      for (size_t f = from[source]; f < to[source]; ++f) {
        const int64_t b = in[f].key.bucket_start_ns;
        if (rolled == nullptr || b >= end) {
          const int64_t start = bucket_start(b, tg.widths[w]);
          end = start > std::numeric_limits<int64_t>::max() - tg.widths[w]
                    ? std::numeric_limits<int64_t>::max()
                    : start + tg.widths[w];
          rolled = rollup_alloc(tg.bytes);
          layout.init({rolled, tg.bytes});
          o.push_back(PartialState{{rw.row, width, start}, {rolled, tg.bytes}});
        }
        fold_into(layout, {rolled, tg.bytes}, in[f]);
      }
      to[w] = o.size();
    }
  }

  // Appends the states sorted_[begin, end) of one chain to *o in bucket order (sorting them in
  // place when the chain took `late` states), merging a bucket that has two.
  void emit_chain(const Row& rw, uint32_t begin, uint32_t end, uint8_t width, bool late,
                  const AggregateLayout& layout, const Target& tg, std::vector<PartialState>* o) {
    Entry* first = sorted_.get() + begin;
    Entry* last = sorted_.get() + end;
    auto bucket_less = [](const Entry& a, const Entry& b) { return a.bucket < b.bucket; };
    if (late && !std::is_sorted(first, last, bucket_less)) std::sort(first, last, bucket_less);
    std::byte* merged = nullptr;  // the state of o->back() when two entries were merged into it
    for (Entry* it = first; it != last; ++it) {
      const PartialState ps =
          it->single
              ? PartialState{{rw.row, width, it->bucket}, {it->event, kEventBytes}, true}
              : PartialState{
                    {rw.row, width, it->bucket}, {arena_.get() + it->offset, tg.bytes}, false};
      if (it == first || o->back().key.bucket_start_ns != it->bucket) {
        o->push_back(ps);
        merged = nullptr;
        continue;
      }
      if (merged == nullptr) {  // the same bucket, once in order and once late
        merged = rollup_alloc(tg.bytes);
        layout.init({merged, tg.bytes});
        fold_into(layout, {merged, tg.bytes}, o->back());
        o->back().state = {merged, tg.bytes};
        o->back().single = false;
      }
      fold_into(layout, {merged, tg.bytes}, ps);
    }
  }

  // Cuts the sorted finest-width chain sorted_[begin, end) of row_order_[i] into runs of one
  // block each: a division per block, not per bucket.
  void add_runs(size_t i, uint32_t begin, uint32_t end, const Target& tg) {
    using view_store_internal::Wide;
    const Wide span = Wide{tg.per_block} * tg.widths[0];  // of a block, ns
    Wide block_end = 0;
    for (uint32_t at = begin; at < end; ++at) {
      const int64_t b = sorted_[at].bucket;
      if (at == begin || b >= block_end) {
        const int64_t block = block_of({0, 0, b}, tg.widths, tg.per_block, nullptr).block;
        block_end = Wide{block} * span + span;
        runs_.push_back(Run{block, static_cast<uint32_t>(i), at, at});
      }
      runs_.back().end = at + 1;
    }
  }

  // Orders the runs (made in row order) by (block, row): a stable counting sort by block (a
  // step's blocks are usually few and adjacent), else a stable sort.
  void order_runs() {
    if (runs_.empty()) return;
    int64_t lo = runs_[0].block, hi = runs_[0].block;
    for (const Run& r : runs_) {
      lo = std::min(lo, r.block);
      hi = std::max(hi, r.block);
    }
    const auto by_block = [](const Run& a, const Run& b) { return a.block < b.block; };
    if (static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) >= kMaxCountedBlocks) {
      std::stable_sort(runs_.begin(), runs_.end(), by_block);
      return;
    }
    run_counts_.assign(static_cast<size_t>(hi - lo) + 2, 0);
    for (const Run& r : runs_) ++run_counts_[static_cast<size_t>(r.block - lo) + 1];
    for (size_t i = 1; i < run_counts_.size(); ++i) run_counts_[i] += run_counts_[i - 1];
    runs_sorted_.resize(runs_.size());
    for (const Run& r : runs_) runs_sorted_[run_counts_[static_cast<size_t>(r.block - lo)]++] = r;
    runs_.swap(runs_sorted_);
  }

  // Room for one rolled-up (or merged) state, valid until the next sorted(). Chunks are kept
  // across steps.
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

  size_t budget_;
  size_t max_entries_ = 0;
  size_t limit_entries_ = 0;
  std::vector<const AggregateLayout*> layouts_;
  std::vector<Target> targets_;
  // Power-of-two size, at most 3/4 used: W1's 20,000 rows take 512 KiB (half used: twice that,
  // and the probes left L2 more often).
  std::vector<RowSlot> row_slots_;
  std::vector<Row> rows_;           // the step's rows, in arrival order
  std::vector<Chain> chains_;
  std::vector<Entry> entries_;  // the step's states, in arrival order
  std::vector<LateSlot> late_slots_;
  size_t late_count_ = 0;
  // Commit only:
  std::vector<uint32_t>
      chain_start_;  // the entries of chain c: sorted_[chain_start_[c], chain_next_[c])
  std::vector<uint32_t> chain_next_;
  // The entries at commit, in output order (their chains in row order).
  Buffer<Entry> sorted_;  // entries_.size() of sorted_capacity_ used
  size_t sorted_capacity_ = 0;
  std::vector<uint32_t> row_order_;
  std::vector<size_t>
      target_rows_;  // target t's rows: row_order_[target_rows_[t], target_rows_[t + 1])
  std::vector<uint64_t> emitted_;  // per target: records part() gave since its part 0
  std::vector<PartialState> part_;
  size_t part_row_ = 0;  // the next row (into row_order_) part() emits
  std::vector<PartialState> finest_;  // emit_row: the row's finest-width states
  std::vector<Run> runs_;             // the finest width's blocks, in key order (order_runs)
  std::vector<Run> runs_sorted_;
  std::vector<uint32_t> run_counts_;
  size_t part_run_ = 0;  // the next run part() emits
  bool runs_ordered_ = false;
  std::vector<Buffer<std::byte>> rollup_chunks_;
  size_t rollup_used_ = 0;  // bytes into the chunks, counting skipped chunk tails
  Buffer<std::byte> arena_;
  size_t arena_capacity_ = 0;
  size_t arena_used_ = 0;
  std::vector<Staged> series_;
  std::vector<std::byte> series_bytes_;
};

// What one pass reads and where it folds: the current versions (compaction) or one version
// being built (rebuild).
struct Compactor::Pass {
  uint64_t rebuild_version = 0;
  std::string view;  // rebuild only
  std::vector<uint64_t> versions;  // target index -> version; ViewRouter view index = target
  std::vector<ViewDef> defs;
  std::vector<const AggregateLayout*> layouts;
  std::vector<uint32_t> buckets_per_block;
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
    pass.buckets_per_block.push_back(v->buckets_per_block);
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
    pass.buckets_per_block = {building->buckets_per_block};
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
  partial_->set_targets(pass.layouts, pass.defs, pass.buckets_per_block);
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
    partial_->prepare(&series);
    StepWrite w;
    w.rebuild_version = pass.rebuild_version;
    w.from_offset = step_from;
    w.to = last;
    w.to.end_offset = to_offset;
    w.records = step.records;
    w.series = series;
    step.states = 0;  // known once the store took them
    for (uint32_t t = 0; t < pass.versions.size(); ++t) {
      if (!partial_->has_states(t)) continue;
      w.targets.push_back(StepTarget{
          pass.versions[t], {}, [this, t](size_t part) { return partial_->part(t, part); }});
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
    step.states = partial_->emitted();
    // The step's records are in the batch views now: nothing reads them again soon.
    drop_log_pages(options_.log_dir, step_from, to_offset);
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
    // Its CRC matched: the content rules held when runneld's RecordBuilder wrote it.
    if (!RecordView::validate_structure(rec.payload, &view, &reason)) {
      ++stats.invalid_records;  // the speed path skips it too
      continue;
    }
    const int64_t ts = view.ts_ns();
    step.updates += router.route(view, accept_all, [&](const RowUpdate& u) {
      const bool new_in_step =
          partial_->add(u.view, u.row_id, u.value, ts, u.distinct_hash, u.has_distinct);
      if (new_in_step && known_rows_->insert(u.row_id)) {
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
