// Compactor on real logs and LMDB in temp dirs: results equal a reference folded straight from
// the log, step by step or at once, across crashes, late data, rebuilds with old readers,
// retention of segments and a full map.
#include "storage/compactor.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <map>
#include <random>
#include <tuple>

#include "model/aggregate.h"
#include "model/generation.h"
#include "model/line_protocol.h"
#include "model/view_router.h"
#include "storage/log_reader.h"
#include "storage/log_writer.h"
#include "tests/storage/log_test_util.h"

namespace runnel::storage {
namespace {

using namespace runnel::storage::testing;

constexpr int64_t kT0 = 1'700'000'000LL * kSecond;  // an hour edge: 1'700'000'000 = 472222 h + 800 s
constexpr uint64_t kSegmentBytes = 16 << 10;
constexpr uint64_t kRecordStride = uint64_t{1} << kGenerationShift;
constexpr uint64_t kTestEpoch = make_ring_epoch(1, kGenerationShift);

// Appends line-protocol points to a log; seal() rolls the active segment so that everything
// appended before it is in sealed segments.
class LogBuilder {
 public:
  explicit LogBuilder(const std::filesystem::path& dir) {
    auto w = LogWriter::open(options_for(dir, kSegmentBytes));
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    writer_ = std::move(*w);
    dir_ = dir;
  }
  void add(const std::string& line) {
    const char* reason = "";
    ASSERT_EQ(parser_.parse(line, {}, 0, &buf_, &reason), ParseError::kOk) << reason << ": " << line;
    // Each record its own generation: a compaction step may end after any of them.
    ASSERT_TRUE(writer_->append(kTestEpoch, ring_pos_, buf_).ok());
    ring_pos_ += stride_;
    ++records_;
  }
  // Points that route nowhere (a string field only) until the active segment rolls.
  void seal() {
    const size_t before = list_segments(dir_)->size();
    ASSERT_TRUE(writer_->flush().ok());
    while (list_segments(dir_)->size() == before) {
      add("filler msg=\"padding padding padding padding\" 1");
      ASSERT_TRUE(writer_->flush().ok());
    }
  }
  uint64_t records() const { return records_; }
  LogWriter& writer() { return *writer_; }
  // Ring positions advance this much per record (kRecordStride: a generation each).
  void set_stride(uint64_t stride) { stride_ = stride; }

 private:
  std::filesystem::path dir_;
  std::unique_ptr<LogWriter> writer_;
  LineParser parser_;
  std::vector<std::byte> buf_;
  uint64_t ring_pos_ = 0;
  uint64_t stride_ = kRecordStride;
  uint64_t records_ = 0;
};

// Points with out-of-order times around kT0, bucket edges, a pre-1970 time, several series,
// tags and field types. Values are multiples of 1/4, so sums are exact in any order.
void add_points(LogBuilder& log, int n, uint64_t seed, int64_t base = kT0) {
  std::mt19937_64 rng(seed);
  for (int i = 0; i < n; ++i) {
    int64_t ts = base + static_cast<int64_t>(rng() % (3 * kHour)) - kHour;
    switch (i % 23) {
      case 0: ts = base - base % kHour; break;  // on an hour edge
      case 1: ts = base - base % kHour - 1; break;  // the last ns before it
      case 2: ts = base + kMinute - base % kMinute; break;
      case 3: ts = -1'500'000'001; break;  // before 1970
      default: break;
    }
    const int host = static_cast<int>(rng() % 5);
    const std::string measurement = i % 3 == 0 ? "mem" : "cpu";
    const double usage = static_cast<double>(static_cast<int64_t>(rng() % 4000) - 1000) / 4;
    std::string line = measurement + ",host=h" + std::to_string(host);
    if (i % 7 != 0) line += ",region=r" + std::to_string(host % 2);
    line += " usage=" + std::to_string(usage) + ",idle=" + std::to_string(rng() % 100) + "i";
    if (i % 5 == 0) line += ",ok=true";
    line += " " + std::to_string(ts);
    log.add(line);
  }
}

std::vector<ViewDef> test_views() {
  ViewDef all = default_view();
  all.name = "all";
  ViewDef by_region = default_view();
  by_region.name = "by_region";
  by_region.measurements = {"cpu"};
  by_region.group_all_tags = false;
  by_region.group_by = {"region"};
  by_region.widths_ns = {10 * kSecond, kMinute};
  by_region.aggregates = {"count", "sum", "min", "max", "mean", "first", "last",
                          "variance", "stddev", "p50", "p99", "distinct(host)"};
  by_region.quantile_max_bins = 16;  // small sketches keep the test's states small
  by_region.hll_precision = 4;
  ViewDef idle = default_view();
  idle.name = "idle";
  idle.fields = {"idle"};
  // 30 min is not a multiple of the finest width, so it is aggregated per event; 1h (and the
  // other views' coarser widths) are rolled up from the finest at commit.
  idle.widths_ns = {20 * kMinute, 30 * kMinute, kHour};
  idle.aggregates = {"count", "sum"};
  return {all, by_region, idle};
}

using RefKey = std::tuple<std::string, uint64_t, uint8_t, int64_t>;  // view, row, width, start
using Reference = std::map<RefKey, std::vector<std::byte>>;

// Folds every log record below `end` per (view, row, width, bucket), independently of the
// compactor's hash map, steps and LMDB merges.
Reference reference(const std::filesystem::path& log_dir, const std::vector<ViewDef>& views, uint64_t end) {
  Reference ref;
  ViewRouter router(views);
  std::vector<AggregateLayout> layouts;
  for (const auto& v : views) layouts.push_back(AggregateLayout::for_view(v).value());
  auto reader = LogReader::open(log_dir);
  EXPECT_TRUE(reader.ok());
  Record rec;
  while (reader->position() < end) {
    auto got = reader->next(&rec);
    if (!got.ok() || !*got) {
      ADD_FAILURE() << "log ends before " << end;
      break;
    }
    auto view = RecordView::parse(rec.payload);
    EXPECT_TRUE(view.ok());
    router.route(*view, [](uint64_t) { return true; }, [&](const RowUpdate& u) {
      const ViewDef& def = views[u.view];
      for (size_t w = 0; w < def.widths_ns.size(); ++w) {
        const int64_t width = def.widths_ns[w];
        const int64_t start = u.ts_ns - ((u.ts_ns % width) + width) % width;
        auto [it, fresh] = ref.try_emplace({def.name, u.row_id, static_cast<uint8_t>(w), start});
        if (fresh) {
          it->second.resize(layouts[u.view].state_bytes());
          layouts[u.view].init(it->second);
        }
        layouts[u.view].update(it->second, u.value, u.ts_ns, u.distinct_hash, u.has_distinct);
      }
    });
  }
  return ref;
}

// Every output equal: counts, sums, extremes, first/last and sketches exactly; mean, variance
// and stddev within 1e-12 relative.
void expect_same_outputs(const AggregateLayout& layout, std::span<const std::byte> got,
                         std::span<const std::byte> want, const std::string& where) {
  ASSERT_EQ(got.size(), want.size()) << where;
  ASSERT_TRUE(layout.validate(got).ok()) << where;
  for (size_t i = 0; i < layout.output_count(); ++i) {
    const double a = layout.finalize(got, i), b = layout.finalize(want, i);
    const AggKind kind = layout.spec().outputs[i].kind;
    const std::string what = where + " " + agg_output_name(layout.spec().outputs[i]);
    if (std::isnan(b)) {
      EXPECT_TRUE(std::isnan(a)) << what;
    } else if (kind == AggKind::kMean || kind == AggKind::kVariance || kind == AggKind::kStddev) {
      EXPECT_NEAR(a, b, 1e-12 * std::max(1.0, std::fabs(b))) << what;
    } else {
      EXPECT_EQ(a, b) << what;
    }
  }
}

// The store's current versions hold exactly the reference's buckets, with equal outputs.
void expect_store_equals(const ViewSnapshot& snap, const Reference& ref, const std::vector<ViewDef>& views) {
  size_t stored = 0;
  for (const ViewDef& def : views) {
    const ViewInfo* info = snap.find_view(def.name);
    ASSERT_NE(info, nullptr) << def.name;
    ASSERT_NE(info->current_version, 0u) << def.name;
    ASSERT_EQ(info->definition, def.canonical());
    const AggregateLayout layout = AggregateLayout::for_view(def).value();
    Status s = snap.for_each_row(*info, [&](uint64_t row) {
      for (uint8_t w = 0; w < def.widths_ns.size(); ++w) {
        EXPECT_TRUE(snap.scan(*info, row, w, INT64_MIN, INT64_MAX, [&](int64_t start, std::span<const std::byte> st) {
                          ++stored;
                          auto it = ref.find({def.name, row, w, start});
                          if (it == ref.end()) {
                            ADD_FAILURE() << def.name << " row " << row << " width " << int(w) << " bucket " << start
                                          << " is not in the reference";
                            return true;
                          }
                          expect_same_outputs(layout, st, it->second,
                                              def.name + " row " + std::to_string(row) + " bucket " + std::to_string(start));
                          return true;
                        }).ok());
      }
      return true;
    });
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  EXPECT_EQ(stored, ref.size()) << "buckets in the store vs the reference";
}

uint64_t sealed_end(const std::filesystem::path& log_dir) {
  uint64_t end = 0;
  const auto segments = list_segments(log_dir);
  for (const auto& seg : segments.value()) {
    if (seg.sealed) end = std::max(end, seg.end_offset());
  }
  return end;
}

// Where compaction stops: before the last sealed record, whose generation (each record has its
// own here) may go on in the active segment.
uint64_t absorbable_end(const std::filesystem::path& log_dir) {
  const uint64_t end = sealed_end(log_dir);
  auto reader = LogReader::open(log_dir);
  uint64_t last = 0;
  Record rec;
  while (reader->position() < end && reader->next(&rec).value()) last = rec.offset;
  return last;
}

struct Env {
  TempDir tmp;
  std::filesystem::path log_dir = tmp.path() / "log";
  std::filesystem::path views_dir = tmp.path() / "views";
  std::unique_ptr<ViewStore> open_store(uint64_t max_map = uint64_t{1} << 30, uint64_t initial_map = 1 << 20) {
    ViewStoreOptions o;
    o.dir = views_dir;
    o.sync = false;
    o.initial_map_bytes = initial_map;
    o.max_map_bytes = max_map;
    auto s = ViewStore::open(o);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }
  CompactorOptions options(size_t budget = 8 << 20, uint64_t step_records = 0) const {
    CompactorOptions o;
    o.log_dir = log_dir;
    o.memory_budget_bytes = budget;
    o.max_step_records = step_records;
    return o;
  }
};

TEST(Compactor, CompactionEqualsAReferenceFoldedFromTheLog) {
  Env env;
  LogBuilder log(env.log_dir);
  add_points(log, 3000, 1);
  log.seal();
  add_points(log, 50, 2);  // in the active segment: not compacted
  ASSERT_TRUE(log.writer().flush().ok());
  auto store = env.open_store();
  ReconcileReport report;
  auto c = Compactor::open(*store, test_views(), env.options(), &report);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(report.switched.size(), 3u) << "a new store at offset 0 serves new views at once";
  auto stats = (*c)->compact();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(stats->caught_up);
  const uint64_t end = absorbable_end(env.log_dir);
  EXPECT_EQ(store->watermark().log_offset, end);
  EXPECT_EQ(stats->records, store->watermark().records);
  EXPECT_GE(stats->records, 3000u);
  EXPECT_LT(stats->records, log.records() - 50 + 1);
  auto snap = store->snapshot();
  ASSERT_TRUE(snap.ok());
  expect_store_equals(*snap, reference(env.log_dir, test_views(), end), test_views());
  // Rows are named with the router's row keys.
  size_t named = 0;
  ASSERT_TRUE(snap->for_each_series([&](uint64_t, std::span<const std::byte> key) {
                    RowKeyView k;
                    EXPECT_TRUE(decode_row_key(key, &k));
                    ++named;
                    return true;
                  }).ok());
  EXPECT_GT(named, 10u);
}

TEST(Compactor, StepsEndOnlyWhereTheGenerationChangesAndHoldBackTheLastOne) {
  Env env;
  LogBuilder log(env.log_dir);
  log.set_stride(kRecordStride / 7);  // about 7 records per generation
  add_points(log, 3000, 21);
  log.seal();
  std::map<uint64_t, uint64_t> generation_at;  // record offset -> generation
  uint64_t last_offset = 0;
  {
    auto reader = LogReader::open(env.log_dir);
    Record rec;
    while (reader->next(&rec).value()) {
      generation_at[rec.offset] = generation_of(rec.ring_epoch, rec.ring_pos);
      last_offset = rec.offset;
    }
  }
  auto store = env.open_store();
  CompactorOptions o = env.options(8 << 20, 5);  // steps of about 5 records: ended at boundaries
  std::vector<uint64_t> ends;
  o.before_commit = [&](const StepReport& r) { ends.push_back(r.to_offset); };
  auto c = Compactor::open(*store, test_views(), o);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->compact().ok());
  ASSERT_GT(ends.size(), 100u);
  for (uint64_t end : ends) {
    auto next = generation_at.find(end);
    ASSERT_NE(next, generation_at.end()) << "a step ends on a record boundary";
    ASSERT_NE(next, generation_at.begin());
    EXPECT_NE(std::prev(next)->second, next->second) << "step end " << end << " splits a generation";
  }
  // The sealed log's last generation continues in the active segment: it is not absorbed.
  const Watermark wm = store->watermark();
  EXPECT_LT(wm.log_offset, sealed_end(env.log_dir));
  EXPECT_NE(generation_at.at(wm.last_record_offset), generation_at.at(wm.log_offset));
  EXPECT_EQ(generation_at.at(wm.log_offset), generation_at.at(last_offset));
  auto snap = store->snapshot();
  expect_store_equals(*snap, reference(env.log_dir, test_views(), wm.log_offset), test_views());
}

TEST(Compactor, StepwiseCompactionAsSegmentsSealEqualsOneFullCompaction) {
  Env env;
  LogBuilder log(env.log_dir);
  auto store = env.open_store();
  auto c = Compactor::open(*store, test_views(), env.options(8 << 20, 37));
  ASSERT_TRUE(c.ok());
  uint64_t steps = 0;
  for (int round = 0; round < 5; ++round) {
    add_points(log, 600, 10 + round);
    ASSERT_TRUE(log.writer().flush().ok());
    auto stats = (*c)->compact();
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    steps += stats->steps;
    EXPECT_EQ(store->watermark().log_offset, absorbable_end(env.log_dir)) << "never past the sealed end";
  }
  log.seal();
  ASSERT_TRUE((*c)->compact().ok());
  EXPECT_GT(steps, 20u);
  const Watermark wm = store->watermark();
  EXPECT_EQ(wm.log_offset, absorbable_end(env.log_dir));

  // The watermark names exactly the last absorbed record.
  auto reader = LogReader::open(env.log_dir);
  ASSERT_TRUE(reader->seek(wm.last_record_offset).ok());
  Record last;
  ASSERT_TRUE(reader->next(&last).value());
  EXPECT_EQ(last.next_offset, wm.log_offset);
  EXPECT_EQ(last.ring_pos, wm.ring_pos);
  EXPECT_EQ(wm.records, wm.ring_pos / kRecordStride + 1) << "every record absorbed once";

  Env full_env;
  ViewStoreOptions o;
  o.dir = full_env.views_dir;
  o.sync = false;
  auto full = ViewStore::open(o);
  ASSERT_TRUE(full.ok());
  CompactorOptions fo = env.options(64 << 20);
  auto fc = Compactor::open(**full, test_views(), fo);
  ASSERT_TRUE(fc.ok());
  auto fstats = (*fc)->compact();
  ASSERT_TRUE(fstats.ok());
  EXPECT_EQ(fstats->steps, 1u);
  EXPECT_EQ((*full)->watermark().log_offset, wm.log_offset);
  auto snap = store->snapshot();
  auto full_snap = (*full)->snapshot();
  const Reference ref = reference(env.log_dir, test_views(), wm.log_offset);
  expect_store_equals(*snap, ref, test_views());
  expect_store_equals(*full_snap, ref, test_views());
}

TEST(Compactor, StopAfterSomeStepsThenResumeEqualsTheReference) {
  Env env;
  LogBuilder log(env.log_dir);
  add_points(log, 2000, 3);
  log.seal();
  auto store = env.open_store();
  auto c = Compactor::open(*store, test_views(), env.options(8 << 20, 100));
  ASSERT_TRUE(c.ok());
  auto part = (*c)->compact(RunLimits{3, nullptr});
  ASSERT_TRUE(part.ok());
  EXPECT_FALSE(part->caught_up);
  EXPECT_EQ(part->steps, 3u);
  EXPECT_EQ(store->watermark().records, 300u);
  c->reset();
  auto again = Compactor::open(*store, test_views(), env.options(8 << 20, 100));
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE((*again)->compact().ok());
  EXPECT_EQ(store->watermark().log_offset, absorbable_end(env.log_dir));
  auto snap = store->snapshot();
  expect_store_equals(*snap, reference(env.log_dir, test_views(), store->watermark().log_offset), test_views());
}

// The compaction runs in a child that is killed with SIGKILL at some moment after its second
// commit (usually in the middle of a step, possibly inside a transaction); the resumed run must
// count every record exactly once.
TEST(Compactor, CompactionKilledMidwayResumesWithNothingCountedTwice) {
  Env env;
  LogBuilder log(env.log_dir);
  add_points(log, 4000, 4);
  log.seal();
  {
    auto store = env.open_store();
    ASSERT_TRUE(Compactor::open(*store, test_views(), env.options()).ok());
  }
  for (int delay_us : {0, 300, 3000}) {
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    const pid_t child = ::fork();
    if (child == 0) {
      ::close(pipe_fds[0]);
      auto store = env.open_store();
      CompactorOptions o = env.options(8 << 20, 40);
      int commits = 0;
      o.after_commit = [&](const StepReport&) {
        if (++commits == 2) (void)!::write(pipe_fds[1], "c", 1);
      };
      auto c = Compactor::open(*store, test_views(), o);
      if (!c.ok()) ::_exit(2);
      auto stats = (*c)->compact();
      (void)!::write(pipe_fds[1], stats.ok() ? "d" : "e", 1);
      ::pause();
      ::_exit(0);
    }
    ::close(pipe_fds[1]);
    char b = 0;
    ASSERT_EQ(::read(pipe_fds[0], &b, 1), 1);
    EXPECT_EQ(b, 'c') << "the child compacted two steps before the kill";
    if (delay_us) ::usleep(delay_us);
    ::kill(child, SIGKILL);
    int wstatus = 0;
    ::waitpid(child, &wstatus, 0);
    ::close(pipe_fds[0]);
    EXPECT_TRUE(WIFSIGNALED(wstatus));
  }
  auto store = env.open_store();
  const uint64_t absorbed_before = store->watermark().records;
  EXPECT_GE(absorbed_before, 80u);
  auto c = Compactor::open(*store, test_views(), env.options());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->compact().ok());
  const Watermark wm = store->watermark();
  EXPECT_EQ(wm.log_offset, absorbable_end(env.log_dir));
  EXPECT_EQ(wm.records, wm.ring_pos / kRecordStride + 1) << "every record absorbed once";
  auto snap = store->snapshot();
  expect_store_equals(*snap, reference(env.log_dir, test_views(), wm.log_offset), test_views());
}

// A crash between folding records in memory and committing them (the hook exits the process
// before the step's transaction) loses only memory: the next run reads those records again.
TEST(Compactor, CrashBeforeCommitLosesNothing) {
  Env env;
  LogBuilder log(env.log_dir);
  add_points(log, 1500, 5);
  log.seal();
  const int code = run_in_child([&] {
    auto store = env.open_store();
    CompactorOptions o = env.options(8 << 20, 100);
    int steps = 0;
    o.before_commit = [&](const StepReport&) {
      if (++steps == 4) ::_exit(0);
    };
    auto c = Compactor::open(*store, test_views(), o);
    if (!c.ok()) ::_exit(2);
    (void)(*c)->compact();
    ::_exit(3);
  });
  ASSERT_EQ(code, 0);
  auto store = env.open_store();
  EXPECT_EQ(store->watermark().records, 300u) << "three steps of 100 records committed";
  auto c = Compactor::open(*store, test_views(), env.options());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->compact().ok());
  auto snap = store->snapshot();
  expect_store_equals(*snap, reference(env.log_dir, test_views(), store->watermark().log_offset), test_views());
}

TEST(Compactor, LateEventsLandInTheirBuckets) {
  Env env;
  LogBuilder log(env.log_dir);
  for (int i = 0; i < 100; ++i) log.add("cpu,host=a usage=1 " + std::to_string(kT0 + i * kSecond));
  log.seal();
  auto store = env.open_store();
  ViewDef v = default_view();
  auto c = Compactor::open(*store, {v}, env.options());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->compact().ok());
  const uint64_t first_watermark = store->watermark().log_offset;
  // Two hours late, and one second before the first point.
  for (int i = 0; i < 30; ++i) log.add("cpu,host=a usage=2 " + std::to_string(kT0 - 2 * kHour + i));
  log.add("cpu,host=a usage=4 " + std::to_string(kT0 - 1));
  log.seal();
  ASSERT_TRUE((*c)->compact().ok());
  EXPECT_GT(store->watermark().log_offset, first_watermark);
  auto snap = store->snapshot();
  const ViewInfo& info = *snap->find_view("default");
  const AggregateLayout layout = AggregateLayout::for_view(v).value();
  uint64_t row = 0;
  ASSERT_TRUE(snap->for_each_row(info, [&](uint64_t r) { row = r; return true; }).ok());
  auto late_hour = snap->get(info, {row, 2, kT0 - 2 * kHour - (kT0 - 2 * kHour) % kHour});
  ASSERT_TRUE(late_hour.ok() && late_hour->has_value());
  EXPECT_EQ(layout.count(**late_hour), 30u);
  auto late_second = snap->get(info, {row, 0, kT0 - kSecond});
  ASSERT_TRUE(late_second.ok() && late_second->has_value());
  EXPECT_EQ(layout.finalize(**late_second, 1), 4.0);
  auto on_time = snap->get(info, {row, 0, kT0});
  EXPECT_EQ(layout.count(**on_time), 1u);
  expect_store_equals(*snap, reference(env.log_dir, {v}, store->watermark().log_offset), {v});
}

// One step of more states than a part holds (StepTarget::more), over many blocks of the finest
// width (time-major: handed over block by block, each block's rows in order) in a narrow time
// range, with late points among them: equal to the reference.
TEST(Compactor, StepOfManyPartsAndBlocksEqualsTheReference) {
  Env env;
  LogBuilder log(env.log_dir);
  for (int i = 0; i < 12000; ++i) {
    const int64_t ts = kT0 + int64_t{i} * (kSecond / 5) - (i % 11 == 0 ? 40 * kSecond : 0);
    log.add("cpu,host=h" + std::to_string(i % 150) + " usage=" + std::to_string(i % 97) +
            ",idle=" + std::to_string(i % 13) + "i " + std::to_string(ts));
  }
  log.seal();
  auto store = env.open_store();
  auto c = Compactor::open(*store, test_views(), env.options(64 << 20));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto stats = (*c)->compact();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->steps, 1u);
  EXPECT_GT(stats->states, 2u * 16384) << "several parts";
  const uint64_t end = store->watermark().log_offset;
  auto snap = store->snapshot();
  ASSERT_TRUE(snap.ok());
  expect_store_equals(*snap, reference(env.log_dir, test_views(), end), test_views());
}

TEST(Compactor, BucketMetInOrderAndAgainLateInOneStepIsOneState) {
  Env env;
  LogBuilder log(env.log_dir);
  // One row: second 10 in order, then 20, then 10 twice more (late), 30, 10 again; and a
  // second row sampled once, so single-event buckets sit next to merged ones.
  for (int s : {10, 20, 10, 10, 30, 10}) {
    log.add("cpu,host=a usage=" + std::to_string(s) + " " + std::to_string(kT0 + s * kSecond + s));
  }
  log.add("cpu,host=b usage=7 " + std::to_string(kT0 + 5 * kSecond));
  log.seal();
  auto store = env.open_store();
  const ViewDef v = default_view();
  auto c = Compactor::open(*store, {v}, env.options());
  ASSERT_TRUE(c.ok());
  auto stats = (*c)->compact();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->steps, 1u);
  auto snap = store->snapshot();
  const ViewInfo& info = *snap->find_view("default");
  const AggregateLayout layout = AggregateLayout::for_view(v).value();
  uint64_t bucket_10 = 0;
  ASSERT_TRUE(snap->for_each_row(info,
                                 [&](uint64_t row) {
                                   auto got = snap->get(info, {row, 0, kT0 + 10 * kSecond});
                                   EXPECT_TRUE(got.ok());
                                   if (got.ok() && got->has_value())
                                     bucket_10 = layout.count(**got);
                                   return true;
                                 })
                  .ok());
  EXPECT_EQ(bucket_10, 4u);
  expect_store_equals(*snap, reference(env.log_dir, {v}, store->watermark().log_offset), {v});
}

TEST(Compactor, ChangedDefinitionIsRebuiltThenSwitchedWhileOldSnapshotsKeepReading) {
  Env env;
  LogBuilder log(env.log_dir);
  add_points(log, 1500, 6);
  log.seal();
  // The map cannot grow while this process holds a snapshot (LMDB re-maps only with no
  // transaction open), so it starts large enough.
  auto store = env.open_store(uint64_t{1} << 30, 64 << 20);
  ViewDef before = default_view();
  before.name = "v";
  before.widths_ns = {kSecond, kMinute};
  {
    auto c = Compactor::open(*store, {before}, env.options());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->compact().ok());
  }
  auto old_snap = store->snapshot();
  ASSERT_TRUE(old_snap.ok());
  const uint64_t old_version = old_snap->find_view("v")->current_version;
  const Reference old_ref = reference(env.log_dir, {before}, old_snap->watermark().log_offset);

  ViewDef after = before;
  after.widths_ns = {10 * kSecond, kHour};
  after.aggregates = {"count", "sum", "max"};
  ReconcileReport report;
  auto c = Compactor::open(*store, {after}, env.options(8 << 20, 200), &report);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(report.rebuilding, std::vector<std::string>{"v"});
  EXPECT_TRUE((*c)->rebuilding());
  // New data keeps arriving and being compacted into the old version during the rebuild.
  int rounds = 0;
  for (;; ++rounds) {
    add_points(log, 300, 100 + rounds);
    log.seal();
    auto compacted = (*c)->compact();
    ASSERT_TRUE(compacted.ok()) << compacted.status().ToString();
    auto mid = store->snapshot();
    ASSERT_TRUE(mid.ok());
    const ViewInfo& info = *mid->find_view("v");
    auto stats = (*c)->rebuild(RunLimits{4, nullptr});
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    if (stats->caught_up) break;
    EXPECT_EQ(info.current_version, old_version) << "still serving the old version";
    EXPECT_NE(info.building_version, 0u);
    ASSERT_LT(rounds, 50);
  }
  EXPECT_GT(rounds, 0) << "the rebuild should take several rounds";
  EXPECT_FALSE((*c)->rebuilding());

  // The old snapshot still reads the old version as it was.
  expect_store_equals(*old_snap, old_ref, {before});
  // New snapshots see the new definition, complete up to the watermark.
  auto snap = store->snapshot();
  ASSERT_TRUE(snap.ok());
  EXPECT_NE(snap->find_view("v")->current_version, old_version);
  expect_store_equals(*snap, reference(env.log_dir, {after}, snap->watermark().log_offset), {after});
  // The old version's database goes once no snapshot of this process uses it.
  EXPECT_NE(store->state().find_version(old_version), nullptr);
  old_snap = store->snapshot();
  auto dropped = store->drop_retired();
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(*dropped, 1u);
  EXPECT_EQ(store->state().find_version(old_version), nullptr);
}

TEST(Compactor, ReaderInAnotherProcessKeepsItsSnapshotAcrossASwitchAndDrop) {
  Env env;
  LogBuilder log(env.log_dir);
  add_points(log, 800, 7);
  log.seal();
  auto store = env.open_store();
  ViewDef before = default_view();
  before.name = "v";
  {
    auto c = Compactor::open(*store, {before}, env.options());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->compact().ok());
  }
  const Reference old_ref = reference(env.log_dir, {before}, store->watermark().log_offset);
  int to_child[2], to_parent[2];
  ASSERT_EQ(::pipe(to_child), 0);
  ASSERT_EQ(::pipe(to_parent), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    char b = 0;
    auto reader = ViewReader::open(env.views_dir);
    if (!reader.ok()) ::_exit(1);
    auto snap = (*reader)->snapshot();
    if (!snap.ok()) ::_exit(2);
    const uint64_t version = snap->find_view("v")->current_version;
    (void)!::write(to_parent[1], "r", 1);
    if (::read(to_child[0], &b, 1) != 1) ::_exit(3);
    // After the switch and the drop: the same version, the same states.
    if (snap->find_view("v")->current_version != version) ::_exit(4);
    expect_store_equals(*snap, old_ref, {before});
    if (::testing::Test::HasFailure()) ::_exit(5);
    auto fresh = (*reader)->snapshot();
    if (!fresh.ok()) ::_exit(6);
    ::_exit(fresh->find_view("v")->current_version != version ? 0 : 7);
  }
  char b = 0;
  ASSERT_EQ(::read(to_parent[0], &b, 1), 1);
  ViewDef after = before;
  after.widths_ns = {kMinute};
  auto c = Compactor::open(*store, {after}, env.options());
  ASSERT_TRUE(c.ok());
  auto stats = (*c)->rebuild();
  ASSERT_TRUE(stats.ok() && stats->caught_up);
  EXPECT_EQ(store->counters().versions_dropped.load(), 1u) << "no snapshot of this process holds it";
  ASSERT_EQ(::write(to_child[1], "g", 1), 1);
  int wstatus = 0;
  ::waitpid(child, &wstatus, 0);
  EXPECT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
}

TEST(Compactor, NewViewIsBuiltFromTheLogAndRemovedViewIsDropped) {
  Env env;
  LogBuilder log(env.log_dir);
  add_points(log, 1000, 8);
  log.seal();
  auto store = env.open_store();
  const auto views = test_views();
  {
    auto c = Compactor::open(*store, {views[0]}, env.options());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->compact().ok());
  }
  ReconcileReport report;
  auto c = Compactor::open(*store, {views[1]}, env.options(), &report);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(report.rebuilding, std::vector<std::string>{"by_region"});
  EXPECT_EQ(report.removed, std::vector<std::string>{"all"});
  {
    auto snap = store->snapshot();
    ASSERT_TRUE(snap.ok());
    EXPECT_EQ(snap->find_view("all"), nullptr);
    ASSERT_NE(snap->find_view("by_region"), nullptr);
    EXPECT_EQ(snap->find_view("by_region")->current_version, 0u) << "not serving before it is built";
  }
  auto stats = (*c)->rebuild();
  ASSERT_TRUE(stats.ok() && stats->caught_up);
  auto snap = store->snapshot();
  expect_store_equals(*snap, reference(env.log_dir, {views[1]}, store->watermark().log_offset), {views[1]});
}

TEST(Compactor, SegmentRetentionNeverOffersAnUnabsorbedSegment) {
  Env env;
  LogBuilder log(env.log_dir);
  add_points(log, 3000, 9);
  log.seal();
  auto store = env.open_store();
  auto c = Compactor::open(*store, test_views(), env.options(8 << 20, 500));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->compact(RunLimits{2, nullptr}).ok());
  const uint64_t absorbed = store->retention_offset();
  ASSERT_GT(absorbed, 0u);
  ASSERT_LT(absorbed, sealed_end(env.log_dir));

  auto segments = list_segments(env.log_dir).value();
  ASSERT_GT(segments.size(), 6u);
  // Size: everything absorbed may go, nothing beyond.
  auto plan = plan_segment_retention(env.log_dir, absorbed, SegmentRetention{0, 1}, 0);
  ASSERT_TRUE(plan.ok());
  ASSERT_GT(plan->segments, 0u);
  EXPECT_LE(plan->remove_below_offset, absorbed);
  size_t expected = 0;
  for (const auto& seg : segments) {
    if (seg.sealed && seg.end_offset() <= absorbed) ++expected;
  }
  EXPECT_EQ(plan->segments, expected);
  // Nothing is absorbed: nothing is offered, however large or old the log.
  EXPECT_EQ(plan_segment_retention(env.log_dir, 0, SegmentRetention{1, 1}, INT64_MAX)->segments, 0u);
  // Age: only the old prefix, by mtime.
  for (size_t i = 0; i < 2; ++i) {
    timespec times[2] = {{1000, 0}, {1000, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, segments[i].path.c_str(), times, 0), 0);
  }
  auto by_age = plan_segment_retention(env.log_dir, sealed_end(env.log_dir), SegmentRetention{kHour, 0},
                                       int64_t{2000} * kSecond + 2 * kHour);
  ASSERT_TRUE(by_age.ok());
  EXPECT_EQ(by_age->segments, 2u);
  EXPECT_EQ(by_age->remove_below_offset, segments[1].end_offset());

  auto removed = log.writer().remove_sealed_segments_below(plan->remove_below_offset);
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, plan->segments);
  auto rest = (*c)->compact();
  ASSERT_TRUE(rest.ok()) << rest.status().ToString();
  EXPECT_EQ(store->watermark().log_offset, absorbable_end(env.log_dir));
}

TEST(Compactor, FullMapIsAClearErrorThatKeepsTheLogAndALargerMapSucceeds) {
  Env env;
  LogBuilder log(env.log_dir);
  add_points(log, 3000, 11);
  log.seal();
  {
    auto store = env.open_store(/*max_map=*/1 << 20);
    auto c = Compactor::open(*store, test_views(), env.options());
    ASSERT_TRUE(c.ok());
    auto stats = (*c)->compact();
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().code(), Status::Code::kFull);
    EXPECT_NE(stats.status().message().find("raise batch.max_map_bytes"), std::string::npos)
        << stats.status().message();
    EXPECT_EQ(store->counters().map_full_errors.load(), 1u);
    EXPECT_EQ(store->watermark().log_offset, 0u);
  }
  auto store = env.open_store(/*max_map=*/64 << 20);
  auto c = Compactor::open(*store, test_views(), env.options());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->compact().ok());
  EXPECT_GT(store->counters().map_grows.load(), 0u);
  auto snap = store->snapshot();
  expect_store_equals(*snap, reference(env.log_dir, test_views(), store->watermark().log_offset), test_views());
}

}  // namespace
}  // namespace runnel::storage
