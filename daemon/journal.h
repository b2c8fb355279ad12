// The journal: the gating ring consumer that appends every record to the durable log, in ring
// order, exactly once (each log record carries its ring epoch and position).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include "ipc/ring.h"
#include "ipc/stats.h"
#include "model/status.h"
#include "storage/log_writer.h"

namespace runnel {

// Owns the LogWriter. open() and attach() at start-up, then start() runs the journal thread;
// stop_and_drain() from the thread that started it.
//
// Ring space is released only for records that have reached the file (page cache), so a
// kill -9 never loses a record: it is either in the log or still in the shared-memory ring,
// and a restart resumes after the last logged ring position.
class Journal {
 public:
  static constexpr uint32_t kConsumerId = ipc::kJournalConsumer;

  explicit Journal(ipc::StatsBlock& stats);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Opens (and recovers) the log.
  Status open(const storage::LogOptions& options, storage::RecoveryReport* report);
  // The ring epoch of the last record in the log at open (0: an empty log): a new ring gets a
  // higher one.
  uint64_t last_logged_epoch() const;
  // Attaches to the ring after what the log already holds. `ring` must outlive the journal.
  Status attach(ipc::Ring& ring);
  // Waits until the records an earlier run left in the ring are in the log (the thread must
  // be running); false if the timeout passed first.
  bool wait_recovered(std::chrono::milliseconds timeout) const;
  // `hold_ms` > 0 delays consumption (a testing aid; stop_and_drain() ends the hold).
  void start(uint32_t hold_ms = 0);
  // Waits until every record placed in the ring so far is in the log, syncs and closes it.
  // REQUIRES: producers have stopped.
  Status stop_and_drain();

  uint64_t log_end_offset() const { return writer_ ? writer_->end_offset() : 0; }

  // Log retention, from any thread: asks the journal thread to delete the sealed segments that
  // end at or below `log_offset` (LogWriter::remove_sealed_segments_below). LogWriter is not
  // thread-safe (the active segment changes on the journal thread), so the journal thread does
  // it between batches, within ~50 ms when idle. The highest pending offset wins; requests
  // made after stop_and_drain() are ignored. Counted in log_segments_deleted (errors: log_errors).
  void request_segment_removal(uint64_t log_offset);
  // Called on the journal thread after the writer sealed a segment (rolled to a new one), so
  // compaction can start at once. REQUIRES: set before start(); fn must not block.
  void set_on_segment_sealed(std::function<void()> fn) { on_segment_sealed_ = std::move(fn); }

 private:
  void run();
  // Writes the batch and applies the fsync policy; false after a failure (writer reopened).
  bool write_batch(size_t* records);
  Status reopen();
  void publish_stats();
  void remove_requested_segments();

  ipc::Ring* ring_ = nullptr;
  std::atomic<uint64_t> position_{0};  // the consumer's position, for other threads
  ipc::StatsBlock& stats_;
  storage::LogOptions options_;
  std::unique_ptr<storage::LogWriter> writer_;
  std::optional<ipc::GatingConsumer> consumer_;
  // Ring positions at or below this (of this ring's epoch) are already in the log: a record
  // the log took before a failure or crash is never appended twice.
  std::optional<uint64_t> logged_up_to_;
  uint64_t recovered_end_ = 0;  // ring records before this position were left by an earlier run
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> removal_request_{0};  // 0: none; see request_segment_removal()
  std::function<void()> on_segment_sealed_;
  uint64_t sealed_seen_ = 0;  // writer_->segments_sealed() already counted
  Status final_status_;
};

}  // namespace runnel
