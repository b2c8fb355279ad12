// End to end: the Lambda invariant with the real runneld. While points stream in, segments seal
// and are compacted, a rebuild runs and live entries of absorbed generations are evicted, every
// merged answer (batch views up to their watermark + live entries beyond it) counts each event
// at most once, never goes back, and reaches exactly the reference; kill -9 at random moments
// during compaction loses or doubles nothing; late data lands in its bucket through the batch
// layer; a changed view definition is answered by the new definition once rebuilt.
#include <gtest/gtest.h>
#include <time.h>

#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>

#include "runnel/client.h"
#include "tests/e2e/runneld_harness.h"

namespace runnel::e2e {
namespace {

using ipc::Counter;
using namespace std::chrono_literals;

constexpr int64_t kSecond = 1'000'000'000;
constexpr int64_t kMinute = 60 * kSecond;
constexpr int64_t kHour = 60 * kMinute;
constexpr uint64_t kHosts = 20;

// Small generations and segments, a fast compaction tick: the batch layer takes over often.
constexpr char kConfig[] =
    "[ring]\ngeneration_bytes = 65536\n[log]\nsegment_bytes = 65536\n[batch]\ninterval_ms = 20\n";

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * kSecond + ts.tv_nsec;
}

// The points of one data set: point i is host h<i % kHosts>, v = 1 + i % 7, at t0 + i * step.
struct DataSet {
  int64_t t0 = 0;
  int64_t step_ns = 20'000'000;
  std::string lines(uint64_t first, uint64_t n) const {
    std::string s;
    for (uint64_t i = first; i < first + n; ++i) s += line(i);
    return s;
  }
  std::string line(uint64_t i) const {
    return "m,host=h" + std::to_string(i % kHosts) + " v=" + std::to_string(1 + i % 7) + " " +
           std::to_string(ts(i)) + "\n";
  }
  int64_t ts(uint64_t i) const { return t0 + static_cast<int64_t>(i) * step_ns; }
  double value(uint64_t i) const { return static_cast<double>(1 + i % 7); }
};

// (host, minute) -> (count, sum) of points [0, n).
using Reference = std::map<std::pair<std::string, int64_t>, std::pair<uint64_t, double>>;
Reference reference(const DataSet& data, uint64_t n) {
  Reference r;
  for (uint64_t i = 0; i < n; ++i) {
    const int64_t ts = data.ts(i);
    auto& [count, sum] = r[{"h" + std::to_string(i % kHosts), ts - ts % kMinute}];
    ++count;
    sum += data.value(i);
  }
  return r;
}

std::unique_ptr<client::Client> open_client(const Runneld& d) {
  std::unique_ptr<client::Client> c;
  client::Status s = client::Client::open(d.shm_name(), &c);
  EXPECT_TRUE(s.ok()) << s.message();
  return c;
}

// Field v of measurement m in `view`, the steps of `step_ns` in [from_ns, to_ns).
client::Query v_query(const std::string& view, int64_t from_ns, int64_t to_ns, int64_t step_ns) {
  client::Query q;
  q.view = view;
  q.rows.measurement = "m";
  q.rows.field = "v";
  q.from_ns = from_ns;
  q.to_ns = to_ns;
  q.step_ns = step_ns;
  return q;
}

uint64_t total_count(const client::QueryResult& r) {
  uint64_t n = 0;
  for (const auto& series : r.series)
    for (const auto& p : series.points) n += p.count;
  return n;
}

// The merged count of every point of the data set, over all hosts.
uint64_t merged_count(client::Client& c, const DataSet& data, const std::string& view = "default") {
  client::Query q = v_query(view, data.t0 - 2 * kHour, data.t0 + 2 * kHour, kHour);
  q.outputs = {"count"};
  client::QueryResult r;
  client::Status s = c.query(q, &r);
  EXPECT_TRUE(s.ok()) << s.message();
  return total_count(r);
}

// The merged answer per (host, minute), as the reference has it.
Reference merged_by_host_minute(client::Client& c, const DataSet& data,
                                const std::string& view = "default") {
  client::Query q = v_query(view, data.t0 - 2 * kHour, data.t0 + 2 * kHour, kMinute);
  q.group_by = "host";
  q.outputs = {"count", "sum"};
  client::QueryResult r;
  client::Status s = c.query(q, &r);
  EXPECT_TRUE(s.ok()) << s.message();
  Reference got;
  for (const auto& series : r.series) {
    for (const auto& p : series.points) {
      got[{series.group_value.value_or(""), p.ts_ns}] = {p.count, p.values.at(1)};
    }
  }
  return got;
}

void send_logged(Runneld& d, const std::string& lines, uint64_t n) {
  ASSERT_TRUE(send_tcp_logged(d, lines, n)) << d.counter(Counter::kLogRecords);
}

TEST(LambdaE2E, EveryMergedAnswerCountsEachAcceptedEventOnceWhileCompactionAndARebuildRun) {
  Runneld d;
  d.start(kConfig);
  ASSERT_TRUE(d.wait_ready());
  DataSet data;
  data.t0 = now_ns() - 30 * kMinute;
  constexpr uint64_t kPoints = 60'000;
  constexpr uint64_t kChunk = 1'000;

  std::atomic<bool> sending{true};
  std::atomic<bool> abandon{false};  // a failed assertion below ends the generator early
  std::atomic<uint64_t> sent{0};     // raised before the points go out
  std::thread generator([&] {
    for (uint64_t first = 0; first < kPoints && !abandon; first += kChunk) {
      sent.store(first + kChunk);
      send_tcp(d.tcp_port(), data.lines(first, kChunk));
      // Every few chunks, let the batch layer absorb some of it, so that answers mix both.
      if (first / kChunk % 6 == 5) {
        const uint64_t absorbed = d.counter(Counter::kBatchRecordsAbsorbed);
        wait_until([&] { return d.counter(Counter::kBatchRecordsAbsorbed) > absorbed; }, 5s);
      }
      if (first == kPoints / 2) {
        int rc = -1;
        run_runnelctl({"--shm-name", d.shm_name(), "rebuild", "default", "--data-dir",
                       d.data_dir().string()},
                      &rc);
        EXPECT_EQ(rc, 0);
      }
    }
    sending = false;
  });
  struct Joiner {
    std::thread& t;
    std::atomic<bool>& abandon;
    ~Joiner() {
      abandon = true;
      if (t.joinable()) t.join();
    }
  } joiner{generator, abandon};

  // The checker: what the speed path had folded in before the query is the least an answer
  // may hold, what had been sent after it the most (an event counted twice would push it past
  // that at the end); and answers never go back.
  auto c = open_client(d);
  uint64_t previous = 0, answers = 0, answers_with_batch = 0;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    const uint64_t folded = d.counter(Counter::kSpeedRecords);
    const uint64_t absorbed = d.counter(Counter::kBatchRecordsAbsorbed);
    const uint64_t got = merged_count(*c, data);
    const uint64_t accepted = sent.load();
    ++answers;
    answers_with_batch += absorbed > 0 ? 1 : 0;
    ASSERT_EQ(d.counter(Counter::kSpeedOverflow), 0u) << "a live table ran out of room";
    ASSERT_GE(got, folded) << "an event the speed path had folded in is missing";
    ASSERT_LE(got, accepted) << "more events than were sent: one was counted twice";
    ASSERT_GE(got, previous) << "the answer went back";
    previous = got;
    if (!sending && got == kPoints) break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << got << " of " << kPoints;
  }
  EXPECT_GT(answers, 20u);
  EXPECT_GT(answers_with_batch, 5u) << "the batch layer took part while the checker ran";

  // The batch layer absorbed most of it and the live tables let go of what it took.
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kBatchRecordsAbsorbed) > kPoints / 2; }, 20s));
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kBatchRebuildsFinished) >= 1; }, 20s));
  client::ViewInfo info;
  ASSERT_TRUE(c->view("default", &info).ok());
  EXPECT_GT(info.stats.evictions, 0u);
  EXPECT_EQ(merged_count(*c, data), kPoints);
  EXPECT_EQ(merged_by_host_minute(*c, data), reference(data, kPoints));
  // Diagnosis views split the same answer.
  client::Query q = v_query("default", data.t0 - 2 * kHour, data.t0 + 2 * kHour, kHour);
  uint64_t split = 0;
  for (auto sources : {client::Query::Sources::kBatchOnly, client::Query::Sources::kLiveOnly}) {
    q.sources = sources;
    client::QueryResult r;
    ASSERT_TRUE(c->query(q, &r).ok());
    split += total_count(r);
  }
  EXPECT_GE(split, kPoints) << "batch-only + live-only cover everything (live may still hold absorbed entries)";
  EXPECT_EQ(d.stop(), 0);
}

TEST(LambdaE2E, KillNineAtRandomMomentsDuringCompactionLosesAndDoublesNothing) {
  Runneld d;
  DataSet data;
  data.t0 = now_ns() - 40 * kMinute;
  std::mt19937_64 rng(std::random_device{}());
  constexpr uint64_t kRound = 15'000;
  uint64_t sent = 0;
  for (int round = 0; round < 3; ++round) {
    d.start(kConfig);
    ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
    auto c = open_client(d);
    EXPECT_EQ(merged_count(*c, data), sent) << "round " << round << ": after the restart";
    send_logged(d, data.lines(sent, kRound), kRound);
    sent += kRound;
    // Compaction runs every 20 ms and steps through the new segments: kill somewhere in it.
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 60'000));
    d.kill9();
  }
  d.start(kConfig);
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  auto c = open_client(d);
  ASSERT_TRUE(wait_until([&] { return merged_count(*c, data) == sent; }, 20s)) << merged_count(*c, data);
  EXPECT_EQ(merged_by_host_minute(*c, data), reference(data, sent));
  EXPECT_TRUE(wait_until([&] { return d.counter(Counter::kBatchRecordsAbsorbed) > 0; }, 20s))
      << "the batch layer took part";
  EXPECT_EQ(d.stop(), 0);
}

TEST(LambdaE2E, LateDataLandsInItsBucketThroughTheBatchLayer) {
  Runneld d;
  d.start(std::string(kConfig) +
          "[[view]]\nname = \"short\"\nmeasurements = [\"m\"]\nfields = [\"v\"]\n"
          "group_by = [\"host\"]\nbuckets = [\"1m\"]\naggregates = [\"count\", \"sum\"]\n"
          "live_window = \"5m\"\n");
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  DataSet now;
  now.t0 = now_ns() - kMinute;
  now.step_ns = 1'000'000;
  send_logged(d, now.lines(0, 1000), 1000);
  ASSERT_TRUE(wait_speed_caught_up(d, 1000));
  // Two hours older than the newest event: beyond the 5 min live window.
  DataSet late;
  late.t0 = now.t0 - 2 * kHour;
  late.t0 += 10 * kSecond - late.t0 % kMinute;  // all 500 ms of them inside one minute
  late.step_ns = 1'000'000;
  const uint64_t late_before = d.counter(Counter::kSpeedLate);
  send_logged(d, late.lines(0, 500), 500);
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kSpeedLate) >= late_before + 500; }, 20s));
  auto c = open_client(d);
  client::Query q = v_query("short", late.t0 - kMinute, late.t0 + kMinute, kMinute);
  q.outputs = {"count"};
  q.sources = client::Query::Sources::kLiveOnly;
  client::QueryResult r;
  ASSERT_TRUE(c->query(q, &r).ok());
  EXPECT_TRUE(r.series.empty()) << "late points are not in the live tables";
  // More current data seals the segments and closes the late points' generations.
  send_logged(d, now.lines(1000, 4000), 4000);
  q.sources = client::Query::Sources::kMerged;
  uint64_t got = 0;
  ASSERT_TRUE(wait_until(
      [&] {
        if (!c->query(q, &r).ok()) return false;
        got = total_count(r);
        return got == 500;
      },
      20s))
      << got;
  ASSERT_EQ(r.series.size(), 1u);
  ASSERT_EQ(r.series[0].points.size(), 1u);
  EXPECT_EQ(r.series[0].points[0].ts_ns, late.t0 - late.t0 % kMinute);
  EXPECT_EQ(d.stop(), 0);
}

TEST(LambdaE2E, AChangedViewDefinitionIsAnsweredByTheNewDefinitionOnceRebuilt) {
  Runneld d;
  const std::string by_host =
      "[[view]]\nname = \"v\"\nmeasurements = [\"m\"]\nfields = [\"v\"]\ngroup_by = [\"host\"]\n"
      "buckets = [\"1m\"]\naggregates = [\"count\", \"sum\"]\n";
  d.start(std::string(kConfig) + by_host);
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  DataSet data;
  data.t0 = now_ns() - 20 * kMinute;
  constexpr uint64_t kPoints = 8'000;
  send_logged(d, data.lines(0, kPoints), kPoints);
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kBatchRecordsAbsorbed) > kPoints / 2; }, 20s));
  EXPECT_EQ(d.stop(), 0);

  // The same view now also keeps max, and rows no longer split by host.
  d.start(std::string(kConfig) +
          "[[view]]\nname = \"v\"\nmeasurements = [\"m\"]\nfields = [\"v\"]\ngroup_by = []\n"
          "buckets = [\"1m\"]\naggregates = [\"count\", \"sum\", \"max\"]\n");
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  auto c = open_client(d);
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kBatchRebuildsFinished) >= 1; }, 20s));
  const client::Query q = v_query("v", data.t0 - kHour, data.t0 + kHour, kMinute);
  client::QueryResult r;
  ASSERT_TRUE(wait_until([&] { return c->query(q, &r).ok() && !r.batch_rebuilding; }, 20s));
  ASSERT_EQ(r.outputs, (std::vector<std::string>{"count", "sum", "max"}));
  std::map<int64_t, std::pair<uint64_t, double>> want;  // minute -> (count, max)
  for (uint64_t i = 0; i < kPoints; ++i) {
    auto& [n, mx] = want[data.ts(i) - data.ts(i) % kMinute];
    ++n;
    mx = std::max(mx, data.value(i));
  }
  ASSERT_EQ(r.series.size(), 1u) << "one row: no longer grouped by host";
  std::map<int64_t, std::pair<uint64_t, double>> got;
  for (const auto& p : r.series[0].points) got[p.ts_ns] = {p.count, p.values.at(2)};
  EXPECT_EQ(got, want);
  EXPECT_EQ(d.stop(), 0);
}

}  // namespace
}  // namespace runnel::e2e
