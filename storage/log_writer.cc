// LogWriter: recovery at open, double-buffered record encoding, io_uring writes and syncs,
// segment roll and retention.
#include "storage/log_writer.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "model/clock.h"
#include "storage/crc32c.h"
#include "storage/io_uring_file.h"
#include "storage/log_reader.h"

namespace runnel::storage {

namespace {

constexpr uint64_t kMinSegmentBytes = 4096;
constexpr size_t kMinBufferBytes = 4096;
constexpr size_t kMaxBufferBytes = size_t{1} << 30;  // a write's length must fit an int32 result
constexpr uint64_t kSyncTag = ~uint64_t{0};          // write tags are sequence numbers
constexpr std::string_view kTempSuffix = ".tmp";     // "<base>.seg.tmp" while being created

Status validate(const LogOptions& o) {
  if (o.dir.empty()) return Status::Invalid("log options: dir is empty");
  if (o.segment_bytes < kMinSegmentBytes) {
    return Status::Invalid(fmt::format("log options: segment_bytes {} is below the minimum {}",
                                       o.segment_bytes, kMinSegmentBytes));
  }
  if (o.buffer_bytes < kMinBufferBytes || o.buffer_bytes > kMaxBufferBytes) {
    return Status::Invalid(fmt::format("log options: buffer_bytes {} is outside [{}, {}]",
                                       o.buffer_bytes, kMinBufferBytes, kMaxBufferBytes));
  }
  return Status::Ok();
}

std::array<std::byte, kSegmentHeaderSize> encode_segment_header(uint64_t base_offset,
                                                                uint64_t segment_bytes) {
  SegmentHeader h{};
  std::memcpy(h.magic, kSegmentMagic, sizeof(h.magic));
  h.version = kLogFormatVersion;
  h.header_size = kSegmentHeaderSize;
  h.base_offset = base_offset;
  h.created_ns = realtime_ns();
  h.segment_bytes = segment_bytes;
  std::array<std::byte, kSegmentHeaderSize> raw{};
  std::memcpy(raw.data(), &h, sizeof(h));
  h.header_crc = crc32c(std::span(raw).first(kSegmentHeaderCrcOffset));
  std::memcpy(raw.data(), &h, sizeof(h));
  return raw;
}

Status write_segment_header(int fd, const std::filesystem::path& path, uint64_t base_offset,
                            uint64_t segment_bytes) {
  const auto raw = encode_segment_header(base_offset, segment_bytes);
  if (Status st = pwrite_full(fd, path, raw, 0); !st.ok()) return st;
  return fdatasync_file(fd, path);
}

// Creates `dir` if it is missing; its parent must exist.
Status ensure_directory(const std::filesystem::path& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0) {
    const auto named = dir.has_filename() ? dir : dir.parent_path();  // "a/log/" -> "a/log"
    return fsync_dir(named.has_parent_path() ? named.parent_path() : std::filesystem::path("."));
  }
  if (errno == EEXIST) return Status::Ok();
  return Status::Errno("create log directory " + dir.string(), errno);
}

Result<UniqueFd> lock_directory(const std::filesystem::path& dir) {
  const auto path = dir / kLockFileName;
  auto fd = open_file(path, O_RDWR | O_CREAT);
  if (!fd.ok()) return fd.status();
  if (::flock(fd->get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Status::Busy("log directory " + dir.string() + " is in use by another writer (" +
                          path.string() + " is locked)");
    }
    return Status::Errno("lock " + path.string(), errno);
  }
  return std::move(*fd);
}

// Removes segments that a crash left half-made under their temporary name.
Status remove_temp_segments(const std::filesystem::path& dir) {
  std::error_code ec;
  bool removed = false;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.ends_with(kTempSuffix)) continue;
    if (!parse_segment_file_name(
            std::string_view(name).substr(0, name.size() - kTempSuffix.size()))) {
      continue;
    }
    if (::unlink(it->path().c_str()) != 0 && errno != ENOENT) {
      return Status::Errno("remove " + it->path().string(), errno);
    }
    removed = true;
  }
  if (ec) return Status::IoError("list log directory " + dir.string() + ": " + ec.message());
  return removed ? fsync_dir(dir) : Status::Ok();
}

// The last valid record of a sealed segment (scanning it all), or nullopt if it has none.
Result<std::optional<LastRecord>> last_record_of(const SegmentInfo& segment) {
  auto reader = SegmentReader::open(segment.path, segment.base_offset);
  if (!reader.ok()) return reader.status();
  std::optional<LastRecord> last;
  Record record;
  for (;;) {
    auto outcome = reader->next(&record);
    if (!outcome.ok()) return outcome.status();
    if (*outcome != SegmentReader::Outcome::kRecord) {
      if (*outcome != SegmentReader::Outcome::kEnd) {
        spdlog::warn(
            "log recovery: sealed segment {} is damaged at offset {} ({}); the last "
            "record before it is taken as the last one in the log",
            segment.path.string(), reader->position(), reader->problem());
      }
      return last;
    }
    last = LastRecord{record.offset, record.ring_epoch, record.ring_pos,
                      static_cast<uint32_t>(record.payload.size())};
  }
}

}  // namespace

LogWriter::LogWriter(Key, const LogOptions& options) : options_(options) {
  for (Buffer& b : buffers_) b.bytes.resize(options.buffer_bytes);
  const uint64_t room =
      std::min<uint64_t>(options.buffer_bytes, options.segment_bytes - kSegmentHeaderSize);
  max_payload_bytes_ = static_cast<size_t>(
      std::min<uint64_t>(kMaxPayloadBytes, (room & ~(kRecordAlignment - 1)) - kRecordHeaderSize));
}

LogWriter::~LogWriter() {
  if (closed_) return;
  if (Status st = close(); !st.ok()) {
    spdlog::error("closing the log writer for {}: {}", options_.dir.string(), st.message());
  }
}

Result<std::unique_ptr<LogWriter>> LogWriter::open(const LogOptions& options,
                                                   RecoveryReport* report) {
  if (Status st = validate(options); !st.ok()) return st;
  RecoveryReport local;
  if (report == nullptr) report = &local;
  *report = RecoveryReport{};
  if (Status st = ensure_directory(options.dir); !st.ok()) return st;
  auto writer = std::make_unique<LogWriter>(Key(), options);
  auto lock = lock_directory(options.dir);
  if (!lock.ok()) return lock.status();
  writer->lock_fd_ = std::move(*lock);
  auto io = IoUringFile::create();
  if (!io.ok()) return io.status();
  writer->io_ = std::move(*io);
  if (Status st = writer->recover(report); !st.ok()) return st;
  writer->closed_ = false;
  return writer;
}

Status LogWriter::recover(RecoveryReport* report) {
  if (Status st = remove_temp_segments(options_.dir); !st.ok()) return st;
  auto listed = list_segments(options_.dir);
  if (!listed.ok()) return listed.status();
  const std::vector<SegmentInfo>& segments = *listed;
  report->segments = segments.size();
  if (segments.empty()) {
    if (Status st = create_segment(0); !st.ok()) return st;
  } else {
    // Sealed segments are only checked for a sound header and no gaps; verify_log reads them.
    for (size_t i = 0; i + 1 < segments.size(); ++i) {
      auto fd = open_file(segments[i].path, O_RDONLY);
      if (!fd.ok()) return fd.status();
      SegmentHeader header{};
      Status st =
          read_segment_header(fd->get(), segments[i].path, segments[i].base_offset, &header);
      if (!st.ok()) return st;
      if (segments[i + 1].base_offset != segments[i].end_offset()) {
        return Status::Corruption(
            fmt::format("log gap: {} ends at offset {} but the next segment {} starts at {}",
                        segments[i].path.string(), segments[i].end_offset(),
                        segments[i + 1].path.string(), segments[i + 1].base_offset));
      }
    }

    const SegmentInfo& tail = segments.back();
    auto fd = open_file(tail.path, O_RDWR);
    if (!fd.ok()) return fd.status();
    SegmentHeader header{};
    uint64_t end = tail.base_offset;
    Status header_status = read_segment_header(fd->get(), tail.path, tail.base_offset, &header);
    if (!header_status.ok()) {
      // A segment gets its name only once its header is fdatasync'ed, so a bad header is
      // damage. With nothing after it no record is lost: rewrite it and carry on. With
      // records after it, refuse, and leave the decision to the operator.
      if (header_status.code() != Status::Code::kCorruption ||
          tail.file_bytes > kSegmentHeaderSize) {
        return header_status;
      }
      if (Status st = truncate_file(fd->get(), tail.path, 0); !st.ok()) return st;
      Status st =
          write_segment_header(fd->get(), tail.path, tail.base_offset, options_.segment_bytes);
      if (!st.ok()) return st;
      report->cut = TailCut{tail.path, tail.base_offset, 0, tail.file_bytes,
                            "torn segment header: " + header_status.message()};
    } else {
      auto reader = SegmentReader::open(tail.path, tail.base_offset);
      if (!reader.ok()) return reader.status();
      Record record;
      for (;;) {
        auto outcome = reader->next(&record);
        if (!outcome.ok()) return outcome.status();
        if (*outcome == SegmentReader::Outcome::kRecord) {
          ++report->tail_records;
          report->last_record = LastRecord{record.offset, record.ring_epoch, record.ring_pos,
                                           static_cast<uint32_t>(record.payload.size())};
          continue;
        }
        if (*outcome != SegmentReader::Outcome::kEnd) {
          const uint64_t keep = reader->file_position();
          if (Status st = truncate_file(fd->get(), tail.path, keep); !st.ok()) return st;
          report->cut = TailCut{tail.path, reader->position(), keep, tail.file_bytes - keep,
                                reader->problem()};
        }
        break;
      }
      end = reader->position();
    }
    // Makes the cut durable, and whatever a crashed process left in the page cache.
    if (Status st = fdatasync_file(fd->get(), tail.path); !st.ok()) return st;
    if (report->cut) {
      spdlog::warn("log recovery: cut {} bytes from {} at log offset {}: {}", report->cut->bytes,
                   tail.path.string(), report->cut->log_offset, report->cut->reason);
    }
    for (size_t i = segments.size() - 1; !report->last_record && i-- > 0;) {
      auto last = last_record_of(segments[i]);
      if (!last.ok()) return last.status();
      report->last_record = *last;
    }
    io_->attach(std::move(*fd), tail.path);
    segment_path_ = tail.path;
    segment_base_ = tail.base_offset;
    end_offset_ = end;
  }
  written_offset_.store(end_offset_, std::memory_order_release);
  durable_offset_.store(end_offset_, std::memory_order_release);
  dropped_offset_ = segment_base_;
  for (Buffer& b : buffers_) b.start_offset = end_offset_;
  last_sync_start_ = std::chrono::steady_clock::now();
  last_record_at_open_ = report->last_record;
  report->end_offset = end_offset_;
  return Status::Ok();
}

Status LogWriter::create_segment(uint64_t base_offset) {
  // Built under a temporary name and renamed into place, so a segment file is never seen
  // (by a reader or by recovery) without its complete header.
  const auto path = segment_path(options_.dir, base_offset);
  auto tmp_path = path;
  tmp_path += kTempSuffix;
  auto fd = open_file(tmp_path, O_RDWR | O_CREAT | O_EXCL);
  if (!fd.ok()) return fd.status();
  Status st = write_segment_header(fd->get(), tmp_path, base_offset, options_.segment_bytes);
  if (st.ok() &&
      ::renameat2(AT_FDCWD, tmp_path.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) != 0) {
    st = Status::Errno("rename " + tmp_path.string() + " to " + path.filename().string(), errno);
  }
  if (st.ok()) st = fsync_dir(options_.dir);
  if (!st.ok()) {
    ::unlink(tmp_path.c_str());  // best effort; recovery removes leftovers too
    return st;
  }
  io_->attach(std::move(*fd), path);
  segment_path_ = path;
  segment_base_ = base_offset;
  dropped_offset_ = base_offset;
  return Status::Ok();
}

Status LogWriter::append(uint64_t ring_epoch, uint64_t ring_pos,
                         std::span<const std::byte> payload) {
  if (!error_.ok()) return error_;
  if (payload.size() > max_payload_bytes_) {
    return Status::Invalid(fmt::format("log record payload of {} bytes exceeds the maximum {}",
                                       payload.size(), max_payload_bytes_));
  }
  const uint64_t size = record_size(payload.size());
  if (file_pos(end_offset_) + size > options_.segment_bytes) {
    if (Status st = roll(); !st.ok()) return st;
  }
  if (buffers_[active_].fill + size > buffers_[active_].bytes.size()) {
    if (Status st = switch_buffer(); !st.ok()) return st;
  }
  Buffer& b = buffers_[active_];
  std::byte* p = b.bytes.data() + b.fill;
  const RecordHeader header{0, static_cast<uint32_t>(payload.size()), ring_epoch, ring_pos};
  std::memcpy(p, &header, sizeof(header));
  if (!payload.empty()) std::memcpy(p + kRecordHeaderSize, payload.data(), payload.size());
  std::memset(p + kRecordHeaderSize + payload.size(), 0, size - kRecordHeaderSize - payload.size());
  const uint32_t crc = crc32c(std::span<const std::byte>(
      p + kRecordCrcCoverageOffset, kRecordHeaderSize - kRecordCrcCoverageOffset + payload.size()));
  std::memcpy(p, &crc, sizeof(crc));
  b.fill += size;
  end_offset_ += size;
  return Status::Ok();
}

Status LogWriter::queue_pending() {
  Buffer& b = buffers_[active_];
  if (b.submitted == b.fill) return Status::Ok();
  while (writes_next_seq_ - writes_head_seq_ == kMaxWrites) {
    if (Status st = reap(1); !st.ok()) return st;
  }
  const uint64_t seq = writes_next_seq_;
  const uint64_t begin = b.start_offset + b.submitted;
  Status st = io_->queue_write(std::span(b.bytes).subspan(b.submitted, b.fill - b.submitted),
                               file_pos(begin), seq);
  if (!st.ok()) return fail(st);
  writes_[seq % kMaxWrites] = Write{b.start_offset + b.fill, 1, active_};
  ++writes_next_seq_;
  ++b.writes_in_flight;
  b.submitted = b.fill;
  return Status::Ok();
}

Status LogWriter::switch_buffer() {
  if (Status st = queue_pending(); !st.ok()) return st;
  if (Status st = io_->submit(); !st.ok()) return fail(st);
  const unsigned other = active_ ^ 1;
  while (buffers_[other].writes_in_flight > 0) {
    if (Status st = reap(1); !st.ok()) return st;
  }
  Buffer& b = buffers_[other];
  b.fill = 0;
  b.submitted = 0;
  b.start_offset = end_offset_;
  active_ = other;
  return Status::Ok();
}

Status LogWriter::queue_sync(bool after_all) {
  // With after_all (IOSQE_IO_DRAIN) the sync covers every write queued so far; without, it
  // runs alongside later writes and covers only what had been written when it was queued.
  sync_target_ = after_all ? buffers_[active_].start_offset + buffers_[active_].submitted
                           : written_offset_.load(std::memory_order_relaxed);
  if (Status st = io_->queue_fdatasync(kSyncTag, after_all); !st.ok()) return fail(st);
  sync_in_flight_ = true;
  last_sync_start_ = std::chrono::steady_clock::now();
  return Status::Ok();
}

void LogWriter::on_write_done(uint64_t seq, int result) {
  Write& w = writes_[seq % kMaxWrites];
  w.result = result < 0 ? result : 0;
  --buffers_[w.buffer].writes_in_flight;
  if (result < 0) {
    (void)fail(Status::Errno("write " + segment_path_.string(), -result));
    return;
  }
  // Writes can complete out of order; written_offset only covers a gapless prefix.
  uint64_t written = written_offset_.load(std::memory_order_relaxed);
  while (writes_head_seq_ < writes_next_seq_) {
    const Write& head = writes_[writes_head_seq_ % kMaxWrites];
    if (head.result != 0) break;
    written = head.end_offset;
    ++writes_head_seq_;
  }
  written_offset_.store(written, std::memory_order_release);  // pairs with written_offset()
}

void LogWriter::on_sync_done(int result) {
  sync_in_flight_ = false;
  if (result < 0) {
    (void)fail(Status::Errno("fdatasync " + segment_path_.string(), -result));
    return;
  }
  const uint64_t durable = std::min(sync_target_, written_offset_.load(std::memory_order_relaxed));
  if (durable > durable_offset_.load(std::memory_order_relaxed)) {
    durable_offset_.store(durable, std::memory_order_release);  // pairs with durable_offset()
  }
  drop_durable_pages(false);
}

void LogWriter::drop_durable_pages(bool sealed) {
  const uint64_t durable = durable_offset_.load(std::memory_order_relaxed);
  if (!options_.drop_durable_pages || io_->fd() < 0) return;
  if (!sealed && durable <= dropped_offset_) return;
  // From the page that holds dropped_offset_: the kernel drops only whole pages in the range,
  // so that page was kept last time while it was still being filled. Dirty pages (bytes past
  // the durable offset) are kept. A sealed segment goes to its end (length 0), last partial
  // page included. Advice only: an error changes nothing that matters.
  constexpr uint64_t kPage = 4096;
  const uint64_t from = file_pos(dropped_offset_) / kPage * kPage;
  const uint64_t len = sealed ? 0 : file_pos(durable) - from;
  (void)::posix_fadvise(io_->fd(), static_cast<off_t>(from), static_cast<off_t>(len),
                        POSIX_FADV_DONTNEED);
  dropped_offset_ = durable;
}

Status LogWriter::reap(unsigned min_complete) {
  if (Status st = io_->wait(min_complete); !st.ok()) return fail(st);
  IoUringFile::Completion c{};
  while (io_->take_completion(&c)) {
    if (c.tag == kSyncTag) {
      on_sync_done(c.result);
    } else {
      on_write_done(c.tag, c.result);
    }
  }
  return error_;
}

Status LogWriter::wait_all() {
  while (io_->in_flight() > 0) {
    if (Status st = reap(1); !st.ok()) return st;
  }
  return error_;
}

Status LogWriter::fail(Status status) {
  if (error_.ok()) {
    spdlog::error("log writer for {} stopped: {}", options_.dir.string(), status.message());
    error_ = std::move(status);
  }
  return error_;
}

Status LogWriter::commit() {
  if (!error_.ok()) return error_;
  switch (options_.fsync) {
    case LogOptions::FsyncPolicy::kAlways:
      return sync();
    case LogOptions::FsyncPolicy::kInterval:
      if (Status st = queue_pending(); !st.ok()) return st;
      return maybe_sync();
    case LogOptions::FsyncPolicy::kNever:
      if (Status st = queue_pending(); !st.ok()) return st;
      if (Status st = io_->submit(); !st.ok()) return fail(st);
      return reap(0);
  }
  return Status::Ok();
}

Status LogWriter::maybe_sync() {
  if (!error_.ok()) return error_;
  if (Status st = io_->submit(); !st.ok()) return fail(st);
  if (Status st = reap(0); !st.ok()) return st;
  if (options_.fsync != LogOptions::FsyncPolicy::kInterval || sync_in_flight_) return error_;
  const uint64_t written = written_offset_.load(std::memory_order_relaxed);
  if (written == durable_offset_.load(std::memory_order_relaxed)) return error_;
  const auto due = last_sync_start_ + std::chrono::milliseconds(options_.fsync_interval_ms);
  if (std::chrono::steady_clock::now() < due) return error_;
  if (Status st = queue_sync(false); !st.ok()) return st;
  if (Status st = io_->submit(); !st.ok()) return fail(st);
  return error_;
}

Status LogWriter::sync() {
  if (!error_.ok()) return error_;
  if (Status st = queue_pending(); !st.ok()) return st;
  if (durable_offset_.load(std::memory_order_relaxed) == end_offset_) return wait_all();
  while (sync_in_flight_) {  // one sync at a time: sync_target_ tracks one
    if (Status st = reap(1); !st.ok()) return st;
  }
  if (Status st = queue_sync(true); !st.ok()) return st;
  return wait_all();
}

Status LogWriter::flush() {
  if (!error_.ok()) return error_;
  if (Status st = queue_pending(); !st.ok()) return st;
  if (Status st = io_->submit(); !st.ok()) return fail(st);
  while (written_offset_.load(std::memory_order_relaxed) < end_offset_) {
    if (Status st = reap(1); !st.ok()) return st;
  }
  return error_;
}

Status LogWriter::roll() {
  // Seal: everything in this segment written and fdatasync'ed before the next one exists.
  if (Status st = sync(); !st.ok()) return st;
  drop_durable_pages(true);  // to its end, last partial page included
  if (Status st = io_->close_file(); !st.ok()) return fail(st);
  if (Status st = create_segment(end_offset_); !st.ok()) return fail(st);
  for (Buffer& b : buffers_) {
    b.fill = 0;
    b.submitted = 0;
    b.start_offset = end_offset_;
  }
  ++segments_sealed_;
  return Status::Ok();
}

Status LogWriter::close() {
  if (closed_) return Status::Ok();
  Status st = error_.ok() ? sync() : error_;
  while (io_->in_flight() > 0 && io_->wait(io_->in_flight()).ok()) {
    IoUringFile::Completion c{};
    while (io_->take_completion(&c)) {
    }
  }
  Status close_status = io_->close_file();
  if (st.ok()) st = close_status;
  lock_fd_.reset();
  closed_ = true;
  if (error_.ok())
    error_ = Status::Invalid("log writer for " + options_.dir.string() + " is closed");
  return st;
}

Result<size_t> LogWriter::remove_sealed_segments_below(uint64_t log_offset) {
  if (!error_.ok()) return error_;
  auto segments = list_segments(options_.dir);
  if (!segments.ok()) return segments.status();
  size_t removed = 0;
  for (const SegmentInfo& s : *segments) {
    if (s.base_offset >= segment_base_ || s.end_offset() > log_offset) break;
    if (::unlink(s.path.c_str()) != 0) {
      return Status::Errno("remove segment " + s.path.string(), errno);
    }
    ++removed;
  }
  if (removed > 0) {
    if (Status st = fsync_dir(options_.dir); !st.ok()) return st;
  }
  return removed;
}

}  // namespace runnel::storage
