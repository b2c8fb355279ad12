// Reading and checking the log: segment listing, header checks, record parsing with CRC,
// offset seeks, live-tail following and verify_log.
#include "storage/log_reader.h"

#include <fcntl.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <system_error>

#include "storage/crc32c.h"

namespace runnel::storage {

Result<std::vector<SegmentInfo>> list_segments(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) {
    std::string msg = fmt::format("list log directory {}: {}", dir.string(), ec.message());
    return ec == std::errc::no_such_file_or_directory ? Status::NotFound(std::move(msg))
                                                      : Status::IoError(std::move(msg));
  }
  std::vector<SegmentInfo> segments;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const auto base = parse_segment_file_name(it->path().filename().native());
    if (!base) continue;
    const uint64_t bytes = it->file_size(ec);
    // Removed by retention between readdir and stat: skip it like any other vanished file.
    if (ec == std::errc::no_such_file_or_directory) continue;
    if (ec) {
      return Status::IoError(fmt::format("stat segment {}: {}", it->path().string(), ec.message()));
    }
    segments.push_back(SegmentInfo{*base, it->path(), bytes, false});
  }
  if (ec) {
    return Status::IoError(fmt::format("list log directory {}: {}", dir.string(), ec.message()));
  }
  std::sort(segments.begin(), segments.end(), [](const SegmentInfo& a, const SegmentInfo& b) {
    return a.base_offset < b.base_offset;
  });
  for (size_t i = 0; i + 1 < segments.size(); ++i) segments[i].sealed = true;
  return segments;
}

void drop_log_pages(const std::filesystem::path& dir, uint64_t from, uint64_t to) {
  if (from >= to) return;
  auto segments = list_segments(dir);
  if (!segments.ok()) return;
  for (const SegmentInfo& seg : *segments) {
    // The newest segment's end is not known here; it is taken as unbounded.
    const uint64_t end = seg.sealed ? seg.end_offset() : UINT64_MAX;
    if (end <= from || seg.base_offset >= to) continue;
    const UniqueFd fd(::open(seg.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) continue;
    // File positions: the header precedes the records. The kernel drops only whole pages in
    // the range, so it starts at the page that holds `from` (its bytes before `from`, the end
    // of the previous step, would be left otherwise), and a segment done to its end goes whole
    // (length 0: to the end of the file).
    constexpr uint64_t kPage = 4096;
    const uint64_t lo = std::max(from, seg.base_offset) - seg.base_offset;
    const uint64_t hi = std::min(to, end) - seg.base_offset;
    const uint64_t first = (lo == 0 ? 0 : kSegmentHeaderSize + lo) / kPage * kPage;
    const uint64_t len = seg.sealed && to >= end ? 0 : kSegmentHeaderSize + hi - first;
    (void)::posix_fadvise(fd.get(), static_cast<off_t>(first), static_cast<off_t>(len), POSIX_FADV_DONTNEED);
  }
}

Status read_segment_header(int fd, const std::filesystem::path& path, uint64_t expected_base,
                           SegmentHeader* out) {
  std::array<std::byte, kSegmentHeaderSize> raw{};
  auto got = pread_full(fd, path, raw, 0);
  if (!got.ok()) return got.status();
  if (*got < kSegmentHeaderSize) {
    return Status::Corruption(fmt::format("{}: segment header cut short ({} of {} bytes)",
                                          path.string(), *got, kSegmentHeaderSize));
  }
  std::memcpy(out, raw.data(), sizeof(*out));
  if (std::memcmp(out->magic, kSegmentMagic, sizeof(kSegmentMagic)) != 0) {
    return Status::Corruption(fmt::format("{}: not a log segment (bad magic)", path.string()));
  }
  const uint32_t crc = crc32c(std::span(raw).first(kSegmentHeaderCrcOffset));
  if (crc != out->header_crc) {
    return Status::Corruption(fmt::format("{}: segment header checksum mismatch", path.string()));
  }
  if (out->version != kLogFormatVersion) {
    return Status::Unsupported(fmt::format("{}: segment format version {} (this build reads {})",
                                           path.string(), out->version, kLogFormatVersion));
  }
  if (out->header_size != kSegmentHeaderSize) {
    return Status::Corruption(fmt::format("{}: segment header size {} (expected {})", path.string(),
                                          out->header_size, kSegmentHeaderSize));
  }
  if (out->base_offset != expected_base) {
    return Status::Corruption(
        fmt::format("{}: header base offset {} does not match the file name ({})", path.string(),
                    out->base_offset, expected_base));
  }
  return Status::Ok();
}

// ----- SegmentReader -----

SegmentReader::SegmentReader(UniqueFd fd, std::filesystem::path path, uint64_t base_offset,
                             size_t buffer_bytes)
    : fd_(std::move(fd)),
      path_(std::move(path)),
      base_offset_(base_offset),
      position_(base_offset),
      buffer_(std::max<size_t>(buffer_bytes, kRecordHeaderSize)) {}

Result<SegmentReader> SegmentReader::open(const std::filesystem::path& path, uint64_t base_offset,
                                          size_t buffer_bytes) {
  auto fd = open_file(path, O_RDONLY);
  if (!fd.ok()) return fd.status();
  SegmentHeader header{};
  if (Status st = read_segment_header(fd->get(), path, base_offset, &header); !st.ok()) return st;
  return SegmentReader(std::move(*fd), path, base_offset, buffer_bytes);
}

Result<size_t> SegmentReader::fill(uint64_t file_pos, size_t n) {
  if (file_pos >= window_file_pos_ && file_pos + n <= window_file_pos_ + window_bytes_) return n;
  if (n > buffer_.size()) buffer_.resize(n);  // a record larger than the buffer: rare
  auto got = pread_full(fd_.get(), path_, buffer_, file_pos);
  if (!got.ok()) return got.status();
  window_file_pos_ = file_pos;
  window_bytes_ = *got;
  return std::min(*got, n);
}

Result<SegmentReader::Outcome> SegmentReader::fail(Outcome outcome, std::string problem,
                                                   uint64_t record_bytes) {
  problem_ = std::move(problem);
  corrupt_record_bytes_ = record_bytes;
  drop_buffer();
  return outcome;
}

Result<SegmentReader::Outcome> SegmentReader::next(Record* out) {
  const uint64_t file_pos = file_position();
  auto avail = fill(file_pos, kRecordHeaderSize);
  if (!avail.ok()) return avail.status();
  if (*avail == 0) {
    drop_buffer();
    return Outcome::kEnd;
  }
  if (*avail < kRecordHeaderSize) {
    return fail(Outcome::kIncomplete,
                fmt::format("record header cut short ({} of {} bytes)", *avail, kRecordHeaderSize));
  }
  RecordHeader header{};
  std::memcpy(&header, buffer_.data() + (file_pos - window_file_pos_), sizeof(header));
  if (header.payload_len > kMaxPayloadBytes) {
    return fail(Outcome::kCorrupt, fmt::format("payload length {} exceeds the maximum {}",
                                               header.payload_len, kMaxPayloadBytes));
  }
  const uint64_t size = record_size(header.payload_len);
  if (size > buffer_.size()) {
    // Check the file before growing the buffer for a length that may be garbage.
    auto file_bytes = file_size(fd_.get(), path_);
    if (!file_bytes.ok()) return file_bytes.status();
    if (file_pos + size > *file_bytes) {
      return fail(Outcome::kIncomplete,
                  fmt::format("record of {} bytes cut short by the end of the file ({} present)",
                              size, *file_bytes - file_pos));
    }
  }
  avail = fill(file_pos, size);
  if (!avail.ok()) return avail.status();
  if (*avail < size) {
    return fail(Outcome::kIncomplete,
                fmt::format("record of {} bytes cut short by the end of the file ({} present)",
                            size, *avail));
  }
  const std::byte* p = buffer_.data() + (file_pos - window_file_pos_);
  const uint32_t crc =
      crc32c(std::span(p + kRecordCrcCoverageOffset,
                       kRecordHeaderSize - kRecordCrcCoverageOffset + header.payload_len));
  if (crc != header.crc) {
    return fail(
        Outcome::kCorrupt,
        fmt::format("checksum mismatch (stored {:#010x}, computed {:#010x})", header.crc, crc),
        size);
  }
  out->offset = position_;
  out->next_offset = position_ + size;
  out->ring_epoch = header.ring_epoch;
  out->ring_pos = header.ring_pos;
  out->payload = std::span(p + kRecordHeaderSize, header.payload_len);
  position_ += size;
  return Outcome::kRecord;
}

Status SegmentReader::seek(uint64_t log_offset) {
  if (log_offset < position_) position_ = base_offset_;
  auto file_bytes = file_size(fd_.get(), path_);
  if (!file_bytes.ok()) return file_bytes.status();
  while (position_ < log_offset) {
    const uint64_t file_pos = file_position();
    auto avail = fill(file_pos, kRecordHeaderSize);
    if (!avail.ok()) return avail.status();
    const auto beyond_end = [&] {
      return Status::Invalid(
          fmt::format("offset {} is beyond the end of the log in {} (ends at {})", log_offset,
                      path_.string(), position_));
    };
    if (*avail < kRecordHeaderSize) return beyond_end();
    RecordHeader header{};
    std::memcpy(&header, buffer_.data() + (file_pos - window_file_pos_), sizeof(header));
    if (header.payload_len > kMaxPayloadBytes) {
      return Status::Corruption(fmt::format("{}: record at offset {} has implausible length {}",
                                            path_.string(), position_, header.payload_len));
    }
    const uint64_t size = record_size(header.payload_len);
    if (file_pos + size > *file_bytes) return beyond_end();  // an incomplete last record
    if (position_ + size > log_offset) {
      return Status::Invalid(
          fmt::format("offset {} is not a record boundary: it falls inside the record at {} "
                      "({} bytes) in {}",
                      log_offset, position_, size, path_.string()));
    }
    position_ += size;
  }
  return Status::Ok();
}

// ----- LogReader -----

Result<LogReader> LogReader::open(const std::filesystem::path& dir) {
  LogReader reader(dir);
  if (Status st = reader.refresh_segments(); !st.ok()) return st;
  if (!reader.segments_.empty()) reader.position_ = reader.segments_.front().base_offset;
  return reader;
}

Status LogReader::refresh_segments() {
  auto segments = list_segments(dir_);
  if (!segments.ok()) return segments.status();
  segments_ = std::move(*segments);
  return Status::Ok();
}

std::optional<size_t> LogReader::segment_for(uint64_t log_offset) const {
  auto it = std::upper_bound(
      segments_.begin(), segments_.end(), log_offset,
      [](uint64_t offset, const SegmentInfo& s) { return offset < s.base_offset; });
  if (it == segments_.begin()) return std::nullopt;
  return static_cast<size_t>(it - segments_.begin() - 1);
}

Status LogReader::open_segment(size_t index) {
  auto reader = SegmentReader::open(segments_[index].path, segments_[index].base_offset);
  if (!reader.ok()) return reader.status();
  current_.emplace(std::move(*reader));
  return Status::Ok();
}

uint64_t LogReader::position() const { return current_ ? current_->position() : position_; }

Status LogReader::seek(uint64_t log_offset) {
  if (Status st = refresh_segments(); !st.ok()) return st;
  if (segments_.empty()) {
    if (log_offset == 0) return Status::Ok();
    return Status::Invalid(fmt::format("offset {} is beyond the end of the empty log in {}",
                                       log_offset, dir_.string()));
  }
  const auto index = segment_for(log_offset);
  if (!index) {
    return Status::NotFound(
        fmt::format("offset {} precedes the oldest retained segment {} (base offset {})",
                    log_offset, segments_.front().path.string(), segments_.front().base_offset));
  }
  const uint64_t before = position();
  const bool walk_from_here = current_ &&
                              current_->base_offset() == segments_[*index].base_offset &&
                              current_->position() <= log_offset;
  if (!walk_from_here) {
    current_.reset();
    if (Status st = open_segment(*index); !st.ok()) {
      position_ = before;
      return st;
    }
  }
  if (Status st = current_->seek(log_offset); !st.ok()) {
    current_.reset();
    position_ = before;
    return st;
  }
  return Status::Ok();
}

Result<bool> LogReader::next(Record* out) {
  for (;;) {
    if (!current_) {
      if (Status st = refresh_segments(); !st.ok()) return st;
      const auto index = segment_for(position_);
      if (!index) {
        if (segments_.empty()) return false;  // nothing written yet
        return Status::NotFound(
            fmt::format("log offset {} in {} was removed (oldest retained segment starts at {})",
                        position_, dir_.string(), segments_.front().base_offset));
      }
      if (Status st = open_segment(*index); !st.ok()) return st;
      if (Status st = current_->seek(position_); !st.ok()) {
        current_.reset();
        return st;
      }
    }
    auto outcome = current_->next(out);
    if (!outcome.ok()) return outcome.status();
    if (*outcome == SegmentReader::Outcome::kRecord) return true;

    // No record here. Only a successor makes this segment sealed; until then the writer
    // may still complete (or, after a crash, cut) the tail.
    if (*outcome == SegmentReader::Outcome::kEnd) {
      // The common case while following a live tail, so it costs one stat, not a listing.
      // An empty segment is always the newest: rolls happen only out of non-empty ones.
      if (current_->position() == current_->base_offset()) return false;
      const auto successor = segment_path(dir_, current_->position());
      std::error_code ec;
      if (!std::filesystem::exists(successor, ec)) {
        if (ec)
          return Status::IoError(fmt::format("stat {}: {}", successor.string(), ec.message()));
        return false;
      }
      position_ = current_->position();
      current_.reset();
      continue;
    }
    if (Status st = refresh_segments(); !st.ok()) return st;
    const uint64_t base = current_->base_offset();
    if (segments_.empty() || segments_.back().base_offset <= base) return false;

    // Sealed: its last writes finished before the successor was created; read once more.
    outcome = current_->next(out);
    if (!outcome.ok()) return outcome.status();
    if (*outcome == SegmentReader::Outcome::kRecord) return true;
    if (*outcome == SegmentReader::Outcome::kEnd) continue;  // handled above
    return Status::Corruption(fmt::format("{} at log offset {} (file offset {}): {}",
                                          current_->path().string(), current_->position(),
                                          current_->file_position(), current_->problem()));
  }
}

// ----- verify -----

namespace {

LogProblem problem_at(const SegmentReader& reader, std::string reason) {
  return LogProblem{reader.path(), reader.position(), reader.file_position(), std::move(reason)};
}

// Reads one segment's records into `sv`; I/O errors are returned, corruption is recorded.
Status verify_segment(SegmentReader& reader, SegmentVerify& sv) {
  bool after_skip = false;
  for (;;) {
    Record record;
    auto outcome = reader.next(&record);
    if (!outcome.ok()) return outcome.status();
    const uint64_t rest = sv.info.file_bytes - std::min(sv.info.file_bytes, reader.file_position());
    switch (*outcome) {
      case SegmentReader::Outcome::kRecord:
        ++sv.records;
        sv.record_bytes += record.next_offset - record.offset;
        after_skip = false;
        continue;
      case SegmentReader::Outcome::kEnd:
        return Status::Ok();
      case SegmentReader::Outcome::kIncomplete:
        if (!sv.info.sealed && !after_skip) {
          sv.incomplete_tail_bytes = rest;
          return Status::Ok();
        }
        break;
      case SegmentReader::Outcome::kCorrupt:
        break;
    }
    // A record that fails its checks.
    if (after_skip) {
      // The step over the previous bad record did not land on a good one: stop here.
      sv.unreadable_bytes = rest;
      return Status::Ok();
    }
    ++sv.corrupt_records;
    if (!sv.first_problem) sv.first_problem = problem_at(reader, reader.problem());
    const uint64_t bytes = reader.corrupt_record_bytes();
    if (bytes == 0 || bytes >= rest) {
      sv.unreadable_bytes = rest;
      return Status::Ok();
    }
    reader.skip(bytes);
    after_skip = true;
  }
}

}  // namespace

Result<VerifyReport> verify_log(const std::filesystem::path& dir) {
  auto segments = list_segments(dir);
  if (!segments.ok()) return segments.status();
  VerifyReport report;
  report.segments = segments->size();
  if (!segments->empty()) report.first_offset = segments->front().base_offset;
  uint64_t expected_base = report.first_offset;
  bool restart = true;  // the next segment present starts the log
  for (const SegmentInfo& info : *segments) {
    SegmentVerify sv;
    sv.info = info;
    // Retention (in a running daemon) deletes the oldest segments, in order, while this reads:
    // a segment that vanished took every older one with it, and the log now starts after it.
    if (!std::filesystem::exists(info.path)) {
      --report.segments;
      ++report.vanished;
      restart = true;
      continue;
    }
    if (restart) report.first_offset = expected_base = info.base_offset;
    restart = false;
    if (info.base_offset != expected_base) {
      ++report.gaps;
      sv.first_problem =
          LogProblem{info.path, info.base_offset, 0,
                     fmt::format("segment starts at offset {} but the previous one ends at {}",
                                 info.base_offset, expected_base)};
    }
    auto reader = SegmentReader::open(info.path, info.base_offset);
    if (!reader.ok() && !std::filesystem::exists(info.path)) {
      --report.segments;  // deleted between the check above and the open
      ++report.vanished;
      restart = true;
      continue;
    }
    if (!reader.ok()) {
      const Status& st = reader.status();
      if (st.code() != Status::Code::kCorruption && st.code() != Status::Code::kUnsupported) {
        return st;
      }
      ++report.bad_headers;
      sv.header_ok = false;
      sv.unreadable_bytes = info.file_bytes;
      if (!sv.first_problem)
        sv.first_problem = LogProblem{info.path, info.base_offset, 0, st.message()};
    } else {
      if (Status st = verify_segment(*reader, sv); !st.ok()) return st;
      report.end_offset = reader->position();
    }
    expected_base = info.end_offset();
    report.records += sv.records;
    report.record_bytes += sv.record_bytes;
    report.corrupt_records += sv.corrupt_records;
    if (!report.first_problem && sv.first_problem) report.first_problem = sv.first_problem;
    report.details.push_back(std::move(sv));
  }
  return report;
}

}  // namespace runnel::storage
