// runnelctl's read commands over the client library: views, series, query, tail and watch.
// Each prints a table by default and JSON with --json (query also CSV with --csv).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/status.h"

namespace runnel {

// A point in time as runnelctl takes it: "now", "-1h" / "now-30m" (a duration before now_ns),
// an integer (ns since the epoch) or RFC 3339 ("2023-11-14T22:13:20Z",
// "2023-11-14T23:13:20.5+01:00").
Result<int64_t> parse_time_ns(std::string_view text, int64_t now_ns);

// The options `query` and `watch` share, as typed.
struct QueryArgs {
  std::string view;
  std::string measurement;
  std::string field;
  std::vector<std::string> where;  // "key=value"
  std::string group_by;
  std::string row;  // a row id, decimal or 0x hex
  std::string from = "-1h";
  std::string to = "now";
  std::string step;
  std::string agg;  // comma-separated outputs
  bool fill = false;
  bool batch_only = false;  // diagnosis: only the batch views (LMDB)
  bool live_only = false;   // diagnosis: only the live tables
};

// Registers the subcommands on `app`; after parsing, run() executes the one that was given.
// `shm_name` and `json` are the global options (each subcommand sets `json` too); they are read
// when run() is called.
class QueryCommands {
 public:
  QueryCommands(CLI::App& app, const std::string& shm_name, bool& json);
  // The exit code of the command that was parsed, or nothing if none of these was.
  std::optional<int> run();

 private:
  void add_query_options(CLI::App* cmd, QueryArgs* args);

  const std::string& shm_name_;
  bool& json_;
  bool csv_ = false;
  CLI::App* views_ = nullptr;
  CLI::App* series_ = nullptr;
  CLI::App* query_ = nullptr;
  CLI::App* tail_ = nullptr;
  CLI::App* watch_ = nullptr;
  QueryArgs series_args_, query_args_, watch_args_;
  uint64_t tail_limit_ = 0;
  bool tail_from_oldest_ = false;
  uint64_t watch_iterations_ = 0;
};

}  // namespace runnel
