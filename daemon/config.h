// runneld's configuration: one TOML file where every key has a default (the embedded default
// config is the schema), overridden by command-line flags. Parsing happens once at start-up.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/line_protocol.h"
#include "model/view.h"
#include "storage/compactor.h"
#include "storage/view_store.h"

namespace runnel {

// One listener, from a URL: tcp://HOST:PORT, udp://HOST:PORT or unix:///PATH, with an optional
// `?precision=ns|us|ms|s` for timestamps that arrive on it.
struct ListenSpec {
  enum class Kind { kTcp, kUdp, kUnix };
  Kind kind = Kind::kTcp;
  std::string host;  // tcp/udp: numeric IPv4/IPv6 address or "localhost"
  uint16_t port = 0;
  std::string path;  // unix: socket path
  Precision precision = Precision::kNs;
  std::string url;  // as written, for logs

  // Parses one URL; on failure *error says why. `runtime_dir` replaces a leading "@runtime".
  static std::optional<ListenSpec> parse(std::string_view url, const std::string& runtime_dir,
                                         std::string* error);
};

enum class FsyncPolicyKind { kAlways, kInterval, kNever };

struct Config {
  // [daemon]
  std::filesystem::path data_dir;
  std::string shm_name;
  std::string log_level;
  uint32_t log_rate_limit_per_s = 0;  // rate of per-line rejection messages in the log
  bool cpu_scheduling_batch = true;   // daemon.cpu_scheduling = "batch": SCHED_BATCH
  // [ingest]
  std::vector<ListenSpec> listen;
  uint32_t max_line_bytes = 0;
  uint32_t recv_buffer_bytes = 0;
  uint32_t recv_buffer_count = 0;
  uint32_t udp_rcvbuf_bytes = 0;
  // [ring]
  uint64_t ring_capacity_bytes = 0;
  uint32_t ring_mode = 0;
  std::string ring_group;  // group owning the shared-memory objects; empty = the daemon's
  uint32_t ring_generation_shift = 0;  // log2 of ring.generation_bytes (model/generation.h)
  // [log]
  uint64_t segment_bytes = 0;
  FsyncPolicyKind fsync = FsyncPolicyKind::kInterval;
  uint32_t fsync_interval_ms = 0;
  storage::SegmentRetention log_retention;  // retention_max_age, retention_max_bytes (0: off)
  // [speed]
  bool speed_enabled = true;
  uint32_t speed_workers = 0;  // a power of two
  uint32_t speed_batch_records = 0;
  // [batch]
  bool batch_enabled = true;
  uint32_t batch_interval_ms = 0;  // compaction tick when idle
  uint64_t batch_memory_budget_bytes = 0;
  uint64_t batch_initial_map_bytes = 0;
  uint64_t batch_max_map_bytes = 0;
  storage::BucketRetention batch_retention;  // rules sorted by width
  // [[view]]; default_view() when none is declared. Validated, names unique.
  std::vector<ViewDef> views;
  // Testing aid, command line only: the journal leaves the ring alone for this long after
  // start, so a test can fill the ring or crash with records only in the ring.
  uint32_t debug_journal_hold_ms = 0;
};

// Command-line overrides; unset members leave the file's (or default) value.
struct ConfigOverrides {
  std::optional<std::string> data_dir;
  std::optional<std::string> shm_name;
  std::optional<std::string> log_level;
  std::vector<std::string> listen;  // non-empty replaces [ingest].listen
  uint32_t debug_journal_hold_ms = 0;
};

// The embedded default configuration, commented; `runneld --print-default-config` prints it.
std::string_view default_config_toml();

// Loads defaults, merges `path` (if any) over them, applies overrides and validates.
// Throws std::runtime_error naming the file, key and reason (start-up only).
Config load_config(const std::optional<std::filesystem::path>& path, const ConfigOverrides& o);

// Where the runtime directory is: $RUNTIME_DIRECTORY (systemd), else $XDG_RUNTIME_DIR/runnel,
// else /run/runnel for root, else /tmp/runnel-UID.
std::string runtime_dir();

}  // namespace runnel
