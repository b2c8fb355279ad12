// ViewStore and ViewReader on a real LMDB in a temp dir: key order, steps that merge and advance
// the watermark together, refused and failed steps, snapshots across commits and processes,
// version switches, bucket retention, map growth and permissions.
#include "storage/view_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <limits>
#include <map>

#include "model/aggregate.h"
#include "model/clock.h"
#include "model/view.h"
#include "tests/storage/log_test_util.h"

namespace runnel::storage {
namespace {

using namespace runnel::storage::testing;

constexpr int64_t kDay = 24 * kHour;

ViewStoreOptions options_in(const std::filesystem::path& dir) {
  ViewStoreOptions o;
  o.dir = dir;
  o.sync = false;
  o.initial_map_bytes = 1 << 20;
  return o;
}

// States built with the view's own layout, kept alive for the spans a step points at.
class StateMaker {
 public:
  explicit StateMaker(const ViewDef& def) : layout_(AggregateLayout::for_view(def).value()) {}
  // A partial state holding `values` at ts.
  PartialState make(BucketKey key, std::initializer_list<double> values, int64_t ts = 0) {
    auto& blob = blobs_.emplace_back(layout_.state_bytes());
    layout_.init(blob);
    for (double v : values) layout_.update(blob, v, ts, 0, false);
    return PartialState{key, blob};
  }
  const AggregateLayout& layout() const { return layout_; }

 private:
  AggregateLayout layout_;
  std::deque<std::vector<std::byte>> blobs_;
};

// A store with view "v" (default aggregates, 1s/1m/1h) current at version 1.
struct Fixture {
  TempDir tmp;
  std::unique_ptr<ViewStore> store;
  ViewDef def = [] {
    ViewDef d = default_view();
    d.name = "v";
    return d;
  }();
  uint64_t version = 0;

  explicit Fixture(ViewStoreOptions options = {}) {
    if (options.dir.empty()) options = options_in(tmp.path() / "views");
    auto s = ViewStore::open(options);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (!s.ok()) return;
    store = std::move(*s);
    auto v = store->begin_version(def, 0);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    version = v.ok() ? *v : 0;
    EXPECT_TRUE(store->switch_version("v").ok());
  }

  // Commits one compaction step from the current watermark to `to`.
  Status step(std::vector<PartialState> states, uint64_t to, std::vector<SeriesName> series = {},
              CommitError* why = nullptr) {
    const uint32_t per_block =
        buckets_per_block(AggregateLayout::for_view(def).value().state_bytes());
    std::sort(states.begin(), states.end(), [&](const PartialState& a, const PartialState& b) {
      return step_order_less(a.key, b.key, def.widths_ns, per_block);
    });
    held_.push_back(std::move(states));
    held_series_.push_back(std::move(series));
    StepWrite w;
    w.from_offset = store->watermark().log_offset;
    w.to = LogPosition{to, to - 8, 3, to / 8};
    w.records = (to - w.from_offset) / 8;
    w.targets.push_back(StepTarget{version, held_.back()});
    w.series = held_series_.back();
    return store->commit_step(w, why);
  }

  std::deque<std::vector<PartialState>> held_;
  std::deque<std::vector<SeriesName>> held_series_;
};

// Events in one stored bucket; 0 when the bucket is absent.
uint64_t count_at(const ViewSnapshot& snap, const ViewInfo& view, const BucketKey& key,
                  const AggregateLayout& layout) {
  auto state = snap.get(view, key);
  EXPECT_TRUE(state.ok()) << state.status().ToString();
  return state.ok() && state.value().has_value() ? layout.count(*state.value()) : 0;
}

// The bucket starts (ns) scan() reports for one row and width in [from_ns, to_ns], in its order.
std::vector<int64_t> scanned_starts(const ViewSnapshot& snap, const ViewInfo& view, uint64_t row,
                                   uint8_t width,
                                   int64_t from_ns = std::numeric_limits<int64_t>::min(),
                                   int64_t to_ns = std::numeric_limits<int64_t>::max()) {
  std::vector<int64_t> starts;
  const Status s = snap.scan(view, row, width, from_ns, to_ns, [&](int64_t t, auto) {
    starts.push_back(t);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return starts;
}

// Coarser widths by row, then width, then signed block; after all of them the finest width by
// signed block, then row.
TEST(ViewStoreKeys, BlockKeysSortRowMajorThenTheFinestWidthTimeMajor) {
  const std::vector<BlockKey> keys = {{0, 1, 0},
                                      {1, 1, std::numeric_limits<int64_t>::min()},
                                      {1, 1, -1},
                                      {1, 1, 3},
                                      {1, 2, -5},
                                      {2, 1, std::numeric_limits<int64_t>::max()},
                                      {0x0100000000000000, 1, 0},
                                      {std::numeric_limits<uint64_t>::max(), 7, 0},
                                      {0x0100000000000000, 0, std::numeric_limits<int64_t>::min()},
                                      {2, 0, -5},
                                      {7, 0, -5},
                                      {0, 0, -1},
                                      {1, 0, 0},
                                      {2, 0, 0},
                                      {0, 0, 7},
                                      {std::numeric_limits<uint64_t>::max(), 0, 7}};
  for (size_t i = 0; i < keys.size(); ++i) {
    std::byte a[kBlockKeyBytes];
    encode_block_key(keys[i], a);
    EXPECT_EQ(decode_block_key(a), keys[i]);
    if (i == 0) continue;
    std::byte prev[kBlockKeyBytes];
    encode_block_key(keys[i - 1], prev);
    EXPECT_LT(std::memcmp(prev, a, kBlockKeyBytes), 0) << "key " << i;
  }
}

TEST(ViewStoreKeys, BlocksOfDefaultStatesStayBelowTheTargetSize) {
  const size_t state_bytes = AggregateLayout::for_view(default_view()).value().state_bytes();
  const uint32_t per_block = buckets_per_block(state_bytes);
  EXPECT_EQ(per_block, 35u);
  EXPECT_LE(kBlockHeaderBytes + per_block * state_bytes, kBlockTargetBytes);
  EXPECT_EQ(buckets_per_block(1), kMaxBucketsPerBlock);
  EXPECT_EQ(buckets_per_block(1 << 20), 1u);
}

TEST(ViewStore, StepMergesIntoStoredStatesAndAdvancesTheWatermarkWithThem) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  const std::byte name[] = {std::byte{'x'}};
  ASSERT_TRUE(f.step({m.make({7, 0, 10 * kSecond}, {1.0, 2.0}), m.make({7, 0, 11 * kSecond}, {4.0})}, 800,
                     {SeriesName{7, name}})
                  .ok());
  ASSERT_TRUE(f.step({m.make({7, 0, 10 * kSecond}, {8.0}), m.make({7, 1, 0}, {3.0}),
                      m.make({9, 0, -kSecond}, {5.0})},
                     1600)
                  .ok());
  EXPECT_EQ(f.store->watermark().log_offset, 1600u);
  EXPECT_EQ(f.store->watermark().records, 200u);
  EXPECT_EQ(f.store->watermark().last_record_offset, 1592u);
  EXPECT_EQ(f.store->state().find_version(f.version)->covered_offset, 1600u);

  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ(snap->watermark().log_offset, 1600u);
  const ViewInfo* v = snap->find_view("v");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->current_version, f.version);
  EXPECT_EQ(v->state_format_id, m.layout().state_format_id());
  EXPECT_EQ(v->covered_offset, 1600u);
  auto merged = snap->get(*v, {7, 0, 10 * kSecond});
  ASSERT_TRUE(merged.ok() && merged->has_value());
  EXPECT_EQ(m.layout().count(**merged), 3u);
  EXPECT_EQ(m.layout().finalize(**merged, 1), 11.0);  // sum
  EXPECT_FALSE(snap->get(*v, {7, 0, 12 * kSecond})->has_value());

  std::vector<int64_t> starts;
  ASSERT_TRUE(snap->scan(*v, 7, 0, 0, 11 * kSecond + 1, [&](int64_t t, std::span<const std::byte>) {
                    starts.push_back(t);
                    return true;
                  })
                  .ok());
  EXPECT_EQ(starts, (std::vector<int64_t>{10 * kSecond, 11 * kSecond}));
  starts.clear();
  ASSERT_TRUE(snap->scan(*v, 7, 0, 11 * kSecond, 20 * kSecond, [&](int64_t t, auto) {
                    starts.push_back(t);
                    return true;
                  })
                  .ok());
  EXPECT_EQ(starts, (std::vector<int64_t>{11 * kSecond}));

  std::vector<uint64_t> rows;
  ASSERT_TRUE(snap->for_each_row(*v, [&](uint64_t r) {
                    rows.push_back(r);
                    return true;
                  })
                  .ok());
  EXPECT_EQ(rows, (std::vector<uint64_t>{7, 9}));
  auto key = snap->row_key(7);
  ASSERT_TRUE(key.ok() && key->has_value());
  EXPECT_EQ((*key)->size(), 1u);
  EXPECT_FALSE(snap->row_key(9)->has_value());
}

TEST(ViewStore, StepNotStartingAtTheWatermarkIsRefusedAndWritesNothing) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  ASSERT_TRUE(f.step({m.make({1, 0, 0}, {1.0})}, 80).ok());
  StepWrite w;
  w.from_offset = 0;  // already absorbed: would count it twice
  w.to = LogPosition{160, 152, 3, 19};
  auto states = std::vector<PartialState>{m.make({1, 0, 0}, {1.0})};
  w.targets.push_back(StepTarget{f.version, states});
  CommitError why = CommitError::kNone;
  Status s = f.store->commit_step(w, &why);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(why, CommitError::kStale);
  EXPECT_NE(s.message().find("does not start at the stored coverage 80"), std::string::npos) << s.message();
  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->watermark().log_offset, 80u);
  EXPECT_EQ(count_at(*snap, *snap->find_view("v"), {1, 0, 0}, m.layout()), 1u);
}

// A step that fails halfway through its puts is one aborted transaction: nothing of it stays.
TEST(ViewStore, StepFailingHalfwayLeavesNoTrace) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  ASSERT_TRUE(f.step({m.make({1, 0, 0}, {1.0})}, 80).ok());
  std::vector<PartialState> unsorted = {m.make({1, 0, 0}, {1.0}), m.make({2, 0, 0}, {1.0}),
                                        m.make({1, 0, kSecond}, {1.0})};
  StepWrite w;
  w.from_offset = 80;
  w.to = LogPosition{160, 152, 3, 19};
  w.targets.push_back(StepTarget{f.version, unsorted});
  EXPECT_EQ(f.store->commit_step(w).code(), Status::Code::kInvalid);
  EXPECT_EQ(f.store->watermark().log_offset, 80u);
  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok());
  const ViewInfo& v = *snap->find_view("v");
  EXPECT_EQ(snap->watermark().log_offset, 80u);
  EXPECT_EQ(count_at(*snap, v, {1, 0, 0}, m.layout()), 1u) << "the merge into row 1 was rolled back";
  EXPECT_FALSE(snap->get(v, {2, 0, 0})->has_value());
}

TEST(ViewStore, SnapshotKeepsItsWatermarkAndStatesWhileTheWriterCommits) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  ASSERT_TRUE(f.step({m.make({1, 0, 0}, {1.0})}, 80).ok());
  auto old_snap = f.store->snapshot();
  ASSERT_TRUE(old_snap.ok());
  for (uint64_t i = 2; i <= 20; ++i) {
    ASSERT_TRUE(f.step({m.make({1, 0, 0}, {1.0}), m.make({i, 0, 0}, {1.0})}, 80 * i).ok());
  }
  const ViewInfo& v = *old_snap->find_view("v");
  EXPECT_EQ(old_snap->watermark().log_offset, 80u);
  EXPECT_EQ(count_at(*old_snap, v, {1, 0, 0}, m.layout()), 1u);
  EXPECT_FALSE(old_snap->get(v, {5, 0, 0})->has_value());
  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->watermark().log_offset, 1600u);
  EXPECT_EQ(count_at(*snap, *snap->find_view("v"), {1, 0, 0}, m.layout()), 20u);
}

TEST(ViewStore, SwitchNeedsTheNewVersionAtTheWatermarkAndRetiresTheOldOne) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  ASSERT_TRUE(f.step({m.make({1, 0, 0}, {1.0})}, 80).ok());
  ViewDef wide = f.def;
  wide.widths_ns = {10 * kSecond};
  auto v2 = f.store->begin_version(wide, 0);
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  Status early = f.store->switch_version("v");
  EXPECT_EQ(early.code(), Status::Code::kInvalid);
  EXPECT_NE(early.message().find("not the watermark 80"), std::string::npos) << early.message();

  auto old_snap = f.store->snapshot();
  ASSERT_TRUE(old_snap.ok());
  StepWrite w;
  w.rebuild_version = *v2;
  w.from_offset = 0;
  w.to = LogPosition{80, 72, 3, 9};
  StateMaker m2(wide);
  auto states = std::vector<PartialState>{m2.make({1, 0, 0}, {1.0, 1.0})};
  w.targets.push_back(StepTarget{*v2, states});
  ASSERT_TRUE(f.store->commit_step(w).ok());
  EXPECT_EQ(f.store->watermark().log_offset, 80u) << "a rebuild step leaves the watermark";
  ASSERT_TRUE(f.store->switch_version("v").ok());
  EXPECT_EQ(f.store->state().find_version(f.version)->state, VersionState::kRetired);
  auto dropped = f.store->drop_retired();
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(*dropped, 0u) << "the old snapshot still reads the retired version";

  const ViewInfo& old_v = *old_snap->find_view("v");
  EXPECT_EQ(old_v.current_version, f.version);
  EXPECT_EQ(old_v.building_version, *v2);
  EXPECT_EQ(count_at(*old_snap, old_v, {1, 0, 0}, m.layout()), 1u);
  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok());
  const ViewInfo& new_v = *snap->find_view("v");
  EXPECT_EQ(new_v.current_version, *v2);
  EXPECT_EQ(new_v.definition, wide.canonical());
  EXPECT_EQ(count_at(*snap, new_v, {1, 0, 0}, m2.layout()), 2u);

  old_snap = f.store->snapshot();  // releases the old one
  dropped = f.store->drop_retired();
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(*dropped, 1u);
  EXPECT_EQ(f.store->state().find_version(f.version), nullptr);
}

TEST(ViewStore, ReaderInAnotherProcessSeesCommittedSteps) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  EXPECT_EQ(ViewReader::open(f.tmp.path() / "nowhere").status().code(), Status::Code::kNotFound);
  ASSERT_TRUE(f.step({m.make({42, 2, 3 * kHour}, {1.0, 2.0, 3.0})}, 240).ok());
  const auto dir = f.store->dir();
  const int code = run_in_child([&] {
    auto reader = ViewReader::open(dir);
    if (!reader.ok()) ::_exit(1);
    auto snap = (*reader)->snapshot();
    if (!snap.ok() || snap->watermark().log_offset != 240) ::_exit(2);
    const ViewInfo* v = snap->find_view("v");
    if (v == nullptr) ::_exit(3);
    auto state = snap->get(*v, {42, 2, 3 * kHour});
    if (!state.ok() || !state->has_value()) ::_exit(4);
    ::_exit(m.layout().count(**state) == 3 ? 0 : 5);
  });
  EXPECT_EQ(code, 0);
}

TEST(ViewStore, RetentionDeletesOnlyBucketsOlderThanTheirWidthsRetention) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  const int64_t now = 1000 * kDay;
  std::vector<PartialState> states;
  for (uint64_t row = 1; row <= 5; ++row) {
    for (int64_t age : {2 * kDay, kDay + kSecond, kDay - kSecond, 40 * kDay, 20 * kDay, 2 * kSecond}) {
      for (uint8_t w = 0; w < 3; ++w) {
        states.push_back(m.make({row, w, bucket_start(now - age, f.def.widths_ns[w])}, {1.0}));
      }
    }
  }
  ASSERT_TRUE(f.step(states, 80).ok());
  auto deleted = f.store->apply_retention(BucketRetention{}, now, /*max_deletes_per_txn=*/4);
  ASSERT_TRUE(deleted.ok()) << deleted.status().ToString();
  // 1s buckets older than a day: 2d, 1d+1s, 40d, 20d; 1m buckets older than 31 days: 40d.
  EXPECT_EQ(*deleted, 5u * (4 + 1));
  EXPECT_EQ(f.store->counters().buckets_expired.load(), *deleted);
  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok());
  const ViewInfo& v = *snap->find_view("v");
  for (uint64_t row = 1; row <= 5; ++row) {
    std::vector<int64_t> ages[3];
    for (uint8_t w = 0; w < 3; ++w) {
      for (int64_t t : scanned_starts(*snap, v, row, w)) ages[w].push_back(now - t);
    }
    EXPECT_EQ(ages[0], (std::vector<int64_t>{kDay - kSecond, 2 * kSecond}));
    EXPECT_EQ(ages[1], (std::vector<int64_t>{20 * kDay, 2 * kDay, kDay + kMinute, kDay, kMinute}));
    EXPECT_EQ(ages[2].size(), 6u) << "1h buckets are kept forever by default";
  }
}

TEST(ViewStore, FullMapAtTheLimitIsAClearErrorAndAGrownMapTakesTheSameStep) {
  TempDir tmp;
  ViewStoreOptions o = options_in(tmp.path() / "views");
  o.initial_map_bytes = 256 << 10;
  o.max_map_bytes = 512 << 10;
  std::vector<PartialState> states;
  {
    Fixture f(o);
    ASSERT_TRUE(f.store);
    StateMaker m(f.def);
    for (uint64_t row = 0; row < 20000; ++row) states.push_back(m.make({row, 0, 0}, {1.0}));
    CommitError why = CommitError::kNone;
    Status s = f.step(states, 800, {}, &why);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), Status::Code::kFull);
    EXPECT_EQ(why, CommitError::kMapFull);
    EXPECT_NE(s.message().find("batch.max_map_bytes"), std::string::npos) << s.message();
    EXPECT_EQ(f.store->counters().map_full_errors.load(), 1u);
    EXPECT_EQ(f.store->watermark().log_offset, 0u);
    auto snap = f.store->snapshot();
    ASSERT_TRUE(snap.ok());
    EXPECT_FALSE(snap->get(*snap->find_view("v"), {0, 0, 0})->has_value());
  }
  o.max_map_bytes = 64 << 20;
  auto store = ViewStore::open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  StateMaker m(default_view());
  std::vector<PartialState> again;
  for (uint64_t row = 0; row < 20000; ++row) again.push_back(m.make({row, 0, 0}, {1.0}));
  StepWrite w;
  w.to = LogPosition{800, 792, 3, 99};
  w.records = 100;
  w.targets.push_back(StepTarget{(*store)->state().find_view("v")->current_version, again});
  Status s = (*store)->commit_step(w);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_GT((*store)->counters().map_grows.load(), 0u);
  EXPECT_GT((*store)->map_bytes(), 512u << 10);
  EXPECT_EQ((*store)->watermark().log_offset, 800u);
}

TEST(ViewStore, StepGivenInPartsIsMergedWholeAndStartsOverWhenTheMapGrows) {
  TempDir tmp;
  ViewStoreOptions o = options_in(tmp.path() / "views");
  o.initial_map_bytes = 256 << 10;  // too small: the step is redone in a grown map
  Fixture f(o);
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  // 20,000 rows of one bucket each, then row 20,000 with buckets 0 s and 1 s (one block) split
  // between two parts, the second as one event (PartialState::single).
  std::vector<PartialState> states;
  for (uint64_t row = 0; row < 20000; ++row) states.push_back(m.make({row, 0, 0}, {1.0}));
  states.push_back(m.make({20000, 0, 0}, {1.0, 2.0}));
  int64_t event[2] = {kSecond + 5, 0};
  const double value = 4.0;
  std::memcpy(&event[1], &value, 8);
  const PartialState single{{20000, 0, kSecond}, std::as_bytes(std::span(event)), true};
  std::vector<std::vector<PartialState>> parts = {
      {states.begin(), states.begin() + 7000}, {states.begin() + 7000, states.end()}, {single}};
  size_t first_part_calls = 0;
  // One buffer for every part, as the compactor has, cleared to the largest key between calls.
  std::vector<PartialState> given;
  StepWrite w;
  w.to = LogPosition{800, 792, 3, 99};
  w.records = 100;
  w.targets.push_back(
      StepTarget{f.version, {}, [&](size_t part) {
                   first_part_calls += part == 0 ? 1 : 0;
                   given.assign(20002, PartialState{{~uint64_t{0}, 255, kSecond}, {}});
                   if (part >= parts.size()) return std::span<const PartialState>();
                   std::copy(parts[part].begin(), parts[part].end(), given.begin());
                   return std::span<const PartialState>(given).first(parts[part].size());
                 }});
  Status s = f.store->commit_step(w);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_GT(f.store->counters().map_grows.load(), 0u);
  EXPECT_EQ(first_part_calls, 1 + f.store->counters().map_grows.load());
  EXPECT_EQ(f.store->counters().states_written.load(), 20002u);
  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok());
  const ViewInfo& info = *snap->find_view("v");
  EXPECT_EQ(snap->bucket_count(info).value(), 20002u);
  for (uint64_t row : {0, 6999, 7000, 19999})
    EXPECT_EQ(count_at(*snap, info, {row, 0, 0}, m.layout()), 1u) << row;
  EXPECT_EQ(count_at(*snap, info, {20000, 0, 0}, m.layout()), 2u);
  auto last = snap->get(info, {20000, 0, kSecond});
  ASSERT_TRUE(last.ok() && last->has_value());
  EXPECT_EQ(m.layout().count(**last), 1u);
  EXPECT_EQ(m.layout().finalize(**last, 1), 4.0);  // sum
}

// Root ignores permissions, so these run in a child that drops to nobody.
TEST(ViewStore, ReadOnlyDataDirectoryIsAClearError) {
  TempDir tmp;
  const auto data = tmp.path() / "data";
  std::filesystem::create_directory(data);
  std::filesystem::create_directory(data / "views");
  ::chmod(tmp.path().c_str(), 0755);
  ::chmod(data.c_str(), 0555);
  ::chmod((data / "views").c_str(), 0555);
  EXPECT_EXIT(
      {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(10);
        auto store = ViewStore::open(options_in(data / "views"));
        if (store.ok()) ::_exit(11);
        const std::string& msg = store.status().message();
        fprintf(stderr, "%s\n", msg.c_str());
        const bool clear = msg.find((data / "views").string()) != std::string::npos &&
                           msg.find("Permission denied") != std::string::npos;
        auto fresh = ViewStore::open(options_in(data / "other"));
        if (fresh.ok()) ::_exit(12);
        fprintf(stderr, "%s\n", fresh.status().message().c_str());
        ::_exit(clear && fresh.status().message().find("Permission denied") != std::string::npos ? 0 : 13);
      },
      ::testing::ExitedWithCode(0), "Permission denied");
}

TEST(ViewStore, ReaderNeedsWriteAccessToTheLockFileOnly) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  ASSERT_TRUE(f.step({m.make({1, 0, 0}, {1.0})}, 80).ok());
  const auto dir = f.store->dir();
  ::chmod(f.tmp.path().c_str(), 0755);
  ::chmod(dir.c_str(), 0755);
  ::chmod((dir / "data.mdb").c_str(), 0644);  // read-only for the reader
  ::chmod((dir / "lock.mdb").c_str(), 0644);
  EXPECT_EXIT(
      {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(10);
        auto reader = ViewReader::open(dir);
        if (reader.ok()) ::_exit(11);
        fprintf(stderr, "%s\n", reader.status().message().c_str());
        ::_exit(reader.status().message().find("read-write access to lock.mdb") != std::string::npos ? 0 : 12);
      },
      ::testing::ExitedWithCode(0), "lock.mdb");
  ::chmod((dir / "lock.mdb").c_str(), 0666);
  EXPECT_EXIT(
      {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(10);
        auto reader = ViewReader::open(dir);
        if (!reader.ok()) {
          fprintf(stderr, "%s\n", reader.status().message().c_str());
          ::_exit(11);
        }
        auto snap = (*reader)->snapshot();
        if (!snap.ok()) ::_exit(12);
        auto state = snap->get(*snap->find_view("v"), {1, 0, 0});
        ::_exit(state.ok() && state->has_value() ? 0 : 13);
      },
      ::testing::ExitedWithCode(0), "");
}

// Buckets of one (row, width) share blocks: steps that add to a block, merge into it and start
// the next one read back bucket by bucket, in time order, also before 1970.
TEST(ViewStore, BucketsAddedToBlocksOverManyStepsReadBackInTimeOrder) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  const int64_t per_block = buckets_per_block(m.layout().state_bytes());
  std::map<int64_t, uint64_t> expected;  // 1s bucket start -> events
  uint64_t to = 0;
  for (int step = 0; step < 6; ++step) {
    std::vector<PartialState> states;
    // Every third second from -2 blocks on, each step one block further, overlapping the last.
    // Buckets of one event are stored compact, of two in full; merging turns compact ones full.
    for (int64_t q = -2 * per_block + step * per_block; q < step * per_block + 5; q += 3) {
      const bool single = (q / 3 + step) % 2 == 0;
      states.push_back(single ? m.make({3, 0, q * kSecond}, {1.5}, q * kSecond + 7)
                              : m.make({3, 0, q * kSecond}, {1.0, 2.0}, q * kSecond));
      expected[q * kSecond] += single ? 1 : 2;
    }
    states.push_back(m.make({3, 1, 0}, {1.0}));
    to += 80;
    ASSERT_TRUE(f.step(states, to).ok());
  }
  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok());
  const ViewInfo& v = *snap->find_view("v");
  EXPECT_EQ(v.buckets_per_block, static_cast<uint32_t>(per_block));
  EXPECT_EQ(v.widths_ns, f.def.widths_ns);
  std::map<int64_t, uint64_t> read;
  ASSERT_TRUE(
      snap->scan(v, 3, 0, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(),
                 [&](int64_t t, std::span<const std::byte> state) {
                   EXPECT_TRUE(read.empty() || read.rbegin()->first < t) << "out of order at " << t;
                   read[t] = m.layout().count(state);
                   return true;
                 })
          .ok());
  EXPECT_EQ(read, expected);
  for (const auto& [t, n] : expected) EXPECT_EQ(count_at(*snap, v, {3, 0, t}, m.layout()), n) << t;
  EXPECT_EQ(count_at(*snap, v, {3, 1, 0}, m.layout()), 6u);
  for (int64_t q = -3 * per_block; q < 6 * per_block; ++q) {
    if (!expected.contains(q * kSecond)) {
      EXPECT_FALSE(snap->get(v, {3, 0, q * kSecond})->has_value()) << q;
    }
  }
  EXPECT_FALSE(snap->get(v, {3, 0, 3 * kSecond + 1})->has_value()) << "not a bucket start";
  EXPECT_EQ(snap->bucket_count(v).value(), expected.size() + 1);
  // A range that starts and ends inside blocks.
  std::vector<int64_t> starts;
  ASSERT_TRUE(snap->scan(v, 3, 0, -kSecond - 1, per_block * kSecond + 1,
                         [&](int64_t t, auto) {
                           starts.push_back(t);
                           return true;
                         })
                  .ok());
  std::vector<int64_t> want;
  for (const auto& [t, n] : expected) {
    if (t >= -kSecond - 1 && t < per_block * kSecond + 1) want.push_back(t);
  }
  EXPECT_EQ(starts, want);
}

// The finest width's blocks sort by block, then row: a scan of one row finds its blocks among
// those of other rows and skips block numbers no row has; for_each_row sees rows of every width.
TEST(ViewStore, FinestWidthScanFindsOneRowsBlocksAmongOtherRows) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  const int64_t per_block = buckets_per_block(m.layout().state_bytes());
  // row -> 1s bucket numbers
  const std::map<uint64_t, std::vector<int64_t>> buckets = {
      {1, {0, 1, 5 * per_block + 2, 1000 * per_block}},
      {2, {per_block, 2 * per_block + 3, 4 * per_block, 5 * per_block + 2}},
      {3, {-per_block, 10 * per_block}},
      {5, {5 * per_block}}};
  std::vector<PartialState> states;
  for (const auto& [row, qs] : buckets) {
    for (int64_t q : qs) states.push_back(m.make({row, 0, q * kSecond}, {1.0}));
  }
  states.push_back(m.make({9, 1, 0}, {1.0}));  // a row with no finest-width bucket
  ASSERT_TRUE(f.step(states, 80).ok());
  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok());
  const ViewInfo& v = *snap->find_view("v");
  for (uint64_t row = 0; row <= 9; ++row) {
    std::vector<int64_t> read;
    for (int64_t t : scanned_starts(*snap, v, row, 0)) read.push_back(t / kSecond);
    auto it = buckets.find(row);
    EXPECT_EQ(read, it == buckets.end() ? std::vector<int64_t>{} : it->second) << "row " << row;
  }
  std::vector<int64_t> middle;  // row 2, from inside block 2 to inside block 5
  for (int64_t t : scanned_starts(*snap, v, 2, 0, (2 * per_block + 3) * kSecond,
                                  (5 * per_block + 2) * kSecond)) {
    middle.push_back(t / kSecond);
  }
  EXPECT_EQ(middle, (std::vector<int64_t>{2 * per_block + 3, 4 * per_block}));
  std::vector<uint64_t> rows;
  ASSERT_TRUE(snap->for_each_row(v,
                                 [&](uint64_t r) {
                                   rows.push_back(r);
                                   return true;
                                 })
                  .ok());
  EXPECT_EQ(rows, (std::vector<uint64_t>{1, 2, 3, 5, 9}));
}

TEST(ViewStore, StepWithABucketStartOffItsWidthIsInvalid) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  Status s = f.step({m.make({1, 1, 30 * kSecond}, {1.0})}, 80);
  EXPECT_EQ(s.code(), Status::Code::kInvalid);
  EXPECT_NE(s.message().find("not a multiple of the width"), std::string::npos) << s.message();
  EXPECT_EQ(f.store->watermark().log_offset, 0u);
}

TEST(ViewStore, RetentionTrimsABlockThatStraddlesTheCutoff) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  const int64_t per_block = buckets_per_block(m.layout().state_bytes());
  const int64_t now = 1000 * kDay + 7 * kSecond;  // the cutoff falls inside a block
  // Three rows (the finest width's blocks of all rows lie together, block by block).
  std::vector<PartialState> states;
  for (uint64_t row = 1; row <= 3; ++row) {
    for (int64_t q = 0; q < 3 * per_block; ++q)
      states.push_back(m.make({row, 0, now - q * kSecond - kSecond}, {1.0}));
  }
  ASSERT_TRUE(f.step(states, 80).ok());
  BucketRetention keep_a_block;
  keep_a_block.rules = {{kSecond, per_block * kSecond}};
  auto deleted = f.store->apply_retention(keep_a_block, now, 1);
  ASSERT_TRUE(deleted.ok()) << deleted.status().ToString();
  EXPECT_EQ(*deleted, static_cast<uint64_t>(3 * 2 * per_block));
  auto snap = f.store->snapshot();
  ASSERT_TRUE(snap.ok());
  const ViewInfo& v = *snap->find_view("v");
  for (uint64_t row = 1; row <= 3; ++row) {
    const std::vector<int64_t> starts = scanned_starts(*snap, v, row, 0);
    ASSERT_EQ(starts.size(), static_cast<size_t>(per_block)) << row;
    EXPECT_EQ(starts.front(), now - per_block * kSecond);
    EXPECT_EQ(starts.back(), now - kSecond);
  }
  EXPECT_EQ(snap->bucket_count(v).value(), static_cast<uint64_t>(3 * per_block));
  EXPECT_EQ(f.store->state().find_version(f.version)->bucket_count,
            static_cast<uint64_t>(3 * per_block));
}

// A store written by an older build (layout 2: row-major keys only) is refused, saying what to do.
TEST(ViewStore, OlderLayoutIsUnsupportedAndTheErrorSaysToRemoveTheViews) {
  TempDir tmp;
  const auto dir = tmp.path() / "views";
  {
    Fixture f(options_in(dir));
    ASSERT_TRUE(f.store);
  }
  {
    lmdb::EnvOptions eo;
    eo.dir = dir;
    eo.max_dbs = 8;
    auto env = lmdb::Env::open(eo);
    ASSERT_TRUE(env.ok());
    auto txn = lmdb::Txn::begin(*env, 0);
    ASSERT_TRUE(txn.ok());
    MDB_dbi meta = 0;
    ASSERT_EQ(mdb_dbi_open(txn->get(), "meta", 0, &meta), 0);
    auto rec = txn->get(meta, lmdb::val(std::string_view("store")));
    ASSERT_TRUE(rec.ok());
    std::vector<std::byte> old(rec->begin(), rec->end());
    const uint32_t layout = 2;  // row-major keys only
    std::memcpy(old.data() + 8, &layout, sizeof layout);
    ASSERT_TRUE(txn->put(meta, lmdb::val(std::string_view("store")), lmdb::val(old)).ok());
    ASSERT_TRUE(txn->commit().ok());
  }
  auto store = ViewStore::open(options_in(dir));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), Status::Code::kUnsupported);
  const std::string& msg = store.status().message();
  EXPECT_NE(msg.find(dir.string() + ": batch views in layout version 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("remove " + dir.string()), std::string::npos) << msg;
  auto reader = ViewReader::open(dir);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), Status::Code::kUnsupported);
}

// A bucket of one event is stored in 16 bytes and read back as the very state it stands for.
TEST(ViewStore, SingleEventBucketsAreStoredCompactAndReadBackByteForByte) {
  Fixture f;
  ASSERT_TRUE(f.store);
  StateMaker m(f.def);
  std::vector<PartialState> states;
  for (int64_t q = 0; q < 30; ++q)
    states.push_back(
        m.make({5, 0, q * kSecond}, {0.25 * static_cast<double>(q) - 3}, q * kSecond + q));
  states.push_back(m.make({5, 1, 0}, {1.0, 2.0, 3.0}, 9));
  const std::vector<PartialState> written = states;
  ASSERT_TRUE(f.step(states, 80).ok());
  {
    auto snap = f.store->snapshot();
    ASSERT_TRUE(snap.ok());
    const ViewInfo& v = *snap->find_view("v");
    for (const PartialState& ps : written) {
      auto got = snap->get(v, ps.key);
      ASSERT_TRUE(got.ok() && got->has_value()) << ps.key.bucket_start_ns;
      EXPECT_TRUE(std::equal(ps.state.begin(), ps.state.end(), (*got)->begin(), (*got)->end()))
          << "width " << int(ps.key.width_index) << " bucket " << ps.key.bucket_start_ns;
    }
    size_t scanned = 0;
    ASSERT_TRUE(snap->scan(v, 5, 0, 0, 30 * kSecond,
                           [&](int64_t t, std::span<const std::byte> state) {
                             const PartialState& ps = written[static_cast<size_t>(t / kSecond)];
                             EXPECT_TRUE(std::equal(ps.state.begin(), ps.state.end(), state.begin(),
                                                    state.end()))
                                 << t;
                             ++scanned;
                             return true;
                           })
                    .ok());
    EXPECT_EQ(scanned, 30u);
  }
  // On disk, the block holds the 30 one-event buckets as 16 bytes each.
  const auto dir = f.store->dir();
  f.store.reset();
  lmdb::EnvOptions eo;
  eo.dir = dir;
  eo.max_dbs = 8;
  auto env = lmdb::Env::open(eo);
  ASSERT_TRUE(env.ok());
  auto txn = lmdb::Txn::begin(*env, MDB_RDONLY);
  ASSERT_TRUE(txn.ok());
  MDB_dbi dbi = 0;
  ASSERT_EQ(mdb_dbi_open(txn->get(), ("d/v/" + std::to_string(f.version)).c_str(), 0, &dbi), 0);
  std::byte key[kBlockKeyBytes];
  encode_block_key({5, 0, 0}, key);
  auto block = txn->get(dbi, lmdb::val(std::span<const std::byte>(key)));
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(block->size(), kBlockHeaderBytes + 30 * kCompactStateBytes);
}

}  // namespace
}  // namespace runnel::storage
