// The batch layer's computation: Compactor folds sealed log segments into the LMDB views
// (ViewStore) through the same ViewRouter and AggregateLayout code as the speed path, rebuilds
// view versions from the retained log (Kappa reprocessing), and plans log retention.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/status.h"
#include "model/known_rows.h"
#include "model/view.h"
#include "storage/view_store.h"

namespace runnel::storage {

// What one committed (or about to be committed) step covers.
struct StepReport {
  uint64_t version = 0;  // 0: a compaction step (every current version); else the rebuilt one
  std::string view;      // the rebuilt view; empty for a compaction step
  uint64_t from_offset = 0;
  uint64_t to_offset = 0;  // the new watermark (or the rebuilt version's coverage)
  uint64_t records = 0;
  uint64_t bytes = 0;    // log bytes of those records, framing included
  uint64_t updates = 0;  // (row, value) updates routed, before the per-width fan-out
  uint64_t states = 0;   // bucket states merged into LMDB (known once committed: 0 before)
};

struct CompactorOptions {
  std::filesystem::path log_dir;  // DATA_DIR/log
  // Partial states, their hash index and staged row names held between commits. A step is
  // committed when this is reached (a larger budget merges more events per bucket in memory).
  size_t memory_budget_bytes = size_t{128} << 20;
  uint64_t max_step_records = 0;  // 0: no limit besides the budget (tests: many small steps)
  // Called with the step just before its transaction commits (tests inject crashes here) and
  // just after (the daemon: counters, live-state expiry up to the new watermark).
  std::function<void(const StepReport&)> before_commit;
  std::function<void(const StepReport&)> after_commit;
};

struct CompactionStats {
  uint64_t steps = 0;
  uint64_t records = 0;
  uint64_t bytes = 0;
  uint64_t updates = 0;
  uint64_t states = 0;
  uint64_t invalid_records = 0;  // CRC-valid log records that are not valid event records
  uint64_t step_splits = 0;      // steps redone smaller after MDB_TXN_FULL
  double seconds = 0;
  bool caught_up = false;  // reached the end of the sealed log (a rebuild: switched)
  double records_per_second() const { return seconds > 0 ? static_cast<double>(records) / seconds : 0; }
  void add(const CompactionStats& other);
};

// What Compactor::open did to make the store match the configured views.
struct ReconcileReport {
  std::vector<std::string> kept;        // current version matches the configuration
  std::vector<std::string> updated;     // only live-side settings changed: text rewritten
  std::vector<std::string> rebuilding;  // a version is being built (new view or new definition)
  std::vector<std::string> switched;    // built versions made current at once (nothing to read)
  std::vector<std::string> removed;     // no longer configured: retired and dropped
};

struct RunLimits {
  uint64_t max_steps = 0;                   // 0: until caught up
  const std::atomic<bool>* stop = nullptr;  // checked between records; ends after a commit
};

// Folds the sealed log into the ViewStore. One thread (the daemon's compaction thread) calls
// every method; it is the store's only writer.
//
// Compaction: records from the watermark to the end of the newest sealed segment (never the
// active one) are routed with ViewRouter (every group) through each current version's stored
// definition, and folded per (version, row, width, bucket start) into partial states, found
// through each row's newest bucket (a hash map only for events older than it); widths that are
// multiples of a view's finest width are rolled up from the finest width's states at commit. When
// the memory budget is reached, one ViewStore transaction merges them, names new rows and advances
// the watermark to just past the last record folded in. A crash leaves the store at its last
// commit, and the next run reads on from exactly there: no record is counted twice or missed. Late
// events need nothing special: each lands in its bucket by event time.
//
// Rebuild (a new view, a changed definition, or on request): a new version is computed from the
// oldest retained record into its own database while the current version keeps serving and
// being compacted. It chases the watermark in rebuild steps (advancing only its own coverage);
// when it reaches it, one transaction makes it current. Compaction and rebuild steps run in
// this one thread, so the watermark cannot move between the last rebuild step and the switch.
// A rebuild sees only the retained log: buckets older than the oldest segment come out empty.
class Compactor {
 public:
  // Reconciles the store with `views` (the configuration): keeps matching current versions,
  // starts versions for new or changed views, removes views no longer configured.
  static Result<std::unique_ptr<Compactor>> open(ViewStore& store, const std::vector<ViewDef>& views,
                                                 CompactorOptions options,
                                                 ReconcileReport* report = nullptr);
  ~Compactor();
  Compactor(const Compactor&) = delete;
  Compactor& operator=(const Compactor&) = delete;

  // Absorbs the sealed log from the watermark, one step per memory budget.
  Result<CompactionStats> compact(const RunLimits& limits = {});
  // Starts rebuilding view `def.name` from the retained log with definition `def` (which
  // becomes the configured one), replacing a rebuild in progress.
  Status start_rebuild(const ViewDef& def);
  // Advances every version being built up to the watermark, switches each one that reaches it
  // and drops retired versions.
  Result<CompactionStats> rebuild(const RunLimits& limits = {});
  bool rebuilding() const;

 private:
  struct Pass;
  class PartialStates;
  Compactor(ViewStore& store, CompactorOptions options);
  Result<uint64_t> oldest_log_offset() const;
  Status switch_caught_up(ReconcileReport* report);
  Result<CompactionStats> run_pass(Pass& pass, const RunLimits& limits, uint64_t* steps_left);

  ViewStore& store_;
  CompactorOptions options_;
  std::vector<ViewDef> configured_;
  std::unique_ptr<PartialStates> partial_;
  std::unique_ptr<KnownRows> known_rows_;  // row ids already named in "series" (at most 2^20)
};

// Log retention: which of the oldest sealed segments may be deleted.
struct SegmentRetention {
  int64_t max_age_ns = 0;        // delete absorbed segments last written longer ago (0: off)
  uint64_t max_total_bytes = 0;  // delete absorbed segments while the log is larger (0: off)
};
struct SegmentRetentionPlan {
  uint64_t remove_below_offset = 0;  // pass to LogWriter::remove_sealed_segments_below
  size_t segments = 0;               // how many that removes (0: nothing to do)
  uint64_t bytes = 0;
};
// Considers only the oldest sealed segments that end at or below `absorbed_offset` (use
// ViewStore::retention_offset(), from a store opened with sync on), so an unabsorbed segment
// is never offered; of those, removes the oldest while one is older than max_age_ns (by its
// mtime) or the log exceeds max_total_bytes.
Result<SegmentRetentionPlan> plan_segment_retention(const std::filesystem::path& log_dir,
                                                    uint64_t absorbed_offset,
                                                    const SegmentRetention& retention,
                                                    int64_t now_ns);

}  // namespace runnel::storage
