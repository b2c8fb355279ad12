// The C++ client against an in-process stand-in for runneld (fake_instance.h): views, rows,
// buckets, range queries checked against a reference computed from the events, waits, restarts,
// version mismatches, read-only mappings and the tail of the ring.
#include "runnel/client.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <random>
#include <thread>

#include "client/query.h"
#include "ipc/shm_object.h"
#include "tests/client/fake_instance.h"
#include "tests/client/reference.h"

namespace runnel::client::testing {
namespace {

using namespace std::chrono_literals;

constexpr int64_t kSecond = 1'000'000'000;
constexpr int64_t kMinute = 60 * kSecond;
constexpr int64_t kT0 = 1'700'000'040 * kSecond;  // a whole minute: 2023-11-14T22:14:00Z

ViewDef by_host_view() {
  ViewDef v;
  v.name = "by_host";
  v.measurements = {"cpu"};
  v.group_all_tags = false;
  v.group_by = {"host"};
  v.widths_ns = {10 * kSecond, kMinute};
  v.aggregates = {"count", "mean", "max", "p99"};
  v.capacity = 1 << 14;
  v.quantile_max_bins = 128;
  return v;
}

// The default view, with a live table sized for a test.
ViewDef small_default_view() {
  ViewDef v = default_view();
  v.capacity = 1 << 14;
  return v;
}

std::unique_ptr<Client> open_client(const std::string& name) {
  std::unique_ptr<Client> c;
  const Status s = Client::open(name, &c);
  EXPECT_TRUE(s.ok()) << s.message();
  return c;
}

// cpu (host h0..h3, dc east/west; usage float, n integer) and mem (host; free integer), over
// three minutes, out of order, with points on and just before minute edges.
std::vector<TestPoint> data_set() {
  std::mt19937_64 rng(42);
  std::vector<TestPoint> points;
  for (int i = 0; i < 400; ++i) {
    TestPoint p;
    p.measurement = "cpu";
    p.tags = {{"host", "h" + std::to_string(rng() % 4)}, {"dc", rng() % 2 ? "east" : "west"}};
    p.floats = {{"usage", static_cast<double>(rng() % 4000) / 4 - 200}};
    p.integers = {{"n", static_cast<int64_t>(rng() % 1000)}};
    const int64_t edge = kT0 + static_cast<int64_t>(rng() % 3) * kMinute;
    switch (i % 4) {
      case 0:
        p.ts_ns = edge;
        break;  // first ns of a minute
      case 1:
        p.ts_ns = edge - 1;
        break;  // last ns of the one before
      default:
        p.ts_ns = kT0 + static_cast<int64_t>(rng() % (3 * kMinute));
    }
    points.push_back(p);
  }
  for (int i = 0; i < 50; ++i) {
    TestPoint p;
    p.measurement = "mem";
    p.tags = {{"host", "h" + std::to_string(i % 3)}};
    p.integers = {{"free", i * 7}};
    p.ts_ns = kT0 + (i * 7919 % 180) * kSecond;
    points.push_back(p);
  }
  std::shuffle(points.begin(), points.end(), rng);
  return points;
}

class ClientTest : public ::testing::Test {
 protected:
  ClientTest() : inst_({small_default_view(), by_host_view()}) {
    for (const TestPoint& p : data_set()) {
      text_ += p.line();
      p.events(&events_);
    }
    inst_.write(text_);
  }

  // Runs `q` and compares it with the reference over the same events.
  void expect_matches(const Query& q, const std::function<bool(const Event&)>& select) {
    std::unique_ptr<Client> c = open_client(inst_.name());
    QueryResult r;
    const Status s = c->query(q, &r);
    ASSERT_TRUE(s.ok()) << s.message();
    const int64_t step = r.step_ns;
    const int64_t from = ipc::bucket_start(q.from_ns, step);
    const int64_t to = ipc::bucket_start(q.to_ns - 1, step) + step;
    EXPECT_EQ(r.from_ns, from);
    EXPECT_EQ(r.to_ns, to);
    EXPECT_EQ(r.busy_entries, 0u);
    const RefResult want = reference(events_, select, q.group_by, step, from, to);
    ASSERT_FALSE(want.empty());
    EXPECT_EQ(compare(want, r), "");
  }

  FakeInstance inst_;
  std::string text_;
  std::vector<Event> events_;
};

TEST_F(ClientTest, ViewsDescribeWidthsOutputsDefinitionAndLiveUse) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  std::vector<ViewInfo> views;
  ASSERT_TRUE(c->views(&views).ok());
  ASSERT_EQ(views.size(), 2u);
  EXPECT_EQ(views[0].name, "default");
  EXPECT_EQ(views[0].widths_ns, (std::vector<int64_t>{kSecond, kMinute, 60 * kMinute}));
  EXPECT_EQ(views[0].outputs,
            (std::vector<std::string>{"count", "sum", "min", "max", "mean", "last"}));
  EXPECT_EQ(views[0].definition, small_default_view().canonical());
  EXPECT_TRUE(views[0].group_all_tags);
  EXPECT_GT(views[0].stats.entries_used, 0u);
  EXPECT_EQ(views[0].stats.overflow_updates, 0u);
  EXPECT_EQ(views[1].name, "by_host");
  EXPECT_EQ(views[1].outputs, (std::vector<std::string>{"count", "mean", "max", "p99"}));
  EXPECT_EQ(views[1].group_by, std::vector<std::string>{"host"});
  EXPECT_EQ(views[1].measurements, std::vector<std::string>{"cpu"});
}

TEST_F(ClientTest, FindRowsFiltersByMeasurementFieldAndTags) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  std::vector<Row> rows;
  ASSERT_TRUE(c->find_rows("default", {"cpu", "", {{"host", "h1"}}}, &rows).ok());
  ASSERT_EQ(rows.size(), 4u);  // dc east/west x fields usage/n
  for (const Row& r : rows) {
    EXPECT_EQ(r.measurement, "cpu");
    EXPECT_EQ(r.tags, (std::vector<Tag>{{"dc", r.tags[0].value}, {"host", "h1"}}));
  }
  ASSERT_TRUE(
      c->find_rows("default", {"cpu", "usage", {{"host", "h1"}, {"dc", "east"}}}, &rows).ok());
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].field, "usage");
  ASSERT_TRUE(c->find_rows("default", {"", "free", {}}, &rows).ok());
  EXPECT_EQ(rows.size(), 3u);
  // by_host rows carry only the host tag and only cpu.
  ASSERT_TRUE(c->find_rows("by_host", {}, &rows).ok());
  EXPECT_EQ(rows.size(), 8u);
  for (const Row& r : rows) EXPECT_EQ(r.tags.size(), 1u);
  ASSERT_TRUE(c->find_rows("default", {"nope", "", {}}, &rows).ok());
  EXPECT_TRUE(rows.empty());
}

TEST_F(ClientTest, FilterOrGroupingOnATagTheViewDoesNotGroupByIsInvalid) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  std::vector<Row> rows;
  Status s = c->find_rows("by_host", {"cpu", "", {{"dc", "east"}}}, &rows);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("'dc'"), std::string::npos) << s.message();
  Query q{.view = "by_host", .group_by = "dc", .from_ns = kT0, .to_ns = kT0 + kMinute};
  QueryResult r;
  EXPECT_EQ(c->query(q, &r).code(), Code::kInvalidArgument);
}

TEST_F(ClientTest, ReadBucketFinalizesEveryOutputAndAnAbsentBucketIsEmpty) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  std::vector<Row> rows;
  ASSERT_TRUE(
      c->find_rows("default", {"cpu", "usage", {{"host", "h2"}, {"dc", "west"}}}, &rows).ok());
  ASSERT_EQ(rows.size(), 1u);
  const RefResult want = reference(
      events_,
      [](const Event& e) {
        return e.measurement == "cpu" && e.field == "usage" && e.tags.at("host") == "h2" &&
               e.tags.at("dc") == "west";
      },
      "", kMinute, kT0, kT0 + 3 * kMinute);
  ASSERT_EQ(want.size(), 1u);
  const std::vector<std::string> outputs{"count", "sum", "min", "max", "mean", "last"};
  for (const auto& [start, agg] : want.begin()->second) {
    Point p;
    ASSERT_TRUE(c->read_bucket("default", rows[0].id, kMinute, start, &p).ok());
    EXPECT_EQ(p.ts_ns, start);
    EXPECT_EQ(p.count, agg.count);
    ASSERT_EQ(p.values.size(), outputs.size());
    for (size_t i = 0; i < outputs.size(); ++i)
      EXPECT_DOUBLE_EQ(p.values[i], agg.value(outputs[i])) << outputs[i];
  }
  Point empty;
  ASSERT_TRUE(c->read_bucket("default", rows[0].id, kMinute, kT0 - 10 * kMinute, &empty).ok());
  EXPECT_EQ(empty.count, 0u);
  EXPECT_EQ(empty.values[0], 0);             // count
  EXPECT_TRUE(std::isnan(empty.values[4]));  // mean of nothing
  EXPECT_EQ(c->read_bucket("default", rows[0].id, 7 * kSecond, kT0, &empty).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(c->read_bucket("default", rows[0].id, kMinute, kT0 + 1, &empty).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(c->read_bucket("nope", rows[0].id, kMinute, kT0, &empty).code(), Code::kNotFound);
}

TEST_F(ClientTest, OneRowQueriedByIdMatchesTheReferenceAtEveryStep) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  std::vector<Row> rows;
  ASSERT_TRUE(c->find_rows("default", {"cpu", "n", {{"host", "h3"}, {"dc", "east"}}}, &rows).ok());
  ASSERT_EQ(rows.size(), 1u);
  const auto select = [](const Event& e) {
    return e.measurement == "cpu" && e.field == "n" && e.tags.at("host") == "h3" &&
           e.tags.at("dc") == "east";
  };
  for (int64_t step : {kSecond, 10 * kSecond, kMinute, 2 * kMinute, 60 * kMinute}) {
    SCOPED_TRACE(step);
    expect_matches({.view = "default",
                    .row_id = rows[0].id,
                    .from_ns = kT0 - kMinute,
                    .to_ns = kT0 + 4 * kMinute,
                    .step_ns = step},
                   select);
  }
}

TEST_F(ClientTest, RowsMergeAcrossSeriesPerField) {
  expect_matches({.view = "default",
                  .rows = {"cpu", "", {}},
                  .from_ns = kT0,
                  .to_ns = kT0 + 3 * kMinute,
                  .step_ns = kMinute},
                 [](const Event& e) { return e.measurement == "cpu"; });
  expect_matches({.view = "default",
                  .rows = {"cpu", "usage", {{"dc", "east"}}},
                  .from_ns = kT0 + 30 * kSecond,
                  .to_ns = kT0 + 150 * kSecond,
                  .step_ns = 30 * kSecond},
                 [](const Event& e) {
                   return e.measurement == "cpu" && e.field == "usage" && e.tags.at("dc") == "east";
                 });
}

TEST_F(ClientTest, GroupByATagGivesOneSeriesPerValueAndField) {
  expect_matches({.view = "default",
                  .rows = {"cpu", "", {}},
                  .group_by = "host",
                  .from_ns = kT0,
                  .to_ns = kT0 + 3 * kMinute,
                  .step_ns = 2 * kMinute},
                 [](const Event& e) { return e.measurement == "cpu"; });
  // A view that groups by host already: its rows merge the dc series.
  expect_matches({.view = "by_host",
                  .rows = {"cpu", "usage", {}},
                  .group_by = "host",
                  .from_ns = kT0,
                  .to_ns = kT0 + 3 * kMinute,
                  .step_ns = 20 * kSecond,
                  .outputs = {"count", "mean", "max"}},
                 [](const Event& e) { return e.measurement == "cpu" && e.field == "usage"; });
  // Grouping by a tag some rows lack puts those under "".
  expect_matches({.view = "default",
                  .rows = {"", "", {}},
                  .group_by = "dc",
                  .from_ns = kT0,
                  .to_ns = kT0 + 3 * kMinute,
                  .step_ns = 60 * kMinute},
                 [](const Event&) { return true; });
}

TEST_F(ClientTest, TheLargestWidthDividingTheStepIsMerged) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  const std::vector<std::pair<int64_t, int64_t>> cases = {
      {0, kSecond},           {7 * kSecond, kSecond},       {90 * kSecond, kSecond},
      {2 * kMinute, kMinute}, {60 * kMinute, 60 * kMinute}, {120 * kMinute, 60 * kMinute}};
  for (const auto& [step, width] : cases) {
    QueryResult r;
    ASSERT_TRUE(c->query({.view = "default",
                          .rows = {"cpu", "n", {}},
                          .from_ns = kT0,
                          .to_ns = kT0 + kMinute,
                          .step_ns = step},
                         &r)
                    .ok());
    EXPECT_EQ(r.width_ns, width) << step;
    EXPECT_EQ(r.step_ns, step == 0 ? kSecond : step);
  }
  QueryResult r;
  const Status s = c->query(
      {.view = "by_host", .from_ns = kT0, .to_ns = kT0 + kMinute, .step_ns = 15 * kSecond}, &r);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("10s, 1m"), std::string::npos) << s.message();
  EXPECT_EQ(c->query({.view = "default", .from_ns = kT0, .to_ns = kT0}, &r).code(),
            Code::kInvalidArgument);
}

TEST_F(ClientTest, OutputsAreChosenByNameInTheOrderAsked) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  QueryResult r;
  ASSERT_TRUE(c->query({.view = "by_host",
                        .rows = {"cpu", "usage", {{"host", "h0"}}},
                        .from_ns = kT0,
                        .to_ns = kT0 + 3 * kMinute,
                        .step_ns = kMinute,
                        .outputs = {"p99.0", "count"}},
                       &r)
                  .ok());
  EXPECT_EQ(r.outputs, (std::vector<std::string>{"p99", "count"}));
  ASSERT_EQ(r.series.size(), 1u);
  for (const Point& p : r.series[0].points) {
    EXPECT_EQ(p.values[1], static_cast<double>(p.count));
    EXPECT_FALSE(std::isnan(p.values[0]));
  }
  const Status s =
      c->query({.view = "default", .from_ns = kT0, .to_ns = kT0 + kMinute, .outputs = {"p50"}}, &r);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("count, sum, min, max, mean, last"), std::string::npos) << s.message();
  EXPECT_EQ(c->query({.view = "nope", .from_ns = kT0, .to_ns = kT0 + 1}, &r).code(),
            Code::kNotFound);
}

TEST_F(ClientTest, FillEmptyReturnsEveryStepWithNaNWhereThereIsNoValue) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  QueryResult r;
  ASSERT_TRUE(c->query({.view = "default",
                        .rows = {"mem", "free", {{"host", "h0"}}},
                        .from_ns = kT0 - 2 * kMinute,
                        .to_ns = kT0 + 5 * kMinute,
                        .step_ns = kMinute,
                        .fill_empty = true},
                       &r)
                  .ok());
  ASSERT_EQ(r.series.size(), 1u);
  ASSERT_EQ(r.series[0].points.size(), 7u);
  const Point& before = r.series[0].points[0];
  EXPECT_EQ(before.ts_ns, kT0 - 2 * kMinute);
  EXPECT_EQ(before.count, 0u);
  EXPECT_TRUE(std::isnan(before.values[4]));  // mean
  EXPECT_GT(r.series[0].points[2].count, 0u);
}

TEST(ClientCapacityTest, ATinyLiveTableCountsOverflowAndStillAnswers) {
  ViewDef tiny = default_view();
  tiny.name = "tiny";
  tiny.capacity = 64;
  FakeInstance inst({tiny});
  std::string lines;
  for (int i = 0; i < 500; ++i)
    lines += "cpu,host=h" + std::to_string(i % 50) + " v=" + std::to_string(i) + " " +
             std::to_string(kT0 + i * kSecond) + "\n";
  inst.write(lines);
  std::unique_ptr<Client> c = open_client(inst.name());
  ViewInfo info;
  ASSERT_TRUE(c->view("tiny", &info).ok());
  EXPECT_GT(info.stats.overflow_updates, 0u);
  EXPECT_LE(info.stats.entries_used, info.stats.capacity_entries);
  QueryResult r;
  ASSERT_TRUE(c->query({.view = "tiny",
                        .rows = {"cpu", "v", {}},
                        .from_ns = kT0,
                        .to_ns = kT0 + 500 * kSecond,
                        .step_ns = 60 * kMinute},
                       &r)
                  .ok());
  ASSERT_EQ(r.series.size(), 1u);
  EXPECT_LT(r.series[0].points[0].count, 500u);  // short by the overflow, never wrong
}

TEST_F(ClientTest, WaitForChangeWakesWhenABatchEndsAndTimesOutOtherwise) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  ViewInfo info;
  ASSERT_TRUE(c->view("default", &info).ok());
  uint32_t seq = info.change_seq;
  bool changed = true;
  ASSERT_TRUE(c->wait_for_change("default", &seq, 20ms, &changed).ok());
  EXPECT_FALSE(changed);

  std::atomic<bool> woke{false};
  std::thread waiter([&] {
    std::unique_ptr<Client> w = open_client(inst_.name());
    uint32_t s = info.change_seq;
    bool ch = false;
    EXPECT_TRUE(w->wait_for_change("default", &s, 20s, &ch).ok());
    woke = ch && s != info.change_seq;
  });
  inst_.write("cpu,host=h9 usage=1 " + std::to_string(kT0) + "\n");
  waiter.join();
  EXPECT_TRUE(woke);
}

TEST_F(ClientTest, AfterADaemonRestartTheNextCallReopensTransparently) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  const uint64_t before = c->instance_id();
  inst_.restart();
  inst_.write("cpu,host=new usage=5 " + std::to_string(kT0) + "\n");
  std::vector<Row> rows;
  ASSERT_TRUE(c->find_rows("default", {}, &rows).ok());
  ASSERT_EQ(rows.size(), 1u);  // the new instance's rows only
  EXPECT_EQ(rows[0].tags, (std::vector<Tag>{{"host", "new"}}));
  EXPECT_NE(c->instance_id(), before);
  // A waiter on the old instance is woken by the replacement and reports a change.
  ViewInfo info;
  ASSERT_TRUE(c->view("default", &info).ok());
  uint32_t seq = info.change_seq;
  std::thread restarter([&] { inst_.restart(); });
  bool changed = false;
  const Status s = c->wait_for_change("default", &seq, 20s, &changed);
  restarter.join();
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(changed);
}

TEST_F(ClientTest, WithoutASuccessorTheCallFailsClearlyAndALaterOneRecovers) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  inst_.restart();
  (void)ipc::LiveTables::remove(inst_.name());  // as if the successor had not created it yet
  std::vector<ViewInfo> views;
  const Status s = c->views(&views);
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_NE(s.message().find("restart"), std::string::npos) << s.message();
  inst_.restart();
  EXPECT_TRUE(c->views(&views).ok());
}

TEST_F(ClientTest, ALayoutVersionMismatchIsAClearError) {
  auto shm =
      ipc::ShmObject::open("live tables", inst_.live_object(), ipc::ShmAccess::kReadWrite, 0);
  ASSERT_TRUE(shm.ok());
  reinterpret_cast<ipc::ShmPrefix*>(shm->data())->layout_version += 1;
  std::unique_ptr<Client> c;
  const Status s = Client::open(inst_.name(), &c);
  EXPECT_EQ(s.code(), Code::kIncompatible);
  EXPECT_NE(s.message().find("layout version"), std::string::npos) << s.message();
}

TEST(ClientOpenTest, NoSuchInstanceIsUnavailableAndNamesIt) {
  std::unique_ptr<Client> c;
  const Status s = Client::open("runnel-client-test-missing", &c);
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_NE(s.message().find("runnel-client-test-missing"), std::string::npos) << s.message();
}

// Child side: a store into a read-only mapping must die of SIGSEGV itself (no sanitizer report).
int store_into(std::span<const std::byte> mapping, size_t offset) {
  const pid_t pid = fork();
  if (pid == 0) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGSEGV, &dfl, nullptr);
    sigaction(SIGBUS, &dfl, nullptr);
    *reinterpret_cast<volatile std::byte*>(const_cast<std::byte*>(mapping.data()) + offset) =
        std::byte{1};
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
}

TEST_F(ClientTest, EveryMappingOfTheClientIsReadOnly) {
  auto inst = internal::Instance::open(inst_.name());
  ASSERT_TRUE(inst.ok()) << inst.status().ToString();
  const auto maps = inst.value()->mappings();
  ASSERT_EQ(maps.size(), 3u);  // live tables, series dictionary, stats
  for (const auto& m : maps) {
    ASSERT_GT(m.size(), 64u);
    EXPECT_EQ(store_into(m, 40), 128 + SIGSEGV);  // e.g. the live tables' retired flag
    EXPECT_EQ(store_into(m, m.size() - 1), 128 + SIGSEGV);
  }
}

TEST_F(ClientTest, CountersIncludeTheDaemonsAndTheSeriesDictionarys) {
  std::unique_ptr<Client> c = open_client(inst_.name());
  std::vector<Counter> counters;
  ASSERT_TRUE(c->counters(&counters).ok());
  std::map<std::string, uint64_t> m;
  for (const auto& k : counters) m[k.name] = k.value;
  EXPECT_EQ(m.at("pid"), static_cast<uint64_t>(getpid()));
  EXPECT_EQ(m.at("series_count"), 8u * 2 + 3 + 8);  // default: cpu x 2 fields, mem; by_host
  EXPECT_TRUE(m.count("speed_records"));
}

TEST(TailTest, NewRecordsArePrintedAsLineProtocol) {
  FakeInstance inst;
  std::unique_ptr<Tail> tail;
  ASSERT_TRUE(Tail::open(inst.name(), /*from_oldest=*/false, &tail).ok());
  std::string lines;
  Tail::Batch b;
  ASSERT_TRUE(tail->poll(100, &lines, &b).ok());
  EXPECT_EQ(b.records, 0u);
  inst.publish(
      "cpu,host=a usage=1.5 1700000000000000000\nmem,host=b free=3i 1700000000000000001\n");
  ASSERT_TRUE(tail->wait(0ns));
  ASSERT_TRUE(tail->poll(100, &lines, &b).ok());
  EXPECT_EQ(b.records, 2u);
  EXPECT_EQ(b.overrun_bytes, 0u);
  EXPECT_EQ(lines,
            "cpu,host=a usage=1.5 1700000000000000000\nmem,host=b free=3i 1700000000000000001\n");
}

TEST(TailTest, ALappedTailReportsTheBytesItLostAndGoesOn) {
  FakeInstance inst({small_default_view()}, 2, ipc::kMinRingCapacity);
  std::unique_ptr<Tail> tail;
  ASSERT_TRUE(Tail::open(inst.name(), false, &tail).ok());
  std::string many;
  for (int i = 0; i < 200; ++i)
    many += "cpu,host=a seq=" + std::to_string(i) + "i " + std::to_string(kT0 + i) + "\n";
  inst.publish(many);  // far more than the ring holds
  std::string lines;
  Tail::Batch b;
  uint64_t overrun = 0, records = 0;
  do {
    ASSERT_TRUE(tail->poll(1000, &lines, &b).ok());
    overrun += b.overrun_bytes;
    records += b.records;
  } while (b.records != 0 || b.overrun_bytes != 0);
  EXPECT_GT(overrun, 0u);
  EXPECT_GT(records, 0u);
  EXPECT_LT(records, 200u);
  EXPECT_EQ(tail->overrun_bytes_total(), overrun);
  EXPECT_TRUE(lines.ends_with("seq=199i " + std::to_string(kT0 + 199) + "\n")) << lines;
}

}  // namespace
}  // namespace runnel::client::testing
