// SpeedPath in one process on real shared memory: a producer thread writes records into a real
// ring while the oneTBB workers fold them into the live tables and reader threads copy entries
// out. Every event carries the same value, so every consistent entry has sum == count * value.
// Run under ThreadSanitizer by scripts/tsan.sh.
#include "daemon/speed_path.h"

#include <gtest/gtest.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ipc/live_table.h"
#include "ipc/ring.h"
#include "ipc/series_dictionary.h"
#include "ipc/stats.h"
#include "model/generation.h"
#include "model/line_protocol.h"
#include "tests/ipc/ring_test_util.h"

namespace runnel {
namespace {

using namespace std::chrono_literals;

constexpr double kValue = 2.5;  // every event's value: sums stay exact in doubles
constexpr int kHosts = 16;
constexpr uint64_t kEvents = 200'000 / ipc::testing::kScale;

int64_t realtime_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// The shared-memory objects of one speed path (ring, live tables, series dictionary, stats),
// removed at scope exit.
class Instance {
 public:
  Instance() {
    static std::atomic<int> counter{0};
    name_ = "runnel-test-" + std::to_string(getpid()) + "-speed-" + std::to_string(counter++);
    remove_all();
  }
  ~Instance() { remove_all(); }
  const std::string& name() const { return name_; }

 private:
  void remove_all() {
    (void)ipc::Ring::remove(name_ + ".ring");
    (void)ipc::LiveTables::remove(name_);
    (void)ipc::SeriesDictionary::remove(name_);
    ipc::StatsSegment::remove(name_);
  }
  std::string name_;
};

// Config for one view on `instance`'s objects, with speed-path workers and batch size.
Config speed_config(const Instance& instance, const ViewDef& view, uint32_t batch_records) {
  ConfigOverrides overrides;
  overrides.shm_name = instance.name();
  Config config = load_config(std::nullopt, overrides);
  config.speed_workers = 2;
  config.speed_batch_records = batch_records;
  config.views = {view};
  return config;
}

// A running SpeedPath on a new 1 MiB ring (of ring epoch `epoch`) and stats segment;
// `absorbing`: as with a batch layer (live entries keyed by generation).
struct Running {
  Config config;  // the SpeedPath keeps a reference
  std::optional<ipc::Ring> ring;
  std::unique_ptr<ipc::StatsSegment> stats;
  std::unique_ptr<SpeedPath> speed;
};

void start(const Instance& instance, Config config, uint64_t epoch, Running* r,
           bool absorbing = false) {
  r->config = std::move(config);
  ipc::RingOptions ro;
  ro.mode = 0600;
  ro.epoch = epoch;
  auto ring = ipc::Ring::open_or_create(instance.name() + ".ring", 1 << 20, ro);
  ASSERT_TRUE(ring.ok()) << ring.status().ToString();
  r->ring.emplace(std::move(ring.value()));
  auto stats = ipc::StatsSegment::create(instance.name(), 0600, -1);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  r->stats = std::move(stats.value());
  r->speed = std::make_unique<SpeedPath>(r->config, *r->ring, r->stats->block());
  ASSERT_TRUE(r->speed->open().ok());
  ASSERT_TRUE(r->speed->attach().ok());
  if (absorbing) r->speed->enable_absorption();
  r->speed->start();
}

// Parses lines and writes their records into a ring, waiting for space.
struct LineWriter {
  LineParser parser;
  std::vector<std::byte> record;
  void write(ipc::Ring& ring, const std::string& line) {
    const char* reason = "";
    ASSERT_EQ(parser.parse(line, {}, 0, &record, &reason), ParseError::kOk) << reason;
    while (ring.try_write(record) == ipc::WriteStatus::kFull) {
      ring.wait_for_space(record.size(), 10ms);
    }
  }
};

// After stop_and_drain() of a run whose table was too small: every point was folded in, none
// late or lost to overflow, and some entries left for room.
void expect_every_point_folded_with_forced_evictions(const ipc::StatsBlock& block,
                                                     uint64_t points) {
  EXPECT_EQ(block.get(ipc::Counter::kSpeedRecords), points);
  EXPECT_EQ(block.get(ipc::Counter::kSpeedLate), 0u);
  EXPECT_EQ(block.get(ipc::Counter::kSpeedOverflow), 0u);
  EXPECT_GT(block.get(ipc::Counter::kSpeedForcedEvictions), 0u);
}

struct Checked {
  std::atomic<uint64_t> entries{0};
  std::atomic<uint64_t> inconsistent{0};
};

// Copies every entry of view 0 once and checks it: sum == count * kValue and count equals the
// events the entry says it folded in.
void check_all(const ipc::LiveTablesView& tables, const AggregateLayout& layout, Checked* checked,
               uint64_t* count_at_width0) {
  std::vector<double> out(layout.output_count());
  tables.scan(0, std::nullopt, [&](const ipc::EntryMeta& m, std::span<const std::byte> state) {
    layout.finalize_all(state, out);
    const double count = out[0], sum = out[1];
    if (sum != count * kValue || static_cast<uint64_t>(count) != m.update_count) ++checked->inconsistent;
    ++checked->entries;
    if (count_at_width0 != nullptr && m.key.width_index == 0) *count_at_width0 += m.update_count;
  });
}

TEST(SpeedPathTest, ReadersRacingWithTheWorkersSeeOnlyConsistentEntriesAndEveryEventOnce) {
  Instance instance;
  ViewDef view = default_view();
  view.widths_ns = {1'000'000'000, 60'000'000'000};
  view.aggregates = {"count", "sum"};
  view.capacity = 1 << 16;
  // 1 MiB generations (~14,000 events, 14 s of event time): a bucket's events spread over a few
  // generations (separate entries), fewer than the live table's probe bound: all generations
  // of a bucket share one probe chain.
  Running run;
  start(instance, speed_config(instance, view, 256), make_ring_epoch(1, 20), &run);
  ASSERT_TRUE(run.speed);
  auto& ring = run.ring;
  auto& speed = run.speed;
  const ipc::StatsBlock& block = run.stats->block();

  auto layout = AggregateLayout::for_view(view);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  auto reader = ipc::LiveTableReader::open(instance.name());
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  const ipc::LiveTablesView& tables = reader->tables();

  std::atomic<bool> produced{false};
  std::thread producer([&] {
    LineWriter writer;
    const int64_t start_ns = realtime_ns() - 10 * 60'000'000'000LL;  // inside the live window
    for (uint64_t i = 0; i < kEvents; ++i) {
      writer.write(*ring, "cpu,host=h" + std::to_string(i % kHosts) + " v=2.5 " +
                              std::to_string(start_ns + static_cast<int64_t>(i) * 1'000'000));
    }
    produced = true;
  });
  Checked checked;
  auto read_while_producing = [&] {
    while (!produced.load()) check_all(tables, *layout, &checked, nullptr);
  };
  std::thread r1(read_while_producing), r2(read_while_producing);
  producer.join();
  r1.join();
  r2.join();

  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (block.get(ipc::Counter::kSpeedRecords) < kEvents &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_TRUE(speed->stop_and_drain().ok());
  EXPECT_EQ(block.get(ipc::Counter::kSpeedRecords), kEvents);
  // Every batch folded at least one record, and none more than speed.batch_records.
  const uint64_t batches = block.get(ipc::Counter::kSpeedBatches);
  EXPECT_GE(batches, (kEvents + run.config.speed_batch_records - 1) / run.config.speed_batch_records);
  EXPECT_LE(batches, kEvents);
  EXPECT_EQ(block.get(ipc::Counter::kSpeedLate), 0u);
  EXPECT_EQ(block.get(ipc::Counter::kSpeedOverflow), 0u);

  uint64_t total = 0;
  check_all(tables, *layout, &checked, &total);
  EXPECT_GT(checked.entries.load(), 0u);
  EXPECT_EQ(checked.inconsistent.load(), 0u);
  EXPECT_EQ(total, kEvents);  // every event in exactly one 1s entry
  speed.reset();
}

// A table that cannot hold the live window: the oldest closed buckets leave first, so the
// table keeps the newest history that fits, with nothing counted as overflow or late.
TEST(SpeedPathTest, UnderPressureTheOldestBucketsLeaveAndTheNewestStay) {
  Instance instance;
  ViewDef view = default_view();
  view.widths_ns = {1'000'000'000};
  view.aggregates = {"count"};
  view.capacity = 4096;  // 2048 slots per shard; one series fills one shard
  constexpr int64_t kSecond = 1'000'000'000;
  constexpr uint64_t kPoints = 10'000;  // one per second: far more buckets than fit
  Running run;
  start(instance, speed_config(instance, view, 64), 0, &run);
  ASSERT_TRUE(run.speed);
  auto& ring = run.ring;
  auto& speed = run.speed;
  const ipc::StatsBlock& block = run.stats->block();

  LineWriter writer;
  const int64_t start_ns = (realtime_ns() / kSecond - static_cast<int64_t>(kPoints)) * kSecond;
  for (uint64_t i = 0; i < kPoints; ++i) {
    writer.write(*ring,
                 "cpu,host=h0 v=1 " + std::to_string(start_ns + static_cast<int64_t>(i) * kSecond));
  }
  ASSERT_TRUE(speed->stop_and_drain().ok());
  expect_every_point_folded_with_forced_evictions(block, kPoints);

  auto reader = ipc::LiveTableReader::open(instance.name());
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  std::vector<int64_t> buckets;
  reader->tables().scan(0, std::nullopt, [&](const ipc::EntryMeta& m, std::span<const std::byte>) {
    EXPECT_EQ(m.update_count, 1u);
    buckets.push_back((m.key.bucket_start_ns - start_ns) / kSecond);
  });
  std::sort(buckets.begin(), buckets.end());
  ASSERT_FALSE(buckets.empty());
  // The newest buckets, without a hole, the last one included, and many of them: evictions
  // for room stop at 30% of the slots in use, entries and tombstones together (so fewer
  // entries may stay), where the old halving window kept only the last few seconds.
  EXPECT_EQ(buckets.back(), static_cast<int64_t>(kPoints) - 1);
  EXPECT_EQ(buckets.back() - buckets.front() + 1, static_cast<int64_t>(buckets.size()));
  EXPECT_GE(buckets.size(), 2048u / 10);
  EXPECT_LT(buckets.size(), kPoints);
  speed.reset();
}

// With a batch layer that absorbs nothing (compaction held back), a bucket still open gets a
// new entry in every generation. Under pressure those of past generations leave like closed
// buckets (no event can reach them any more), so new events keep finding room; before, they
// stayed until absorbed, and the updates overflowed.
TEST(SpeedPathTest, UnderPressureWithABatchLayerEntriesOfPastGenerationsLeave) {
  Instance instance;
  ViewDef view = default_view();
  constexpr int64_t kHour = 3'600'000'000'000;
  view.widths_ns = {kHour};
  view.aggregates = {"count"};
  view.capacity = 4096;  // 2048 slots per shard
  constexpr uint64_t kPoints = 20'000;
  constexpr int kManyHosts = 1000;
  Running run;
  // Generations of 4 KiB of ring positions: a few dozen events each, hundreds in the run.
  start(instance, speed_config(instance, view, 64), make_ring_epoch(1, 12), &run, true);
  ASSERT_TRUE(run.speed);
  auto& ring = run.ring;
  auto& speed = run.speed;
  const ipc::StatsBlock& block = run.stats->block();

  LineWriter writer;
  // Every event in the last hour's bucket, which stays open: the watermark never leaves it.
  const int64_t start_ns = (realtime_ns() / kHour - 1) * kHour;
  for (uint64_t i = 0; i < kPoints; ++i) {
    writer.write(*ring, "cpu,host=h" + std::to_string(i % kManyHosts) + " v=1 " +
                            std::to_string(start_ns + static_cast<int64_t>(i) * 100'000'000));
  }
  const uint64_t last_generation = generation_of(ring->epoch(), ring->claim_position() - 1);
  ASSERT_TRUE(speed->stop_and_drain().ok());
  expect_every_point_folded_with_forced_evictions(block, kPoints);

  auto reader = ipc::LiveTableReader::open(instance.name());
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  uint64_t entries = 0, newest = 0;
  reader->tables().scan(0, std::nullopt, [&](const ipc::EntryMeta& m, std::span<const std::byte>) {
    ++entries;
    EXPECT_EQ(m.key.bucket_start_ns, start_ns);
    if (m.key.generation == last_generation) ++newest;
  });
  // The newest generation's entries stayed (among them the last event's), and the shards
  // were brought back to their room.
  EXPECT_GT(newest, 0u);
  EXPECT_LT(entries, uint64_t{view.capacity} / 2);
  speed.reset();
}

}  // namespace
}  // namespace runnel
