// The live tables: the speed layer's aggregates in shared memory. Speed-path workers update
// them, one writer per shard; clients map them read-only and copy entries out lock-free under a
// per-entry seqlock. Layout and probing rules: live_table_layout.h.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/live_table_layout.h"
#include "ipc/shm_object.h"
#include "model/status.h"

namespace runnel::ipc {

// One view of the live tables, as the daemon declares it at creation.
struct LiveViewSpec {
  std::string name;  // 1..63 bytes, unique
  uint32_t view_id = 0;
  uint64_t definition_hash = 0;
  std::string definition;                // ViewDef::canonical(), up to kMaxDefinitionBytes
  uint32_t state_bytes = 0;              // 1..kMaxStateBytes
  std::vector<int64_t> widths_ns;        // 1..kMaxWidths, each > 0
  uint64_t capacity_entries = 0;         // all shards together; split evenly, rounded up per shard
  uint32_t shard_count = 1;              // = the number of speed-path workers
  uint32_t max_probe = 32;               // probe-length bound; capped at the shard capacity
  std::vector<std::byte> initial_state;  // what a new entry starts from; empty = zeros
};

struct EntryKey {
  uint64_t series_id = 0;
  uint32_t width_index = 0;
  int64_t bucket_start_ns = 0;  // bucket_start(ts, widths_ns[width_index])
  uint64_t generation = 0;      // of the events folded in (model/generation.h)
  friend bool operator==(const EntryKey&, const EntryKey&) = default;
};

// An entry's fixed fields, as copied under the seqlock.
struct EntryMeta {
  EntryKey key;
  uint64_t first_pos = 0;  // ring/log positions of the first and last event folded in
  uint64_t last_pos = 0;
  uint64_t update_count = 0;
};

// A view's directory entry.
struct LiveViewInfo {
  std::string_view name;  // points into the mapping
  uint32_t view_id = 0;
  uint64_t definition_hash = 0;
  std::string_view definition;  // ViewDef::canonical(); points into the mapping
  uint32_t state_bytes = 0;
  std::span<const int64_t> widths_ns;  // points into the mapping
  uint32_t shard_count = 0;
  uint64_t shard_capacity = 0;
  uint32_t max_probe = 0;
};

// A view's counters, summed over its shards (relaxed: not a snapshot across fields).
struct LiveViewStats {
  uint64_t capacity_entries = 0;
  uint64_t entries_used = 0;
  uint64_t tombstones = 0;
  uint64_t inserts = 0;
  uint64_t overflow = 0;
  uint64_t evictions = 0;
  uint64_t late_events = 0;
};

enum class ReadStatus : uint8_t {
  kFound,
  kNotFound,
  kBusy,     // the entry stayed mid-write through every retry; try again later
  kInvalid,  // view or width out of range, or out_state smaller than state_bytes
};

enum class WaitStatus : uint8_t {
  kChanged,  // change_seq differs from last_seen
  kTimeout,
  kReplaced,  // a new daemon instance replaced this object: reopen by name
};

// Returned by scan() and read_range().
struct ScanResult {
  uint64_t entries = 0;  // consistent copies handed to the callback
  uint64_t busy = 0;     // entries skipped because they stayed mid-write through every retry
};

// A consistent copy: the entry's fields and its state (state_bytes), valid during the call.
using EntryFn = std::function<void(const EntryMeta&, std::span<const std::byte> state)>;

// Read access to one mapping of the live tables (read-only or read-write); what the daemon and
// clients share. Trivially copyable; valid while the LiveTables or LiveTableReader it came from
// lives. Thread-safe: any number of threads in any process. It never writes to the mapping, so
// a reader can neither stall nor corrupt the writers. read() takes no lock and allocates nothing.
// Calls taking a view index REQUIRE view < view_count(), except read, scan and read_range,
// which report a bad index (kInvalid, nothing scanned).
class LiveTablesView {
 public:
  LiveTablesView() = default;  // no views
  uint32_t view_count() const { return view_count_; }
  std::optional<uint32_t> find_view(std::string_view name) const;
  LiveViewInfo info(uint32_t view) const;
  uint32_t shard_of(uint32_t view, uint64_t series_id) const;
  uint64_t instance_id() const;
  // True once a successor daemon replaced this object (acquire; pairs with the successor's
  // release store in ShmObject::replace).
  bool retired() const;

  // Copies the entry of `key` into out_state (at least state_bytes) and *meta (may be null).
  // Retries while the entry is mid-write, a bounded number of times (spins, yields, then short
  // sleeps: a few ms at most), then reports kBusy. out_state is unspecified unless kFound.
  ReadStatus read(uint32_t view, const EntryKey& key, std::span<std::byte> out_state,
                  EntryMeta* meta) const;

  // Calls fn with a consistent copy of every occupied entry of one shard, or of every shard
  // when `shard` is empty, in slot order. Each slot is copied once, in one consistent state (or
  // counted as busy); an entry evicted and re-inserted during the scan may be missed or seen
  // twice, since it can land in another slot.
  ScanResult scan(uint32_t view, std::optional<uint32_t> shard, const EntryFn& fn) const;

  // The buckets of one series at one width whose start lies in [from_ns, to_ns), in ascending
  // bucket order, every generation of a bucket (in no particular order among them). Probes each bucket start of the range when that is cheaper than scanning the
  // series' shard, else scans the shard for the bucket starts present and then reads those.
  ScanResult read_range(uint32_t view, uint64_t series_id, uint32_t width_index, int64_t from_ns,
                        int64_t to_ns, const EntryFn& fn) const;

  LiveViewStats stats(uint32_t view) const;

  // Entries of the view's generations <= this may have been evicted (the batch layer absorbed
  // them). Acquire: a reader that found a slot emptied by such an eviction sees the new value.
  uint64_t evicted_generation(uint32_t view) const;
  // The batch views' directory the daemon announced; empty: none.
  std::string_view batch_dir() const;

  // The view's change sequence (acquire: pairs with the release increment in end_batch(), so
  // everything written before that batch ended is visible to reads that follow).
  uint32_t change_seq(uint32_t view) const;
  // Sleeps until the view's change_seq differs from `last_seen`, the object is replaced, or
  // the timeout passes. Works on a read-only mapping: the daemon wakes the futex itself (see
  // LiveTables::end_batch and wake_waiters), so a change is seen within the daemon's wake tick.
  WaitStatus wait_for_change(uint32_t view, uint32_t last_seen,
                             std::chrono::nanoseconds timeout) const;

 private:
  friend class LiveTables;
  friend class LiveTableReader;
  friend class ShardWriter;
  explicit LiveTablesView(std::byte* base);  // a validated mapping
  const ViewDescriptor& desc(uint32_t view) const { return descriptors_[view]; }

  std::byte* base_ = nullptr;  // written through only by LiveTables and ShardWriter
  ViewDescriptor* descriptors_ = nullptr;
  uint32_t view_count_ = 0;
};

// The writer of one shard of one view, from LiveTables::attach_writer. REQUIRES: one thread at
// a time (the speed worker that owns the shard); readers may run concurrently in any thread or
// process. Move-only; releases the shard on destruction. No call takes a lock; none allocates
// but attach (the slot index, one byte per slot), track_inserts() (its queue, once) and
// evict_if() while inserts are tracked.
// Pointers it returns stay valid (the slot stays put) until evict_if() or evict_oldest() runs
// on this shard. The LiveTables it came from must outlive it.
class ShardWriter {
 public:
  ShardWriter(ShardWriter&& other) noexcept;
  ShardWriter& operator=(ShardWriter&& other) noexcept;
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  ~ShardWriter();

  uint32_t view() const { return view_; }
  uint32_t shard() const { return shard_; }

  // Where a key's probe starts: its home slot (home_slot() of the layout) and its tag in the
  // writer's slot index (see ctrl_).
  struct Home {
    uint64_t slot;
    uint8_t tag;
  };

  // The entry of `key` (whose series_id must map to this shard), inserted from the view's
  // initial state with update_count 0 if absent. nullptr when no slot within the probe bound is
  // free (the shard is full, or the key's chain is): count it with add_overflow().
  LiveEntry* find_or_insert(const EntryKey& key) { return find_or_insert(key, home(key)); }
  // The same, with `home` = home(key) computed once for prefetch_index(), prefetch_tagged() and
  // this call.
  LiveEntry* find_or_insert(const EntryKey& key, Home home);
  Home home(const EntryKey& key) const;
  // Start loading what find_or_insert(key, home) will touch, so that several lookups' memory
  // latencies overlap (the table is far larger than the caches). In two steps, for the entry
  // the lookup will touch rather than the home slot's: first the key's slot index bytes
  // (prefetch_index); later (prefetch_tagged) it reads them, which should be cached by then,
  // and loads the entry of the first of eight slots from home whose tag matches, else the
  // first free one (where an insert goes), else the home slot's.
  void prefetch_index(Home home) const;
  void prefetch_tagged(Home home) const;

  // Brackets every change to an entry. begin_write makes seq odd (relaxed store) and then issues
  // a release fence, which pairs with the reader's acquire fence before its second seq load: a
  // reader that saw any byte written after begin_write sees the odd seq and retries. end_write
  // makes seq even with a release store, which pairs with the reader's acquire load of seq: a
  // reader that sees the new even seq sees every byte written before it.
  void begin_write(LiveEntry* e);
  void end_write(LiveEntry* e);
  // Copies the entry's state into `out` (state_bytes), word by word as readers do.
  void copy_state(const LiveEntry* e, std::span<std::byte> out) const;
  // Between begin_write and end_write: the state in place. Plain stores through it would race
  // with readers' copies (formally a data race, though the seq re-check discards what they
  // saw); the speed path therefore updates a private copy and writes it back with
  // store_state(), atomically word by word.
  std::span<std::byte> state(LiveEntry* e) const;
  void store_state(LiveEntry* e, std::span<const std::byte> state_bytes);
  // Between begin_write and end_write: one more event at ring/log position `pos` folded in.
  void note_position(LiveEntry* e, uint64_t pos);
  EntryMeta meta(const LiveEntry* e) const;

  // Evicts every occupied entry of the shard for which pred(meta) is true (e.g. a bucket older
  // than the live window, or last_pos below the batch watermark), leaving tombstones only where
  // a probe chain may continue past them (see evict_oldest). Readers racing with it see each
  // entry either consistent or not found. Returns the count evicted.
  uint64_t evict_if(const std::function<bool(const EntryMeta&)>& pred);

  // Eviction in insertion order, whose cost follows the inserts rather than the shard's size
  // (a whole-shard evict_if() reads every slot). With track_inserts(), every slot that
  // find_or_insert() fills is queued (a process-local queue of at most the shard's capacity,
  // allocated once). evict_oldest() then looks at up to `max_looks` queued entries from the
  // oldest: one for which evict(meta, updated) is true is evicted; otherwise, if more(meta) is
  // false it stops there, else the entry is queued again at the back and it goes on. `updated`
  // says whether the entry was updated since it was queued (the update that follows an insert
  // does not count), so a caller can give recently updated entries a second chance. Returns
  // the count evicted. An evicted slot becomes empty when the next slot is empty (no probe
  // chain crosses it then), and so do the tombstones just before it; else it becomes a
  // tombstone.
  void track_inserts();
  using EvictFn = std::function<bool(const EntryMeta&, bool updated)>;
  // *stopped (optional): true if it stopped at an entry or emptied the queue, false if it
  // ran out of looks.
  uint64_t evict_oldest(uint64_t max_looks, const EvictFn& evict,
                        const std::function<bool(const EntryMeta&)>& more,
                        bool* stopped = nullptr);
  // Entries in the insertion queue.
  uint64_t queued() const { return queue_size_; }
  // Keys inserted into this shard so far (this writer's counter).
  uint64_t inserts() const;

  void add_overflow(uint64_t events = 1);
  void add_late(uint64_t events = 1);
  // Occupied entries of this shard (tombstones excluded), its tombstones, and its slot count.
  uint64_t used() const;
  uint64_t tombstones() const;
  uint64_t capacity() const { return capacity_; }

 private:
  friend class LiveTables;
  ShardWriter(const LiveTablesView& tables, uint32_t view, uint32_t shard,
              std::atomic<uint8_t>* claim);
  LiveEntry* slot(uint64_t i) const;
  void bump(std::atomic<uint64_t>& counter, int64_t delta) const;
  void set_flags(LiveEntry* e, uint32_t flags);
  void release();
  // Evicts the occupied slot i (tombstone, or empty with the tombstones before it); returns
  // the tombstones added (1, or minus those emptied). Every eviction goes through here, so a
  // tombstone is never followed by an empty slot.
  int64_t remove(uint64_t i);

  ViewDescriptor* desc_ = nullptr;
  ShardCounters* counters_ = nullptr;
  const std::byte* initial_state_ = nullptr;
  std::byte* entries_ = nullptr;  // this shard's first slot
  std::atomic<uint8_t>* claim_ = nullptr;
  uint64_t capacity_ = 0;
  uint32_t entry_bytes_ = 0;
  uint32_t state_bytes_ = 0;
  uint32_t max_probe_ = 0;
  uint32_t view_ = 0;
  uint32_t shard_ = 0;
  uint32_t shard_count_ = 0;
  // Insertion queue (track_inserts): a ring of capacity_ items, each a slot index (low 32
  // bits) and the entry's update count (low 32 bits of it) when it was queued.
  static uint64_t queue_item(uint32_t slot, uint32_t updates) {
    return uint64_t{updates} << 32 | slot;
  }
  static uint32_t queued_slot(uint64_t item) { return static_cast<uint32_t>(item); }
  static uint32_t queued_updates(uint64_t item) { return static_cast<uint32_t>(item >> 32); }
  std::vector<uint64_t> queue_;
  uint64_t queue_head_ = 0;
  uint64_t queue_size_ = 0;
  // Index of the n-th queued item from the head (n <= capacity_), without a division.
  uint64_t queue_index(uint64_t n) const {
    const uint64_t i = queue_head_ + n;
    return i >= capacity_ ? i - capacity_ : i;
  }
  // The slot index: one byte per slot of the shard, process-local, kept by this writer next to
  // every flags change: kCtrlEmpty, kCtrlTombstone, or kCtrlOccupied | 7 bits of the key's
  // hash and generation. A probe reads it (a few hundred KiB, cache-resident) instead of the
  // entries (64 MB, one cache miss each), and reads an entry's key only when its tag matches
  // (1 in 128 for another key). Built from the entries' flags at attach; readers in other
  // processes probe the entries themselves.
  static constexpr uint8_t kCtrlEmpty = 0;
  static constexpr uint8_t kCtrlTombstone = 1;
  static constexpr uint8_t kCtrlOccupied = 0x80;
  // The generation is mixed in: every unabsorbed generation of a bucket has an entry on the
  // same probe chain (one home per bucket), and a lookup should read only its own.
  static uint8_t tag_of(uint64_t hash, uint64_t generation) {
    // Low bits of the hash: its high bits pick the home slot, so keys of one chain share them.
    return static_cast<uint8_t>(kCtrlOccupied |
                                ((hash ^ (generation * 0x9E3779B97F4A7C15ULL) >> 57) & 0x7f));
  }
  uint64_t next(uint64_t i) const { return i + 1 == capacity_ ? 0 : i + 1; }
  // ctrl_ holds capacity_ bytes and then a copy of the first max_probe_ + 8 (wrapping): a
  // probe reads the bytes from its home slot on, eight at a time, without wrapping.
  void set_ctrl(uint64_t i, uint8_t c);
  std::vector<uint8_t> ctrl_;
};

// The daemon's read-write mapping: creates "/dev/shm/<shm_name>.live" at start-up and hands out
// shard writers. Introspection and the read API (tables()): any thread.
class LiveTables {
 public:
  // Minimum spacing of the FUTEX_WAKEs that end_batch() issues per view.
  static constexpr std::chrono::nanoseconds kWakeInterval = std::chrono::milliseconds(1);

  // Start-up only. Replaces any previous instance (retiring it, see ShmObject::replace) with a
  // new, empty object holding `views`. Errors name the object and the offending view.
  // `batch_dir`: the batch views' directory, announced to clients (at most kMaxBatchDirBytes).
  static Result<LiveTables> create(const std::string& shm_name, std::span<const LiveViewSpec> views,
                                   const ShmOptions& options = {}, std::string_view batch_dir = {});
  static Status remove(const std::string& shm_name);

  LiveTables(LiveTables&&) noexcept;
  LiveTables& operator=(LiveTables&&) noexcept;
  LiveTables(const LiveTables&) = delete;
  LiveTables& operator=(const LiveTables&) = delete;
  ~LiveTables();

  // At most one writer per (view, shard) in this process at a time (Busy otherwise).
  Result<ShardWriter> attach_writer(uint32_t view, uint32_t shard);

  // Called by each worker after a batch that changed `view`: increments the view's change_seq
  // (release) and, if no FUTEX_WAKE went out for the view within kWakeInterval, wakes waiting
  // clients. Lock-free; one atomic increment, a syscall at most every kWakeInterval per view.
  void end_batch(uint32_t view);
  // Wakes the waiters of every view whose change_seq moved since its last wake. The daemon calls
  // it every few ms (a timer, or a worker going idle), so that changes end_batch() did not wake
  // for are seen within that tick. Read-only clients cannot ask for wake-ups, so this bounded
  // tick replaces a waiters flag: the daemon's cost is independent of what clients do.
  void wake_waiters();

  // Announces, before evicting them, that the view's entries of generations <= g may be gone
  // (release); see LiveTablesView::evicted_generation. Never lowers the value.
  void publish_evicted_generation(uint32_t view, uint64_t g);

  const LiveTablesView& tables() const { return view_; }
  const std::string& name() const { return shm_.name(); }
  uint64_t instance_id() const { return view_.instance_id(); }

 private:
  LiveTables(ShmObject shm, const LiveTablesView& view);

  ShmObject shm_;
  LiveTablesView view_;
  std::unique_ptr<std::atomic<uint8_t>[]> claims_;  // one per (view, shard): writer attached
};

// A client's read-only mapping (PROT_READ). The read API is tables(); after a daemon restart
// tables().retired() turns true (and wait_for_change returns kReplaced): open() again.
class LiveTableReader {
 public:
  static Result<LiveTableReader> open(const std::string& shm_name);

  LiveTableReader(LiveTableReader&&) noexcept;
  LiveTableReader& operator=(LiveTableReader&&) noexcept;
  LiveTableReader(const LiveTableReader&) = delete;
  LiveTableReader& operator=(const LiveTableReader&) = delete;
  ~LiveTableReader();

  const LiveTablesView& tables() const { return view_; }
  // The whole read-only mapping, for diagnostics (and the test that a write to it faults).
  std::span<const std::byte> mapping() const { return {shm_.data(), shm_.size()}; }

 private:
  LiveTableReader(ShmObject shm, const LiveTablesView& view);
  ShmObject shm_;
  LiveTablesView view_;
};

}  // namespace runnel::ipc
