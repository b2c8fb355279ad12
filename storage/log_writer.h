// LogWriter: appends records to the master dataset (format in storage/log_format.h) through
// io_uring, with group commit, a configurable fsync policy, segment roll and crash recovery.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "model/status.h"
#include "storage/file_util.h"
#include "storage/log_format.h"

namespace runnel::storage {

class IoUringFile;

struct LogOptions {
  enum class FsyncPolicy {
    kAlways,    // commit() returns once the batch is written and fdatasync'ed (group commit)
    kInterval,  // fdatasync at most every fsync_interval_ms, without blocking commit()
    kNever,     // leave flushing to the kernel (and to roll / close)
  };
  std::filesystem::path dir;                     // created if missing (its parent must exist)
  uint64_t segment_bytes = uint64_t{256} << 20;  // file size limit, header included
  FsyncPolicy fsync = FsyncPolicy::kAlways;
  uint32_t fsync_interval_ms = 100;
  // Each of the two write buffers (one fills while the other's write is in flight). Also
  // bounds the largest payload: see LogWriter::max_payload_bytes().
  size_t buffer_bytes = size_t{4} << 20;
  // Drop what became durable from the page cache (POSIX_FADV_DONTNEED after each fdatasync
  // and at each roll), for a log that nothing reads back soon. Then the next writes take the
  // pages just freed, instead of growing the cache with fresh pages, which costs far more
  // kernel time per byte (on this VM 6-8x: 3.3 s of system time for 1.6 GB written in 135 MB
  // fdatasync'ed steps, against 0.4-0.5 s). A later read comes from the disk.
  bool drop_durable_pages = false;
};

// The last record in the log when the writer opened it: where the daemon resumes in its ring.
struct LastRecord {
  uint64_t offset = 0;
  uint64_t ring_epoch = 0;
  uint64_t ring_pos = 0;
  uint32_t payload_len = 0;
};

// Bytes recovery removed from the end of the newest segment.
struct TailCut {
  std::filesystem::path segment;
  uint64_t log_offset = 0;   // where the log now ends
  uint64_t file_offset = 0;  // where the segment file now ends
  uint64_t bytes = 0;        // bytes removed
  std::string reason;        // e.g. "checksum mismatch (...)", "record ... cut short ..."
};

struct RecoveryReport {
  size_t segments = 0;         // segment files found (0 for a new log)
  uint64_t tail_records = 0;   // valid records in the newest segment
  std::optional<TailCut> cut;  // a torn or corrupt tail (or a torn segment header) removed
  std::optional<LastRecord> last_record;
  uint64_t end_offset = 0;  // where appending resumes
};

// Appends to the log in one directory.
//
// One writer thread calls every method except written_offset() and durable_offset(), which
// any thread may call. Only one LogWriter per directory: open() holds an flock on <dir>/LOCK.
//
// Offsets: end_offset() >= written_offset() >= durable_offset().
//   end_offset     where the next append() goes (includes bytes still in the buffers)
//   written_offset every byte below it has been written to the file (page cache; readers
//                  in other processes see it)
//   durable_offset every byte below it has also been fdatasync'ed
//
// Errors: a failed write or fdatasync puts the writer into a failed state: every later call
// returns that error (naming the file and errno), nothing more is written, and
// written_offset()/durable_offset() stop advancing. The file then holds every record below
// written_offset() intact, possibly followed by some complete records of the failed batch
// and a torn one. To continue, destroy the writer and open() again: recovery cuts the torn
// part and last_record_at_open() says which ring position is the last one in the log, so the
// daemon re-appends from the next one, with no record lost or duplicated. (After a failed
// fdatasync the page cache cannot be trusted, which is why there is no retry in place.)
class LogWriter {
 public:
  // Recovers the log in options.dir (see RecoveryReport) and prepares to append after its
  // last valid record. `report` may be null.
  static Result<std::unique_ptr<LogWriter>> open(const LogOptions& options,
                                                 RecoveryReport* report = nullptr);
  ~LogWriter();  // close(), logging any error
  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;

  // Buffers one record; it reaches the file on commit() or when a buffer fills. Rolls to a
  // new segment first if the record would push the active one past segment_bytes.
  // Hot path: no lock; no allocation; a system call only when a buffer fills or on a roll.
  // Invalid (and no state change) if the payload exceeds max_payload_bytes().
  Status append(uint64_t ring_epoch, uint64_t ring_pos, std::span<const std::byte> payload);

  // Ends a batch: hands the buffered bytes to the kernel and applies the fsync policy.
  // kAlways returns once the batch is written and fdatasync'ed; kInterval and kNever return
  // without waiting for the write, whose error (if any) a later call reports.
  Status commit();
  // kInterval: starts an fdatasync if fsync_interval_ms has passed since the last one (call it
  // when idle, too). Also collects finished writes and syncs. Cheap when nothing is due.
  Status maybe_sync();
  // Writes everything appended so far and fdatasyncs it; returns when durable.
  Status sync();
  // Writes everything appended so far; returns when written (not synced).
  Status flush();
  // sync(), then closes the files. Later calls return an error.
  Status close();

  // Deletes sealed segments that end at or below `log_offset` (retention); never the active
  // one. Returns how many were removed.
  Result<size_t> remove_sealed_segments_below(uint64_t log_offset);

  uint64_t end_offset() const { return end_offset_; }
  uint64_t written_offset() const { return written_offset_.load(std::memory_order_acquire); }
  uint64_t durable_offset() const { return durable_offset_.load(std::memory_order_acquire); }
  const std::optional<LastRecord>& last_record_at_open() const { return last_record_at_open_; }
  size_t max_payload_bytes() const { return max_payload_bytes_; }
  const LogOptions& options() const { return options_; }
  const std::filesystem::path& active_segment() const { return segment_path_; }
  // Segments this writer sealed (rolls) since open().
  uint64_t segments_sealed() const { return segments_sealed_; }

  struct Key {
    explicit Key() = default;
  };
  LogWriter(Key, const LogOptions& options);  // use open()

 private:
  // A write buffer: [0, submitted) is handed to the kernel, [submitted, fill) is pending.
  struct Buffer {
    std::vector<std::byte> bytes;
    size_t fill = 0;
    size_t submitted = 0;
    uint64_t start_offset = 0;  // log offset of bytes[0]
    unsigned writes_in_flight = 0;
  };
  // A write handed to io_uring, kept in submission (= offset) order.
  struct Write {
    uint64_t end_offset = 0;
    int result = 1;  // 1: in flight; 0: done; < 0: -errno
    unsigned buffer = 0;
  };
  static constexpr unsigned kMaxWrites = 32;  // fewer than IoUringFile::kMaxRequests

  Status recover(RecoveryReport* report);
  Status create_segment(uint64_t base_offset);
  Status roll();
  Status switch_buffer();
  // Hands the active buffer's pending bytes to io_uring (not yet submitted).
  Status queue_pending();
  Status queue_sync(bool after_all);
  // Waits for min_complete more I/O completions (0: only what is ready) and applies them.
  Status reap(unsigned min_complete);
  Status wait_all();
  void on_write_done(uint64_t seq, int result);
  Status fail(Status status);
  void on_sync_done(int result);
  // With drop_durable_pages: drops the active segment's pages below the durable offset, or all
  // of them once it is `sealed`.
  void drop_durable_pages(bool sealed);
  uint64_t file_pos(uint64_t log_offset) const {
    return kSegmentHeaderSize + (log_offset - segment_base_);
  }

  LogOptions options_;
  size_t max_payload_bytes_ = 0;
  UniqueFd lock_fd_;
  std::filesystem::path segment_path_;
  uint64_t segment_base_ = 0;
  uint64_t end_offset_ = 0;
  uint64_t segments_sealed_ = 0;
  std::atomic<uint64_t> written_offset_{0};  // stored by the writer thread with release
  std::atomic<uint64_t> durable_offset_{0};  // stored by the writer thread with release
  uint64_t dropped_offset_ = 0;  // drop_durable_pages() went up to here in the active segment
  std::optional<LastRecord> last_record_at_open_;

  std::array<Buffer, 2> buffers_;
  unsigned active_ = 0;
  std::array<Write, kMaxWrites> writes_{};
  uint64_t writes_head_seq_ = 0;  // oldest write not yet retired
  uint64_t writes_next_seq_ = 0;
  bool sync_in_flight_ = false;
  uint64_t sync_target_ = 0;
  std::chrono::steady_clock::time_point last_sync_start_{};

  Status error_;        // sticky: the first I/O failure
  bool closed_ = true;  // until open() succeeds
  // Declared last so it is destroyed first: its destructor waits for writes from buffers_.
  std::unique_ptr<IoUringFile> io_;
};

}  // namespace runnel::storage
