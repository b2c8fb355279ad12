// runnel's client library, C++ face: reads a running runnel instance straight out of its shared
// memory, read-only (every mapping is PROT_READ: a client can never change or stall the daemon).
// This header and runnel.h (the C ABI) are all an application includes; the rest is internal.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace runnel::client {

// What went wrong; the same numbers as the RUNNEL_ERR_* codes of runnel.h.
enum class Code : int {
  kOk = 0,
  kNotFound = 1,         // no such view
  kInvalidArgument = 2,  // a bad query (the message names the argument and why)
  kUnavailable = 3,      // no instance by that name, or it was replaced by a restart and its
                         // successor is not ready yet: try again later
  kIncompatible = 4,     // the instance's shared-memory layout version (or a view's state
                         // format) is not the one this library reads: upgrade one side
  kCorruption = 5,       // the shared memory holds something impossible
  kTooSmall = 6,         // a caller-provided buffer is too small (C ABI only)
};

// An error as a value: the code and a message naming what failed and why. Never thrown.
class Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

struct Tag {
  std::string key;
  std::string value;
  friend bool operator==(const Tag&, const Tag&) = default;
};

// A view's live-table counters (statistics; not a snapshot across fields).
struct ViewStats {
  uint64_t capacity_entries = 0;  // entries (row x width x bucket) the live table holds at most
  uint64_t entries_used = 0;
  uint64_t inserts = 0;
  uint64_t overflow_updates = 0;  // updates that found no room: those buckets answer short
  uint64_t evictions = 0;         // buckets that aged out of the live window
  uint64_t late_updates = 0;      // updates older than the live window (the batch layer's)
};

struct ViewInfo {
  std::string name;
  std::vector<int64_t> widths_ns;         // bucket widths, ascending
  std::vector<std::string> outputs;       // aggregate outputs ("count", "mean", "p99", ...), in the
                                          // order of every value array this library returns
  std::string definition;                 // the view's canonical definition text
  std::vector<std::string> measurements;  // names or globs
  std::vector<std::string> fields;        // empty: every numeric field
  bool group_all_tags = true;             // one row per series and field
  std::vector<std::string> group_by;      // else rows group by these tag keys
  int64_t live_window_ns = 0;
  uint32_t change_seq = 0;  // see Client::wait_for_change
  ViewStats stats;
};

// A row of a view: one group (measurement + group tags) and one field. Rows of different fields
// are never merged together.
struct Row {
  uint64_t id = 0;
  std::string measurement;
  std::vector<Tag> tags;  // sorted by key
  std::string field;
};

// Selects rows. Every condition that is set must hold.
struct RowFilter {
  std::string measurement;  // exact; empty: any
  std::string field;        // exact; empty: any (results are then grouped by field)
  std::vector<Tag> where;   // tag key = value, exact
};

// One bucket or step: `values` holds one double per requested output (NaN where an output has
// no value, e.g. the mean of nothing); an empty bucket has count 0 (and sum 0).
struct Point {
  int64_t ts_ns = 0;  // start of the bucket or step, ns since the epoch
  uint64_t count = 0;
  std::vector<double> values;
};

// A time-range query. Buckets of the width chosen for the step merge into steps; rows that
// match merge into series (one per field, and per value of `group_by` if set).
struct Query {
  std::string view;
  RowFilter rows;
  std::optional<uint64_t> row_id;  // exactly this row instead of `rows`
  std::string group_by;            // a tag key: one series per value; empty: no grouping
  // The answer covers the steps [s, s + step) that intersect [from_ns, to_ns), whole.
  int64_t from_ns = 0;
  int64_t to_ns = 0;
  // A multiple of one of the view's widths; buckets of the largest width dividing it are merged.
  // 0: the finest width.
  int64_t step_ns = 0;
  std::vector<std::string> outputs;  // among the view's outputs; empty: all of them
  bool fill_empty = false;           // also return steps without data (count 0)
  // Where states come from. kMerged (the answer): the batch views up to their watermark and
  // the live tables beyond it, every event once. The others are for diagnosis.
  enum class Sources { kMerged, kBatchOnly, kLiveOnly };
  Sources sources = Sources::kMerged;
};

struct Series {
  std::string field;
  std::optional<std::string> group_value;  // with Query::group_by; empty when a row lacks the tag
  uint64_t rows = 0;                       // rows with data in the range, merged
  std::vector<Point> points;               // ascending ts_ns
};

struct QueryResult {
  std::vector<std::string> outputs;  // names of Point::values
  int64_t step_ns = 0;
  int64_t width_ns = 0;        // the bucket width that was merged
  int64_t from_ns = 0;         // first step start
  int64_t to_ns = 0;           // end of the last step
  std::vector<Series> series;  // ordered by (field, group_value); only those with data
  // Buckets skipped because the daemon kept rewriting them through every retry: the answer is
  // short by these (rare; ask again).
  uint64_t busy_entries = 0;
  // The batch views' watermark the answer was paired with (log offset; 0: none), and whether
  // the view's batch version is being (re)built for a new definition: the answer then holds
  // only what the live tables have (the events after the last absorbed generation).
  uint64_t batch_watermark_offset = 0;
  bool batch_rebuilding = false;
};

struct Counter {
  std::string name;  // as `runnelctl stats` shows it, e.g. "points_accepted", "speed_records"
  uint64_t value = 0;
};

// One open instance. Not thread-safe: use one Client per thread (they are cheap: three
// read-only mappings). If the daemon restarts, the next call notices (the old shared memory is
// marked retired) and reopens by name transparently; if the successor is not ready, the call
// fails with kUnavailable and a later one tries again.
class Client {
 public:
  // Maps "<shm_name>.live", ".series" and ".stats" read-only.
  static Status open(const std::string& shm_name, std::unique_ptr<Client>* out);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Status views(std::vector<ViewInfo>* out);
  Status view(const std::string& name, ViewInfo* out);

  // The rows of `view` that match; `view` empty: every registered row of any view. Rows are
  // registered when the speed layer first sees them and stay listed after their buckets age
  // out, except where several views could hold the same key: then only rows that have buckets
  // in this view's live table are listed.
  Status find_rows(const std::string& view, const RowFilter& filter, std::vector<Row>* out);

  // One bucket of one row, finalized: one value per output of the view.
  Status read_bucket(const std::string& view, uint64_t row_id, int64_t width_ns,
                     int64_t bucket_start_ns, Point* out);

  Status query(const Query& query, QueryResult* out);

  // Blocks (futex, no polling) until the view's change sequence differs from *seq or the
  // timeout passes; *changed says which, *seq is then the current sequence. A daemon restart
  // counts as a change (the client reopened; the sequence restarts).
  Status wait_for_change(const std::string& view, uint32_t* seq, std::chrono::nanoseconds timeout,
                         bool* changed);

  // The daemon's counters, plus "pid", "heartbeat_age_ms" and the series dictionary's
  // "series_count" and "series_rejected_full".
  Status counters(std::vector<Counter>* out);

  // Which daemon start-up the mappings belong to (changes when the client reopens).
  uint64_t instance_id() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A tail of the raw event stream (the ring "<shm_name>.ring"), non-blocking, read-only. When
// producers lap it, it skips to the oldest record still there and reports the bytes it lost.
// One thread.
class Tail {
 public:
  // from_oldest: start at the oldest record still in the ring, else at the next new one.
  static Status open(const std::string& shm_name, bool from_oldest, std::unique_ptr<Tail>* out);
  ~Tail();
  Tail(const Tail&) = delete;
  Tail& operator=(const Tail&) = delete;

  struct Batch {
    size_t records = 0;
    uint64_t overrun_bytes = 0;  // ring bytes skipped because producers lapped the tail
  };
  // Appends up to max_records new records to *lines as line protocol, one '\n'-terminated line
  // each, and never blocks.
  Status poll(size_t max_records, std::string* lines, Batch* batch);
  // Sleeps until a record may be there or the timeout passes (keep it short: 1-100 ms; a
  // read-only mapping cannot ask producers for a wake-up). True when one is there.
  bool wait(std::chrono::nanoseconds timeout);
  uint64_t overrun_bytes_total() const;

 private:
  struct Impl;
  explicit Tail(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace runnel::client
