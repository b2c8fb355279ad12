// LogWriter policies and failures: each fsync policy's durability, bad directories, a second
// writer, and a write error (file size limit) that must lose and duplicate nothing.
#include "storage/log_writer.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <thread>

#include "storage/log_format.h"
#include "storage/log_reader.h"
#include "tests/storage/log_test_util.h"

namespace runnel::storage {
namespace {

using namespace runnel::storage::testing;
using Policy = LogOptions::FsyncPolicy;

TEST(LogWriter, FsyncAlwaysMakesEachCommitDurableBeforeReturning) {
  TempDir tmp;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 1 << 20, Policy::kAlways));
  ASSERT_TRUE(writer.ok());
  for (uint64_t batch = 0; batch < 20; ++batch) {
    for (uint64_t i = batch * 10; i < batch * 10 + 10; ++i) {
      ASSERT_TRUE((*writer)->append(kEpoch, i, payload_for(i)).ok());
    }
    EXPECT_GT((*writer)->end_offset(), (*writer)->durable_offset());
    ASSERT_TRUE((*writer)->commit().ok());
    EXPECT_EQ((*writer)->written_offset(), (*writer)->end_offset());
    EXPECT_EQ((*writer)->durable_offset(), (*writer)->written_offset());
  }
  ASSERT_TRUE((*writer)->close().ok());
  expect_records(read_all(tmp.log_dir()), 0, 200);
}

TEST(LogWriter, FsyncAlwaysSurvivesRollsWithinABatch) {
  TempDir tmp;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 4096, Policy::kAlways));
  ASSERT_TRUE(writer.ok());
  append_records(**writer, 0, 500, 100);
  EXPECT_EQ((*writer)->durable_offset(), (*writer)->end_offset());
  ASSERT_TRUE((*writer)->close().ok());
  expect_records(read_all(tmp.log_dir()), 0, 500);
}

TEST(LogWriter, FsyncIntervalSyncsOnceTheIntervalHasPassed) {
  TempDir tmp;
  LogOptions options = options_for(tmp.log_dir(), 1 << 20, Policy::kInterval);
  options.fsync_interval_ms = 50;
  auto writer = LogWriter::open(options);
  ASSERT_TRUE(writer.ok());
  append_records(**writer, 0, 100);
  ASSERT_TRUE((*writer)->flush().ok());
  // Within the interval of open(): written, not yet synced.
  EXPECT_EQ((*writer)->written_offset(), (*writer)->end_offset());
  EXPECT_EQ((*writer)->durable_offset(), 0u);

  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while ((*writer)->durable_offset() < (*writer)->end_offset() &&
         std::chrono::steady_clock::now() < deadline) {
    ASSERT_TRUE((*writer)->maybe_sync().ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ((*writer)->durable_offset(), (*writer)->end_offset());

  // A commit right after a sync does not sync again.
  append_records(**writer, 100, 10);
  ASSERT_TRUE((*writer)->flush().ok());
  ASSERT_TRUE((*writer)->maybe_sync().ok());
  EXPECT_LT((*writer)->durable_offset(), (*writer)->end_offset());
  ASSERT_TRUE((*writer)->sync().ok());
  EXPECT_EQ((*writer)->durable_offset(), (*writer)->end_offset());
}

TEST(LogWriter, FsyncNeverSyncsOnlyWhenAsked) {
  TempDir tmp;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 1 << 20, Policy::kNever));
  ASSERT_TRUE(writer.ok());
  append_records(**writer, 0, 300);
  ASSERT_TRUE((*writer)->flush().ok());
  EXPECT_EQ((*writer)->written_offset(), (*writer)->end_offset());
  EXPECT_EQ((*writer)->durable_offset(), 0u);
  // Written bytes are visible to readers before any fdatasync.
  expect_records(read_all(tmp.log_dir()), 0, 300);
  ASSERT_TRUE((*writer)->sync().ok());
  EXPECT_EQ((*writer)->durable_offset(), (*writer)->end_offset());
}

TEST(LogWriter, CloseWritesAndSyncsEverythingAppended) {
  TempDir tmp;
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 1 << 20, Policy::kNever));
  ASSERT_TRUE(writer.ok());
  for (uint64_t i = 0; i < 50; ++i) ASSERT_TRUE((*writer)->append(kEpoch, i, payload_for(i)).ok());
  ASSERT_TRUE((*writer)->close().ok());
  EXPECT_EQ((*writer)->durable_offset(), (*writer)->end_offset());
  EXPECT_FALSE((*writer)->append(kEpoch, 50, payload_for(50)).ok()) << "closed";
  expect_records(read_all(tmp.log_dir()), 0, 50);
}

TEST(LogWriter, DropDurablePagesKeepsTheLogOutOfThePageCacheAndReadable) {
  TempDir tmp;
  if (!page_cache_droppable(tmp.path())) GTEST_SKIP() << tmp.path() << " is on tmpfs";
  for (const bool drop : {false, true}) {
    SCOPED_TRACE(drop ? "drop_durable_pages" : "keep");
    const auto dir = tmp.path() / (drop ? "drop" : "keep");
    // 20,000 records of 60-200 bytes: sealed segments of 1 MiB and the active one.
    LogOptions o = options_for(dir, 1 << 20, Policy::kInterval);
    o.fsync_interval_ms = 0;  // every commit (of 500 records) starts a sync
    o.drop_durable_pages = drop;
    auto writer = LogWriter::open(o);
    ASSERT_TRUE(writer.ok());
    append_records(**writer, 0, 20000, 500);
    ASSERT_TRUE((*writer)->sync().ok());
    auto segments = list_segments(dir);
    ASSERT_TRUE(segments.ok());
    ASSERT_GE(segments->size(), 3u);
    for (const SegmentInfo& seg : *segments) {
      const double resident = resident_fraction(seg.path);
      ASSERT_GE(resident, 0) << seg.path;
      if (drop) {
        // Sealed segments go whole; the active one keeps at most its last, partial page.
        EXPECT_LE(resident * static_cast<double>(seg.file_bytes) / 4096, seg.sealed ? 0 : 1) << seg.path;
      } else {
        EXPECT_GT(resident, 0.9) << seg.path;
      }
    }
    ASSERT_TRUE((*writer)->close().ok());
    expect_records(read_all(dir), 0, 20000);  // read back from the disk
  }
}

TEST(LogWriter, DropLogPagesDropsJustTheRangeGiven) {
  TempDir tmp;
  if (!page_cache_droppable(tmp.path())) GTEST_SKIP() << tmp.path() << " is on tmpfs";
  auto writer = LogWriter::open(options_for(tmp.log_dir(), 1 << 20, Policy::kAlways));
  ASSERT_TRUE(writer.ok());
  append_records(**writer, 0, 20000, 500);
  auto segments = list_segments(tmp.log_dir());
  ASSERT_TRUE(segments.ok());
  ASSERT_GE(segments->size(), 3u);
  for (const SegmentInfo& seg : *segments) EXPECT_GT(resident_fraction(seg.path), 0.9) << seg.path;
  // The first segment and the first half of the second.
  const SegmentInfo& second = (*segments)[1];
  drop_log_pages(tmp.log_dir(), 0, second.base_offset + (second.end_offset() - second.base_offset) / 2);
  EXPECT_EQ(resident_fraction((*segments)[0].path), 0);
  const double half = resident_fraction(second.path);
  EXPECT_GT(half, 0.4);
  EXPECT_LT(half, 0.6);
  for (size_t i = 2; i < segments->size(); ++i) EXPECT_GT(resident_fraction((*segments)[i].path), 0.9);
  ASSERT_TRUE((*writer)->close().ok());
  expect_records(read_all(tmp.log_dir()), 0, 20000);
}

TEST(LogWriter, MissingParentDirectoryIsAClearError) {
  TempDir tmp;
  const auto dir = tmp.path() / "no" / "such" / "log";
  auto writer = LogWriter::open(options_for(dir, 1 << 20));
  ASSERT_FALSE(writer.ok());
  EXPECT_EQ(writer.status().code(), Status::Code::kIoError);
  EXPECT_NE(writer.status().message().find(dir.string()), std::string::npos);
  EXPECT_NE(writer.status().message().find("No such file or directory"), std::string::npos)
      << writer.status().message();
}

TEST(LogWriter, PathThatIsAFileIsAClearError) {
  TempDir tmp;
  const auto file = tmp.path() / "plain-file";
  append_bytes(file, {'x'});
  auto writer = LogWriter::open(options_for(file, 1 << 20));
  ASSERT_FALSE(writer.ok());
  EXPECT_NE(writer.status().message().find(file.string()), std::string::npos);
  EXPECT_NE(writer.status().message().find("Not a directory"), std::string::npos)
      << writer.status().message();
}

// Root ignores directory permissions, so the open runs in a child that drops to nobody.
TEST(LogWriter, ReadOnlyDirectoryIsAClearError) {
  TempDir tmp;
  const auto dir = tmp.path() / "readonly";
  std::filesystem::create_directory(dir);
  ::chmod(tmp.path().c_str(), 0755);
  ::chmod(dir.c_str(), 0555);
  EXPECT_EXIT(
      {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(10);
        auto writer = LogWriter::open(options_for(dir, 1 << 20));
        if (writer.ok()) ::_exit(11);
        const std::string& msg = writer.status().message();
        fprintf(stderr, "%s\n", msg.c_str());
        const bool clear = msg.find(dir.string()) != std::string::npos &&
                           msg.find("Permission denied") != std::string::npos;
        ::_exit(clear ? 0 : 12);
      },
      ::testing::ExitedWithCode(0), "Permission denied");
}

TEST(LogWriter, SecondWriterOnTheSameDirectoryIsBusy) {
  TempDir tmp;
  auto first = LogWriter::open(options_for(tmp.log_dir(), 1 << 20));
  ASSERT_TRUE(first.ok());
  auto second = LogWriter::open(options_for(tmp.log_dir(), 1 << 20));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Status::Code::kBusy);
  EXPECT_NE(second.status().message().find("LOCK"), std::string::npos);
  ASSERT_TRUE((*first)->close().ok());
  auto third = LogWriter::open(options_for(tmp.log_dir(), 1 << 20));
  EXPECT_TRUE(third.ok()) << "the lock goes with close()";
}

TEST(LogWriter, InvalidOptionsAreRejected) {
  TempDir tmp;
  EXPECT_EQ(LogWriter::open(options_for(tmp.log_dir(), 100)).status().code(),
            Status::Code::kInvalid);
  LogOptions no_dir = options_for("", 1 << 20);
  EXPECT_EQ(LogWriter::open(no_dir).status().code(), Status::Code::kInvalid);
  LogOptions tiny_buffer = options_for(tmp.log_dir(), 1 << 20);
  tiny_buffer.buffer_bytes = 100;
  EXPECT_EQ(LogWriter::open(tiny_buffer).status().code(), Status::Code::kInvalid);
}

// RLIMIT_FSIZE makes writes past a size fail (EFBIG), standing in for ENOSPC.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &limit);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    ::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_{};
  sighandler_t old_handler_{};
};

TEST(LogWriter, WriteErrorIsStickyAndReopenResumesWithoutLossOrDuplicates) {
  TempDir tmp;
  const LogOptions options = options_for(tmp.log_dir(), 1 << 20, Policy::kAlways);
  uint64_t acked = 0;  // records [0, acked) were committed successfully
  Status error;
  {
    auto writer = LogWriter::open(options);
    ASSERT_TRUE(writer.ok());
    FileSizeLimit limit(50'000);
    for (uint64_t i = 0; i < 10'000 && error.ok(); ++i) {
      error = (*writer)->append(kEpoch, i, payload_for(i));
      if (error.ok() && i % 25 == 24) {
        error = (*writer)->commit();
        if (error.ok()) acked = i + 1;
      }
    }
    ASSERT_FALSE(error.ok()) << "the size limit was never hit";
    EXPECT_NE(error.message().find((*writer)->active_segment().string()), std::string::npos)
        << error.message();
    EXPECT_NE(error.message().find("File too large"), std::string::npos) << error.message();
    // Sticky: nothing more is accepted, the offsets stay at the last good write.
    EXPECT_FALSE((*writer)->append(kEpoch, 1, payload_for(1)).ok());
    EXPECT_FALSE((*writer)->commit().ok());
    EXPECT_LE((*writer)->durable_offset(), (*writer)->written_offset());
    EXPECT_LT((*writer)->written_offset(), (*writer)->end_offset());
  }
  ASSERT_GT(acked, 0u);

  RecoveryReport report;
  auto writer = LogWriter::open(options, &report);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  ASSERT_TRUE(report.last_record.has_value());
  const uint64_t resume = report.last_record->ring_pos + 1;
  EXPECT_GE(resume, acked) << "every committed record survived";
  append_records(**writer, resume, 500 - std::min<uint64_t>(resume, 500));
  ASSERT_TRUE((*writer)->close().ok());
  expect_records(read_all(tmp.log_dir()), 0, std::max<uint64_t>(resume, 500));
  auto verify = verify_log(tmp.log_dir());
  ASSERT_TRUE(verify.ok());
  EXPECT_TRUE(verify->ok());
}

}  // namespace
}  // namespace runnel::storage
