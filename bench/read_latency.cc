// Read-side latency from a client process: a point read of one live bucket and a 1-hour range
// read at 1-minute step for one series, against a running runneld, next to a baseline measured
// in the same run: a 64-byte request/response over a Unix socket pair (the least any
// socket-served store, e.g. Redis over loopback, must pay).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fmt/core.h>
#include <unordered_map>
#include <vector>

#include "bench/latency.h"
#include "ipc/live_table.h"
#include "model/aggregate.h"
#include "model/view.h"

using runnel::bench::now_ns;
using runnel::bench::percentiles;
using runnel::bench::Percentiles;
using runnel::bench::socket_round_trips;
constexpr auto print = runnel::bench::print_percentiles;

int main(int argc, char** argv) {
  CLI::App app{"runnel-read-latency: client-side read latency of the live tables"};
  std::string shm_name = "runnel", view_name = "default";
  int iterations = 200000;
  app.add_option("--shm-name", shm_name);
  app.add_option("--view", view_name);
  app.add_option("--iterations", iterations);
  CLI11_PARSE(app, argc, argv);

  auto reader = runnel::ipc::LiveTableReader::open(shm_name);
  if (!reader.ok()) {
    fmt::print(stderr, "read-latency: {}\n", reader.status().ToString());
    return 1;
  }
  const runnel::ipc::LiveTablesView& t = reader->tables();
  const auto v = t.find_view(view_name);
  if (!v) {
    fmt::print(stderr, "read-latency: no view '{}'\n", view_name);
    return 1;
  }
  const runnel::ipc::LiveViewInfo info = t.info(*v);
  auto def = runnel::parse_view(info.definition);
  if (!def.ok()) return 1;
  auto layout = runnel::AggregateLayout::for_view(def.value());
  if (!layout.ok()) return 1;
  const int64_t minute = 60'000'000'000;
  uint32_t minute_width = UINT32_MAX;
  for (uint32_t i = 0; i < info.widths_ns.size(); ++i) {
    if (info.widths_ns[i] == minute) minute_width = i;
  }
  if (minute_width == UINT32_MAX) {
    fmt::print(stderr, "read-latency: view '{}' has no 1m buckets\n", view_name);
    return 1;
  }
  // The row with the most 1-minute buckets, and its newest bucket.
  std::unordered_map<uint64_t, std::pair<int, int64_t>> rows;
  t.scan(*v, std::nullopt, [&](const runnel::ipc::EntryMeta& m, std::span<const std::byte>) {
    if (m.key.width_index != minute_width) return;
    auto& r = rows[m.key.series_id];
    r.first++;
    r.second = std::max(r.second, m.key.bucket_start_ns);
  });
  if (rows.empty()) {
    fmt::print(stderr, "read-latency: the view holds no 1m buckets yet\n");
    return 1;
  }
  auto best = std::max_element(rows.begin(), rows.end(),
                               [](const auto& a, const auto& b) { return a.second.first < b.second.first; });
  const uint64_t row = best->first;
  const int64_t newest = best->second.second;
  fmt::print("row {:016x}: {} one-minute buckets; {} iterations each\n", row, best->second.first, iterations);

  std::vector<std::byte> state(info.state_bytes), merged(info.state_bytes);
  std::vector<double> out(layout->output_count());
  std::vector<int64_t> point, range, base;
  point.reserve(static_cast<size_t>(iterations));
  range.reserve(static_cast<size_t>(iterations / 10));
  const runnel::ipc::EntryKey key{row, minute_width, newest};
  double sink = 0;
  for (int i = 0; i < iterations; ++i) {
    const int64_t a = now_ns();
    if (t.read(*v, key, state, nullptr) == runnel::ipc::ReadStatus::kFound) {
      layout->finalize_all(state, out);
      sink += out[0];
    }
    point.push_back(now_ns() - a);
  }
  for (int i = 0; i < iterations / 10; ++i) {
    const int64_t a = now_ns();
    size_t buckets = 0;
    t.read_range(*v, row, minute_width, newest - 59 * minute, newest + minute,
                 [&](const runnel::ipc::EntryMeta&, std::span<const std::byte> s) {
                   layout->finalize_all(s, out);
                   sink += out[0];
                   ++buckets;
                 });
    range.push_back(now_ns() - a);
  }
  base = socket_round_trips(iterations / 4);
  const Percentiles b = percentiles(base);
  print("baseline: 64 B request/response, Unix socket", b, b.p50);
  print("point read of one live bucket (+finalize)", percentiles(point), b.p50);
  print("1 h range at 1 m step, one series", percentiles(range), b.p50);
  if (sink == 0.123) std::puts("");  // keeps the reads observable
  return 0;
}
