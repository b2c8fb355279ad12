// `runnelctl stats` (see stats_commands.h).
#include "client/stats_commands.h"

#include <signal.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>

#include "client/batch_commands.h"
#include "ipc/stats.h"
#include "model/clock.h"

namespace runnel {
namespace {

using ipc::Counter;

struct Until {
  Counter counter;
  std::string name;
  uint64_t at_least;
};

// "NAME>=N" with NAME a counter of `runnelctl stats` (ipc/stats.h counter_name).
bool parse_until(std::string_view text, Until* out) {
  const size_t op = text.find(">=");
  if (op == std::string_view::npos) return false;
  const std::string_view name = text.substr(0, op), number = text.substr(op + 2);
  const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), out->at_least);
  if (ec != std::errc() || end != number.data() + number.size() || number.empty()) return false;
  for (uint32_t i = 0; i < static_cast<uint32_t>(Counter::kCount); ++i) {
    const auto c = static_cast<Counter>(i);
    if (!name.empty() && ipc::counter_name(c) == name) {
      out->counter = c;
      out->name = std::string(name);
      return true;
    }
  }
  return false;
}

enum class Waited { kMet, kTimedOut, kStalled, kDaemonGone };

// Reads the counters every poll_ms until every condition holds; *met_ns is the CLOCK_REALTIME
// taken just before the read that saw them hold (the moment lies between that read and the one
// before it).
Waited wait_until(const ipc::StatsBlock& b, const std::vector<Until>& until, const StatsArgs& args,
                  int64_t* met_ns) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  const std::chrono::duration<double> timeout(args.timeout_s), stall(args.stall_s);
  std::vector<uint64_t> last(until.size(), 0);
  Clock::time_point moved_at = start;
  for (bool first = true;; first = false) {
    const int64_t t = realtime_ns();
    bool all = true, moved = first;
    for (size_t i = 0; i < until.size(); ++i) {
      const uint64_t v = b.get(until[i].counter);
      all = all && v >= until[i].at_least;
      moved = moved || v != last[i];
      last[i] = v;
    }
    if (all) {
      *met_ns = t;
      return Waited::kMet;
    }
    const Clock::time_point now = Clock::now();
    if (moved) moved_at = now;
    // The block outlives a crashed daemon (the next one takes it over): ask the kernel.
    if (b.pid != 0 && kill(static_cast<pid_t>(b.pid), 0) != 0 && errno == ESRCH) return Waited::kDaemonGone;
    if (now - start >= timeout) return Waited::kTimedOut;
    if (args.stall_s > 0 && now - moved_at >= stall) return Waited::kStalled;
    std::this_thread::sleep_for(std::chrono::milliseconds(args.poll_ms));
  }
}

}  // namespace

int cmd_stats(const StatsArgs& args) {
  std::vector<Until> until;
  for (const std::string& text : args.until) {
    Until u;
    if (!parse_until(text, &u)) {
      std::fprintf(stderr,
                   "runnelctl: stats: --until '%s': expected COUNTER>=N with COUNTER one of the "
                   "counters `runnelctl stats` prints, quoted for the shell (e.g. --until "
                   "'log_records>=1000'; unquoted, a shell reads '>' as a redirection)\n",
                   text.c_str());
      return 2;
    }
    until.push_back(std::move(u));
  }
  auto seg = ipc::StatsSegment::open_read_only(args.shm_name);
  if (!seg.ok()) {
    std::fprintf(stderr, "runnelctl: %s\n", seg.status().ToString().c_str());
    return 1;
  }
  const ipc::StatsBlock& b = (*seg)->block();
  int rc = 0;
  int64_t met_ns = 0;
  if (!until.empty()) {
    const Waited waited = wait_until(b, until, args, &met_ns);
    if (waited == Waited::kDaemonGone) {
      std::fprintf(stderr, "runnelctl: stats: runneld (pid %llu) exited while waiting for --until\n",
                   static_cast<unsigned long long>(b.pid));
      return 1;
    }
    if (waited != Waited::kMet) {
      std::string where;
      for (const Until& u : until) {
        where += " " + u.name + "=" + std::to_string(b.get(u.counter)) + " (want >= " +
                 std::to_string(u.at_least) + ")";
      }
      std::fprintf(stderr, "runnelctl: stats: --until not met:%s; %s %g s\n", where.c_str(),
                   waited == Waited::kStalled ? "no --until counter moved for" : "timed out after",
                   waited == Waited::kStalled ? args.stall_s : args.timeout_s);
      rc = 3;
    }
  }
  nlohmann::ordered_json j;
  j["shm_name"] = args.shm_name;
  j["pid"] = b.pid;
  j["started_ns"] = b.started_ns;
  const int64_t hb = b.heartbeat_ns.load(std::memory_order_relaxed);
  j["heartbeat_age_ms"] = (realtime_ns() - hb) / 1'000'000;
  if (met_ns != 0) j["until_met_ns"] = met_ns;
  uint64_t parse_errors = 0;
  for (uint32_t i = 0; i < static_cast<uint32_t>(Counter::kCount); ++i) {
    const auto c = static_cast<Counter>(i);
    const std::string_view name = ipc::counter_name(c);
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
  if (!args.data_dir.empty()) {
    auto bv = batch_views_json(args.data_dir);
    if (bv.ok()) {
      views = std::move(*bv);
    } else {
      std::fprintf(stderr, "runnelctl: stats: batch views: %s\n", bv.status().ToString().c_str());
      if (rc == 0) rc = 1;
    }
  }
  if (args.json) {
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

}  // namespace runnel
