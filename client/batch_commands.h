// runnelctl's batch-layer commands: `rebuild VIEW` (a request file the daemon's compaction
// thread picks up) and the per-view part of `stats --data-dir` (read-only LMDB).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "model/status.h"

namespace runnel {

struct RebuildArgs {
  std::string view;
  std::string data_dir;
  std::string shm_name;
  bool wait = false;
  uint32_t timeout_s = 300;
  bool json = false;
};

// Asks the running daemon to rebuild `view` from the retained log (a new version, switched
// atomically once it caught up). Exit codes: 0 requested (with --wait: finished), 1 the daemon
// rejected it, it restarted or the wait timed out, 2 the request could not be made.
int cmd_rebuild(const RebuildArgs& args);

// The batch views of DATA_DIR/views as JSON: the watermark and, per view, its current and
// building version, definition hash and number of buckets. Errors name the directory.
Result<nlohmann::ordered_json> batch_views_json(const std::string& data_dir);

}  // namespace runnel
