// End to end: the real runneld's batch layer. Compaction absorbs sealed segments (and keeps its
// watermark across a restart), `runnelctl rebuild --wait`, log retention deletes only absorbed
// segments, and an unusable view store or a map ceiling too small never stop ingest.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "runnel/client.h"
#include "tests/e2e/runneld_harness.h"

namespace runnel::e2e {
namespace {

using ipc::Counter;
using namespace std::chrono_literals;
using Json = nlohmann::json;

// Small segments so they seal quickly; a fast tick.
constexpr char kConfig[] = "[ring]\ngeneration_bytes = 4096\n[log]\nsegment_bytes = 65536\n[batch]\ninterval_ms = 50\n";

// `hosts` distinct series, `n` points, one per ms.
std::string points(uint64_t n, uint64_t hosts, uint64_t first = 0) {
  std::string s;
  for (uint64_t i = first; i < first + n; ++i) {
    s += "cpu,host=h" + std::to_string(i % hosts) + " usage=" + std::to_string(i % 100) + " " +
         std::to_string(1'700'000'000'000'000'000 + i * 1'000'000) + "\n";
  }
  return s;
}

void send_and_wait_logged(Runneld& d, uint64_t n, uint64_t hosts, uint64_t first = 0) {
  ASSERT_TRUE(send_tcp_logged(d, points(n, hosts, first), n)) << d.counter(Counter::kLogRecords);
}

// Compaction caught up: the watermark is within the active (unsealed) segment.
bool caught_up(const Runneld& d) {
  const uint64_t wm = d.counter(Counter::kBatchWatermarkOffset);
  return wm > 0 && wm + 65536 > d.counter(Counter::kLogWrittenOffset) &&
         d.counter(Counter::kBatchLagBytes) < 65536;
}

Json runnelctl_json(const std::vector<std::string>& args, int expect_rc = 0) {
  int rc = -1;
  const std::string out = run_runnelctl(args, &rc);
  EXPECT_EQ(rc, expect_rc) << out;
  return Json::parse(out, nullptr, /*allow_exceptions=*/false);
}

Json batch_views(const Runneld& d) {
  return runnelctl_json({"--shm-name", d.shm_name(), "stats", "--json", "--data-dir",
                         d.data_dir().string()})["batch_views"];
}

TEST(BatchE2E, SealedSegmentsAreAbsorbedAndTheWatermarkSurvivesARestart) {
  Runneld d;
  d.start(kConfig);
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  send_and_wait_logged(d, 20000, 50);
  ASSERT_TRUE(wait_until([&] { return caught_up(d); }, 20s))
      << d.counter(Counter::kBatchWatermarkOffset) << " of "
      << d.counter(Counter::kLogWrittenOffset);
  const uint64_t absorbed = d.counter(Counter::kBatchRecordsAbsorbed);
  EXPECT_GT(absorbed, 10000u);
  EXPECT_LE(absorbed, 20000u);
  EXPECT_GT(d.counter(Counter::kBatchSteps), 0u);
  EXPECT_EQ(d.counter(Counter::kBatchErrors), 0u);
  EXPECT_GT(d.counter(Counter::kLogSegmentsRolled), 10u);

  const Json views = batch_views(d);
  ASSERT_TRUE(views.is_object()) << views;
  EXPECT_EQ(views["watermark"]["records"].get<uint64_t>(),
            d.counter(Counter::kBatchRecordsAbsorbed));
  ASSERT_EQ(views["views"].size(), 1u);
  EXPECT_EQ(views["views"][0]["name"], "default");
  EXPECT_GT(views["views"][0]["buckets"].get<uint64_t>(), 0u);

  ASSERT_EQ(d.stop(), 0) << d.stderr_text();
  d.start(kConfig);
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  EXPECT_GE(d.counter(Counter::kBatchRecordsAbsorbed), absorbed) << "the watermark is durable";
  send_and_wait_logged(d, 5000, 50, 20000);
  ASSERT_TRUE(
      wait_until([&] { return d.counter(Counter::kBatchRecordsAbsorbed) > absorbed + 2000; }, 20s));
  EXPECT_NE(d.stderr_text().find("views kept [\"default\"]"), std::string::npos) << d.stderr_text();
  ASSERT_EQ(d.stop(), 0);
}

TEST(BatchE2E, RunnelctlRebuildWaitsForTheNewVersion) {
  Runneld d;
  d.start(kConfig);
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  send_and_wait_logged(d, 10000, 20);
  ASSERT_TRUE(wait_until([&] { return caught_up(d); }, 20s));
  const uint64_t version = batch_views(d)["views"][0]["current_version"].get<uint64_t>();
  const uint64_t finished = d.counter(Counter::kBatchRebuildsFinished);

  const Json r = runnelctl_json({"--shm-name", d.shm_name(), "rebuild", "default", "--data-dir",
                                 d.data_dir().string(), "--wait", "--timeout", "60", "--json"});
  EXPECT_EQ(r["finished"], true) << r;
  EXPECT_GT(d.counter(Counter::kBatchRebuildsFinished), finished);
  EXPECT_EQ(d.counter(Counter::kBatchRebuildRequests), 1u);
  const Json after = batch_views(d);
  EXPECT_GT(after["views"][0]["current_version"].get<uint64_t>(), version);
  EXPECT_EQ(after["views"][0]["building_version"].get<uint64_t>(), 0u);
  EXPECT_GT(after["views"][0]["buckets"].get<uint64_t>(), 0u);

  int rc = 0;
  run_runnelctl(
      {"--shm-name", d.shm_name(), "rebuild", "nosuchview", "--data-dir", d.data_dir().string()},
      &rc);
  EXPECT_EQ(rc, 2) << "runnelctl checks the name against the running views";
  EXPECT_EQ(d.counter(Counter::kBatchRebuildRequests), 1u);
  ASSERT_EQ(d.stop(), 0);
}

TEST(BatchE2E, AChangedViewDefinitionIsRebuiltAtStartAndCountersReachTheClientLibrary) {
  Runneld d;
  const std::string view =
      "[[view]]\nname = \"cpu\"\nmeasurements = [\"cpu\"]\nbuckets = [\"1s\", \"1m\", \"1h\"]\n";
  d.start(std::string(kConfig) + view + "aggregates = [\"count\", \"sum\"]\n");
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  send_and_wait_logged(d, 8000, 10);
  ASSERT_TRUE(wait_until([&] { return caught_up(d); }, 20s));
  const uint64_t version = batch_views(d)["views"][0]["current_version"].get<uint64_t>();
  ASSERT_EQ(d.stop(), 0);

  d.start(std::string(kConfig) + view + "aggregates = [\"count\", \"sum\", \"max\"]\n");
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  EXPECT_NE(d.stderr_text().find("rebuilding [\"cpu\"]"), std::string::npos) << d.stderr_text();
  ASSERT_TRUE(wait_until(
      [&] {
        return d.counter(Counter::kBatchRebuildsFinished) >= 1 &&
               d.counter(Counter::kBatchViewsBuilding) == 0;
      },
      20s))
      << d.counter(Counter::kBatchRebuildsStarted);
  const Json after = batch_views(d);
  EXPECT_GT(after["views"][0]["current_version"].get<uint64_t>(), version);
  EXPECT_GT(after["views"][0]["buckets"].get<uint64_t>(), 0u) << "1h buckets are kept forever";
  // Bucket retention runs in its own part of a tick, possibly after the switch was counted.
  EXPECT_TRUE(wait_until([&] { return d.counter(Counter::kBatchBucketsExpired) > 0; }, 20s))
      << "2023's 1s and 1m buckets are past retention";

  std::unique_ptr<client::Client> c;
  ASSERT_TRUE(client::Client::open(d.shm_name(), &c).ok());
  std::vector<client::Counter> counters;
  ASSERT_TRUE(c->counters(&counters).ok());
  std::map<std::string, uint64_t> m;
  for (const auto& k : counters) m[k.name] = k.value;
  ASSERT_TRUE(m.count("batch_watermark_offset")) << "the client library lists the batch group";
  EXPECT_GT(m["batch_watermark_offset"], 0u);
  EXPECT_GE(m["batch_rebuilds_finished"], 1u);
  EXPECT_TRUE(m.count("log_segments_deleted"));
  ASSERT_EQ(d.stop(), 0);
}

TEST(BatchE2E, LogRetentionDeletesOnlyAbsorbedSegments) {
  Runneld d;
  d.start(
      "[ring]\ngeneration_bytes = 4096\n[log]\nsegment_bytes = 65536\nretention_max_bytes = 200000\n[batch]\ninterval_ms = 50\n");
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  send_and_wait_logged(d, 30000, 50);
  ASSERT_TRUE(
      wait_until([&] { return d.counter(Counter::kLogSegmentsDeleted) > 5 && caught_up(d); }, 20s))
      << d.counter(Counter::kLogSegmentsDeleted);
  EXPECT_EQ(d.counter(Counter::kLogErrors), 0u);
  const Json v = runnelctl_json({"log", "verify", "--json", "--data-dir", d.data_dir().string()});
  EXPECT_EQ(v["ok"], true) << v;
  const uint64_t first = v["first_offset"].get<uint64_t>();
  EXPECT_GT(first, 0u) << "old segments are gone";
  EXPECT_LE(first, d.counter(Counter::kBatchWatermarkOffset)) << "only absorbed ones";
  ASSERT_EQ(d.stop(), 0) << d.stderr_text();
}

TEST(BatchE2E, AnUnopenableViewStoreIsReportedAndIngestGoesOn) {
  Runneld d;
  std::filesystem::create_directories(d.data_dir());
  std::ofstream(d.data_dir() / "views") << "a file where the LMDB directory should be\n";
  d.start(kConfig);
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  EXPECT_EQ(d.counter(Counter::kBatchUnavailable), 1u);
  EXPECT_GE(d.counter(Counter::kBatchErrors), 1u);
  send_and_wait_logged(d, 3000, 5);
  int rc = 0;
  run_runnelctl(
      {"--shm-name", d.shm_name(), "rebuild", "default", "--data-dir", d.data_dir().string()}, &rc);
  EXPECT_EQ(rc, 2) << "no rebuild without batch views";
  ASSERT_EQ(d.stop(), 0) << d.stderr_text();
  const std::string err = d.stderr_text();
  EXPECT_NE(err.find("cannot open the batch views"), std::string::npos) << err;
  EXPECT_NE(err.find((d.data_dir() / "views").string()), std::string::npos) << err;
  EXPECT_EQ(d.log_lines().size(), 3000u);
}

TEST(BatchE2E, AMapCeilingTooSmallIsReportedWhileIngestKeepsEveryRecord) {
  Runneld d;
  d.start(
      "[ring]\ngeneration_bytes = 4096\n[log]\nsegment_bytes = 65536\n[batch]\ninterval_ms = 50\n"
      "initial_map_bytes = 262144\nmax_map_bytes = 262144\n");
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  send_and_wait_logged(d, 30000, 5000);  // many rows: far more than 256 KiB of states
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kBatchMapFull) > 0; }, 20s))
      << d.stderr_text();
  EXPECT_GT(d.counter(Counter::kBatchErrors), 0u);
  send_and_wait_logged(d, 2000, 5, 30000);  // ingest goes on
  ASSERT_EQ(d.stop(), 0) << d.stderr_text();
  EXPECT_NE(d.stderr_text().find("batch.max_map_bytes"), std::string::npos) << d.stderr_text();
  const Json v = runnelctl_json({"log", "verify", "--json", "--data-dir", d.data_dir().string()});
  EXPECT_EQ(v["records"].get<uint64_t>(), 32000u) << "no log data lost";
  EXPECT_EQ(v["first_offset"].get<uint64_t>(), 0u);
}

}  // namespace
}  // namespace runnel::e2e
