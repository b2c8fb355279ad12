// runnel-query-latency: latency of a merged (batch ⊕ live) range query through the client
// library, runnel::client::Client::query, against a running runneld: one series, from/to
// covering the loaded range at the given step, next to the Unix-socket round-trip baseline of
// the same run. bench/query_latency.sh loads the data and runs it.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdlib>
#include <fmt/core.h>
#include <string>
#include <vector>

#include "bench/latency.h"
#include "runnel/client.h"

namespace {

using runnel::client::Client;
using runnel::client::Query;
using runnel::client::QueryResult;

[[noreturn]] void die(const std::string& what, const runnel::client::Status& s) {
  fmt::print(stderr, "runnel-query-latency: {}: {}\n", what, s.message());
  std::exit(1);
}

struct Answer {
  uint64_t count = 0;        // events in the answer
  size_t points = 0;         // steps with data
  uint64_t watermark = 0;    // batch watermark the answer was paired with
};

Answer summarize(const QueryResult& r) {
  Answer a;
  a.watermark = r.batch_watermark_offset;
  for (const auto& s : r.series) {
    for (const auto& p : s.points) {
      a.count += p.count;
      a.points += p.count > 0 ? 1 : 0;
    }
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runnel-query-latency: Client::query latency of one series' range, batch ⊕ live"};
  std::string shm_name = "runnel", view = "default", field = "usage_user", host = "h0";
  int64_t from_ns = 0, to_ns = 0, step_ns = 60'000'000'000;
  int iterations = 20000;
  uint64_t expect_count = 0;
  app.add_option("--shm-name", shm_name)->capture_default_str();
  app.add_option("--view", view)->capture_default_str();
  app.add_option("--field", field)->capture_default_str();
  app.add_option("--host", host, "the series: --where host=HOST")->capture_default_str();
  app.add_option("--from-ns", from_ns)->required();
  app.add_option("--to-ns", to_ns)->required();
  app.add_option("--step-ns", step_ns)->capture_default_str();
  app.add_option("--iterations", iterations)->capture_default_str();
  app.add_option("--expect-count", expect_count, "events the series holds in the range (checked)");
  CLI11_PARSE(app, argc, argv);

  std::unique_ptr<Client> client;
  if (auto s = Client::open(shm_name, &client); !s.ok()) die("open " + shm_name, s);
  Query q;
  q.view = view;
  q.rows.field = field;
  q.rows.where = {{"host", host}};
  q.from_ns = from_ns;
  q.to_ns = to_ns;
  q.step_ns = step_ns;
  QueryResult r;

  // Where the answer comes from: buckets with data in the batch views and in the live tables.
  Answer parts[2];
  for (int i = 0; i < 2; ++i) {
    q.sources = i == 0 ? Query::Sources::kBatchOnly : Query::Sources::kLiveOnly;
    if (auto s = client->query(q, &r); !s.ok()) die("query", s);
    parts[i] = summarize(r);
  }
  q.sources = Query::Sources::kMerged;
  if (auto s = client->query(q, &r); !s.ok()) die("query", s);
  const Answer merged = summarize(r);
  fmt::print("series host={} field={} of view '{}': {} steps of {} s with data, {} events; "
             "from the batch views {} steps / {} events, live {} steps / {} events; batch watermark {}\n",
             host, field, view, merged.points, step_ns / 1'000'000'000, merged.count, parts[0].points,
             parts[0].count, parts[1].points, parts[1].count, merged.watermark);
  if (expect_count != 0 && merged.count != expect_count) {
    fmt::print(stderr, "runnel-query-latency: the merged answer holds {} events, expected {}\n", merged.count,
               expect_count);
    return 1;
  }

  std::vector<int64_t> lat;
  lat.reserve(static_cast<size_t>(iterations));
  uint64_t sink = 0;
  for (int i = 0; i < iterations; ++i) {
    const int64_t a = runnel::bench::now_ns();
    if (auto s = client->query(q, &r); !s.ok()) die("query", s);
    lat.push_back(runnel::bench::now_ns() - a);
    sink += r.series.empty() ? 0 : r.series.front().points.size();
  }
  std::vector<int64_t> base = runnel::bench::socket_round_trips(iterations);
  const auto b = runnel::bench::percentiles(base);
  const auto m = runnel::bench::percentiles(lat);
  fmt::print("{} iterations each ({} points returned in total)\n", iterations, sink);
  runnel::bench::print_percentiles("baseline: 64 B request/response, Unix socket", b, b.p50);
  const std::string what = fmt::format("Client::query {} h at {} s, one series, merged",
                                       (to_ns - from_ns) / 3'600'000'000'000, step_ns / 1'000'000'000);
  runnel::bench::print_percentiles(what.c_str(), m, b.p50);
  // The target is the issue's: 24 h of 1 min buckets.
  if (step_ns == 60'000'000'000) {
    fmt::print("target p99 < 200 us: {}\n", m.p99 < 200'000 ? "met" : "missed");
  }
  return 0;
}
