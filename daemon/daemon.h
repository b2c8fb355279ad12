// The runneld process: owns the data directory lock, the shared-memory objects, the log, the
// journal and the ingest loop, and starts and stops them in order.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "daemon/config.h"
#include "model/status.h"

namespace runnel {

namespace ipc {
class Ring;
class StatsSegment;
}  // namespace ipc
class BatchLayer;
class IngestLoop;
class Journal;
class SpeedPath;

// REQUIRES: one thread (main) calls start(), heartbeat() and stop().
class Daemon {
 public:
  explicit Daemon(Config config);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Recovery (log tail, ring contents) and listeners; on return the daemon is serving.
  Status start();
  // Stops accepting, drains every received line into the log, syncs it. Idempotent.
  Status stop();
  // Called ~every 100 ms by main: refreshes the stats heartbeat; false if the ingest loop
  // has not moved since the last call that returned true more than `stall_ms` ago.
  bool healthy();
  std::string status_line() const;
  // True once the ingest loop ended with an error: the daemon must stop.
  bool failed() const { return ingest_failed_.load(); }

 private:
  Status lock_data_dir();

  Config config_;
  int lock_fd_ = -1;
  std::unique_ptr<ipc::StatsSegment> stats_;
  std::unique_ptr<ipc::Ring> ring_;
  std::unique_ptr<Journal> journal_;
  std::unique_ptr<BatchLayer> batch_;  // null when [batch] enabled = false
  std::unique_ptr<SpeedPath> speed_;
  std::unique_ptr<IngestLoop> ingest_;
  std::thread ingest_thread_;
  Status ingest_status_;
  std::atomic<bool> ingest_failed_{false};
  uint64_t last_heartbeat_ = 0;
  bool stopped_ = false;
};

}  // namespace runnel
