// runnelctl: the operator's command line. Reads a running instance through read-only shared
// memory (stats; views, series, query, tail, watch through the client library) and the data
// directory directly (log verify/dump, batch views); asks the daemon to rebuild a view through
// a request file in the data directory. Every command has --json.
#include <time.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "client/batch_commands.h"
#include "client/log_commands.h"
#include "client/query_commands.h"
#include "ipc/stats.h"
#include "model/clock.h"

namespace {

int cmd_stats(const std::string& shm_name, const std::string& data_dir, bool json) {
  auto seg = runnel::ipc::StatsSegment::open_read_only(shm_name);
  if (!seg.ok()) {
    std::fprintf(stderr, "runnelctl: %s\n", seg.status().ToString().c_str());
    return 1;
  }
  using runnel::ipc::Counter;
  const runnel::ipc::StatsBlock& b = (*seg)->block();
  nlohmann::ordered_json j;
  j["shm_name"] = shm_name;
  j["pid"] = b.pid;
  j["started_ns"] = b.started_ns;
  const int64_t hb = b.heartbeat_ns.load(std::memory_order_relaxed);
  j["heartbeat_age_ms"] = (runnel::realtime_ns() - hb) / 1'000'000;
  uint64_t parse_errors = 0;
  for (uint32_t i = 0; i < static_cast<uint32_t>(Counter::kCount); ++i) {
    const auto c = static_cast<Counter>(i);
    const std::string_view name = runnel::ipc::counter_name(c);
    if (name.empty()) continue;
    const uint64_t v = b.get(c);
    j[std::string(name)] = v;
    if (name.starts_with("parse_errors_")) parse_errors += v;
  }
  j["parse_errors_total"] = parse_errors;
  const uint64_t cap = b.get(Counter::kRingCapacity);
  const uint64_t claim = b.get(Counter::kRingClaimPos), jpos = b.get(Counter::kRingJournalPos);
  j["ring_journal_lag_bytes"] = claim >= jpos ? claim - jpos : 0;
  j["ring_fill"] = cap ? static_cast<double>(claim >= jpos ? claim - jpos : 0) / static_cast<double>(cap) : 0.0;
  // With --data-dir: the batch views as stored (read-only LMDB; see README, Batch layer).
  nlohmann::ordered_json views;
  int rc = 0;
  if (!data_dir.empty()) {
    auto bv = runnel::batch_views_json(data_dir);
    if (bv.ok()) {
      views = std::move(*bv);
    } else {
      std::fprintf(stderr, "runnelctl: stats: batch views: %s\n", bv.status().ToString().c_str());
      rc = 1;
    }
  }
  if (json) {
    if (!views.is_null()) j["batch_views"] = views;
    std::cout << j.dump() << "\n";
    return rc;
  }
  for (const auto& [k, v] : j.items()) {
    std::cout << k << std::string(k.size() < 28 ? 28 - k.size() : 1, ' ') << v.dump() << "\n";
  }
  if (!views.is_null()) {
    const auto& w = views["watermark"];
    std::cout << "\nbatch views " << views["dir"].get<std::string>() << ": "
              << views["data_bytes"].dump() << " bytes, watermark at log offset "
              << w["log_offset"].dump() << " (" << w["records"].dump() << " records)\n";
    std::printf("%-24s %10s %10s %12s  %s\n", "view", "version", "building", "buckets", "definition_hash");
    for (const auto& v : views["views"]) {
      std::printf("%-24s %10llu %10llu %12llu  %s\n", v["name"].get<std::string>().c_str(),
                  static_cast<unsigned long long>(v["current_version"].get<uint64_t>()),
                  static_cast<unsigned long long>(v["building_version"].get<uint64_t>()),
                  static_cast<unsigned long long>(v["buckets"].get<uint64_t>()),
                  v["definition_hash"].get<std::string>().c_str());
    }
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runnelctl - query and operate a runnel instance"};
  app.require_subcommand(1);
  std::string shm_name = "runnel";
  std::string data_dir = "./runnel-data";
  bool json = false;
  app.add_option("--shm-name", shm_name, "Shared-memory name of the instance")->capture_default_str();
  app.add_flag("--json", json, "Machine-readable output");
  app.set_version_flag("--version", "runnelctl 0.1.0");

  auto* stats = app.add_subcommand("stats", "Counters of the running daemon");
  stats->add_flag("--json", json, "Machine-readable output");
  std::string stats_data_dir;
  stats->add_option("--data-dir", stats_data_dir,
                    "Also show the batch views stored in this data directory (read-only)");

  runnel::RebuildArgs rebuild_args;
  auto* rebuild = app.add_subcommand(
      "rebuild", "Rebuild a view from the retained log (new version, switched atomically)");
  rebuild->add_option("view", rebuild_args.view, "View name")->required();
  rebuild->add_option("--data-dir", data_dir, "Data directory of the instance")->capture_default_str();
  rebuild->add_flag("--wait", rebuild_args.wait, "Wait until the rebuild finished");
  rebuild->add_option("--timeout", rebuild_args.timeout_s, "Longest wait, seconds")->capture_default_str();
  rebuild->add_flag("--json", json, "Machine-readable output");

  auto* log = app.add_subcommand("log", "Inspect the durable log in the data directory");
  log->require_subcommand(1);
  log->add_option("--data-dir", data_dir, "Data directory of the instance")->capture_default_str();
  auto* verify = log->add_subcommand("verify", "Check every record of every segment");
  verify->add_flag("--json", json, "Machine-readable output");
  verify->add_option("--data-dir", data_dir, "Data directory of the instance");
  auto* dump = log->add_subcommand("dump", "Print records as line protocol (re-ingestable)");
  uint64_t from = 0, limit = 0;
  dump->add_flag("--json", json, "One JSON object per record");
  dump->add_option("--data-dir", data_dir, "Data directory of the instance");
  dump->add_option("--from", from, "First log offset (a record boundary)");
  dump->add_option("--limit", limit, "Most records to print (0: all)");

  runnel::QueryCommands query_commands(app, shm_name, json);

  CLI11_PARSE(app, argc, argv);
  if (stats->parsed()) return cmd_stats(shm_name, stats_data_dir, json);
  if (rebuild->parsed()) {
    rebuild_args.data_dir = data_dir;
    rebuild_args.shm_name = shm_name;
    rebuild_args.json = json;
    return runnel::cmd_rebuild(rebuild_args);
  }
  if (verify->parsed()) return runnel::cmd_log_verify(data_dir, json);
  if (dump->parsed()) return runnel::cmd_log_dump(data_dir, from, limit, json);
  if (auto rc = query_commands.run()) return *rc;
  return 2;
}
