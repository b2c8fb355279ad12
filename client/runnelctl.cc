// runnelctl: the operator's command line. Reads a running instance through read-only shared
// memory (stats; views, series, query, tail, watch through the client library) and the data
// directory directly (log verify/dump). Every command has --json.
#include <time.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "client/log_commands.h"
#include "client/query_commands.h"
#include "ipc/stats.h"

namespace {

int64_t realtime_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

int cmd_stats(const std::string& shm_name, bool json) {
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
  j["heartbeat_age_ms"] = (realtime_ns() - hb) / 1'000'000;
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
  if (json) {
    std::cout << j.dump() << "\n";
    return 0;
  }
  for (const auto& [k, v] : j.items()) {
    std::cout << k << std::string(k.size() < 28 ? 28 - k.size() : 1, ' ') << v.dump() << "\n";
  }
  return 0;
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
  if (stats->parsed()) return cmd_stats(shm_name, json);
  if (verify->parsed()) return runnel::cmd_log_verify(data_dir, json);
  if (dump->parsed()) return runnel::cmd_log_dump(data_dir, from, limit, json);
  if (auto rc = query_commands.run()) return *rc;
  return 2;
}
