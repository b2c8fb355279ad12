// The log end to end: records read back exactly, segments roll, seeks by offset, reopen and
// resume, a reader following a live writer, retention.
#include <gtest/gtest.h>

#include <thread>

#include "storage/log_format.h"
#include "storage/log_reader.h"
#include "storage/log_writer.h"
#include "tests/storage/log_test_util.h"

namespace runnel::storage {
namespace {

using namespace runnel::storage::testing;

class LogRoundTrip : public ::testing::TestWithParam<size_t> {};

TEST_P(LogRoundTrip, AppendedRecordsReadBackWithExactPayloadsAndOffsets) {
  TempDir tmp;
  LogOptions options = options_for(tmp.log_dir(), uint64_t{256} << 20);
  options.buffer_bytes = GetParam();
  auto writer = LogWriter::open(options);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  EXPECT_FALSE((*writer)->last_record_at_open().has_value());
  append_records(**writer, 0, 20000, 100);
  const uint64_t end = (*writer)->end_offset();
  ASSERT_TRUE((*writer)->close().ok());

  const auto records = read_all(tmp.log_dir());
  expect_records(records, 0, 20000);
  EXPECT_EQ(records.back().next_offset, end);
  EXPECT_EQ(std::filesystem::file_size(segment_path(tmp.log_dir(), 0)), kSegmentHeaderSize + end);
}

// 4 KiB buffers force many buffer switches with writes still in flight.
INSTANTIATE_TEST_SUITE_P(BufferSizes, LogRoundTrip, ::testing::Values(4096, 4 << 20));

TEST(Log, EmptyPayloadRoundTrips) {
  TempDir tmp;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 1 << 20));
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->append(1, 2, {}).ok());
  ASSERT_TRUE((*writer)->close().ok());
  auto reader = LogReader::open(tmp.log_dir());
  ASSERT_TRUE(reader.ok());
  Record r;
  auto got = reader->next(&r);
  ASSERT_TRUE(got.ok() && *got);
  EXPECT_EQ(r.offset, 0u);
  EXPECT_EQ(r.next_offset, kRecordHeaderSize);
  EXPECT_TRUE(r.payload.empty());
}

TEST(Log, OversizedPayloadIsRejectedWithoutChangingTheLog) {
  TempDir tmp;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 8192));
  ASSERT_TRUE(writer.ok());
  std::vector<std::byte> big((*writer)->max_payload_bytes() + 1);
  const Status st = (*writer)->append(1, 1, big);
  EXPECT_EQ(st.code(), Status::Code::kInvalid);
  EXPECT_EQ((*writer)->end_offset(), 0u);
  big.pop_back();
  EXPECT_TRUE((*writer)->append(1, 1, big).ok()) << "the largest allowed payload fits";
  append_records(**writer, 0, 10);
}

TEST(Log, SmallSegmentsRollAndNoRecordSpansTwoSegments) {
  TempDir tmp;
  constexpr uint64_t kSegmentBytes = 8192;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), kSegmentBytes));
  ASSERT_TRUE(writer.ok());
  append_records(**writer, 0, 2000, 10);
  ASSERT_TRUE((*writer)->close().ok());

  auto segments = list_segments(tmp.log_dir());
  ASSERT_TRUE(segments.ok());
  ASSERT_GT(segments->size(), 20u);
  uint64_t expected_base = 0;
  for (size_t i = 0; i < segments->size(); ++i) {
    const SegmentInfo& s = (*segments)[i];
    EXPECT_EQ(s.base_offset, expected_base);
    EXPECT_LE(s.file_bytes, kSegmentBytes);
    EXPECT_EQ(s.sealed, i + 1 < segments->size());
    EXPECT_EQ(s.path, segment_path(tmp.log_dir(), s.base_offset));
    expected_base = s.end_offset();
  }

  const auto records = read_all(tmp.log_dir());
  expect_records(records, 0, 2000);
  size_t seg = 0;
  for (const ReadRecord& r : records) {
    while ((*segments)[seg].end_offset() <= r.offset) ++seg;
    EXPECT_LE(r.next_offset, (*segments)[seg].end_offset()) << "record at " << r.offset;
  }
}

TEST(Log, SeekByOffsetLandsOnThatRecordInAnySegment) {
  TempDir tmp;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 8192));
  ASSERT_TRUE(writer.ok());
  append_records(**writer, 0, 1000);
  ASSERT_TRUE((*writer)->close().ok());
  const auto records = read_all(tmp.log_dir());
  ASSERT_EQ(records.size(), 1000u);
  auto segments = list_segments(tmp.log_dir());
  ASSERT_TRUE(segments.ok());

  auto reader = LogReader::open(tmp.log_dir());
  ASSERT_TRUE(reader.ok());
  // Forward, backward, to a segment's first record, within the current segment.
  for (size_t k : {size_t{500}, size_t{3}, size_t{999}, size_t{0}, size_t{501}, size_t{640}}) {
    ASSERT_TRUE(reader->seek(records[k].offset).ok()) << k;
    Record r;
    auto got = reader->next(&r);
    ASSERT_TRUE(got.ok() && *got) << k;
    EXPECT_EQ(r.ring_pos, k);
    EXPECT_EQ(r.offset, records[k].offset);
  }
  const uint64_t third_segment = (*segments)[2].base_offset;
  ASSERT_TRUE(reader->seek(third_segment).ok());
  Record r;
  auto got = reader->next(&r);
  ASSERT_TRUE(got.ok() && *got);
  EXPECT_EQ(r.offset, third_segment);

  // The end of the log is a valid position: nothing to read yet.
  ASSERT_TRUE(reader->seek(records.back().next_offset).ok());
  got = reader->next(&r);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(*got);
}

TEST(Log, SeekInsideARecordOrPastTheEndIsRejected) {
  TempDir tmp;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 8192));
  ASSERT_TRUE(writer.ok());
  append_records(**writer, 0, 300);
  ASSERT_TRUE((*writer)->close().ok());
  const auto records = read_all(tmp.log_dir());

  auto reader = LogReader::open(tmp.log_dir());
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE(reader->seek(records[100].offset).ok());
  const Status inside = reader->seek(records[200].offset + 8);
  EXPECT_EQ(inside.code(), Status::Code::kInvalid);
  EXPECT_NE(inside.message().find("not a record boundary"), std::string::npos) << inside.message();
  const Status past = reader->seek(records.back().next_offset + 8);
  EXPECT_EQ(past.code(), Status::Code::kInvalid) << past.message();
  // A failed seek leaves the reader where it was.
  EXPECT_EQ(reader->position(), records[100].offset);
  Record r;
  auto got = reader->next(&r);
  ASSERT_TRUE(got.ok() && *got);
  EXPECT_EQ(r.ring_pos, 100u);
}

TEST(Log, ReopenResumesAppendingAfterTheLastRecord) {
  TempDir tmp;
  const LogOptions options = options_for(tmp.log_dir(), 16384);
  uint64_t end = 0;
  {
    auto writer = LogWriter::open(options);
    ASSERT_TRUE(writer.ok());
    append_records(**writer, 0, 1000);
    end = (*writer)->end_offset();
  }  // the destructor closes
  RecoveryReport report;
  auto writer = LogWriter::open(options, &report);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  EXPECT_FALSE(report.cut.has_value());
  EXPECT_EQ(report.end_offset, end);
  EXPECT_EQ((*writer)->end_offset(), end);
  EXPECT_EQ((*writer)->written_offset(), end);
  EXPECT_EQ((*writer)->durable_offset(), end);
  ASSERT_TRUE((*writer)->last_record_at_open().has_value());
  const LastRecord& last = *(*writer)->last_record_at_open();
  EXPECT_EQ(last.ring_epoch, kEpoch);
  EXPECT_EQ(last.ring_pos, 999u);
  EXPECT_EQ(last.payload_len, payload_for(999).size());
  EXPECT_EQ(last.offset + record_size(last.payload_len), end);

  append_records(**writer, 1000, 1000);
  ASSERT_TRUE((*writer)->close().ok());
  expect_records(read_all(tmp.log_dir()), 0, 2000);
}

// kill -9 stand-in: a child process appends and exits without closing the writer.
TEST(Log, KilledWriterKeepsCommittedRecordsAndReportsTheLastOne) {
  TempDir tmp;
  const LogOptions options = options_for(tmp.log_dir(), 16384);
  const int exit_code = run_in_child([&] {
    auto writer = LogWriter::open(options);
    if (!writer.ok()) ::_exit(2);
    for (uint64_t i = 0; i < 500; ++i) {
      if (!(*writer)->append(kEpoch, i, payload_for(i)).ok()) ::_exit(3);
    }
    if (!(*writer)->flush().ok()) ::_exit(4);
    // Appended but never committed: lost with the process, as the ring still holds them.
    for (uint64_t i = 500; i < 510; ++i) (void)(*writer)->append(kEpoch, i, payload_for(i));
    ::_exit(0);
  });
  ASSERT_EQ(exit_code, 0);

  RecoveryReport report;
  auto writer = LogWriter::open(options, &report);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  ASSERT_TRUE(report.last_record.has_value());
  EXPECT_EQ(report.last_record->ring_pos, 499u);
  append_records(**writer, 500, 100);
  ASSERT_TRUE((*writer)->close().ok());
  expect_records(read_all(tmp.log_dir()), 0, 600);
}

// A roll creates the next segment before the record that caused it is written; a crash
// right then leaves an empty newest segment, and the last record is in the one before.
TEST(Log, LastRecordIsFoundInThePreviousSegmentWhenTheNewestIsEmpty) {
  TempDir tmp;
  const LogOptions options = options_for(tmp.log_dir(), 8192);
  const int exit_code = run_in_child([&] {
    auto writer = LogWriter::open(options);
    if (!writer.ok()) ::_exit(2);
    const auto first_segment = (*writer)->active_segment();
    for (uint64_t i = 0; (*writer)->active_segment() == first_segment; ++i) {
      if (!(*writer)->append(kEpoch, i, payload_for(i)).ok()) ::_exit(3);
    }
    ::_exit(0);  // the record that caused the roll is only in a buffer
  });
  ASSERT_EQ(exit_code, 0);

  auto segments = list_segments(tmp.log_dir());
  ASSERT_TRUE(segments.ok());
  ASSERT_EQ(segments->size(), 2u);
  ASSERT_EQ(segments->back().file_bytes, kSegmentHeaderSize);
  const auto records = read_all(tmp.log_dir());
  ASSERT_FALSE(records.empty());

  RecoveryReport report;
  auto writer = LogWriter::open(options, &report);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  EXPECT_EQ(report.tail_records, 0u);
  ASSERT_TRUE(report.last_record.has_value());
  EXPECT_EQ(report.last_record->ring_pos, records.back().ring_pos);
  EXPECT_EQ(report.last_record->offset, records.back().offset);
  EXPECT_EQ(report.end_offset, records.back().next_offset);
}

TEST(Log, ReaderFollowsAConcurrentWriterAcrossSegments) {
  TempDir tmp;
  constexpr uint64_t kRecords = 30000;
  LogOptions options = options_for(tmp.log_dir(), 64 << 10);
  options.buffer_bytes = 8192;
  auto writer = LogWriter::open(options);
  ASSERT_TRUE(writer.ok());
  auto reader = LogReader::open(tmp.log_dir());
  ASSERT_TRUE(reader.ok());

  std::thread producer([&] {
    for (uint64_t i = 0; i < kRecords; ++i) {
      if (!(*writer)->append(kEpoch, i, payload_for(i)).ok()) return;
      if (i % 50 == 49 && !(*writer)->commit().ok()) return;
    }
    (void)(*writer)->flush();
  });
  std::vector<ReadRecord> records;
  Status read_error;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  Record r;
  while (records.size() < kRecords && std::chrono::steady_clock::now() < deadline) {
    auto got = reader->next(&r);
    if (!got.ok()) {
      read_error = got.status();
      break;
    }
    if (*got) {
      records.push_back(copy_record(r));
    } else {
      std::this_thread::yield();
    }
  }
  producer.join();
  ASSERT_TRUE(read_error.ok()) << read_error.ToString();
  expect_records(records, 0, kRecords);
}

TEST(Log, RemovingSealedSegmentsKeepsTheRestReadable) {
  TempDir tmp;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 8192));
  ASSERT_TRUE(writer.ok());
  append_records(**writer, 0, 1000);
  auto before = list_segments(tmp.log_dir());
  ASSERT_TRUE(before.ok());
  ASSERT_GT(before->size(), 5u);

  // Up to the middle of segment 3: segments 0..2 end at or below it and go.
  const uint64_t cutoff = (*before)[3].base_offset + 100;
  auto removed = (*writer)->remove_sealed_segments_below(cutoff);
  ASSERT_TRUE(removed.ok()) << removed.status().ToString();
  EXPECT_EQ(*removed, 3u);
  // Never the active segment, whatever the offset.
  removed = (*writer)->remove_sealed_segments_below(UINT64_MAX);
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, before->size() - 4);
  EXPECT_TRUE(std::filesystem::exists((*writer)->active_segment()));
  append_records(**writer, 1000, 10);
  ASSERT_TRUE((*writer)->close().ok());

  auto reader = LogReader::open(tmp.log_dir());
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->seek(0).code(), Status::Code::kNotFound);
  const auto records = read_all(tmp.log_dir());
  ASSERT_FALSE(records.empty());
  EXPECT_EQ(records.front().offset, before->back().base_offset);
  EXPECT_EQ(records.back().ring_pos, 1009u);
}

}  // namespace
}  // namespace runnel::storage
