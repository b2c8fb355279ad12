// The ring across processes: a forked producer, a forked read-only subscriber, a write through
// the read-only mapping, and a producer killed between claim and commit.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "ipc/ring.h"
#include "tests/ipc/ring_test_util.h"

namespace runnel::ipc {
namespace {

using namespace std::chrono_literals;
using testing::as_bytes;
using testing::as_string;
using testing::ScopedRingName;

// Waits for a child; returns its exit code, or 128 + signal.
int wait_child(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

Ring create(const ScopedRingName& name, uint64_t capacity) {
  auto r = Ring::open_or_create(name.str(), capacity);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return std::move(r).value();
}

TEST(RingProcessTest, ForkedProducerWritesAndParentConsumesEveryRecord) {
  ScopedRingName name("xproc");
  Ring ring = create(name, 1 << 16);
  auto journal = ring.attach_consumer(kJournalConsumer);
  ASSERT_TRUE(journal.ok());
  const uint64_t count = 200'000 / testing::kScale;
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto child = Ring::open(name.str());
    if (!child.ok()) _exit(2);
    std::vector<std::byte> buf(child->max_payload_bytes());
    for (uint64_t seq = 0; seq < count; ++seq) {
      const size_t len = testing::test_record_length(7, seq);
      testing::fill_test_record(std::span(buf).first(len), 7, seq);
      while (child->try_write(std::span(buf).first(len)) != WriteStatus::kOk)
        child->wait_for_space(len, 10ms);
    }
    _exit(0);
  }
  uint64_t next = 0, bad = 0;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (next < count && std::chrono::steady_clock::now() < deadline) {
    auto b = journal->poll([&](uint64_t, std::span<const std::byte> p) {
      testing::TestRecordHead head{};
      if (!testing::check_test_record(p, &head) || head.producer != 7 || head.seq != next) ++bad;
      next = head.seq + 1;
    });
    if (b.records == 0) journal->wait(50ms);
  }
  EXPECT_EQ(wait_child(pid), 0);
  EXPECT_EQ(next, count);
  EXPECT_EQ(bad, 0u);
}

TEST(RingProcessTest, ForkedReadOnlySubscriberReceivesRecordsAndSleepsOnTheFutex) {
  ScopedRingName name("xsub");
  Ring ring = create(name, 1 << 16);
  auto journal = ring.attach_consumer(kJournalConsumer);
  ASSERT_TRUE(journal.ok());
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto sub = Subscriber::open(name.str(), Subscriber::StartAt::kNow);
    if (!sub.ok()) _exit(2);
    const char go = 'g';
    if (write(ready[1], &go, 1) != 1) _exit(3);
    uint64_t next = 0;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (next < 1000 && std::chrono::steady_clock::now() < deadline) {
      sub->poll([&](uint64_t, std::span<const std::byte> p) {
        if (as_string(p) != "event " + std::to_string(next)) _exit(4);
        ++next;
      });
      sub->wait(5ms);
    }
    _exit(next == 1000 ? 0 : 5);
  }
  char go = 0;
  ASSERT_EQ(read(ready[0], &go, 1), 1);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(ring.try_write(as_bytes("event " + std::to_string(i))), WriteStatus::kOk);
    journal->poll([](uint64_t, std::span<const std::byte>) {});
    if (i % 100 == 0) journal->wait(1ms);  // lets a sleeping journal make producers wake the futex
  }
  EXPECT_EQ(wait_child(pid), 0);
  close(ready[0]);
  close(ready[1]);
}

TEST(RingProcessTest, WriteThroughTheSubscribersReadOnlyMappingFaults) {
  ScopedRingName name("rofault");
  Ring ring = create(name, 4096);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto sub = Subscriber::open(name.str());
    if (!sub.ok()) _exit(2);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGSEGV, &dfl, nullptr);  // no sanitizer report: die of the signal itself
    sigaction(SIGBUS, &dfl, nullptr);
    auto* header = const_cast<std::byte*>(sub->mapping().data());
    *reinterpret_cast<volatile uint64_t*>(header + 64) = 42;  // the claim cursor
    _exit(0);
  }
  EXPECT_EQ(wait_child(pid), 128 + SIGSEGV);
  EXPECT_EQ(ring.claim_position(), 0u);
}

TEST(RingProcessTest, ProducerKilledBetweenClaimAndCommitIsDiscardedByRecover) {
  ScopedRingName name("kill9");
  Ring ring = create(name, 4096);
  {
    auto journal = ring.attach_consumer(kJournalConsumer);
    ASSERT_TRUE(journal.ok());
  }
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto child = Ring::open(name.str());
    if (!child.ok()) _exit(2);
    for (int i = 0; i < 3; ++i) {
      if (child->try_write(as_bytes("whole " + std::to_string(i))) != WriteStatus::kOk) _exit(3);
    }
    Claim claim = child->try_claim(100);
    if (!claim) _exit(4);
    std::memset(claim.payload().data(), 0x5a, 60);  // half written
    kill(getpid(), SIGKILL);
    _exit(5);
  }
  ASSERT_EQ(wait_child(pid), 128 + SIGKILL);
  const uint64_t torn_claim = ring.claim_position();
  auto report = ring.recover();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->discarded_bytes, record_span(100));
  EXPECT_EQ(ring.claim_position(), torn_claim - record_span(100));
  ASSERT_EQ(ring.try_write(as_bytes("after restart")), WriteStatus::kOk);
  auto journal = ring.attach_consumer(kJournalConsumer);
  ASSERT_TRUE(journal.ok());
  std::vector<std::string> got;
  journal->poll([&](uint64_t, std::span<const std::byte> p) { got.push_back(as_string(p)); });
  EXPECT_EQ(got, (std::vector<std::string>{"whole 0", "whole 1", "whole 2", "after restart"}));
}

}  // namespace
}  // namespace runnel::ipc
