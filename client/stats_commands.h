// `runnelctl stats`: the running daemon's counters, read from its stats block in shared memory;
// with --until, it first waits (inside this one process) until counters reach given values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace runnel {

struct StatsArgs {
  std::string shm_name;
  std::string data_dir;  // non-empty: also the batch views stored there
  bool json = false;
  // "COUNTER>=N" conditions (runnelctl stats --until); all must hold. Empty: print at once.
  std::vector<std::string> until;
  double timeout_s = 60;  // longest wait for --until
  double stall_s = 0;     // give up when no --until counter moved for this long (0: never)
  uint32_t poll_ms = 5;   // how often the counters are read while waiting
};

// Exit codes: 0 printed (every --until condition held); 1 the stats block could not be read,
// the daemon exited while waiting, or --data-dir could not be read; 2 a malformed --until;
// 3 the wait timed out or stalled (the counters are still printed, so the caller sees where).
int cmd_stats(const StatsArgs& args);

}  // namespace runnel
