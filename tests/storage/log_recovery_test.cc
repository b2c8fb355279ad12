// Damage and its detection: torn tails and garbage cut on recovery, flipped bits found by
// recovery (newest segment) or verify_log (sealed segments), torn and corrupt headers, gaps.
#include <gtest/gtest.h>

#include "storage/log_format.h"
#include "storage/log_reader.h"
#include "storage/log_writer.h"
#include "tests/storage/log_test_util.h"

namespace runnel::storage {
namespace {

using namespace runnel::storage::testing;

// Writes records [0, n) into a log with segments of `segment_bytes` and closes it.
std::vector<ReadRecord> write_log(const std::filesystem::path& dir, uint64_t n,
                                  uint64_t segment_bytes) {
  auto writer = LogWriter::open(options_for(dir, segment_bytes));
  EXPECT_TRUE(writer.ok()) << writer.status().ToString();
  if (!writer.ok()) return {};
  append_records(**writer, 0, n);
  EXPECT_TRUE((*writer)->close().ok());
  return read_all(dir);
}

uint64_t file_offset_in(const SegmentInfo& s, uint64_t log_offset) {
  return kSegmentHeaderSize + (log_offset - s.base_offset);
}

SegmentInfo newest_segment(const std::filesystem::path& dir) {
  auto segments = list_segments(dir);
  EXPECT_TRUE(segments.ok() && !segments->empty());
  return segments->back();
}

TEST(LogRecovery, TornTailIsTruncatedOnRecovery) {
  TempDir tmp;
  const auto records = write_log(tmp.log_dir(), 300, 1 << 20);
  const SegmentInfo seg = newest_segment(tmp.log_dir());
  const ReadRecord& last = records.back();
  // Cut the file in the middle of the last record's payload.
  std::filesystem::resize_file(seg.path, file_offset_in(seg, last.offset) + 40);

  RecoveryReport report;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 1 << 20), &report);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  ASSERT_TRUE(report.cut.has_value());
  EXPECT_EQ(report.cut->segment, seg.path);
  EXPECT_EQ(report.cut->log_offset, last.offset);
  EXPECT_EQ(report.cut->file_offset, file_offset_in(seg, last.offset));
  EXPECT_EQ(report.cut->bytes, 40u);
  EXPECT_NE(report.cut->reason.find("cut short"), std::string::npos) << report.cut->reason;
  EXPECT_EQ(report.tail_records, 299u);
  ASSERT_TRUE(report.last_record.has_value());
  EXPECT_EQ(report.last_record->ring_pos, 298u);
  EXPECT_EQ((*writer)->end_offset(), last.offset);
  EXPECT_EQ(std::filesystem::file_size(seg.path), file_offset_in(seg, last.offset));

  append_records(**writer, 299, 50);
  ASSERT_TRUE((*writer)->close().ok());
  expect_records(read_all(tmp.log_dir()), 0, 349);
}

TEST(LogRecovery, GarbageAfterTheLastRecordIsTruncatedOnRecovery) {
  for (const char fill : {'\0', '\xab'}) {
    TempDir tmp;
    const auto records = write_log(tmp.log_dir(), 100, 1 << 20);
    const SegmentInfo seg = newest_segment(tmp.log_dir());
    append_bytes(seg.path, std::vector<char>(1000, fill));

    RecoveryReport report;
    auto writer = LogWriter::open(options_for(tmp.log_dir(), 1 << 20), &report);
    ASSERT_TRUE(writer.ok()) << writer.status().ToString();
    ASSERT_TRUE(report.cut.has_value()) << "fill " << int(fill);
    EXPECT_EQ(report.cut->log_offset, records.back().next_offset);
    EXPECT_EQ(report.cut->bytes, 1000u);
    ASSERT_TRUE(report.last_record.has_value());
    EXPECT_EQ(report.last_record->ring_pos, 99u);
    append_records(**writer, 100, 10);
    ASSERT_TRUE((*writer)->close().ok());
    expect_records(read_all(tmp.log_dir()), 0, 110);
  }
}

TEST(LogRecovery, FlippedBitInTheNewestSegmentIsCutOnRecovery) {
  TempDir tmp;
  const auto records = write_log(tmp.log_dir(), 200, 1 << 20);
  const SegmentInfo seg = newest_segment(tmp.log_dir());
  const ReadRecord& victim = records[150];
  flip_bit(seg.path, file_offset_in(seg, victim.offset) + kRecordHeaderSize + 5);

  RecoveryReport report;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 1 << 20), &report);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  ASSERT_TRUE(report.cut.has_value());
  EXPECT_EQ(report.cut->log_offset, victim.offset);
  EXPECT_EQ(report.cut->bytes, records.back().next_offset - victim.offset);
  EXPECT_NE(report.cut->reason.find("checksum mismatch"), std::string::npos) << report.cut->reason;
  EXPECT_EQ(report.last_record->ring_pos, 149u);
  ASSERT_TRUE((*writer)->close().ok());
  expect_records(read_all(tmp.log_dir()), 0, 150);
}

TEST(LogRecovery, FlippedBitInASealedSegmentIsReportedByVerifyWithItsLocation) {
  TempDir tmp;
  const auto records = write_log(tmp.log_dir(), 1000, 8192);
  auto segments = list_segments(tmp.log_dir());
  ASSERT_TRUE(segments.ok());
  ASSERT_GT(segments->size(), 3u);
  const SegmentInfo& sealed = (*segments)[2];
  const ReadRecord* victim = nullptr;
  for (const ReadRecord& r : records) {
    if (r.offset > sealed.base_offset + 1000) {
      victim = &r;
      break;
    }
  }
  ASSERT_NE(victim, nullptr);
  flip_bit(sealed.path, file_offset_in(sealed, victim->offset) + kRecordHeaderSize + 17, 0);

  auto report = verify_log(tmp.log_dir());
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_FALSE(report->ok());
  EXPECT_EQ(report->segments, segments->size());
  EXPECT_EQ(report->corrupt_records, 1u);
  EXPECT_EQ(report->records, 999u) << "verify steps over a payload bit flip";
  ASSERT_TRUE(report->first_problem.has_value());
  EXPECT_EQ(report->first_problem->segment, sealed.path);
  EXPECT_EQ(report->first_problem->log_offset, victim->offset);
  EXPECT_EQ(report->first_problem->file_offset, file_offset_in(sealed, victim->offset));
  EXPECT_NE(report->first_problem->reason.find("checksum mismatch"), std::string::npos);
  EXPECT_EQ(report->details[2].corrupt_records, 1u);
  EXPECT_EQ(report->details[1].corrupt_records, 0u);

  // A reader stops at it with an error naming the place, not with silent end of data.
  auto reader = LogReader::open(tmp.log_dir());
  ASSERT_TRUE(reader.ok());
  Record r;
  Result<bool> got = false;
  do {
    got = reader->next(&r);
  } while (got.ok() && *got);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), Status::Code::kCorruption);
  EXPECT_NE(got.status().message().find(sealed.path.string()), std::string::npos);
  EXPECT_NE(got.status().message().find(std::to_string(victim->offset)), std::string::npos);

  // The writer only scans the newest segment, so it still opens and appends.
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 8192));
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
}

TEST(LogRecovery, VerifyOfAHealthyLogCountsEverything) {
  TempDir tmp;
  const auto records = write_log(tmp.log_dir(), 1000, 8192);
  auto report = verify_log(tmp.log_dir());
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->ok());
  EXPECT_EQ(report->records, 1000u);
  EXPECT_EQ(report->record_bytes, records.back().next_offset);
  EXPECT_EQ(report->end_offset, records.back().next_offset);
  EXPECT_EQ(report->first_offset, 0u);
  EXPECT_FALSE(report->first_problem.has_value());
  EXPECT_EQ(report->details.size(), report->segments);
  uint64_t sum = 0;
  for (const SegmentVerify& d : report->details) {
    EXPECT_TRUE(d.header_ok);
    EXPECT_EQ(d.record_bytes + kSegmentHeaderSize, d.info.file_bytes);
    sum += d.records;
  }
  EXPECT_EQ(sum, 1000u);
}

TEST(LogRecovery, TornSegmentHeaderIsRewrittenOnRecovery) {
  TempDir tmp;
  const auto records = write_log(tmp.log_dir(), 100, 1 << 20);
  // The next segment's header only partly on disk (segments are renamed into place with a
  // whole header, so this takes a file system that lost data; recovery still repairs it).
  const auto torn = segment_path(tmp.log_dir(), records.back().next_offset);
  append_bytes(torn, std::vector<char>{'R', 'N', 'L', 'S', 'E', 'G'});

  RecoveryReport report;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 1 << 20), &report);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  ASSERT_TRUE(report.cut.has_value());
  EXPECT_EQ(report.cut->segment, torn);
  EXPECT_NE(report.cut->reason.find("torn segment header"), std::string::npos);
  ASSERT_TRUE(report.last_record.has_value());
  EXPECT_EQ(report.last_record->ring_pos, 99u);
  EXPECT_EQ((*writer)->active_segment(), torn);
  append_records(**writer, 100, 10);
  ASSERT_TRUE((*writer)->close().ok());
  expect_records(read_all(tmp.log_dir()), 0, 110);
  auto verify = verify_log(tmp.log_dir());
  ASSERT_TRUE(verify.ok());
  EXPECT_TRUE(verify->ok());
}

TEST(LogRecovery, CorruptSealedSegmentHeaderFailsOpenAndVerify) {
  TempDir tmp;
  write_log(tmp.log_dir(), 500, 8192);
  auto segments = list_segments(tmp.log_dir());
  ASSERT_TRUE(segments.ok());
  const SegmentInfo& sealed = (*segments)[1];
  flip_bit(sealed.path, 20);  // inside base_offset

  auto writer = LogWriter::open(options_for(tmp.log_dir(), 8192));
  ASSERT_FALSE(writer.ok());
  EXPECT_EQ(writer.status().code(), Status::Code::kCorruption);
  EXPECT_NE(writer.status().message().find(sealed.path.string()), std::string::npos)
      << writer.status().message();

  auto report = verify_log(tmp.log_dir());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->bad_headers, 1u);
  EXPECT_FALSE(report->details[1].header_ok);
  ASSERT_TRUE(report->first_problem.has_value());
  EXPECT_EQ(report->first_problem->segment, sealed.path);
}

TEST(LogRecovery, MissingMiddleSegmentIsAGap) {
  TempDir tmp;
  write_log(tmp.log_dir(), 500, 8192);
  auto segments = list_segments(tmp.log_dir());
  ASSERT_TRUE(segments.ok());
  ASSERT_GT(segments->size(), 3u);
  std::filesystem::remove((*segments)[2].path);

  auto writer = LogWriter::open(options_for(tmp.log_dir(), 8192));
  ASSERT_FALSE(writer.ok());
  EXPECT_NE(writer.status().message().find("gap"), std::string::npos) << writer.status().message();
  auto report = verify_log(tmp.log_dir());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->gaps, 1u);
  EXPECT_FALSE(report->ok());
}

}  // namespace
}  // namespace runnel::storage
