// End to end: the real runneld, line protocol in over TCP, Unix and UDP, the durable log out.
#include <gtest/gtest.h>

#include <sched.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <set>
#include <thread>

#include "tests/e2e/runneld_harness.h"

namespace runnel::e2e {
namespace {

using ipc::Counter;
using namespace std::chrono_literals;

// Lines that are already in canonical form, so the log's formatting must equal them exactly.
std::string make_line(const std::string& conn, uint64_t seq) {
  return "e2e,conn=" + conn + ",host=h" + std::to_string(seq % 7) + " seq=" + std::to_string(seq) +
         "i,v=" + std::to_string(seq % 1000) + ".5 " + std::to_string(1700000000000000000ull + seq * 1000);
}

// Checks that `lines` holds every expected line exactly once and, per connection, in order.
void expect_exactly_once_in_order(const std::vector<std::string>& lines,
                                  const std::map<std::string, uint64_t>& per_conn) {
  uint64_t total = 0;
  for (const auto& [c, n] : per_conn) total += n;
  ASSERT_EQ(lines.size(), total);
  std::map<std::string, uint64_t> next;
  std::set<std::string> seen;
  for (const auto& l : lines) {
    ASSERT_TRUE(seen.insert(l).second) << "duplicate: " << l;
    const auto c0 = l.find("conn=") + 5;
    const std::string conn = l.substr(c0, l.find(',', c0) - c0);
    const auto s0 = l.find("seq=") + 4;
    const uint64_t seq = std::stoull(l.substr(s0, l.find('i', s0) - s0));
    ASSERT_EQ(seq, next[conn]) << "out of order on " << conn;
    ASSERT_EQ(l, make_line(conn, seq));
    next[conn] = seq + 1;
  }
  for (const auto& [c, n] : per_conn) EXPECT_EQ(next[c], n) << c;
}

std::string lines_for(const std::string& conn, uint64_t n) {
  std::string s;
  for (uint64_t i = 0; i < n; ++i) s += make_line(conn, i) + "\n";
  return s;
}

TEST(IngestE2E, LinesOverTcpUnixAndUdpReachTheLogExactlyOnceInConnectionOrder) {
  Runneld d;
  d.start();
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  std::map<std::string, uint64_t> per_conn;
  std::vector<std::thread> senders;
  for (int i = 0; i < 4; ++i) {
    const std::string c = "tcp" + std::to_string(i);
    per_conn[c] = 20000;
    senders.emplace_back([&d, c] { send_tcp(d.tcp_port(), lines_for(c, 20000)); });
  }
  for (int i = 0; i < 2; ++i) {
    const std::string c = "unix" + std::to_string(i);
    per_conn[c] = 10000;
    senders.emplace_back([&d, c] { send_unix(d.unix_path(), lines_for(c, 10000)); });
  }
  for (auto& t : senders) t.join();
  // UDP: one or many lines per datagram; sent after the streams so none is dropped.
  std::vector<std::string> datagrams;
  uint64_t seq = 0;
  for (int g = 0; g < 200; ++g) {
    std::string dg;
    for (int k = 0; k < 1 + g % 5; ++k) dg += make_line("udp", seq++) + (k + 1 < 1 + g % 5 || g % 2 ? "\n" : "");
    datagrams.push_back(dg);
  }
  per_conn["udp"] = seq;
  send_udp(d.udp_port(), datagrams);
  uint64_t total = 0;
  for (const auto& [c, n] : per_conn) total += n;
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kPointsAccepted) >= total; }, 20s))
      << d.counter(Counter::kPointsAccepted) << " of " << total;
  EXPECT_EQ(d.counter(Counter::kUdpDropped), 0u);
  ASSERT_EQ(d.stop(), 0) << d.stderr_text();
  expect_exactly_once_in_order(d.log_lines(), per_conn);
}

TEST(IngestE2E, MalformedLinesAreCountedByClassAndTheirNeighboursKept) {
  Runneld d;
  d.start("[ingest]\nmax_line_bytes = 1024\n");
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  std::string data = make_line("c", 0) + "\n" +
                     "bad line without fields\n" +
                     make_line("c", 1) + "\r\n" +
                     "m,t=1 f=\"unterminated\n" +
                     "# a comment\n\n" +
                     "m f=1 notanumber\n" +
                     "m,=x f=1\n" +
                     std::string(5000, 'x') + " f=1\n" +
                     make_line("c", 2) + "\n";
  send_tcp(d.tcp_port(), data);
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kPointsAccepted) >= 3; }, 10s));
  ASSERT_EQ(d.stop(), 0);
  expect_exactly_once_in_order(d.log_lines(), {{"c", 3}});
  const std::string err = d.stderr_text();
  EXPECT_NE(err.find("rejected line from tcp://127.0.0.1:"), std::string::npos) << err;
  EXPECT_NE(err.find("too_long"), std::string::npos) << err;
}

TEST(IngestE2E, RejectionCountersAreVisibleThroughRunnelctlStatsJson) {
  Runneld d;
  d.start();
  ASSERT_TRUE(d.wait_ready());
  send_tcp(d.tcp_port(), "m f=1i 1\nm f=zz 2\nm\n");
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kPointsAccepted) >= 1 &&
                                      d.counter(Counter::kParseFieldValue) >= 1 &&
                                      d.counter(Counter::kParseNoFields) >= 1; }, 10s));
  int rc = 0;
  const std::string out = run_runnelctl({"--shm-name", d.shm_name(), "stats", "--json"}, &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(out.find("\"points_accepted\":1"), std::string::npos) << out;
  EXPECT_NE(out.find("\"parse_errors_field_value\":1"), std::string::npos) << out;
  EXPECT_NE(out.find("\"parse_errors_no_fields\":1"), std::string::npos) << out;
  EXPECT_NE(out.find("\"parse_errors_total\":2"), std::string::npos) << out;
}

TEST(IngestE2E, RunnelctlStatsUntilWaitsForItsCountersAndSaysWhyItGaveUp) {
  Runneld d;
  d.start();
  ASSERT_TRUE(d.wait_ready());
  const std::vector<std::string> base = {"--shm-name", d.shm_name(), "stats", "--json"};
  auto with = [&](std::vector<std::string> more) {
    std::vector<std::string> args = base;
    args.insert(args.end(), more.begin(), more.end());
    return args;
  };
  // Waits while the condition does not hold, and returns once it does.
  RunnelctlProcess waiter(with({"--until", "points_accepted>=3", "--until", "log_records>=3", "--timeout", "30"}));
  EXPECT_EQ(waiter.wait_exit(300ms), -1) << "returned before any point came in: " << waiter.stdout_text();
  send_tcp(d.tcp_port(), "m f=1i 1\nm f=2i 2\nm f=3i 3\n");
  ASSERT_EQ(waiter.wait_exit(30s), 0) << waiter.stderr_text();
  const std::string out = waiter.stdout_text();
  EXPECT_NE(out.find("\"points_accepted\":3"), std::string::npos) << out;
  EXPECT_NE(out.find("\"log_records\":3"), std::string::npos) << out;
  EXPECT_NE(out.find("\"until_met_ns\":"), std::string::npos) << out;

  // Not reached in time: exit 3, the counters still printed.
  RunnelctlProcess late(with({"--until", "points_accepted>=1000", "--timeout", "0.2"}));
  EXPECT_EQ(late.wait_exit(20s), 3);
  EXPECT_NE(late.stdout_text().find("\"points_accepted\":3"), std::string::npos) << late.stdout_text();
  EXPECT_NE(late.stderr_text().find("points_accepted=3 (want >= 1000); timed out"), std::string::npos)
      << late.stderr_text();
  RunnelctlProcess stalled(with({"--until", "points_accepted>=1000", "--stall", "0.2"}));
  EXPECT_EQ(stalled.wait_exit(20s), 3);
  EXPECT_NE(stalled.stderr_text().find("no --until counter moved"), std::string::npos) << stalled.stderr_text();

  // Malformed conditions: exit 2, naming what was given.
  for (const char* bad : {"no_such_counter>=1", "points_accepted>1", "points_accepted>=", "points_accepted>=1x"}) {
    RunnelctlProcess p(with({"--until", bad}));
    EXPECT_EQ(p.wait_exit(20s), 2) << bad;
    EXPECT_NE(p.stderr_text().find(bad), std::string::npos) << p.stderr_text();
  }

  // The daemon goes away while a waiter waits: exit 1 and say so.
  RunnelctlProcess orphan(with({"--until", "points_accepted>=1000", "--timeout", "60"}));
  EXPECT_EQ(orphan.wait_exit(300ms), -1);
  ASSERT_EQ(d.stop(), 0);
  EXPECT_EQ(orphan.wait_exit(20s), 1);
  EXPECT_NE(orphan.stderr_text().find("exited while waiting"), std::string::npos) << orphan.stderr_text();
}

// The scheduling policy (field 41 of /proc/PID/task/TID/stat) of each of the process's threads.
std::map<std::string, int> thread_policies(pid_t pid) {
  std::map<std::string, int> out;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
    std::ifstream in(task.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    const std::string comm = stat.substr(stat.find('(') + 1, close - stat.find('(') - 1);
    std::istringstream rest(stat.substr(close + 2));  // from field 3 (state) on
    std::string field;
    for (int i = 3; i <= 41 && rest >> field; ++i) {
      if (i == 41) out[comm + "/" + task.path().filename().string()] = std::stoi(field);
    }
  }
  return out;
}

TEST(IngestE2E, EveryThreadRunsTheConfiguredCpuSchedulingPolicy) {
  for (const bool batch : {true, false}) {
    Runneld d;
    d.start(batch ? "" : "[daemon]\ncpu_scheduling = \"other\"\n");
    ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
    const auto policies = thread_policies(d.pid());
    EXPECT_GE(policies.size(), 4u);  // main, ingest, journal, speed, batch
    for (const auto& [thread, policy] : policies) {
      EXPECT_EQ(policy, batch ? SCHED_BATCH : SCHED_OTHER) << thread;
    }
    ASSERT_EQ(d.stop(), 0);
  }
}

TEST(IngestE2E, FullRingPausesStreamsWithoutLosingALine) {
  Runneld d;
  // A 64 KiB ring holds a few hundred records; the journal waits 1.5 s before it starts.
  d.start("[ring]\ncapacity_bytes = 65536\n[ingest]\nmax_line_bytes = 1024\n",
          {"--debug-journal-hold-ms", "1500"});
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  std::thread sender([&] { send_tcp(d.tcp_port(), lines_for("bp", 50000)); });
  EXPECT_TRUE(wait_until([&] { return d.counter(Counter::kRingFullStalls) > 0; }, 10s));
  sender.join();
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kLogRecords) >= 50000; }, 30s))
      << d.counter(Counter::kLogRecords);
  ASSERT_EQ(d.stop(), 0);
  expect_exactly_once_in_order(d.log_lines(), {{"bp", 50000}});
}

TEST(IngestE2E, UdpDatagramsThatFindTheRingFullAreDroppedAndCounted) {
  Runneld d;
  d.start("[ring]\ncapacity_bytes = 65536\n[ingest]\nmax_line_bytes = 1024\n",
          {"--debug-journal-hold-ms", "600000"});
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  std::vector<std::string> datagrams;
  for (uint64_t i = 0; i < 3000; ++i) datagrams.push_back(make_line("udp", i));
  send_udp(d.udp_port(), datagrams);
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kUdpDropped) > 0; }, 10s));
  // Every received line is either in the ring or counted as dropped (once the daemon has
  // handled every datagram it received), and the daemon stays up and drains what it accepted.
  EXPECT_TRUE(wait_until(
      [&] {
        return d.counter(Counter::kPointsAccepted) + d.counter(Counter::kUdpLinesDropped) ==
               d.counter(Counter::kUdpDatagrams);
      },
      10s))
      << d.counter(Counter::kPointsAccepted) << " + " << d.counter(Counter::kUdpLinesDropped)
      << " != " << d.counter(Counter::kUdpDatagrams);
  const uint64_t accepted = d.counter(Counter::kPointsAccepted);
  EXPECT_GT(accepted, 0u);
  ASSERT_EQ(d.stop(), 0) << d.stderr_text();
  EXPECT_EQ(d.log_lines().size(), accepted);
}

// kill -9 with records in the ring that the journal has not taken yet, and with records the
// journal wrote but never fsynced (long interval): after restart the log has each exactly once.
void crash_and_restart(uint32_t hold_ms) {
  Runneld d;
  const std::string config = "[log]\nfsync = \"interval\"\nfsync_interval_ms = 3600000\n";
  d.start(config, {"--debug-journal-hold-ms", std::to_string(hold_ms)});
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  const uint64_t n = 30000;
  send_tcp(d.tcp_port(), lines_for("crash", n));
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kPointsAccepted) >= n; }, 20s));
  if (hold_ms > 0) {
    EXPECT_EQ(d.counter(Counter::kLogRecords), 0u);
  }
  d.kill9();
  d.start(config);
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kLogRecords) >= (hold_ms > 0 ? n : 0); }, 20s));
  if (hold_ms > 0) {
    EXPECT_EQ(d.counter(Counter::kRingRecoveredRecords), n);
  }
  ASSERT_EQ(d.stop(), 0) << d.stderr_text();
  expect_exactly_once_in_order(d.log_lines(), {{"crash", n}});
}

TEST(CrashE2E, RecordsOnlyInTheRingAreJournaledOnceAfterKill9) { crash_and_restart(600000); }

TEST(CrashE2E, RecordsWrittenButNotSyncedAreNotDuplicatedAfterKill9) { crash_and_restart(0); }

TEST(CrashE2E, RestartAfterKill9DuringStreamingLosesAndDuplicatesNothing) {
  Runneld d;
  const std::string config = "[log]\nfsync_interval_ms = 3600000\n";
  d.start(config);
  ASSERT_TRUE(d.wait_ready());
  const uint64_t n = 200000;
  std::thread sender([&] {
    try {
      send_tcp(d.tcp_port(), lines_for("mid", n));
    } catch (...) {  // the connection dies with the daemon
    }
  });
  ASSERT_TRUE(wait_until([&] { return d.counter(Counter::kPointsAccepted) >= n / 4; }, 20s));
  d.kill9();
  sender.join();
  d.start(config);
  ASSERT_TRUE(d.wait_ready()) << d.stderr_text();
  ASSERT_EQ(d.stop(), 0);
  // Whatever prefix got in before the kill is there exactly once and in order.
  const auto lines = d.log_lines();
  ASSERT_GE(lines.size(), n / 4);
  expect_exactly_once_in_order(lines, {{"mid", lines.size()}});
}

TEST(LogE2E, DumpReingestsToTheSameRecordsAndVerifyCountsThem) {
  Runneld a;
  a.start();
  ASSERT_TRUE(a.wait_ready());
  std::string data = lines_for("dump", 1000) +
                     "esc\\,m\\ x,t\\=k=v\\ 1\\,2 s=\"q\\\"uote\\\\ back\",b=true,u=7u,f=-1.25e-5 5\n";
  send_tcp(a.tcp_port(), data);
  ASSERT_TRUE(wait_until([&] { return a.counter(Counter::kPointsAccepted) >= 1001; }, 10s));
  ASSERT_EQ(a.stop(), 0);
  int rc = 0;
  const std::string verify = run_runnelctl({"log", "verify", "--data-dir", a.data_dir().string(), "--json"}, &rc);
  EXPECT_EQ(rc, 0) << verify;
  EXPECT_NE(verify.find("\"records\":1001"), std::string::npos) << verify;
  EXPECT_NE(verify.find("\"corrupt_records\":0"), std::string::npos) << verify;
  const std::string dump = run_runnelctl({"log", "dump", "--data-dir", a.data_dir().string()}, &rc);
  EXPECT_EQ(rc, 0);

  Runneld b;
  b.start();
  ASSERT_TRUE(b.wait_ready());
  send_tcp(b.tcp_port(), dump);
  ASSERT_TRUE(wait_until([&] { return b.counter(Counter::kPointsAccepted) >= 1001; }, 10s));
  ASSERT_EQ(b.stop(), 0);
  EXPECT_EQ(a.log_lines(), b.log_lines());
}

TEST(ConfigE2E, BadConfigStopsStartUpWithTheKeyNamed) {
  Runneld d;
  d.start("[log]\nfsync = \"sometimes\"\n");
  EXPECT_EQ(d.wait_exit(10s), 2);
  EXPECT_NE(d.stderr_text().find("log.fsync"), std::string::npos) << d.stderr_text();
}

TEST(ConfigE2E, SecondInstanceOnTheSameDataDirIsRefused) {
  Runneld a;
  a.start();
  ASSERT_TRUE(a.wait_ready());
  Runneld b;
  b.start("", {"--data-dir", a.data_dir().string()});
  EXPECT_EQ(b.wait_exit(10s), 1);
  EXPECT_NE(b.stderr_text().find("another runneld"), std::string::npos) << b.stderr_text();
}

}  // namespace
}  // namespace runnel::e2e
