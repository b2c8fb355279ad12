// BatchLayer on a real log (storage::LogWriter) and real LMDB in a temp dir: compaction runs on
// its own thread, on_absorbed sees increasing watermarks, stop is prompt, log retention asks
// only for absorbed segments, rebuild requests and an unopenable store.
#include "daemon/batch_layer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <mutex>
#include <thread>

#include "model/line_protocol.h"
#include "storage/log_reader.h"
#include "tests/storage/log_test_util.h"

namespace runnel {
namespace {

using namespace std::chrono_literals;
using ipc::Counter;
using storage::testing::TempDir;

constexpr uint64_t kSegmentBytes = 16 << 10;
// How long a wait for the compaction thread may take. It runs at nice 10, so on a loaded
// machine (the suite in parallel, other jobs) it gets a small share of the CPU: 10 s was once
// too short under ctest -j6 with two CPU-burning loops. A wait returns as soon as its condition
// holds.
constexpr auto kPatience = 60s;

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// A data directory with a log written by LogWriter; seal() rolls so that every point added
// before is in sealed segments (what compaction reads).
class DataDir {
 public:
  // Starts with `points` points in sealed segments.
  explicit DataDir(int points) {
    auto w = storage::LogWriter::open(storage::testing::options_for(dir_.log_dir(), kSegmentBytes));
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    writer_ = std::move(*w);
    add_points(points);
    seal();
  }
  void add_points(int n) {
    for (int i = 0; i < n; ++i, ++points_) {
      add("cpu,host=h" + std::to_string(points_ % 5) + " usage=" + std::to_string(points_ % 100) +
          " " + std::to_string(1'700'000'000'000'000'000 + points_ * 1'000'000));
    }
  }
  void seal() {
    const size_t before = storage::list_segments(dir_.log_dir())->size();
    ASSERT_TRUE(writer_->flush().ok());
    while (storage::list_segments(dir_.log_dir())->size() == before) {
      add("filler msg=\"padding padding padding padding\" 1");
      ASSERT_TRUE(writer_->flush().ok());
    }
  }
  // End of the newest sealed segment.
  uint64_t sealed_end() const {
    uint64_t end = 0;
    auto segments = storage::list_segments(dir_.log_dir());
    for (const auto& s : segments.value()) {
      if (s.sealed) end = s.end_offset();
    }
    return end;
  }
  // Where compaction catches up to: the last sealed record's generation may go on in the
  // active segment, so it waits.
  uint64_t absorbable_end() const {
    const uint64_t end = sealed_end();
    if (end == absorbable_for_) return absorbable_;  // tests poll this: read the log once
    uint64_t last = 0;
    for (const auto& r : storage::testing::read_all(dir_.log_dir())) {
      if (r.offset < end) last = r.offset;
    }
    absorbable_for_ = end;
    absorbable_ = last;
    return last;
  }
  BatchLayerOptions options() const {
    BatchLayerOptions o;
    o.data_dir = dir_.path();
    ViewDef v = default_view();
    o.views = {v};
    o.interval_ms = 20;
    o.memory_budget_bytes = 1 << 20;
    o.sync = false;
    o.max_step_records = 200;  // several steps per pass
    return o;
  }
  const std::filesystem::path& path() const { return dir_.path(); }
  storage::LogWriter& writer() { return *writer_; }

 private:
  void add(const std::string& line) {
    const char* reason = "";
    ASSERT_EQ(parser_.parse(line, {}, 0, &buf_, &reason), ParseError::kOk) << reason;
    // Epoch 1: generations of 2 ring positions (model/generation.h), so each record is one and
    // a compaction step may end after any of them.
    ASSERT_TRUE(writer_->append(1, ring_pos_, buf_).ok());
    ring_pos_ += 2;
  }
  TempDir dir_;
  std::unique_ptr<storage::LogWriter> writer_;
  LineParser parser_;
  std::vector<std::byte> buf_;
  uint64_t ring_pos_ = 0;
  uint64_t points_ = 0;
  mutable uint64_t absorbable_for_ = UINT64_MAX;
  mutable uint64_t absorbable_ = 0;
};

// Collects on_absorbed calls (from the compaction thread).
struct Absorbed {
  std::mutex mu;
  std::vector<storage::Watermark> seen;
  // Also called after every tick with the same watermark: keeps one call per watermark.
  void add(const storage::Watermark& w) {
    std::lock_guard lock(mu);
    if (seen.empty() || seen.back().log_offset != w.log_offset) seen.push_back(w);
  }
  uint64_t last_offset() {
    std::lock_guard lock(mu);
    return seen.empty() ? 0 : seen.back().log_offset;
  }
};

TEST(BatchLayerTest, CompactsSealedSegmentsOnItsOwnWithIncreasingWatermarks) {
  DataDir data(3000);
  ipc::StatsBlock stats{};
  BatchLayer batch(data.options(), stats);
  Absorbed absorbed;
  batch.set_on_absorbed([&](const storage::Watermark& w, const std::vector<bool>&) { absorbed.add(w); });
  ASSERT_TRUE(batch.open().ok());
  ASSERT_TRUE(batch.available());
  batch.start();
  ASSERT_TRUE(wait_until([&] { return batch.watermark().log_offset == data.absorbable_end(); }, kPatience))
      << batch.watermark().log_offset << " of " << data.absorbable_end();
  // The hook runs just after the watermark is published.
  EXPECT_TRUE(wait_until([&] { return absorbed.last_offset() == data.absorbable_end(); }, kPatience));

  // More data: absorbed at the next tick, without being told.
  data.add_points(2000);
  data.seal();
  ASSERT_TRUE(wait_until([&] { return absorbed.last_offset() == data.absorbable_end(); }, kPatience));
  batch.stop();
  {
    std::lock_guard lock(absorbed.mu);
    ASSERT_GT(absorbed.seen.size(), 10u) << "max_step_records = 200: many steps";
    for (size_t i = 1; i < absorbed.seen.size(); ++i) {
      EXPECT_GT(absorbed.seen[i].log_offset, absorbed.seen[i - 1].log_offset);
      EXPECT_GT(absorbed.seen[i].records, absorbed.seen[i - 1].records);
    }
  }
  EXPECT_EQ(stats.get(Counter::kBatchWatermarkOffset), data.absorbable_end());
  EXPECT_EQ(stats.get(Counter::kBatchRecordsAbsorbed), batch.watermark().records);
  EXPECT_GE(stats.get(Counter::kBatchSteps), absorbed.seen.size());
  EXPECT_EQ(stats.get(Counter::kBatchErrors), 0u);
  EXPECT_EQ(stats.get(Counter::kBatchUnavailable), 0u);
  EXPECT_GT(stats.get(Counter::kBatchMapBytes), 0u);
}

TEST(BatchLayerTest, StopIsPromptWhileIdleAndWhileCompacting) {
  DataDir data(8000);
  BatchLayerOptions o = data.options();
  o.interval_ms = 3'600'000;
  o.max_step_records = 1;  // one commit per record: the pass takes far longer than the test
  ipc::StatsBlock stats{};
  {
    BatchLayer batch(o, stats);
    std::atomic<int> steps{0};
    batch.set_on_absorbed([&](const storage::Watermark&, const std::vector<bool>&) { steps.fetch_add(1); });
    ASSERT_TRUE(batch.open().ok());
    batch.start();
    ASSERT_TRUE(wait_until([&] { return steps.load() >= 3; }, kPatience));
    const auto t0 = std::chrono::steady_clock::now();
    batch.stop();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s) << "stop during a pass";
    EXPECT_LT(batch.watermark().log_offset, data.sealed_end()) << "the pass was cut short";
  }
  // The store is consistent: a new layer resumes from the committed watermark and, idle with a
  // one-hour interval, still stops at once.
  o.max_step_records = 0;
  BatchLayer again(o, stats);
  ASSERT_TRUE(again.open().ok());
  again.start();
  ASSERT_TRUE(wait_until([&] { return again.watermark().log_offset == data.absorbable_end(); }, kPatience));
  const auto t0 = std::chrono::steady_clock::now();
  again.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s) << "stop while idle";
  uint64_t sealed_records = 0;
  for (const auto& r : storage::testing::read_all(data.path() / "log")) {
    sealed_records += r.offset < data.absorbable_end() ? 1 : 0;
  }
  EXPECT_EQ(again.watermark().records, sealed_records) << "each record absorbed exactly once";
}

TEST(BatchLayerTest, LogRetentionAsksOnlyForAbsorbedSegments) {
  DataDir data(800);
  for (int i = 0; i < 3; ++i) {
    data.add_points(800);
    data.seal();
  }
  BatchLayerOptions o = data.options();
  o.log_retention.max_total_bytes = 1;  // everything absorbed may go
  std::mutex mu;
  std::vector<uint64_t> requests;
  o.remove_log_segments_below = [&](uint64_t offset) {
    std::lock_guard lock(mu);
    requests.push_back(offset);
  };
  // Every sealed segment but the newest, whose last record waits for its generation to end.
  uint64_t removable = 0;
  auto segments = storage::list_segments(data.path() / "log");
  ASSERT_TRUE(segments.ok());
  for (const auto& seg : *segments) {
    if (seg.sealed && seg.end_offset() <= data.absorbable_end()) removable = seg.end_offset();
  }
  ASSERT_GT(removable, 0u);
  ipc::StatsBlock stats{};
  BatchLayer batch(o, stats);
  ASSERT_TRUE(batch.open().ok());
  batch.start();
  ASSERT_TRUE(wait_until(
      [&] {
        std::lock_guard lock(mu);
        return !requests.empty() && requests.back() == removable;
      },
      kPatience));
  batch.stop();
  std::lock_guard lock(mu);
  for (uint64_t r : requests) EXPECT_LE(r, batch.watermark().log_offset);
  // The owner of the writer performs it (the daemon: the journal thread).
  auto removed = data.writer().remove_sealed_segments_below(requests.back());
  ASSERT_TRUE(removed.ok());
  EXPECT_GE(*removed, 3u);
}

TEST(BatchLayerTest, RebuildRequestFilesStartRebuildsAndUnknownViewsAreRejected) {
  DataDir data(1000);
  ipc::StatsBlock stats{};
  BatchLayer batch(data.options(), stats);
  ASSERT_TRUE(batch.open().ok());
  batch.start();
  ASSERT_TRUE(wait_until([&] { return batch.watermark().log_offset == data.absorbable_end(); }, kPatience));
  const uint64_t finished = stats.get(Counter::kBatchRebuildsFinished);
  const auto control = data.path() / kControlDirName;
  std::ofstream(control / "rebuild-default").close();
  std::ofstream(control / "rebuild-nosuchview").close();
  batch.poke();
  ASSERT_TRUE(wait_until(
      [&] {
        return stats.get(Counter::kBatchRebuildsFinished) > finished &&
               stats.get(Counter::kBatchRebuildRejected) == 1 &&
               stats.get(Counter::kBatchViewsBuilding) == 0;
      },
      kPatience))
      << stats.get(Counter::kBatchRebuildsFinished) << " "
      << stats.get(Counter::kBatchRebuildRejected);
  EXPECT_EQ(stats.get(Counter::kBatchRebuildRequests), 2u);
  EXPECT_GT(stats.get(Counter::kBatchRebuildsStarted), 0u);
  EXPECT_FALSE(std::filesystem::exists(control / "rebuild-default"));
  EXPECT_FALSE(std::filesystem::exists(control / "rebuild-nosuchview"));
  batch.stop();
  EXPECT_EQ(batch.watermark().log_offset, data.absorbable_end());
}

TEST(BatchLayerTest, UnopenableViewStoreIsCountedAndRetriedWhileTheRestGoesOn) {
  DataDir data(500);
  std::ofstream(data.path() / "views") << "not a directory";
  ipc::StatsBlock stats{};
  BatchLayer batch(data.options(), stats);
  ASSERT_TRUE(batch.open().ok()) << "only an unusable data directory fails start-up";
  EXPECT_FALSE(batch.available());
  EXPECT_EQ(stats.get(Counter::kBatchUnavailable), 1u);
  EXPECT_GE(stats.get(Counter::kBatchErrors), 1u);
  batch.start();
  std::filesystem::remove(data.path() / "views");
  ASSERT_TRUE(wait_until([&] { return batch.watermark().log_offset == data.absorbable_end(); }, kPatience));
  EXPECT_TRUE(batch.available());
  EXPECT_EQ(stats.get(Counter::kBatchUnavailable), 0u);
  batch.stop();
}

TEST(BatchLayerTest, MissingDataDirectoryFailsOpen) {
  BatchLayerOptions o;
  o.data_dir = "/nonexistent/runnel-data";
  ipc::StatsBlock stats{};
  BatchLayer batch(o, stats);
  const Status s = batch.open();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/nonexistent/runnel-data"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace runnel
