// The journal thread (see journal.h): ring -> log in batches.
#include "daemon/journal.h"

#include <chrono>
#include <spdlog/spdlog.h>

#include "daemon/thread_name.h"

namespace runnel {
namespace {

// Records per batch: large enough for big writes, small enough that ring space is released
// often while ingest runs at full speed.
constexpr size_t kBatchRecords = 16384;
// A batch smaller than this makes the journal pause briefly before the next one, so that under
// load writes stay large (each write is an io_uring request handed to a kernel worker) while an
// idle trickle still reaches the log within a fraction of a millisecond.
constexpr size_t kSmallBatchRecords = 2048;
constexpr auto kLinger = std::chrono::microseconds(200);

}  // namespace

Journal::Journal(ipc::StatsBlock& stats) : stats_(stats) {}

Journal::~Journal() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

Status Journal::open(const storage::LogOptions& options, storage::RecoveryReport* report) {
  options_ = options;
  auto w = storage::LogWriter::open(options_, report);
  if (!w.ok()) return w.status();
  writer_ = std::move(w.value());
  return Status::Ok();
}

uint64_t Journal::last_logged_epoch() const {
  const auto& last = writer_->last_record_at_open();
  return last ? last->ring_epoch : 0;
}

bool Journal::wait_recovered(std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (position_.load(std::memory_order_acquire) < recovered_end_) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

Status Journal::attach(ipc::Ring& ring) {
  ring_ = &ring;
  auto c = ring_->attach_consumer(kConsumerId, ipc::Ring::StartAt::kResume);
  if (!c.ok()) return c.status();
  consumer_.emplace(std::move(c.value()));
  const auto& last = writer_->last_record_at_open();
  if (last && last->ring_epoch == ring_->epoch()) {
    logged_up_to_ = last->ring_pos;
    // The daemon died between the log write and the ring release: start after the last
    // logged record (no producer runs yet, so the position may be moved).
    const uint64_t after = last->ring_pos + ipc::record_span(last->payload_len);
    if (after > consumer_->position() && after <= ring_->claim_position()) {
      consumer_->detach();
      if (Status s = ring_->set_consumer_position(kConsumerId, after); !s.ok()) return s;
      auto again = ring_->attach_consumer(kConsumerId, ipc::Ring::StartAt::kResume);
      if (!again.ok()) return again.status();
      consumer_.emplace(std::move(again.value()));
      spdlog::info("journal: ring records up to position {} were already in the log", after);
    }
  }
  recovered_end_ = ring_->claim_position();
  position_.store(consumer_->position(), std::memory_order_release);
  if (recovered_end_ > consumer_->position()) {
    spdlog::info("journal: {} bytes of ring records from an earlier run go to the log first",
                 recovered_end_ - consumer_->position());
  }
  publish_stats();
  return Status::Ok();
}

void Journal::start(uint32_t hold_ms) {
  thread_ = std::thread([this, hold_ms] {
    name_this_thread("runneld-journal");
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(hold_ms);
    while (hold_ms > 0 && !stop_.load() && std::chrono::steady_clock::now() < until) {
      publish_stats();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    run();
  });
}

void Journal::request_segment_removal(uint64_t log_offset) {
  uint64_t cur = removal_request_.load(std::memory_order_relaxed);
  while (cur < log_offset && !removal_request_.compare_exchange_weak(cur, log_offset)) {
  }
}

void Journal::remove_requested_segments() {
  const uint64_t below = removal_request_.exchange(0);
  if (below == 0 || !writer_) return;
  auto removed = writer_->remove_sealed_segments_below(below);
  if (!removed.ok()) {
    stats_.add(ipc::Counter::kLogErrors, 1);
    spdlog::error("journal: log retention: {}", removed.status().ToString());
    return;
  }
  if (*removed > 0) {
    stats_.add(ipc::Counter::kLogSegmentsDeleted, *removed);
    spdlog::info("log retention: deleted {} sealed segment(s) below log offset {}", *removed, below);
  }
}

void Journal::publish_stats() {
  if (writer_) {
    if (const uint64_t sealed = writer_->segments_sealed(); sealed > sealed_seen_) {
      stats_.add(ipc::Counter::kLogSegmentsRolled, sealed - sealed_seen_);
      sealed_seen_ = sealed;
      if (on_segment_sealed_) on_segment_sealed_();
    }
    stats_.set(ipc::Counter::kLogWrittenOffset, writer_->written_offset());
    stats_.set(ipc::Counter::kLogDurableOffset, writer_->durable_offset());
  }
  stats_.set(ipc::Counter::kRingClaimPos, ring_->claim_position());
  stats_.set(ipc::Counter::kRingJournalPos, consumer_->position());
}

Status Journal::reopen() {
  writer_.reset();  // a failed writer is sticky; recovery cuts whatever the failure tore
  storage::RecoveryReport report;
  auto w = storage::LogWriter::open(options_, &report);
  if (!w.ok()) return w.status();
  writer_ = std::move(w.value());
  sealed_seen_ = 0;
  if (report.cut) {
    spdlog::warn("journal: log reopened, cut {} bytes at offset {}: {}", report.cut->bytes,
                 report.cut->log_offset, report.cut->reason);
    stats_.add(ipc::Counter::kLogTruncatedBytes, report.cut->bytes);
  }
  const auto& last = writer_->last_record_at_open();
  if (last && last->ring_epoch == ring_->epoch()) logged_up_to_ = last->ring_pos;
  return Status::Ok();
}

bool Journal::write_batch(size_t* records_out) {
  const uint64_t epoch = ring_->epoch();
  uint64_t bytes = 0, records = 0, recovered = 0;
  Status append_status;
  const auto batch = consumer_->peek(
      [&](uint64_t pos, std::span<const std::byte> payload) {
        if (!append_status.ok()) return;
        if (logged_up_to_ && pos <= *logged_up_to_) return;  // already in the log
        append_status = writer_->append(epoch, pos, payload);
        bytes += payload.size();
        ++records;
        recovered += pos < recovered_end_ ? 1 : 0;
      },
      kBatchRecords);
  if (batch.corrupt) {
    // A committed ring header that cannot be right: a misbehaving producer wrote over the ring.
    // Journal nothing past it rather than garbage; the operator sees this and the counters.
    if (final_status_.ok()) {
      spdlog::critical("journal: corrupt ring record at position {}; journaling stopped",
                       batch.end_position);
      final_status_ = Status::Corruption("ring record at position " + std::to_string(batch.end_position));
    }
    return false;
  }
  if (batch.end_position == consumer_->position()) return true;  // nothing new
  // Release ring space only once the records are in the file: commit() under fsync=always
  // returns after fdatasync; flush() returns once written.
  Status s = append_status;
  if (s.ok()) {
    s = options_.fsync == storage::LogOptions::FsyncPolicy::kAlways ? writer_->commit()
                                                                     : writer_->flush();
  }
  if (s.ok()) s = writer_->maybe_sync();
  if (!s.ok()) {
    stats_.add(ipc::Counter::kLogErrors, 1);
    spdlog::error("journal: {}; reopening the log (the records stay in the ring)", s.ToString());
    if (Status r = reopen(); !r.ok()) spdlog::error("journal: reopen: {}", r.ToString());
    return false;
  }
  consumer_->advance(batch.end_position);
  position_.store(batch.end_position, std::memory_order_release);
  *records_out = batch.records;
  logged_up_to_.reset();  // every later position is new
  stats_.add(ipc::Counter::kLogRecords, records);
  stats_.add(ipc::Counter::kLogBytes, bytes);
  stats_.add(ipc::Counter::kRingRecoveredRecords, recovered);
  return true;
}

void Journal::run() {
  while (true) {
    const uint64_t before = consumer_->position();
    size_t records = 0;
    const bool ok = writer_ != nullptr && write_batch(&records);
    publish_stats();
    if (ok) remove_requested_segments();  // a failed writer refuses it anyway; retried later
    if (!ok) {
      if (stop_.load() || !final_status_.ok()) {
        // Stopping with a failing disk: the records stay in the shared-memory ring, which
        // outlives the process, and the next start journals them.
        if (final_status_.ok()) final_status_ = Status::IoError("log writes failing at stop");
        return;
      }
      std::this_thread::sleep_for(std::chrono::seconds(1));
      if (!writer_) {
        if (Status r = reopen(); !r.ok()) spdlog::error("journal: reopen: {}", r.ToString());
      }
      continue;
    }
    if (consumer_->position() != before) {  // more may be waiting
      if (records < kSmallBatchRecords && !stop_.load(std::memory_order_relaxed)) {
        std::this_thread::sleep_for(kLinger);
      }
      continue;
    }
    if (Status s = writer_->maybe_sync(); !s.ok()) {
      stats_.add(ipc::Counter::kLogErrors, 1);
      spdlog::error("journal: {}", s.ToString());
    }
    if (stop_.load(std::memory_order_acquire) && consumer_->position() >= ring_->claim_position()) break;
    consumer_->wait(std::chrono::milliseconds(50));
  }
  final_status_ = writer_->close();
  publish_stats();
}

Status Journal::stop_and_drain() {
  stop_.store(true, std::memory_order_release);
  if (thread_.joinable()) thread_.join();
  return final_status_;
}

}  // namespace runnel
