// Self-metrics in shared memory: the daemon's counters, written by its threads and read by
// runnelctl and clients through a read-only mapping. One fixed layout, versioned.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "model/status.h"

namespace runnel::ipc {

// Every counter the daemon keeps. Append new ones at the end of their group (names below);
// the layout version changes whenever an index moves.
enum class Counter : uint32_t {
  // --- written by ingest threads ---
  kPointsAccepted = 0,     // lines parsed and placed in the ring
  kLinesSkipped,           // blank and comment lines
  kBytesReceived,          // stream + datagram payload bytes
  kConnectionsAccepted,    // TCP + Unix stream connections
  kConnectionsOpen,        // gauge
  kConnectionErrors,       // recv/accept errors (peer reset, ...)
  kUdpDatagrams,
  kUdpDropped,             // datagrams (or their rest) that found the ring full
  kUdpLinesDropped,
  kRingFullStalls,         // a stream connection paused because the ring was full
  kRecvBuffersExhausted,   // the kernel ran out of provided buffers (ENOBUFS)
  kParseMeasurement,       // rejected lines by class (see model/line_protocol.h)
  kParseTag,
  kParseFieldKey,
  kParseFieldValue,
  kParseNoFields,
  kParseTimestamp,
  kParseTooLong,
  kIngestGroupEnd,
  // --- written by the journal thread (own cache lines) ---
  kLogRecords = 24,        // records appended to the durable log since start
  kLogBytes,
  kLogWrittenOffset,       // gauge: log offset handed to the kernel
  kLogDurableOffset,       // gauge: log offset covered by fdatasync
  kLogSegmentsRolled,
  kLogErrors,              // failed writes/syncs (retried; see the daemon log)
  kLogTruncatedBytes,      // torn tail cut at start-up
  kRingRecoveredRecords,   // records found in the ring at start-up and journaled
  kRingDiscardedBytes,     // claimed-but-never-committed ring bytes dropped at start-up
  kRingClaimPos,           // gauge: ring claim cursor
  kRingJournalPos,         // gauge: journal consumer position
  kRingCapacity,           // gauge
  kLogSegmentsDeleted,     // sealed segments removed by log retention (the journal deletes them)
  kJournalGroupEnd,
  // --- written by the speed path's consumer thread (own cache lines) ---
  kSpeedRecords = 48,      // ring records folded into the live tables
  kSpeedLate,              // row updates older than their view's live window (batch places them)
  kSpeedOverflow,          // row updates that found no room in a live table
  kSpeedWatermarkNs,       // gauge: event-time high watermark
  kRingSpeedPos,           // gauge: speed path consumer position
  kSpeedForcedEvictions,   // live entries evicted early because a table was under pressure
  kSpeedBatches,           // batches folded (speed_records / speed_batches: records per batch)
  kSpeedGroupEnd,
  // --- written by the batch layer's compaction thread (own cache lines) ---
  kBatchWatermarkOffset = 64,  // gauge: log offset below which every record is in the views
  kBatchRecordsAbsorbed,       // gauge: log records absorbed in total (kept across restarts)
  kBatchSteps,                 // compaction and rebuild steps committed since start
  kBatchLagBytes,              // gauge: log_written_offset minus the watermark
  kBatchErrors,                // failed compaction ticks (retried next tick; see the log)
  kBatchMapFull,               // steps refused at batch.max_map_bytes
  kBatchMapBytes,              // gauge: current LMDB map size
  kBatchMapGrows,
  kBatchRebuildsStarted,       // new versions begun (changed definition, new view, request)
  kBatchRebuildsFinished,      // versions made current after a rebuild
  kBatchViewsBuilding,         // gauge: views with a version being built
  kBatchRebuildRequests,       // `runnelctl rebuild` requests picked up
  kBatchRebuildRejected,       // ... naming no configured view
  kBatchBucketsExpired,        // buckets deleted by bucket retention
  kBatchVersionsDropped,       // retired versions whose databases were dropped
  kBatchInvalidRecords,        // CRC-valid log records that are not valid events (skipped)
  kBatchUnavailable,           // gauge: 1 while the view store cannot be opened (see the log)
  kBatchLastCommitNs,          // gauge: CLOCK_REALTIME of the watermark's last commit
  kBatchGroupEnd,
  kCount = 128,
};

constexpr std::string_view counter_name(Counter c) {
  switch (c) {
    case Counter::kPointsAccepted: return "points_accepted";
    case Counter::kLinesSkipped: return "lines_skipped";
    case Counter::kBytesReceived: return "bytes_received";
    case Counter::kConnectionsAccepted: return "connections_accepted";
    case Counter::kConnectionsOpen: return "connections_open";
    case Counter::kConnectionErrors: return "connection_errors";
    case Counter::kUdpDatagrams: return "udp_datagrams";
    case Counter::kUdpDropped: return "udp_dropped";
    case Counter::kUdpLinesDropped: return "udp_lines_dropped";
    case Counter::kRingFullStalls: return "ring_full_stalls";
    case Counter::kRecvBuffersExhausted: return "recv_buffers_exhausted";
    case Counter::kParseMeasurement: return "parse_errors_measurement";
    case Counter::kParseTag: return "parse_errors_tag";
    case Counter::kParseFieldKey: return "parse_errors_field_key";
    case Counter::kParseFieldValue: return "parse_errors_field_value";
    case Counter::kParseNoFields: return "parse_errors_no_fields";
    case Counter::kParseTimestamp: return "parse_errors_timestamp";
    case Counter::kParseTooLong: return "parse_errors_too_long";
    case Counter::kLogRecords: return "log_records";
    case Counter::kLogBytes: return "log_bytes";
    case Counter::kLogWrittenOffset: return "log_written_offset";
    case Counter::kLogDurableOffset: return "log_durable_offset";
    case Counter::kLogSegmentsRolled: return "log_segments_rolled";
    case Counter::kLogErrors: return "log_errors";
    case Counter::kLogTruncatedBytes: return "log_truncated_bytes";
    case Counter::kRingRecoveredRecords: return "ring_recovered_records";
    case Counter::kRingDiscardedBytes: return "ring_discarded_bytes";
    case Counter::kRingClaimPos: return "ring_claim_pos";
    case Counter::kRingJournalPos: return "ring_journal_pos";
    case Counter::kRingCapacity: return "ring_capacity_bytes";
    case Counter::kSpeedRecords: return "speed_records";
    case Counter::kSpeedLate: return "speed_late_updates";
    case Counter::kSpeedOverflow: return "speed_overflow_updates";
    case Counter::kSpeedWatermarkNs: return "speed_watermark_ns";
    case Counter::kRingSpeedPos: return "ring_speed_pos";
    case Counter::kSpeedForcedEvictions: return "speed_forced_evictions";
    case Counter::kSpeedBatches: return "speed_batches";
    case Counter::kLogSegmentsDeleted: return "log_segments_deleted";
    case Counter::kBatchWatermarkOffset: return "batch_watermark_offset";
    case Counter::kBatchRecordsAbsorbed: return "batch_records_absorbed";
    case Counter::kBatchSteps: return "batch_steps";
    case Counter::kBatchLagBytes: return "batch_lag_bytes";
    case Counter::kBatchErrors: return "batch_errors";
    case Counter::kBatchMapFull: return "batch_map_full";
    case Counter::kBatchMapBytes: return "batch_map_bytes";
    case Counter::kBatchMapGrows: return "batch_map_grows";
    case Counter::kBatchRebuildsStarted: return "batch_rebuilds_started";
    case Counter::kBatchRebuildsFinished: return "batch_rebuilds_finished";
    case Counter::kBatchViewsBuilding: return "batch_views_building";
    case Counter::kBatchRebuildRequests: return "batch_rebuild_requests";
    case Counter::kBatchRebuildRejected: return "batch_rebuild_requests_rejected";
    case Counter::kBatchBucketsExpired: return "batch_buckets_expired";
    case Counter::kBatchVersionsDropped: return "batch_versions_dropped";
    case Counter::kBatchInvalidRecords: return "batch_invalid_records";
    case Counter::kBatchUnavailable: return "batch_unavailable";
    case Counter::kBatchLastCommitNs: return "batch_last_commit_ns";
    default: return {};
  }
}

// Shared-memory layout of /dev/shm/<shm_name>.stats (little-endian, 1088 bytes):
//
//   off  size  field
//     0     8  magic            "RNLSTAT1" (kStatsMagic)
//     8     4  layout_version   kStatsLayoutVersion
//    12     4  size_bytes       sizeof(StatsBlock)
//    16     8  pid              of the daemon that owns the block
//    24     8  started_ns       CLOCK_REALTIME at daemon start
//    32     8  heartbeat_ns     CLOCK_REALTIME, refreshed ~every 100 ms by the ingest loop
//    40    24  reserved
//    64  1024  counters[128]    u64 each; [0, 24) ingest threads, [24, 48) journal thread,
//                               [48, 64) speed path, [64, 96) batch layer's compaction
//                               thread, [96, 128) reserved (0), so each writer group owns its
//                               cache lines
//
// Writers use relaxed atomics: counters are monotonic (or gauges) and readers only need each
// value to be untorn, not a consistent snapshot across counters.
inline constexpr uint64_t kStatsMagic = 0x31544154534c4e52ull;  // "RNLSTAT1"
inline constexpr uint32_t kStatsLayoutVersion = 3;

struct alignas(64) StatsBlock {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t size_bytes;
  uint64_t pid;
  int64_t started_ns;
  std::atomic<int64_t> heartbeat_ns;
  uint64_t reserved[3];
  std::atomic<uint64_t> counters[static_cast<size_t>(Counter::kCount)];

  void add(Counter c, uint64_t n) {
    counters[static_cast<size_t>(c)].fetch_add(n, std::memory_order_relaxed);
  }
  void set(Counter c, uint64_t v) {
    counters[static_cast<size_t>(c)].store(v, std::memory_order_relaxed);
  }
  uint64_t get(Counter c) const {
    return counters[static_cast<size_t>(c)].load(std::memory_order_relaxed);
  }
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(offsetof(StatsBlock, heartbeat_ns) == 32);
static_assert(offsetof(StatsBlock, counters) == 64);
static_assert(static_cast<uint32_t>(Counter::kIngestGroupEnd) <= 24);
static_assert(static_cast<uint32_t>(Counter::kJournalGroupEnd) <= 48);
static_assert(static_cast<uint32_t>(Counter::kSpeedGroupEnd) <= 64);
static_assert(static_cast<uint32_t>(Counter::kBatchGroupEnd) <= 96);
static_assert(sizeof(StatsBlock) == 1088);

// Owner of a mapping of the stats block. The daemon creates it read-write (one per instance);
// readers in any process map it read-only and can never disturb the daemon.
class StatsSegment {
 public:
  // Creates (or takes over, after a crash) "<shm_name>.stats" with `mode`, zeroed.
  static Result<std::unique_ptr<StatsSegment>> create(const std::string& shm_name, unsigned mode,
                                                      int gid);
  // Maps an existing block read-only and validates magic, version and size.
  static Result<std::unique_ptr<StatsSegment>> open_read_only(const std::string& shm_name);
  static void remove(const std::string& shm_name);

  StatsSegment(const StatsSegment&) = delete;
  StatsSegment& operator=(const StatsSegment&) = delete;
  ~StatsSegment();

  StatsBlock& block() { return *block_; }
  const StatsBlock& block() const { return *block_; }

 private:
  StatsSegment(StatsBlock* b, size_t len) : block_(b), len_(len) {}
  StatsBlock* block_;
  size_t len_;
};

}  // namespace runnel::ipc
