// The batch layer's scheduling: owns the LMDB view store (DATA_DIR/views) and the compactor,
// and runs compaction, rebuilds, bucket retention and log retention on one low-priority thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ipc/stats.h"
#include "model/status.h"
#include "model/view.h"
#include "storage/compactor.h"
#include "storage/view_store.h"

namespace runnel {

struct BatchLayerOptions {
  std::filesystem::path data_dir;  // views in data_dir/views, requests in data_dir/control
  std::vector<ViewDef> views;      // the configuration
  uint32_t interval_ms = 1000;     // compaction tick when idle
  uint64_t memory_budget_bytes = uint64_t{128} << 20;
  uint64_t initial_map_bytes = uint64_t{64} << 20;
  uint64_t max_map_bytes = uint64_t{64} << 30;
  storage::BucketRetention bucket_retention;
  int64_t bucket_retention_period_ms = 60'000;  // bucket retention runs at most this often
  storage::SegmentRetention log_retention;
  // Asks the log's owner to delete sealed segments ending at or below an offset (the daemon:
  // Journal::request_segment_removal). Null: no log retention.
  std::function<void(uint64_t)> remove_log_segments_below;
  bool sync = true;               // ViewStore::sync; log retention REQUIRES it (durable watermark)
  uint64_t max_step_records = 0;  // tests: many small steps
};

// Rebuild requests: `runnelctl rebuild VIEW` atomically creates DATA_DIR/control/rebuild-VIEW
// (write to a dot-file, then rename). Each tick the compaction thread removes every such file
// and starts a rebuild of VIEW with its configured definition; an unknown VIEW is logged and
// counted (batch_rebuild_requests_rejected). The directory is created with mode 0770, so the
// daemon's user and group may request rebuilds.
inline constexpr char kControlDirName[] = "control";
inline constexpr char kRebuildRequestPrefix[] = "rebuild-";

// Start-up: open() after the journal recovered the log and before the speed path starts, then
// start(). open() fails only when the data directory is unusable; a view store that cannot be
// opened (read-only, not a directory, corrupt, unsupported layout) is logged loudly, counted
// (gauge batch_unavailable = 1) and retried every tick, while ingest and the log go on.
//
// Errors after start (map full at batch.max_map_bytes, disk full, I/O errors, corruption) are
// logged (the first at once, then at most once a minute with a count) and counted in
// batch_errors; nothing is deleted from the log that is not absorbed, and the next tick
// retries from the watermark (after failed ticks the wait doubles, up to a minute).
//
// Threads: the owner (the daemon's main thread) calls open(), start() and stop();
// watermark(), set_on_absorbed() and poke() are thread-safe. Counters of the batch group are
// written by the compaction thread only (and by open() before it starts).
class BatchLayer {
 public:
  // The new watermark, and per configured view (options.views order) whether the batch views
  // serve it: its current version has the configured definition. Live entries of a serving
  // view up to the watermark's generation may leave the live tables; a view being (re)built
  // keeps its live entries, since clients answer it from the live tables alone.
  using AbsorbedFn = std::function<void(const storage::Watermark&, const std::vector<bool>& serving)>;

  BatchLayer(BatchLayerOptions options, ipc::StatsBlock& stats);
  ~BatchLayer();  // stop()
  BatchLayer(const BatchLayer&) = delete;
  BatchLayer& operator=(const BatchLayer&) = delete;

  Status open();
  // Starts the compaction thread (nice 10, idle I/O priority within best effort; see .cc).
  void start();
  // Ends the thread promptly: a step in progress stops at the next record and commits what it
  // folded (RunLimits::stop), so the store stays consistent. Idempotent.
  void stop();
  // Runs a tick now instead of at the next interval (e.g. a segment was sealed).
  void poke();

  // The last committed watermark (all zero until the store is open).
  storage::Watermark watermark() const;
  // fn runs on the compaction thread after every committed compaction step (not rebuild
  // steps) and after every tick (a rebuilt version may have become current). It must not call
  // stop(). Thread-safe; null removes it.
  void set_on_absorbed(AbsorbedFn fn);
  bool available() const { return available_.load(std::memory_order_acquire); }

 private:
  void run();
  // One round: open if needed, requests, compaction, a slice of rebuilding, retention.
  // Returns true when work is left (run again without waiting).
  bool tick();
  Status open_store();
  void handle_requests();
  void track_versions();
  void apply_retention();
  void after_commit(const storage::StepReport& step);
  void notify_absorbed();
  void publish();
  void report_error(const std::string& what, const Status& s);

  BatchLayerOptions options_;
  ipc::StatsBlock& stats_;
  std::unique_ptr<storage::ViewStore> store_;
  std::unique_ptr<storage::Compactor> compactor_;
  std::atomic<bool> available_{false};

  // Rebuild accounting: versions seen building or current, and each view's current version.
  std::set<uint64_t> seen_versions_;
  std::map<std::string, uint64_t> current_versions_;
  int64_t last_bucket_retention_ms_ = INT64_MIN;
  int64_t last_error_log_ms_ = INT64_MIN;
  uint64_t errors_not_logged_ = 0;
  bool in_error_ = false;
  unsigned failed_ticks_ = 0;  // consecutive; lengthens the wait between ticks

  mutable std::mutex mu_;  // guards watermark_, on_absorbed_, poked_
  std::condition_variable cv_;
  storage::Watermark watermark_;
  AbsorbedFn on_absorbed_;
  bool poked_ = false;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace runnel
