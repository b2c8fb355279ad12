// The batch views in LMDB (DATA_DIR/views): ViewStore, the daemon's single writer (compaction
// steps, view versions, bucket retention), and ViewReader / ViewSnapshot, the read-only side
// that clients open from other processes to merge batch ⊕ live.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/aggregate.h"
#include "model/status.h"
#include "model/view.h"
#include "storage/lmdb_env.h"

namespace runnel::storage {

// ---------------------------------------------------------------------------------------------
// Files and permissions
//
// DATA_DIR/views/ is one LMDB environment (a directory, not MDB_NOSUBDIR):
//   data.mdb  the B-trees. Mode 0640: the daemon writes it, group `runnel` reads it.
//   lock.mdb  LMDB's reader table and writer mutex. Mode 0660: a read-only client WRITES here,
//             because every LMDB reader registers the transaction id it reads in a slot of this
//             table, so that the writer never reuses pages a reader may still see (MVCC).
// A client therefore needs read access to data.mdb and read-write access to lock.mdb (group
// `runnel`), and never writes data.mdb (it maps it PROT_READ). The alternative, MDB_NOLOCK
// readers, is rejected: a reader without a slot is invisible to the writer, which can then
// recycle the pages under it and the reader returns garbage. (LMDB opens without locks only on
// a read-only file system, where no writer can run anyway.) A reader in a long transaction does
// not stall the daemon (LMDB writers never wait for readers) but keeps the pages of its
// snapshot from reuse, so the file grows until it ends; the writer clears the slots of dead
// reader processes (mdb_reader_check) at every step.
// LMDB's locks are per process: a process opens the environment once. The daemon reads through
// ViewStore::snapshot(), never through a second ViewReader.
//
// Named databases (MDB_dbi):
//   "meta"                 store record, batch watermark, view and version records (below)
//   "series"               row id -> row key bytes
//   "d/<view>/<version>"   one per view version: block key -> block of bucket states
//
// A block holds up to B buckets of one (row, width) that lie next to each other in time, so a
// compaction step writes one LMDB value per touched block (not one per bucket) and a range read
// walks few keys. B, the version's buckets_per_block, is fixed when the version is created:
// buckets_per_block(state_bytes) = clamp((kBlockTargetBytes - 16) / state_bytes, 1, 64); it is
// recorded in the version and view records below. Bucket starts are multiples of their width
// (model/clock.h bucket_start); bucket number q = bucket_start_ns / width_ns lies in block
// floor(q / B) at slot q - B * floor(q / B).
//
// Data key (18 bytes). The finest width (index 0) is time-major: its blocks sort by block, then
// row, after every other key, so a compaction step (which mostly brings the newest buckets of
// every row) appends them at the end of the B-tree (MDB_APPEND, full pages) instead of
// inserting one per row all over it. The coarser widths are row-major, so that one cursor range
// over (row, width) walks its blocks in time order; a read of the finest width looks its blocks
// up one by one (bounded by its retention: 1 day of 1 s buckets is 2,469 blocks of 35).
//   row-major (width_index > 0):
//   off  size  field
//   0    1     order            0
//   1    8     row_id           big-endian u64 (model/view_router.h make_row_id)
//   9    1     width_index      index into the version's ViewDef::widths_ns (ascending)
//   10   8     block            big-endian u64 of (i64 block number XOR 0x8000000000000000),
//                               so that signed order is byte order (pre-1970 blocks sort first)
//   time-major (width_index == 0):
//   0    1     order            1
//   1    8     block            as above
//   9    8     row_id           big-endian u64
//   17   1     width_index      0
// Data value (16 + f * state_bytes + c * 16 bytes; little-endian, no alignment assumed):
//   off  size   field
//   0    8      u64 present   bit s set: the bucket in slot s is stored (s < B); never 0
//   8    8      u64 compact   bit s set (only where present): slot s is stored compact
//   16   ...    the states of the present slots in ascending slot order (time order), each
//              either full: AggregateLayout::state_bytes() of the version's definition
//                   (model/aggregate.h), f of them;
//              or compact (16 bytes, c of them): i64 ts_ns, f64 value, standing for the
//                   state that AggregateLayout::init() then update(value, ts_ns) gives. The
//                   writer stores a bucket compact only when that state equals its full one
//                   byte for byte (a bucket of one event, without a distinct count), so that
//                   buckets of single events (1s buckets of a series sampled every few
//                   seconds) take 16 bytes, not state_bytes.
//
// Series key: row_id as 8 bytes big-endian. Value: the row key bytes of
// model/view_router.h (group key block + u16 field_len + field), the same bytes the live series
// dictionary holds, so rows stay nameable after the daemon (and its dictionary) restarted.
//
// Meta records (little-endian, no alignment assumed):
//   key "store"
//     0   8  magic "RNLVIEWS"
//     8   4  u32 layout version (kViewStoreLayoutVersion)
//     12  4  reserved, 0
//     16  8  u64 next_version: version numbers are unique in the store, never reused
//   key "watermark" (the batch watermark)
//     0   8  u64 log_offset          every log record below this offset is in every current
//                                    version; the next step starts reading here
//     8   8  u64 records             log records absorbed in total
//     16  8  u64 last_record_offset  the last absorbed record (valid when records > 0)
//     24  8  u64 ring_epoch          ... its ring epoch and position as the journal logged
//     32  8  u64 ring_pos                them, for the speed layer's absorption test
//     40  8  i64 commit_ns           CLOCK_REALTIME of the step's commit
//   key "view/<name>" (the view and its current version's definition)
//     0   8  u64 current_version     0 while the view's first version is still being built
//     8   8  u64 building_version    0 when no rebuild is in progress
//     16  8  u64 definition_hash     of the current version (ViewDef::definition_hash)
//     24  8  u64 state_format_id     AggregateLayout::state_format_id of the current version
//     32  4  u32 state_bytes
//     36  4  u32 canonical_len
//     40  4  u32 buckets_per_block   of the current version (0 without one)
//     44  4  u32 width_count         of the current version (<= ViewDef::kMaxWidths)
//     48  64 i64 widths_ns[8]        its bucket widths; unused entries 0
//     112 n  ViewDef::canonical() of the current version
//   key "version/<name>/<version as 20 decimal digits>"
//     0   8  u64 covered_offset      log records below it are in this version (a current
//                                    version: equal to the watermark)
//     8   8  u64 definition_hash
//     16  8  u64 state_format_id
//     24  4  u32 state_bytes
//     28  4  u32 state               1 building, 2 current, 3 retired (its database is dropped
//                                    once no snapshot of this process uses it)
//     32  8  i64 created_ns
//     40  4  u32 canonical_len
//     44  4  u32 buckets_per_block   B of this version's blocks
//     48  8  u64 bucket_count        buckets stored (present bits over all blocks), kept by
//                                    every transaction that adds or deletes buckets
//     56  n  ViewDef::canonical()
//
// One watermark for all views. A compaction step merges partial states into every current
// version and advances the watermark (and the current versions' covered_offset) in the same
// transaction, so a reader sees data and watermark change together. A rebuild fills a
// building version from the oldest retained record, advancing only that version's
// covered_offset, until it equals the watermark; then one transaction makes it current and
// retires the old one. The compactor runs steps and rebuild steps in one thread, so the
// watermark cannot move between the rebuild's last step and the switch.
// ---------------------------------------------------------------------------------------------

inline constexpr char kViewStoreMagic[8] = {'R', 'N', 'L', 'V', 'I', 'E', 'W', 'S'};
// Older layouts are not read: 1 stored one LMDB key per bucket, 2 had row-major keys only.
inline constexpr uint32_t kViewStoreLayoutVersion = 3;
inline constexpr size_t kBlockKeyBytes = 18;
inline constexpr size_t kBlockHeaderBytes = 16;
inline constexpr size_t kCompactStateBytes = 16;
inline constexpr uint32_t kMaxBucketsPerBlock = 64;
// The most bytes a block of full states takes: LMDB keeps a value of up to about 2012 bytes
// (18-byte key, 4 KiB pages) inside its leaf page, a larger one takes overflow pages of its own.
// Blocks of the default view's 56-byte states hold 35 buckets: small enough to rewrite whole
// when a step adds to one, big enough that a step writes few keys.
inline constexpr size_t kBlockTargetBytes = 2000;
inline constexpr size_t kSeriesKeyBytes = 8;
inline constexpr uint64_t kBucketSignBit = uint64_t{1} << 63;

uint32_t buckets_per_block(size_t state_bytes);

// One bucket of one row.
struct BucketKey {
  uint64_t row_id = 0;
  uint8_t width_index = 0;
  int64_t bucket_start_ns = 0;  // a multiple of the width
  friend auto operator<=>(const BucketKey&, const BucketKey&) = default;
};

// One block of one row: the data key above, decoded. No ordering: the keys' order is that of
// their encoded bytes.
struct BlockKey {
  uint64_t row_id = 0;
  uint8_t width_index = 0;
  int64_t block = 0;
  friend bool operator==(const BlockKey&, const BlockKey&) = default;
};
// Whether the blocks of a width sort by block, then row (the finest) rather than by row.
inline bool time_major(uint8_t width_index) { return width_index == 0; }
void encode_block_key(const BlockKey& key, std::span<std::byte, kBlockKeyBytes> out);
// REQUIRES: bytes.size() == kBlockKeyBytes.
BlockKey decode_block_key(std::span<const std::byte> bytes);
// The block of `key` (a bucket start of width widths_ns[key.width_index]) and its slot in it.
BlockKey block_of(const BucketKey& key, const std::vector<int64_t>& widths_ns,
                  uint32_t buckets_per_block, uint32_t* slot);
// Whether a precedes b in the order a step gives its states (StepTarget): the data keys' order,
// then time. REQUIRES: both are bucket starts of their widths.
bool step_order_less(const BucketKey& a, const BucketKey& b, const std::vector<int64_t>& widths_ns,
                     uint32_t buckets_per_block);

// Where the batch layer stands in the log (the "watermark" record).
struct Watermark {
  uint64_t log_offset = 0;
  uint64_t records = 0;
  uint64_t last_record_offset = 0;
  uint64_t ring_epoch = 0;
  uint64_t ring_pos = 0;
  int64_t commit_ns = 0;
};

enum class VersionState : uint32_t { kBuilding = 1, kCurrent = 2, kRetired = 3 };

// A view as one snapshot sees it: its current version, whose states the snapshot serves.
struct ViewInfo {
  std::string name;
  uint64_t current_version = 0;   // 0: no batch data yet (the first build is in progress)
  uint64_t building_version = 0;  // 0: no rebuild in progress
  std::string definition;         // ViewDef::canonical() of the current version
  uint64_t definition_hash = 0;
  uint64_t state_format_id = 0;
  uint32_t state_bytes = 0;
  uint64_t covered_offset = 0;  // the watermark when current_version != 0
  uint32_t buckets_per_block = 0;  // of the current version
  std::vector<int64_t> widths_ns;  // of the current version
};

namespace view_store_internal {
struct Shared;
}

// One consistent read of the batch views: a read-only LMDB transaction, so the watermark, the
// current versions and every state it returns belong to one committed step, whatever the
// writer commits or switches meanwhile. Spans that get() returns point into the read-only map
// (or, for a bucket stored compact, into memory of the snapshot) and stay valid until the
// snapshot is destroyed; those scan() passes to its callback only until the callback returns.
// Move-only; one thread at a time (it may move between threads). While it lives, the writer cannot
// reuse its pages: keep snapshots short.
class ViewSnapshot {
 public:
  // fn(bucket_start_ns, state) per bucket; return false to stop. `state` is valid during the call.
  using BucketFn = std::function<bool(int64_t, std::span<const std::byte>)>;

  ViewSnapshot(ViewSnapshot&& other) noexcept;
  ViewSnapshot& operator=(ViewSnapshot&& other) noexcept;
  ~ViewSnapshot();

  const Watermark& watermark() const { return watermark_; }
  const std::vector<ViewInfo>& views() const { return views_; }
  const ViewInfo* find_view(std::string_view name) const;

  // The state of one bucket, or nullopt. `view` is one of views().
  Result<std::optional<std::span<const std::byte>>> get(const ViewInfo& view,
                                                        const BucketKey& key) const;
  // Buckets of one row and width whose start lies in [from_ns, to_ns), in time order. The finest
  // width (time-major) costs one lookup per block number that some row has in the range.
  Status scan(const ViewInfo& view, uint64_t row_id, uint8_t width_index, int64_t from_ns,
              int64_t to_ns, const BucketFn& fn) const;
  // Row ids with at least one bucket in the view, ascending; fn returns false to stop. Walks
  // every block of the finest width (time-major) and holds the row ids (tests, tools).
  Status for_each_row(const ViewInfo& view, const std::function<bool(uint64_t)>& fn) const;
  // Every named row of the store (all views): fn(row_id, row key bytes); false stops.
  Status for_each_series(
      const std::function<bool(uint64_t, std::span<const std::byte>)>& fn) const;
  Result<std::optional<std::span<const std::byte>>> row_key(uint64_t row_id) const;
  // Buckets stored in the view's current version (its version record's count; 0 without one).
  Result<uint64_t> bucket_count(const ViewInfo& view) const;

 private:
  friend struct view_store_internal::Shared;
  ViewSnapshot() = default;
  Result<size_t> index_of(const ViewInfo& view) const;
  Status block_error(const ViewInfo& view, uint64_t row_id, std::span<const std::byte> value) const;
  void release();

  std::shared_ptr<view_store_internal::Shared> shared_;
  lmdb::Txn txn_;
  Watermark watermark_;
  std::vector<ViewInfo> views_;
  std::vector<std::string> dbi_names_;  // parallel to views_; empty without a current version
  std::vector<unsigned> dbis_;          // parallel to views_ (MDB_dbi)
  mutable std::deque<std::vector<std::byte>> expanded_;  // compact states get() returned in full
};

struct ViewReaderOptions {
  // Address space reserved for the read-only map (not memory): the writer's file may grow to
  // this size without readers having to re-map. Larger files are adopted when no snapshot
  // of this reader is open (else snapshot() returns Busy once).
  uint64_t map_bytes = uint64_t{64} << 30;
  unsigned max_dbs = 256;
};

// The read-only side, for clients in other processes. Thread-safe: any thread may take
// snapshots concurrently. NotFound when the daemon has not created the views yet; an IoError
// naming lock.mdb when the process may not write the lock file (see "Files and permissions").
class ViewReader {
 public:
  static Result<std::unique_ptr<ViewReader>> open(const std::filesystem::path& dir,
                                                  const ViewReaderOptions& options = {});
  ~ViewReader();
  ViewReader(const ViewReader&) = delete;
  ViewReader& operator=(const ViewReader&) = delete;

  Result<ViewSnapshot> snapshot() const;

 private:
  explicit ViewReader(std::shared_ptr<view_store_internal::Shared> shared);
  std::shared_ptr<view_store_internal::Shared> shared_;
};

// ----- writer side -----

struct ViewStoreOptions {
  std::filesystem::path dir;  // DATA_DIR/views; created (0750) if missing
  uint64_t initial_map_bytes = uint64_t{64} << 20;
  // The map grows (doubling) up to this; a step that does not fit then fails with Full and
  // the message names the setting. Config: batch.max_map_bytes.
  uint64_t max_map_bytes = uint64_t{64} << 30;
  bool sync = true;         // fdatasync every commit; false (MDB_NOSYNC) only for tests/benches
  bool write_map = false;   // experimental: MDB_WRITEMAP
  mode_t data_mode = 0640;  // data.mdb
  mode_t lock_mode = 0660;  // lock.mdb: readers write their reader slot here
  unsigned max_readers = 126;
  unsigned max_dbs = 256;  // meta + series + 2 per view (current and building) + retired
};

// Counters of a ViewStore, readable from any thread (relaxed loads).
struct ViewStoreCounters {
  std::atomic<uint64_t> steps{0};             // compaction and rebuild steps committed
  std::atomic<uint64_t> states_written{0};    // bucket states put (new or merged)
  std::atomic<uint64_t> states_merged{0};     // ... of which merged into an existing state
  std::atomic<uint64_t> map_grows{0};         // times the map was enlarged
  std::atomic<uint64_t> map_full_errors{0};   // steps refused at max_map_bytes
  std::atomic<uint64_t> txn_full_errors{0};   // steps too large for one LMDB transaction
  std::atomic<uint64_t> stale_readers_cleared{0};
  std::atomic<uint64_t> buckets_expired{0};   // deleted by bucket retention
  std::atomic<uint64_t> versions_dropped{0};
};

// One version of one view, as the writer knows it.
struct VersionMeta {
  std::string view;
  uint64_t version = 0;
  VersionState state = VersionState::kBuilding;
  ViewDef def;  // parsed from the stored canonical text
  std::string canonical;
  uint64_t definition_hash = 0;
  uint64_t state_format_id = 0;
  uint32_t state_bytes = 0;
  uint32_t buckets_per_block = 0;
  uint64_t bucket_count = 0;
  uint64_t covered_offset = 0;
  int64_t created_ns = 0;
  std::shared_ptr<const AggregateLayout> layout;  // of def
};

struct ViewMeta {
  std::string name;
  uint64_t current_version = 0;
  uint64_t building_version = 0;
};

// Everything in "meta", as committed.
struct StoreState {
  Watermark watermark;
  std::vector<ViewMeta> views;                 // by name
  std::map<uint64_t, VersionMeta> versions;    // by version number
  const ViewMeta* find_view(std::string_view name) const;
  const VersionMeta* find_version(uint64_t version) const;
};

// ----- one compaction step -----

// A partial state for one bucket: merged (AggregateLayout::merge) into the stored state. Its
// bucket_start_ns must be a multiple of its width (else the step is Invalid).
struct PartialState {
  BucketKey key;
  // AggregateLayout::state_bytes() bytes; or, when `single`, 16 bytes (i64 ts_ns, f64 value):
  // one event, standing for the state that AggregateLayout::init() then update(value, ts_ns,
  // 0, false) gives. A new bucket given as one event is stored compact without a check.
  std::span<const std::byte> state;
  bool single = false;
};
// Folds the one event of a single state (16 bytes: i64 ts_ns, f64 value) into `into`, a full
// state: what AggregateLayout::update(value, ts_ns, 0, false) does. On an init() state it gives
// the full state the single one stands for.
void fold_single(const AggregateLayout& layout, const std::byte* single, std::span<std::byte> into);
// The partial states of one version, in the data keys' order (step_order_less), each key once:
// `states`, then what `more` gives, if set: more(0), more(1), ... until it returns an empty span,
// each part after the previous one in key order and valid until the next call. The store may start
// over from more(0) (it redoes a transaction after growing the map). So a writer need not hold a
// whole step's records at once.
struct StepTarget {
  uint64_t version = 0;
  std::span<const PartialState> states;
  std::function<std::span<const PartialState>(size_t part)> more;
};
struct SeriesName {
  uint64_t row_id = 0;
  std::span<const std::byte> key;
};
// The log position a step's coverage advances to.
struct LogPosition {
  uint64_t end_offset = 0;          // just past the last record of the step
  uint64_t last_record_offset = 0;  // the last record of the step
  uint64_t ring_epoch = 0;
  uint64_t ring_pos = 0;
};
struct StepWrite {
  // 0: a compaction step, whose targets are current versions; it advances the watermark and
  // every current version. Else a rebuild step of this building version, which is its only
  // target and the only coverage it advances.
  uint64_t rebuild_version = 0;
  uint64_t from_offset = 0;  // must equal the coverage it advances: no record counted twice
  LogPosition to;
  uint64_t records = 0;  // log records in [from_offset, to.end_offset)
  std::vector<StepTarget> targets;
  std::span<const SeriesName> series;  // rows to name (existing names are kept)
};

enum class CommitError {
  kNone,
  kMapFull,  // the map is at max_map_bytes
  kTxnFull,  // too many dirty pages for one LMDB transaction: split the step
  kStale,    // from_offset is not the stored coverage (another writer, or a bug)
  kOther,
};

// Whether two definitions give the same batch states: they differ at most in live_window and
// capacity, which only the speed layer uses (so a change there needs no rebuild).
bool same_batch_states(const ViewDef& a, const ViewDef& b);

// Bucket retention per width: a bucket is deleted once its start is older than keep_ns before
// "now". The first rule whose max_width_ns >= the bucket width applies; wider buckets and
// keep_ns == 0 are kept forever.
struct BucketRetention {
  struct Rule {
    int64_t max_width_ns = 0;
    int64_t keep_ns = 0;
  };
  std::vector<Rule> rules = {{1'000'000'000, 86'400'000'000'000},                // 1s: a day
                             {60'000'000'000, 31 * 86'400'000'000'000}};        // 1m: a month
  int64_t keep_ns(int64_t width_ns) const;  // 0: forever
};

// The daemon's writer of DATA_DIR/views. One per data directory (LMDB's writer mutex, and the
// daemon's own lock); every method REQUIRES external synchronization (one compaction thread),
// except counters() and snapshot(), which any thread may call.
class ViewStore {
 public:
  // Creates the environment on first use (files with the options' modes). Errors name the
  // directory and LMDB's reason, e.g. a read-only directory or a layout this build does not
  // read (Unsupported).
  static Result<std::unique_ptr<ViewStore>> open(const ViewStoreOptions& options);
  ~ViewStore();
  ViewStore(const ViewStore&) = delete;
  ViewStore& operator=(const ViewStore&) = delete;

  const StoreState& state() const { return state_; }
  const Watermark& watermark() const { return state_.watermark; }
  // The lowest log offset a view still needs: the watermark, or the coverage of a version
  // being built if lower. Log segments that end at or below it may be deleted.
  uint64_t retention_offset() const;

  // One transaction: merges the step's partial states into their versions, names new rows and
  // advances the coverage. On MDB_MAP_FULL the map grows (doubling, up to max_map_bytes) and
  // the step is retried; beyond that Full, naming batch.max_map_bytes. Nothing is written on
  // any error, so the step can be redone from the log. `why` (optional) classifies an error.
  Status commit_step(const StepWrite& step, CommitError* why = nullptr);

  // A new version of def.name to be built from the log, starting at `start_offset` (the oldest
  // retained record); the view is created if new. An earlier building version is retired.
  Result<uint64_t> begin_version(const ViewDef& def, uint64_t start_offset);
  // Makes the building version of `view` current and retires the old current one, in one
  // transaction. REQUIRES: its covered_offset equals the watermark (else Invalid).
  Status switch_version(std::string_view view);
  // Rewrites the current version's definition text when only settings the batch states do not
  // depend on (live_window, capacity) changed. Invalid if the states would differ.
  Status update_definition(const ViewDef& def);
  // Retires the version of `view` being built (its rebuild is abandoned).
  Status cancel_build(std::string_view view);
  // Retires every version of `view` and removes it from the views readers list.
  Status remove_view(std::string_view view);
  // Drops the databases of retired versions that no snapshot of this process uses; returns
  // how many. Readers in other processes keep reading their snapshot (LMDB MVCC).
  Result<size_t> drop_retired();

  // Deletes buckets older than the retention of their width in every current and building
  // version; a transaction ends after the block in which it reached max_deletes_per_txn
  // buckets. Returns the buckets deleted.
  Result<uint64_t> apply_retention(const BucketRetention& retention, int64_t now_ns,
                                   uint64_t max_deletes_per_txn = 10'000);

  // A consistent read in this process (the daemon's; tests). While one is open the map
  // cannot grow (LMDB re-maps only with no transaction open in the process): a step that needs
  // more room then fails with Busy, and is redone by the next compaction. Keep them short.
  Result<ViewSnapshot> snapshot() const;

  const ViewStoreCounters& counters() const { return counters_; }
  uint64_t map_bytes() const;
  const std::filesystem::path& dir() const { return options_.dir; }

 private:
  explicit ViewStore(const ViewStoreOptions& options);
  Status load_state();
  // Runs fn in a write transaction and commits; on MDB_MAP_FULL grows the map and retries.
  // `opens_dbis`: fn opens or drops databases (holds the handle lock for the whole txn).
  Status write(const std::function<Status(lmdb::Txn&)>& fn, bool opens_dbis,
               CommitError* why = nullptr);
  Status grow_map(CommitError* why);
  Status apply_step(lmdb::Txn& txn, const StepWrite& step, CommitError* why);
  // Adds the states merged (new or not) to *states_seen.
  Result<uint64_t> merge_blocks(lmdb::Txn& txn, MDB_dbi dbi, const VersionMeta& v,
                                const StepTarget& target, uint64_t* states_seen);
  Result<MDB_dbi> data_dbi(std::string_view view, uint64_t version) const;

  ViewStoreOptions options_;
  std::shared_ptr<view_store_internal::Shared> shared_;
  StoreState state_;
  ViewStoreCounters counters_;
  std::vector<std::byte> merge_buf_;
  std::vector<std::byte> merge_states_;     // merge_blocks: per slot, a merged state
  std::vector<std::byte> compact_scratch_;  // merge_blocks: one state
  std::byte compact_states_[kMaxBucketsPerBlock][kCompactStateBytes];  // per slot, compact form
  std::vector<std::pair<uint64_t, int64_t>> step_bucket_delta_;        // (version, buckets added)
  uint64_t step_states_ = 0;                                           // states merged by the step
};

}  // namespace runnel::storage
