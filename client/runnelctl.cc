// runnelctl: the operator's command line. Reads a running instance through read-only shared
// memory (stats; views, series, query, tail, watch through the client library) and the data
// directory directly (log verify/dump, batch views); asks the daemon to rebuild a view through
// a request file in the data directory. Every command has --json.
#include <CLI/CLI.hpp>
#include <string>

#include "client/batch_commands.h"
#include "client/log_commands.h"
#include "client/query_commands.h"
#include "client/stats_commands.h"

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
  runnel::StatsArgs stats_args;
  stats->add_option("--data-dir", stats_args.data_dir,
                    "Also show the batch views stored in this data directory (read-only)");
  stats->add_option("--until", stats_args.until,
                    "Wait until COUNTER>=N (quote it for the shell; repeatable: all must hold), "
                    "then print; exit 3 on --timeout or --stall");
  stats->add_option("--timeout", stats_args.timeout_s, "Longest wait for --until, seconds")
      ->capture_default_str();
  stats->add_option("--stall", stats_args.stall_s,
                    "Give up when no --until counter moved for this long, seconds (0: never)")
      ->capture_default_str();
  stats->add_option("--poll-ms", stats_args.poll_ms, "How often --until reads the counters")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();

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
  if (stats->parsed()) {
    stats_args.shm_name = shm_name;
    stats_args.json = json;
    return runnel::cmd_stats(stats_args);
  }
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
