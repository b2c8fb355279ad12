// SpeedPath in one process on real shared memory: a producer thread writes records into a real
// ring while the oneTBB workers fold them into the live tables and reader threads copy entries
// out. Every event carries the same value, so every consistent entry has sum == count * value.
// Run under ThreadSanitizer by scripts/tsan.sh.
#include "daemon/speed_path.h"

#include <gtest/gtest.h>
#include <time.h>

#include <atomic>
#include <chrono>
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
  ConfigOverrides overrides;
  overrides.shm_name = instance.name();
  Config config = load_config(std::nullopt, overrides);
  config.speed_workers = 2;
  config.speed_batch_records = 256;
  ViewDef view = default_view();
  view.widths_ns = {1'000'000'000, 60'000'000'000};
  view.aggregates = {"count", "sum"};
  view.capacity = 1 << 16;
  config.views = {view};

  ipc::RingOptions ro;
  ro.mode = 0600;
  // 1 MiB generations (~14,000 events, 14 s of event time): a bucket's events spread over a few
  // generations (separate entries), fewer than the live table's probe bound: all generations
  // of a bucket share one probe chain.
  ro.epoch = make_ring_epoch(1, 20);
  auto ring = ipc::Ring::open_or_create(instance.name() + ".ring", 1 << 20, ro);
  ASSERT_TRUE(ring.ok()) << ring.status().ToString();
  auto stats = ipc::StatsSegment::create(instance.name(), 0600, -1);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();

  auto speed = std::make_unique<SpeedPath>(config, *ring, (*stats)->block());
  ASSERT_TRUE(speed->open().ok());
  ASSERT_TRUE(speed->attach().ok());
  speed->start();

  auto layout = AggregateLayout::for_view(view);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  auto reader = ipc::LiveTableReader::open(instance.name());
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  const ipc::LiveTablesView& tables = reader->tables();

  std::atomic<bool> produced{false};
  std::thread producer([&] {
    LineParser parser;
    std::vector<std::byte> record;
    const int64_t start_ns = realtime_ns() - 10 * 60'000'000'000LL;  // inside the live window
    for (uint64_t i = 0; i < kEvents; ++i) {
      const std::string line = "cpu,host=h" + std::to_string(i % kHosts) + " v=2.5 " +
                               std::to_string(start_ns + static_cast<int64_t>(i) * 1'000'000);
      const char* reason = "";
      ASSERT_EQ(parser.parse(line, {}, 0, &record, &reason), ParseError::kOk) << reason;
      while (ring->try_write(record) == ipc::WriteStatus::kFull) ring->wait_for_space(record.size(), 10ms);
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
  while ((*stats)->block().get(ipc::Counter::kSpeedRecords) < kEvents &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_TRUE(speed->stop_and_drain().ok());
  EXPECT_EQ((*stats)->block().get(ipc::Counter::kSpeedRecords), kEvents);
  EXPECT_EQ((*stats)->block().get(ipc::Counter::kSpeedLate), 0u);
  EXPECT_EQ((*stats)->block().get(ipc::Counter::kSpeedOverflow), 0u);

  uint64_t total = 0;
  check_all(tables, *layout, &checked, &total);
  EXPECT_GT(checked.entries.load(), 0u);
  EXPECT_EQ(checked.inconsistent.load(), 0u);
  EXPECT_EQ(total, kEvents);  // every event in exactly one 1s entry
  speed.reset();
}

}  // namespace
}  // namespace runnel
