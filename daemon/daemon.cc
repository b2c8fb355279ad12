// Daemon start-up and shutdown order: lock the data directory, stats, log recovery, ring
// validation and recovery, journal, batch layer, speed path, listeners. Shutdown runs it
// backwards (the batch layer first) and drains the ring.
#include "daemon/daemon.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <filesystem>
#include <spdlog/spdlog.h>

#include "daemon/batch_layer.h"
#include "daemon/ingest_loop.h"
#include "daemon/journal.h"
#include "daemon/speed_path.h"
#include "daemon/thread_name.h"
#include "ipc/ring.h"
#include "ipc/stats.h"
#include "model/clock.h"
#include "model/generation.h"
#include "storage/log_writer.h"

namespace runnel {
namespace {

storage::LogOptions::FsyncPolicy to_policy(FsyncPolicyKind k) {
  using P = storage::LogOptions::FsyncPolicy;
  switch (k) {
    case FsyncPolicyKind::kAlways: return P::kAlways;
    case FsyncPolicyKind::kInterval: return P::kInterval;
    case FsyncPolicyKind::kNever: return P::kNever;
  }
  return P::kInterval;
}

}  // namespace

Daemon::Daemon(Config config) : config_(std::move(config)) {}

Daemon::~Daemon() {
  (void)stop();  // errors were logged by stop() itself
  if (lock_fd_ >= 0) close(lock_fd_);
}

Status Daemon::lock_data_dir() {
  std::error_code ec;
  std::filesystem::create_directories(config_.data_dir, ec);
  if (ec) return Status::IoError("cannot create data directory " + config_.data_dir.string() + ": " + ec.message());
  const std::string lock = (config_.data_dir / "runneld.lock").string();
  lock_fd_ = open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (lock_fd_ < 0) return Status::Errno("open " + lock, errno);
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return errno == EWOULDBLOCK
               ? Status::Busy("another runneld is using data directory " + config_.data_dir.string())
               : Status::Errno("flock " + lock, errno);
  }
  return Status::Ok();
}

Status Daemon::start() {
  if (Status s = lock_data_dir(); !s.ok()) return s;
  int gid = -1;
  if (!config_.ring_group.empty()) {
    group* g = getgrnam(config_.ring_group.c_str());
    if (g == nullptr) return Status::Invalid("ring.group: no group named '" + config_.ring_group + "'");
    gid = static_cast<int>(g->gr_gid);
  }
  auto stats = ipc::StatsSegment::create(config_.shm_name, config_.ring_mode, gid);
  if (!stats.ok()) return stats.status();
  stats_ = std::move(stats.value());
  ipc::StatsBlock& sb = stats_->block();

  // 1. The log: cut a torn tail; the journal resumes exactly after what the log holds.
  storage::LogOptions lo;
  lo.dir = config_.data_dir / "log";
  lo.segment_bytes = config_.segment_bytes;
  lo.fsync = to_policy(config_.fsync);
  lo.fsync_interval_ms = config_.fsync_interval_ms;
  // Without a batch layer nothing reads the log back while the daemon runs (the speed path
  // reads the ring): keep it out of the page cache. With one, compaction reads it soon after
  // and drops each step's pages itself once absorbed (storage::drop_log_pages).
  lo.drop_durable_pages = !config_.batch_enabled;
  storage::RecoveryReport report;
  journal_ = std::make_unique<Journal>(sb);
  if (Status s = journal_->open(lo, &report); !s.ok()) return s;
  if (report.cut) {
    spdlog::warn("log recovery: cut {} bytes of {} at log offset {}: {}", report.cut->bytes,
                 report.cut->segment.string(), report.cut->log_offset, report.cut->reason);
    sb.add(ipc::Counter::kLogTruncatedBytes, report.cut->bytes);
  }
  spdlog::info("log {}: {} segment(s), end offset {}", lo.dir.string(), report.segments,
               report.end_offset);

  // 2. The ring: reuse a segment left by a crash (validated), else create it with the epoch after
  // the log's last one, so that epochs (and generations, model/generation.h) increase along
  // the log.
  ipc::RingOptions ro;
  ro.mode = config_.ring_mode;
  if (gid >= 0) ro.gid = static_cast<gid_t>(gid);
  const uint64_t last_epoch = journal_->last_logged_epoch();
  ro.epoch = make_ring_epoch(epoch_counter(last_epoch) + 1, config_.ring_generation_shift);
  const std::string ring_name = config_.shm_name + ".ring";
  auto ring = ipc::Ring::open_or_create(ring_name, config_.ring_capacity_bytes, ro);
  if (!ring.ok()) return ring.status();
  ring_ = std::make_unique<ipc::Ring>(std::move(ring.value()));
  if (epoch_counter(ring_->epoch()) < epoch_counter(last_epoch) || ring_->epoch() > kMaxGenerationEpoch ||
      epoch_generation_shift(ring_->epoch()) < 12) {
    return Status::Invalid(fmt::format(
        "ring {} has epoch {:#x}, which cannot follow the log's last epoch {:#x} (a ring of another "
        "data directory or of an older runneld); stop whatever uses it and remove /dev/shm/{}",
        ring_name, ring_->epoch(), last_epoch, ring_name));
  }
  // No producer runs yet: drop what a producer that died mid-write left unfinished.
  auto recovered = ring_->recover();
  if (!recovered.ok()) return recovered.status();
  const ipc::RecoverReport& rr = recovered.value();
  sb.add(ipc::Counter::kRingDiscardedBytes, rr.discarded_bytes);
  if (rr.claim_position > rr.start_position || rr.discarded_bytes > 0) {
    spdlog::warn("ring {} holds records of an earlier run: epoch {:016x}, positions [{}, {}){}",
                 ring_name, ring_->epoch(), rr.start_position, rr.claim_position,
                 rr.discarded_bytes ? fmt::format(", {} bytes of unfinished records discarded",
                                                  rr.discarded_bytes)
                                    : "");
  }
  sb.set(ipc::Counter::kRingCapacity, config_.ring_capacity_bytes);

  if (Status s = journal_->attach(*ring_); !s.ok()) return s;

  // 3. The batch layer, on the recovered log: its watermark is known before the speed path
  // starts. Only an unusable data directory stops start-up (see batch_layer.h).
  if (config_.batch_enabled) {
    BatchLayerOptions bo;
    bo.data_dir = config_.data_dir;
    bo.views = config_.views;
    bo.interval_ms = config_.batch_interval_ms;
    bo.memory_budget_bytes = config_.batch_memory_budget_bytes;
    bo.initial_map_bytes = config_.batch_initial_map_bytes;
    bo.max_map_bytes = config_.batch_max_map_bytes;
    bo.bucket_retention = config_.batch_retention;
    bo.log_retention = config_.log_retention;
    bo.remove_log_segments_below = [j = journal_.get()](uint64_t offset) {
      j->request_segment_removal(offset);
    };
    batch_ = std::make_unique<BatchLayer>(std::move(bo), sb);
    if (Status s = batch_->open(); !s.ok()) return s;
    journal_->set_on_segment_sealed([b = batch_.get()] { b->poke(); });
  }
  journal_->start(config_.debug_journal_hold_ms);
  if (batch_) batch_->start();

  // 4. The speed path: new live tables, fed from the ring (also what an earlier run left).
  if (config_.speed_enabled) {
    speed_ = std::make_unique<SpeedPath>(config_, *ring_, sb);
    std::string batch_dir;
    if (batch_) {
      std::error_code ec;
      batch_dir = std::filesystem::absolute(config_.data_dir / "views", ec).lexically_normal().string();
    }
    if (Status s = speed_->open(batch_dir); !s.ok()) return s;
    if (batch_) {
      // The live tables are new: they get back exactly what the batch views lack, the log
      // beyond the watermark, and then follow the ring from where the journal stands.
      speed_->enable_absorption();
      if (!journal_->wait_recovered(std::chrono::minutes(5))) {
        return Status::Busy("the journal did not log the ring records of the earlier run within 5 minutes");
      }
      if (Status s = speed_->replay(lo.dir, batch_->watermark().log_offset); !s.ok()) return s;
      if (Status s = speed_->attach(ring_->claim_position()); !s.ok()) return s;
      // A view's absorbed live entries leave once its batch version serves (see BatchLayer).
      batch_->set_on_absorbed([sp = speed_.get()](const storage::Watermark& wm, const std::vector<bool>& serving) {
        if (wm.records == 0) return;
        const uint64_t g = generation_of(wm.ring_epoch, wm.ring_pos);
        for (uint32_t v = 0; v < serving.size(); ++v) {
          if (serving[v]) sp->absorbed(v, g);
        }
      });
    } else if (Status s = speed_->attach(); !s.ok()) {
      return s;
    }
    speed_->start();
  } else {
    // A speed consumer left active by an earlier run must not gate producers forever.
    auto c = ring_->attach_consumer(ipc::kSpeedPathConsumer, ipc::Ring::StartAt::kResume);
    if (!c.ok()) return c.status();
    c->detach();
  }

  // 5. Listeners, last: READY follows.
  ingest_ = std::make_unique<IngestLoop>(config_, *ring_, sb);
  if (Status s = ingest_->open(); !s.ok()) return s;
  ingest_thread_ = std::thread([this] {
    name_this_thread("runneld-ingest");
    ingest_status_ = ingest_->run();
    if (!ingest_status_.ok()) {
      spdlog::critical("ingest loop failed: {}", ingest_status_.ToString());
      ingest_failed_.store(true);
    }
  });
  return Status::Ok();
}

Status Daemon::stop() {
  if (stopped_) return Status::Ok();
  stopped_ = true;
  if (batch_) batch_->stop();  // commits the step in progress; the rest waits for the next start
  if (ingest_) {
    ingest_->request_stop();
    if (ingest_thread_.joinable()) ingest_thread_.join();
  }
  Status s;
  if (speed_) s = speed_->stop_and_drain();
  if (journal_) {
    Status j = journal_->stop_and_drain();
    if (j.ok()) spdlog::info("ring drained; log end offset {}", journal_->log_end_offset());
    if (s.ok()) s = j;
  }
  return s.ok() ? ingest_status_ : s;
}

bool Daemon::healthy() {
  if (stats_) stats_->block().heartbeat_ns.store(realtime_ns(), std::memory_order_relaxed);
  if (!ingest_) return false;
  const uint64_t hb = ingest_->heartbeat();
  const bool moved = hb != last_heartbeat_;
  last_heartbeat_ = hb;
  return moved;
}

std::string Daemon::status_line() const {
  if (!stats_) return "starting";
  const ipc::StatsBlock& b = stats_->block();
  return fmt::format("{} points accepted, {} in the log, {} parse errors",
                     b.get(ipc::Counter::kPointsAccepted), b.get(ipc::Counter::kLogRecords),
                     b.get(ipc::Counter::kParseMeasurement) + b.get(ipc::Counter::kParseTag) +
                         b.get(ipc::Counter::kParseFieldKey) + b.get(ipc::Counter::kParseFieldValue) +
                         b.get(ipc::Counter::kParseNoFields) + b.get(ipc::Counter::kParseTimestamp) +
                         b.get(ipc::Counter::kParseTooLong));
}

}  // namespace runnel
