// The speed layer: a gating ring consumer whose oneTBB workers fold every record into the live
// tables in shared memory (one writer per shard), and register new rows in the series dictionary.
#pragma once

#include <atomic>
#include <memory>
#include <filesystem>
#include <optional>
#include <span>
#include <string_view>
#include <thread>
#include <vector>

#include <oneapi/tbb/task_arena.h>

#include "daemon/config.h"
#include "ipc/live_table.h"
#include "ipc/ring.h"
#include "ipc/series_dictionary.h"
#include "ipc/stats.h"
#include "model/aggregate.h"
#include "model/generation.h"
#include "model/status.h"

namespace runnel {

// open() and start() at start-up, stop_and_drain() at shutdown, from one thread (main).
//
// Work split: the consumer thread peeks a batch of ring records (zero-copy, they stay valid
// until advance), then runs two rounds of one task per worker in a oneTBB arena. Route: worker
// r checks (RecordView::validate_structure: the ring holds only what runneld's own
// RecordBuilder wrote) and routes its slice of the batch once, registers new rows in the series
// dictionary, and sorts the row updates into one outbox per destination shard (the shard of
// the row id; model/view_router.h keeps all fields of a group in one shard). Apply: worker s
// folds the updates of every outbox for shard s, in batch order, into its shard of each view,
// then evicts from the shard's oldest entries. So no two workers ever write one entry, and
// no lock is taken. Ring space is released after every shard finished the batch.
class SpeedPath {
 public:
  SpeedPath(const Config& config, ipc::Ring& ring, ipc::StatsBlock& stats);
  ~SpeedPath();
  SpeedPath(const SpeedPath&) = delete;
  SpeedPath& operator=(const SpeedPath&) = delete;

  // Creates the live tables and series dictionary (replacing those of an earlier run);
  // `batch_dir` (may be empty) is announced to clients.
  Status open(std::string_view batch_dir = {});
  // With a batch layer: folds the log records from `from_offset` (the batch watermark) to the
  // end of the log into the new live tables, each under its own generation, so that the live
  // tables again hold exactly what the batch views lack. REQUIRES: open(), before attach(),
  // and the journal has logged everything an earlier run left in the ring.
  Status replay(const std::filesystem::path& log_dir, uint64_t from_offset);
  // Attaches to the ring: at `position` (the journal's position after a replay) or, without
  // one, where the speed consumer of an earlier run stopped.
  Status attach(std::optional<uint64_t> position = std::nullopt);
  void start();

  // With a batch layer (call before start()): entries leave when absorbed or, counted as
  // forced, under memory pressure; without one they leave by the live-window rule.
  void enable_absorption() { absorbing_ = true; }
  // The batch views serve every generation <= `generation` (model/generation.h) of view
  // `view` (its index in the configuration): those live entries are evicted, after the
  // announcement clients check. Any thread.
  void absorbed(uint32_t view, uint64_t generation);
  // Folds in everything placed in the ring so far, then stops. REQUIRES: producers stopped.
  Status stop_and_drain();

  // Event-time high watermark (ns): the newest event time seen, capped at wall clock + 5 min
  // so one point from the far future cannot make everything late.
  int64_t watermark_ns() const { return watermark_ns_.load(std::memory_order_relaxed); }

 private:
  struct Worker;
  struct RecordRef {
    uint64_t pos;
    uint64_t generation;
    const std::byte* data;
    uint32_t size;
  };

  void run();
  // Folds batch_ into the live tables (every shard in parallel) and publishes the counters.
  void fold_batch(tbb::task_arena& arena);
  // Announces newly absorbed generations to clients (before evicting them); true if any.
  bool announce_absorbed();
  struct Pending;
  // Route round: slice `slice` of batch_ (one per worker) into w's outboxes.
  void route(Worker& w, uint32_t slice);
  // Apply round: every outbox's updates for `shard` into w's shard, then evictions.
  void apply(Worker& w, uint32_t shard);
  void apply_updates(Worker& w, std::span<const Pending> updates);
  void evict(Worker& w, bool idle);

  const Config& config_;
  ipc::Ring& ring_;
  ipc::StatsBlock& stats_;
  std::vector<AggregateLayout> layouts_;  // per view
  std::optional<ipc::LiveTables> live_;
  std::optional<ipc::SeriesDictionary> series_;
  std::optional<ipc::GatingConsumer> consumer_;
  std::vector<std::unique_ptr<Worker>> workers_;  // one per shard
  std::vector<RecordRef> batch_;                  // reserved once: speed.batch_records
  std::atomic<int64_t> watermark_ns_{INT64_MIN};
  std::unique_ptr<std::atomic<uint64_t>[]> absorbed_generation_;  // per view
  bool absorbing_ = false;                // a batch layer takes over absorbed generations
  std::vector<uint64_t> evicted_generation_;  // per view: announced (consumer thread)
  int64_t batch_watermark_ns_ = INT64_MIN;  // frozen for the duration of one batch
  // The newest generation in the batch (kNoGeneration without a batch layer): live entries of
  // older generations can take no more events.
  uint64_t batch_generation_ = kNoGeneration;
  std::atomic<uint64_t> batch_seq_{0};      // batches handed to the workers (fold_batch)
  bool evict_pending_ = false;  // a worker may still hold absorbed entries to evict
  std::thread thread_;
  std::atomic<bool> stop_{false};
  Status final_status_;
};

}  // namespace runnel
