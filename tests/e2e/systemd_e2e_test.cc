// systemd integration: the units verify, and runneld speaks sd_notify on our own NOTIFY_SOCKET.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "tests/e2e/runneld_harness.h"

namespace runnel::e2e {
namespace {

using namespace std::chrono_literals;

TEST(SystemdE2E, ReadyArrivesWithStatusAndStoppingOnSigterm) {
  Runneld d;
  d.start();
  ASSERT_TRUE(d.wait_notify("READY=1")) << d.stderr_text();
  bool status_with_ready = false;
  for (const auto& m : d.notify_messages()) {
    status_with_ready |= m.find("READY=1") != std::string::npos && m.find("STATUS=") != std::string::npos;
  }
  EXPECT_TRUE(status_with_ready);
  EXPECT_EQ(d.stop(), 0);
  EXPECT_TRUE(d.wait_notify("STOPPING=1", 1s));
}

TEST(SystemdE2E, ReadyComesOnlyAfterTheListenersAccept) {
  Runneld d;
  d.start();
  ASSERT_TRUE(d.wait_ready());
  // No retry: once READY=1 was sent, a connection must succeed at the first attempt.
  send_tcp(d.tcp_port(), "m f=1 1\n");
  send_unix(d.unix_path(), "m f=2 2\n");
  EXPECT_TRUE(wait_until([&] { return d.counter(ipc::Counter::kPointsAccepted) == 2; }, 10s));
}

TEST(SystemdE2E, WatchdogIsPingedWhenSystemdAsksForIt) {
  Runneld d;
  d.start("", {}, {{"WATCHDOG_USEC", "300000"}});
  ASSERT_TRUE(d.wait_ready());
  EXPECT_TRUE(d.wait_notify("WATCHDOG=1", 5s));
}

TEST(SystemdE2E, StartUpFailureIsReportedAsStatus) {
  // A port that is taken makes binding fail.
  int taken = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(taken, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(taken, 1), 0);
  socklen_t len = sizeof a;
  getsockname(taken, reinterpret_cast<sockaddr*>(&a), &len);
  Runneld d;
  d.start("", {"--listen", "tcp://127.0.0.1:" + std::to_string(ntohs(a.sin_port))});
  EXPECT_EQ(d.wait_exit(10s), 1);
  EXPECT_TRUE(d.wait_notify("STATUS=start-up failed", 1s)) << d.stderr_text();
  EXPECT_NE(d.stderr_text().find("Address already in use"), std::string::npos) << d.stderr_text();
  close(taken);
}

TEST(SystemdE2E, UnitFilesVerify) {
  // The installed unit names the installed binary; verify a copy that names the built one.
  std::ifstream in(RUNNEL_SOURCE_DIR "/systemd/runneld.service.in");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string unit = ss.str();
  auto replace = [&](const std::string& from, const std::string& to) {
    for (size_t p; (p = unit.find(from)) != std::string::npos;) unit.replace(p, from.size(), to);
  };
  const std::string bin = std::filesystem::path(RUNNELD_PATH).parent_path().string();
  replace("@RUNNEL_BIN_DIR@", bin);
  replace("@RUNNEL_DOC_DIR@", RUNNEL_SOURCE_DIR);
  const auto dir = std::filesystem::temp_directory_path() / ("runnel-unit-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / "runneld.service";
  std::ofstream(path) << unit;
  const std::string cmd = "systemd-analyze verify --man=no " + path.string() + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int st = pclose(p);
  std::filesystem::remove_all(dir);
  EXPECT_EQ(WEXITSTATUS(st), 0) << out;
  // Warnings are printed but do not fail verify; treat any line about our unit as a failure.
  EXPECT_EQ(out.find("runneld.service:"), std::string::npos) << out;
}

TEST(SystemdE2E, SysusersFileDeclaresTheServiceUser) {
  FILE* p = popen("systemd-sysusers --dry-run " RUNNEL_SOURCE_DIR "/systemd/runnel.sysusers.conf 2>&1", "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  EXPECT_EQ(WEXITSTATUS(pclose(p)), 0) << out;
  // Either it would create the user, or the user already exists on this machine.
  EXPECT_TRUE(out.find("'runnel'") != std::string::npos || out.empty()) << out;
}

}  // namespace
}  // namespace runnel::e2e
