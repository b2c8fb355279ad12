// End to end: the real runneld fed over TCP, read back through the client library and
// `runnelctl views | series | query | tail | watch`: exact answers against a reference computed
// from the same events, overflow of a tiny live table, change waits, tails that get lapped, and
// a client that outlives a daemon restart.
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "ipc/shm_object.h"
#include "runnel/client.h"
#include "tests/client/reference.h"
#include "tests/e2e/runneld_harness.h"

namespace runnel::e2e {
namespace {

using client::Client;
using client::Query;
using client::QueryResult;
using client::testing::Event;
using client::testing::TestPoint;
using ipc::Counter;
using namespace std::chrono_literals;

constexpr int64_t kSecond = 1'000'000'000;
constexpr int64_t kMinute = 60 * kSecond;

int64_t realtime_ns() { return static_cast<int64_t>(ipc::unix_now_ns()); }

std::unique_ptr<Client> open_client(const Runneld& d) {
  std::unique_ptr<Client> c;
  const client::Status s = Client::open(d.shm_name(), &c);
  EXPECT_TRUE(s.ok()) << s.message();
  return c;
}

// `runnelctl query --json` read back into a QueryResult (null values are NaN).
QueryResult from_json(const nlohmann::json& j) {
  QueryResult r;
  r.outputs = j.at("outputs").get<std::vector<std::string>>();
  r.step_ns = j.at("step_ns");
  r.width_ns = j.at("width_ns");
  r.from_ns = j.at("from_ns");
  r.to_ns = j.at("to_ns");
  r.busy_entries = j.at("busy_entries");
  for (const auto& s : j.at("series")) {
    client::Series series;
    series.field = s.at("field");
    if (!s.at("group_value").is_null()) series.group_value = s.at("group_value").get<std::string>();
    series.rows = s.at("rows");
    for (const auto& p : s.at("points")) {
      client::Point point{p.at("ts_ns"), p.at("count"), {}};
      for (const auto& o : r.outputs) {
        const auto& v = p.at("values").at(o);
        point.values.push_back(v.is_null() ? NAN : v.get<double>());
      }
      series.points.push_back(std::move(point));
    }
    r.series.push_back(std::move(series));
  }
  return r;
}

// Points of two measurements over the last `span` before `end`: cpu (host h0..h4, region
// r0/r1; usage float, n integer) and mem (host; free integer), shuffled, a quarter of them on
// a minute edge or one ns before it.
std::vector<TestPoint> data_set(int64_t end, int64_t span, int count) {
  std::mt19937_64 rng(7);
  std::vector<TestPoint> points;
  const int64_t first_minute = (end - span) / kMinute + 1;
  const int64_t minutes = span / kMinute - 1;
  for (int i = 0; i < count; ++i) {
    TestPoint p;
    int64_t ts = end - span + static_cast<int64_t>(rng() % static_cast<uint64_t>(span));
    const int64_t edge =
        (first_minute + static_cast<int64_t>(rng() % static_cast<uint64_t>(minutes))) * kMinute;
    if (i % 8 == 0) ts = edge;
    if (i % 8 == 1) ts = edge - 1;
    if (i % 10 == 9) {
      p.measurement = "mem";
      p.tags = {{"host", "h" + std::to_string(rng() % 5)}};
      p.integers = {{"free", static_cast<int64_t>(rng() % 100000)}};
    } else {
      p.measurement = "cpu";
      p.tags = {{"host", "h" + std::to_string(rng() % 5)},
                {"region", "r" + std::to_string(rng() % 2)}};
      p.floats = {{"usage", static_cast<double>(rng() % 40000) / 4 - 5000}};
      p.integers = {{"n", static_cast<int64_t>(rng() % 1000)}};
    }
    p.ts_ns = ts;
    points.push_back(p);
  }
  return points;
}

class QueryE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    d_.start();
    ASSERT_TRUE(d_.wait_ready()) << d_.stderr_text();
    end_ = realtime_ns();
    std::string text;
    for (const TestPoint& p : data_set(end_, 20 * kMinute, 3000)) {
      text += p.line();
      p.events(&events_);
    }
    send_tcp(d_.tcp_port(), text);
    ASSERT_TRUE(wait_speed_caught_up(d_, 3000)) << d_.stderr_text();
  }

  // Asks the client API and `runnelctl query --json` and compares both with the reference.
  void expect_exact(const Query& q, const std::vector<std::string>& cli_args,
                    const std::function<bool(const Event&)>& select) {
    std::unique_ptr<Client> c = open_client(d_);
    QueryResult api;
    const client::Status s = c->query(q, &api);
    ASSERT_TRUE(s.ok()) << s.message();
    const client::testing::RefResult want = client::testing::reference(
        events_, select, q.group_by, api.step_ns, api.from_ns, api.to_ns);
    ASSERT_FALSE(want.empty());
    EXPECT_EQ(client::testing::compare(want, api), "") << "client API";

    std::vector<std::string> args = {"--shm-name",
                                     d_.shm_name(),
                                     "query",
                                     q.view,
                                     "--json",
                                     "--from",
                                     std::to_string(q.from_ns),
                                     "--to",
                                     std::to_string(q.to_ns),
                                     "--step",
                                     std::to_string(q.step_ns) + "ns"};
    args.insert(args.end(), cli_args.begin(), cli_args.end());
    int rc = -1;
    const std::string out = run_runnelctl(args, &rc);
    ASSERT_EQ(rc, 0) << out;
    const QueryResult cli = from_json(nlohmann::json::parse(out));
    EXPECT_EQ(cli.width_ns, api.width_ns);
    EXPECT_EQ(client::testing::compare(want, cli), "") << "runnelctl: " << out.substr(0, 400);
  }

  Runneld d_;
  int64_t end_ = 0;
  std::vector<Event> events_;
};

TEST_F(QueryE2E, QueriesMatchTheEventsExactlyThroughTheApiAndRunnelctl) {
  const int64_t from = end_ - 25 * kMinute, to = end_ + kMinute;
  // One row, found by name, at the 1m width.
  std::unique_ptr<Client> c = open_client(d_);
  std::vector<client::Row> rows;
  ASSERT_TRUE(
      c->find_rows("default", {"cpu", "usage", {{"host", "h1"}, {"region", "r0"}}}, &rows).ok());
  ASSERT_EQ(rows.size(), 1u);
  const auto one_row = [](const Event& e) {
    return e.measurement == "cpu" && e.field == "usage" && e.tags.at("host") == "h1" &&
           e.tags.at("region") == "r0";
  };
  expect_exact(
      {.view = "default", .row_id = rows[0].id, .from_ns = from, .to_ns = to, .step_ns = kMinute},
      {"--row", std::to_string(rows[0].id)}, one_row);
  // The same row by its tags, at steps merged from 1s and from 1h buckets.
  for (int64_t step : {10 * kSecond, 60 * kMinute}) {
    expect_exact(
        {.view = "default",
         .rows = {"cpu", "usage", {{"host", "h1"}, {"region", "r0"}}},
         .from_ns = from,
         .to_ns = to,
         .step_ns = step},
        {"--measurement", "cpu", "--field", "usage", "--where", "host=h1", "--where", "region=r0"},
        one_row);
  }
  // Merged across every cpu series, per field.
  expect_exact({.view = "default",
                .rows = {"cpu", "", {}},
                .from_ns = from,
                .to_ns = to,
                .step_ns = 2 * kMinute},
               {"--measurement", "cpu"}, [](const Event& e) { return e.measurement == "cpu"; });
  // Grouped by a tag, with a filter, at a step that is not a width.
  expect_exact(
      {.view = "default",
       .rows = {"cpu", "n", {{"region", "r1"}}},
       .group_by = "host",
       .from_ns = from,
       .to_ns = to,
       .step_ns = 5 * kMinute},
      {"--measurement", "cpu", "--field", "n", "--where", "region=r1", "--group-by", "host"},
      [](const Event& e) {
        return e.measurement == "cpu" && e.field == "n" && e.tags.at("region") == "r1";
      });
  // Everything, grouped by host, at 30s.
  expect_exact({.view = "default",
                .group_by = "host",
                .from_ns = from,
                .to_ns = to,
                .step_ns = 30 * kSecond},
               {"--group-by", "host"}, [](const Event&) { return true; });
}

TEST_F(QueryE2E, RunnelctlListsViewsAndSeriesAndPrintsTablesAndCsv) {
  int rc = -1;
  const auto views =
      nlohmann::json::parse(run_runnelctl({"--shm-name", d_.shm_name(), "views", "--json"}, &rc));
  ASSERT_EQ(rc, 0);
  ASSERT_EQ(views.size(), 1u);
  EXPECT_EQ(views[0]["name"], "default");
  EXPECT_EQ(views[0]["widths"], (std::vector<std::string>{"1s", "1m", "1h"}));
  EXPECT_EQ(views[0]["outputs"],
            (std::vector<std::string>{"count", "sum", "min", "max", "mean", "last"}));
  EXPECT_GT(views[0]["stats"]["entries_used"].get<uint64_t>(), 0u);

  const auto series =
      nlohmann::json::parse(run_runnelctl({"--shm-name", d_.shm_name(), "series", "--measurement",
                                           "cpu", "--where", "host=h2", "--json"},
                                          &rc));
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(series.size(), 4u);  // region r0/r1 x usage/n
  for (const auto& r : series) EXPECT_EQ(r.at("tags").at("host"), "h2");

  const std::string table = run_runnelctl(
      {"--shm-name", d_.shm_name(), "series", "--view", "default", "--field", "free"}, &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 1 + 5);  // header + one per host

  const std::string csv =
      run_runnelctl({"--shm-name", d_.shm_name(), "query", "default", "--measurement", "mem",
                     "--from", "-1h", "--step", "1h", "--csv", "--agg", "count,max"},
                    &rc);
  EXPECT_EQ(rc, 0) << csv;
  EXPECT_TRUE(csv.starts_with("time_ns,field,count,max\n")) << csv;
  const std::string tbl = run_runnelctl({"--shm-name", d_.shm_name(), "query", "default",
                                         "--measurement", "mem", "--from", "-1h", "--step", "1h"},
                                        &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(tbl.find("free"), std::string::npos) << tbl;

  run_runnelctl({"--shm-name", d_.shm_name(), "query", "default", "--step", "7s", "--agg", "p99"},
                &rc);
  EXPECT_EQ(rc, 1);  // no such output
  run_runnelctl({"--shm-name", d_.shm_name(), "query", "nope"}, &rc);
  EXPECT_EQ(rc, 1);
}

TEST(QueryE2ECapacity, ATinyLiveTableOverflowsCountedWhileTheDaemonStaysHealthyAndAnswers) {
  Runneld d;
  d.start(R"toml(
[[view]]
name = "tiny"
capacity = 64
)toml");
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  const int64_t now = realtime_ns();
  std::string text;
  for (int i = 0; i < 2000; ++i) {
    text += "cpu,host=h" + std::to_string(i % 200) + " v=" + std::to_string(i) + " " +
            std::to_string(now - (i % 600) * kSecond) + "\n";
  }
  send_tcp(d.tcp_port(), text);
  ASSERT_TRUE(wait_speed_caught_up(d, 2000)) << d.stderr_text();
  EXPECT_GT(d.counter(Counter::kSpeedOverflow), 0u);

  int rc = -1;
  const auto stats =
      nlohmann::json::parse(run_runnelctl({"--shm-name", d.shm_name(), "stats", "--json"}, &rc));
  ASSERT_EQ(rc, 0);
  EXPECT_GT(stats["speed_overflow_updates"].get<uint64_t>(), 0u);
  EXPECT_LT(stats["heartbeat_age_ms"].get<int64_t>(), 5000);
  const auto views =
      nlohmann::json::parse(run_runnelctl({"--shm-name", d.shm_name(), "views", "--json"}, &rc));
  ASSERT_EQ(rc, 0);
  EXPECT_GT(views[0]["stats"]["overflow_updates"].get<uint64_t>(), 0u);
  EXPECT_LE(views[0]["stats"]["entries_used"].get<uint64_t>(),
            views[0]["stats"]["capacity_entries"].get<uint64_t>());

  const auto answer = nlohmann::json::parse(run_runnelctl(
      {"--shm-name", d.shm_name(), "query", "tiny", "--from", "-1h", "--step", "1h", "--json"},
      &rc));
  ASSERT_EQ(rc, 0);
  uint64_t counted = 0;
  for (const auto& s : answer["series"])
    for (const auto& p : s.at("points")) counted += p.at("count").get<uint64_t>();
  EXPECT_LT(counted, 2000u);  // short by what did not fit: never more than was sent

  // Still healthy: new points are accepted and folded in.
  send_tcp(d.tcp_port(), "cpu,host=late v=1 " + std::to_string(realtime_ns()) + "\n");
  EXPECT_TRUE(wait_speed_caught_up(d, 2001));
  EXPECT_TRUE(d.running());
}

TEST(QueryE2EWait, WaitForChangeWakesWhenNewDataArrivesAndWatchRedraws) {
  Runneld d;
  d.start();
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  std::unique_ptr<Client> c = open_client(d);
  client::ViewInfo info;
  ASSERT_TRUE(c->view("default", &info).ok());
  uint32_t seq = info.change_seq;
  bool changed = true;
  ASSERT_TRUE(c->wait_for_change("default", &seq, 20ms, &changed).ok());
  EXPECT_FALSE(changed);

  std::thread sender(
      [&] { send_tcp(d.tcp_port(), "cpu,host=a v=1 " + std::to_string(realtime_ns()) + "\n"); });
  ASSERT_TRUE(c->wait_for_change("default", &seq, 20s, &changed).ok());
  sender.join();
  EXPECT_TRUE(changed);
  EXPECT_NE(seq, info.change_seq);

  RunnelctlProcess watch({"--shm-name", d.shm_name(), "watch", "default", "--from", "-1h", "--step",
                          "1h", "--iterations", "2", "--json"});
  ASSERT_TRUE(wait_until([&] { return watch.stdout_text().find('\n') != std::string::npos; }, 20s))
      << watch.stderr_text();
  send_tcp(d.tcp_port(), "cpu,host=a v=2 " + std::to_string(realtime_ns()) + "\n");
  ASSERT_EQ(watch.wait_exit(20s), 0) << watch.stderr_text();
  std::vector<uint64_t> counts;
  std::istringstream lines(watch.stdout_text());
  for (std::string line; std::getline(lines, line);) {
    const auto j = nlohmann::json::parse(line);
    counts.push_back(j.at("series").at(0).at("points").at(0).at("count").get<uint64_t>());
  }
  EXPECT_EQ(counts, (std::vector<uint64_t>{1, 2}));
}

TEST(QueryE2ETail, TailSeesNewLinesAndReportsOverrunWhenLapped) {
  Runneld d;
  d.start("[ingest]\nmax_line_bytes = 4096\n[ring]\ncapacity_bytes = 65536\n");
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  const int64_t now = realtime_ns();
  const auto line = [&](int i) {
    return "tail,host=h" + std::to_string(i % 3) + " seq=" + std::to_string(i) + "i " +
           std::to_string(now + i);
  };

  // The client API: new lines, in order.
  std::unique_ptr<client::Tail> tail;
  ASSERT_TRUE(client::Tail::open(d.shm_name(), false, &tail).ok());
  std::string sent;
  for (int i = 0; i < 10; ++i) sent += line(i) + "\n";
  send_tcp(d.tcp_port(), sent);
  std::string got;
  ASSERT_TRUE(wait_until(
      [&] {
        client::Tail::Batch b;
        EXPECT_TRUE(tail->poll(100, &got, &b).ok());
        if (b.records == 0) tail->wait(10ms);
        return got.size() >= sent.size();
      },
      20s));
  EXPECT_EQ(got, sent);

  // runnelctl tail: the same lines, then an overrun on stderr once it is lapped while stopped.
  RunnelctlProcess cli({"--shm-name", d.shm_name(), "tail"});
  ASSERT_TRUE(
      wait_until([&] { return cli.stderr_text().find("following") != std::string::npos; }, 20s));
  send_tcp(d.tcp_port(), sent);
  ASSERT_TRUE(wait_until([&] { return cli.stdout_text() == sent; }, 20s)) << cli.stdout_text();
  cli.signal(SIGSTOP);
  std::string lots;
  for (int i = 10; i < 4010; ++i) lots += line(i) + "\n";  // ~150 KB: over twice the ring
  send_tcp(d.tcp_port(), lots);
  ASSERT_TRUE(wait_speed_caught_up(d, 4020));
  cli.signal(SIGCONT);
  ASSERT_TRUE(
      wait_until([&] { return cli.stderr_text().find("overrun") != std::string::npos; }, 20s))
      << cli.stderr_text();
  // Lapped, it resumed at the oldest record still unconsumed (none): new lines come through.
  std::string more;
  for (int i = 4010; i < 4020; ++i) more += line(i) + "\n";
  send_tcp(d.tcp_port(), more);
  ASSERT_TRUE(wait_until([&] { return cli.stdout_text().ends_with(more); }, 20s))
      << cli.stderr_text();
  EXPECT_LT(cli.stdout_text().size(), sent.size() + lots.size());
  cli.signal(SIGINT);
  EXPECT_EQ(cli.wait_exit(20s), 0);

  // The API tail was lapped too: it reports the loss, then goes on with new lines.
  got.clear();
  client::Tail::Batch b;
  ASSERT_TRUE(tail->poll(100000, &got, &b).ok());
  EXPECT_GT(b.overrun_bytes, 0u);
  EXPECT_EQ(tail->overrun_bytes_total(), b.overrun_bytes);
  std::string last;
  for (int i = 4020; i < 4030; ++i) last += line(i) + "\n";
  send_tcp(d.tcp_port(), last);
  ASSERT_TRUE(wait_until(
      [&] {
        EXPECT_TRUE(tail->poll(100000, &got, &b).ok());
        if (b.records == 0) tail->wait(10ms);
        return got.ends_with(last);
      },
      20s));
}

TEST(QueryE2ERestart, AClientKeepsWorkingAcrossADaemonRestart) {
  Runneld d;
  d.start();
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  const int64_t now = realtime_ns();
  send_tcp(d.tcp_port(), "cpu,host=before v=1 " + std::to_string(now) + "\n");
  ASSERT_TRUE(wait_speed_caught_up(d, 1));
  std::unique_ptr<Client> c = open_client(d);
  const uint64_t first = c->instance_id();
  std::vector<client::Row> rows;
  ASSERT_TRUE(c->find_rows("default", {}, &rows).ok());
  ASSERT_EQ(rows.size(), 1u);

  ASSERT_EQ(d.stop(), 0) << d.stderr_text();
  d.start();
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  send_tcp(d.tcp_port(), "cpu,host=after v=2 " + std::to_string(now) + "\n");
  // (The new speed path may also fold in what the ring still held: at least every new point.)
  ASSERT_TRUE(wait_until(
      [&] {
        const uint64_t accepted = d.counter(Counter::kPointsAccepted);
        return accepted >= 1 && d.counter(Counter::kSpeedRecords) >= accepted;
      },
      20s));

  // The next call notices the restart and reopens by name.
  ASSERT_TRUE(c->find_rows("default", {"cpu", "", {{"host", "after"}}}, &rows).ok());
  EXPECT_EQ(rows.size(), 1u);
  EXPECT_NE(c->instance_id(), first);
  QueryResult r;
  ASSERT_TRUE(c->query({.view = "default",
                        .rows = {"cpu", "v", {{"host", "after"}}},
                        .from_ns = now - kMinute,
                        .to_ns = now + kMinute,
                        .step_ns = 60 * kMinute},
                       &r)
                  .ok());
  ASSERT_EQ(r.series.size(), 1u);
  EXPECT_EQ(r.series[0].points[0].count, 1u);
}

}  // namespace
}  // namespace runnel::e2e
