// Reading the master dataset: list_segments, SegmentReader (one segment file), LogReader
// (the whole log by offset, following a live writer) and verify_log (`runnelctl log verify`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "model/status.h"
#include "storage/file_util.h"
#include "storage/log_format.h"

namespace runnel::storage {

// One record as read back. `payload` points into the reader's buffer and stays valid until
// the reader's next call.
struct Record {
  uint64_t offset = 0;       // log offset of the framing header
  uint64_t next_offset = 0;  // log offset just past this record (padding included)
  uint64_t ring_epoch = 0;
  uint64_t ring_pos = 0;
  std::span<const std::byte> payload;
};

struct SegmentInfo {
  uint64_t base_offset = 0;
  std::filesystem::path path;
  uint64_t file_bytes = 0;
  bool sealed = false;  // a newer segment exists, so this one never changes again
  // Log offset just past this segment's last byte (exact once sealed).
  uint64_t end_offset() const {
    return base_offset + (file_bytes > kSegmentHeaderSize ? file_bytes - kSegmentHeaderSize : 0);
  }
};

// The segments in `dir`, oldest first; files that are not segments are ignored.
// NotFound if `dir` does not exist. Safe while a writer runs (the newest may still grow).
Result<std::vector<SegmentInfo>> list_segments(const std::filesystem::path& dir);

// Drops the page cache of log offsets [from, to) in `dir`'s segments (POSIX_FADV_DONTNEED):
// for a reader that is done with them (compaction, once a step is absorbed), so that the
// journal's next writes reuse those pages (see LogOptions::drop_durable_pages). Advice only:
// a segment that is gone or cannot be opened is skipped.
void drop_log_pages(const std::filesystem::path& dir, uint64_t from, uint64_t to);

// Reads and checks a segment header: magic, version, size, crc and base offset against
// `expected_base` (from the file name). Corruption names the file and what is wrong.
Status read_segment_header(int fd, const std::filesystem::path& path, uint64_t expected_base,
                           SegmentHeader* out);

// Reads the records of one segment file in order through a buffer of large preads.
// Used by LogReader, verify_log and the writer's recovery.
// One thread; REQUIRES external synchronization. Safe while a writer appends to the file:
// every outcome but kRecord drops the buffer, so the next call reads the file afresh.
class SegmentReader {
 public:
  enum class Outcome {
    kRecord,      // *out holds the next record; position() moved past it
    kEnd,         // position() is exactly at the end of the file
    kIncomplete,  // a record starts at position() but the file ends inside it
    kCorrupt,     // the record at position() fails its checks; see problem()
  };

  // Small enough that a read's bytes are still in the L2 cache when compaction parses them:
  // runnel-compaction-bench, 6 pairs, 2-3% faster than with 1 MiB (64 KiB: the same as 256).
  static constexpr size_t kDefaultBufferBytes = 1 << 18;

  // Opens `path` and checks its header (see read_segment_header).
  static Result<SegmentReader> open(const std::filesystem::path& path, uint64_t base_offset,
                                    size_t buffer_bytes = kDefaultBufferBytes);

  Result<Outcome> next(Record* out);
  // Moves forward to `log_offset` by walking the record lengths from position() (no CRC
  // checks on the way); Invalid if it falls inside a record or beyond the end of the file.
  // REQUIRES: base_offset() <= log_offset.
  Status seek(uint64_t log_offset);
  // Steps over the record at position() whose header says it is `record_bytes` long, as
  // verify does past a checksum mismatch.
  void skip(uint64_t record_bytes) { position_ += record_bytes; }

  uint64_t position() const { return position_; }  // log offset of the next record
  uint64_t base_offset() const { return base_offset_; }
  uint64_t file_position() const { return kSegmentHeaderSize + (position_ - base_offset_); }
  const std::filesystem::path& path() const { return path_; }
  // Why the last kCorrupt/kIncomplete happened.
  const std::string& problem() const { return problem_; }
  // Bytes the corrupt record at position() claims to occupy (0 if its length is implausible).
  uint64_t corrupt_record_bytes() const { return corrupt_record_bytes_; }

 private:
  SegmentReader(UniqueFd fd, std::filesystem::path path, uint64_t base_offset, size_t buffer_bytes);
  // Makes [file_pos, file_pos + n) available in the buffer; returns the bytes available
  // there (< n only at end of file).
  Result<size_t> fill(uint64_t file_pos, size_t n);
  void drop_buffer() { window_bytes_ = 0; }
  Result<Outcome> fail(Outcome outcome, std::string problem, uint64_t record_bytes = 0);

  UniqueFd fd_;
  std::filesystem::path path_;
  uint64_t base_offset_ = 0;
  uint64_t position_ = 0;
  std::vector<std::byte> buffer_;
  uint64_t window_file_pos_ = 0;  // file position of buffer_[0]
  size_t window_bytes_ = 0;       // valid bytes in buffer_
  std::string problem_;
  uint64_t corrupt_record_bytes_ = 0;
};

// Reads the log in offset order across segments, starting at the oldest retained record or
// at any record boundary given to seek().
// One thread; REQUIRES external synchronization. Safe alongside a writer in another thread
// or process: at an incomplete or not-yet-valid tail of the newest segment next() returns
// false and a later call continues from the same offset, picking up new segments as they
// appear. A bad record in a sealed segment is an error (Corruption naming file and offset).
class LogReader {
 public:
  // NotFound if `dir` does not exist. An empty directory is fine (nothing to read yet).
  static Result<LogReader> open(const std::filesystem::path& dir);

  // Positions the reader at `log_offset`, which must be the offset of a record or the end
  // of the log; else Invalid (inside a record / beyond the end) or NotFound (before the
  // oldest retained segment). Walks the segment from its start (or from the current
  // position when seeking forward within it).
  Status seek(uint64_t log_offset);

  // true: *out holds the next record. false: no complete record yet.
  Result<bool> next(Record* out);

  uint64_t position() const;  // log offset of the next record to be read

 private:
  explicit LogReader(std::filesystem::path dir) : dir_(std::move(dir)) {}
  Status refresh_segments();
  // Index in segments_ of the segment holding `log_offset`, or nullopt if it precedes all.
  std::optional<size_t> segment_for(uint64_t log_offset) const;
  Status open_segment(size_t index);

  std::filesystem::path dir_;
  std::vector<SegmentInfo> segments_;
  size_t current_index_ = 0;
  std::optional<SegmentReader> current_;
  uint64_t position_ = 0;  // used until a segment is open
};

// ----- verify -----

struct LogProblem {
  std::filesystem::path segment;
  uint64_t log_offset = 0;
  uint64_t file_offset = 0;
  std::string reason;
};

struct SegmentVerify {
  SegmentInfo info;
  uint64_t records = 0;       // records whose CRC checked out
  uint64_t record_bytes = 0;  // bytes they occupy, padding included
  uint64_t corrupt_records = 0;
  uint64_t unreadable_bytes = 0;       // bytes after a corruption that could not be parsed
  uint64_t incomplete_tail_bytes = 0;  // newest segment only: a record still being written
  bool header_ok = true;
  std::optional<LogProblem> first_problem;
};

struct VerifyReport {
  size_t segments = 0;
  uint64_t records = 0;
  uint64_t record_bytes = 0;
  uint64_t corrupt_records = 0;
  uint64_t bad_headers = 0;
  uint64_t gaps = 0;          // segments whose base offset is not the previous segment's end
  uint64_t vanished = 0;      // oldest segments deleted (by retention) while verify ran
  uint64_t first_offset = 0;  // base offset of the oldest segment
  uint64_t end_offset = 0;    // just past the last valid record
  std::optional<LogProblem> first_problem;
  std::vector<SegmentVerify> details;
  bool ok() const { return corrupt_records == 0 && bad_headers == 0 && gaps == 0; }
};

// Reads every record of every segment and checks its CRC. A checksum mismatch is stepped
// over when the record's length still leads to a valid record; otherwise the rest of that
// segment counts as unreadable. On a live log the newest segment's tail may show up as
// incomplete (not corrupt). Errors only for I/O failures, never for corruption.
Result<VerifyReport> verify_log(const std::filesystem::path& dir);

}  // namespace runnel::storage
