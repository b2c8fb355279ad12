// Single-process behaviour of the ingest ring against real POSIX shared memory: records, padding,
// backpressure, subscribers, validation on reopen, recovery, and futex waits.
#include "ipc/ring.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "tests/ipc/ring_test_util.h"

namespace runnel::ipc {
namespace {

using namespace std::chrono_literals;
using testing::as_bytes;
using testing::as_string;
using testing::RawRing;
using testing::ScopedRingName;

constexpr uint64_t kSmall = 4096;  // max payload 1008 bytes

Ring make_ring(const ScopedRingName& name, uint64_t capacity = kSmall) {
  auto r = Ring::open_or_create(name.str(), capacity);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return std::move(r).value();
}

GatingConsumer attach(Ring& ring, uint32_t id, Ring::StartAt start = Ring::StartAt::kResume) {
  auto c = ring.attach_consumer(id, start);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return std::move(c).value();
}

// Fills a kSmall ring exactly: eight records of 512 bytes. Returns the record's payload.
std::string fill_small_ring(Ring& ring) {
  std::string rec(496, 'r');
  for (int i = 0; i < 8; ++i) EXPECT_EQ(ring.try_write(as_bytes(rec)), WriteStatus::kOk);
  return rec;
}

// Polls everything committed, as strings, with positions.
std::vector<std::pair<uint64_t, std::string>> drain(GatingConsumer& c) {
  std::vector<std::pair<uint64_t, std::string>> out;
  c.poll([&](uint64_t pos, std::span<const std::byte> p) { out.emplace_back(pos, as_string(p)); });
  return out;
}

TEST(RingTest, SingleProducerSingleConsumerDeliversRecordsInOrderWithPositions) {
  ScopedRingName name("basic");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  EXPECT_EQ(ring.try_write(as_bytes("alpha")), WriteStatus::kOk);
  EXPECT_EQ(ring.try_write(as_bytes("")), WriteStatus::kOk);
  EXPECT_EQ(ring.try_write(as_bytes("a somewhat longer third record")), WriteStatus::kOk);
  auto got = drain(c);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], (std::pair<uint64_t, std::string>{0, "alpha"}));
  EXPECT_EQ(got[1], (std::pair<uint64_t, std::string>{24, ""}));  // 16 + align8(5)
  EXPECT_EQ(got[2], (std::pair<uint64_t, std::string>{40, "a somewhat longer third record"}));
  EXPECT_EQ(c.position(), ring.claim_position());
  EXPECT_TRUE(drain(c).empty());
}

TEST(RingTest, WrapAroundPadsTheLapEndAndNoRecordStraddlesIt) {
  ScopedRingName name("wrap");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  uint64_t next_seq = 0;
  std::vector<std::byte> buf(ring.max_payload_bytes());
  for (uint64_t seq = 0; seq < 20000; ++seq) {
    const size_t len = testing::test_record_length(0, seq);
    testing::fill_test_record(std::span(buf).first(len), 0, seq);
    ASSERT_EQ(ring.try_write(std::span(buf).first(len)), WriteStatus::kOk);
    c.poll([&](uint64_t pos, std::span<const std::byte> p) {
      testing::TestRecordHead head{};
      ASSERT_TRUE(testing::check_test_record(p, &head));
      EXPECT_EQ(head.seq, next_seq++);
      EXPECT_LE((pos & (kSmall - 1)) + record_span(p.size()), kSmall);
    });
  }
  EXPECT_EQ(next_seq, 20000u);
  EXPECT_GT(ring.claim_position(), 100 * kSmall);
}

TEST(RingTest, BoundaryNeverSitsInTheLastEightBytesOfALap) {
  ScopedRingName name("tail8");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  const std::string big(1000, 'x');  // span 1016
  for (int i = 0; i < 4; ++i) ASSERT_EQ(ring.try_write(as_bytes(big)), WriteStatus::kOk);
  ASSERT_EQ(ring.claim_position(), 4064u);
  ASSERT_EQ(ring.try_write(as_bytes("12345678")), WriteStatus::kOk);  // span 24: ends at 4088
  EXPECT_EQ(ring.claim_position(), kSmall);                           // skipped to the next lap
  EXPECT_EQ(drain(c).size(), 5u);
  ASSERT_EQ(ring.try_write(as_bytes("next lap")), WriteStatus::kOk);
  auto got = drain(c);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].first, kSmall);
}

TEST(RingTest, FullRingRefusesWritesUntilTheConsumerAdvances) {
  ScopedRingName name("full");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  const std::string rec = fill_small_ring(ring);
  EXPECT_EQ(ring.try_write(as_bytes(rec)), WriteStatus::kFull);
  EXPECT_EQ(ring.try_write(as_bytes("tiny")), WriteStatus::kFull);
  EXPECT_FALSE(ring.try_claim(1));
  EXPECT_EQ(ring.try_claim(1).status(), WriteStatus::kFull);
  EXPECT_GE(ring.stats().full_claims, 3u);
  EXPECT_DOUBLE_EQ(ring.stats().fill_ratio, 1.0);
  auto b = c.poll([](uint64_t, std::span<const std::byte>) {}, 1);
  EXPECT_EQ(b.records, 1u);
  EXPECT_EQ(ring.try_write(as_bytes(rec)), WriteStatus::kOk);
  EXPECT_EQ(ring.try_write(as_bytes(rec)), WriteStatus::kFull);
}

TEST(RingTest, OversizedPayloadIsRefusedAsTooLarge) {
  ScopedRingName name("large");
  Ring ring = make_ring(name);
  EXPECT_EQ(ring.max_payload_bytes(), kSmall / 4 - kRecordHeaderBytes);
  std::vector<std::byte> big(ring.max_payload_bytes() + 1);
  EXPECT_EQ(ring.try_write(big), WriteStatus::kTooLarge);
  big.pop_back();
  EXPECT_EQ(ring.try_write(big), WriteStatus::kOk);
}

TEST(RingTest, WithoutGatingConsumersProducersOverwriteFreely) {
  ScopedRingName name("nogate");
  Ring ring = make_ring(name);
  const std::string rec(300, 'z');
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(ring.try_write(as_bytes(rec)), WriteStatus::kOk);
}

TEST(RingTest, DetachedConsumerStopsGating) {
  ScopedRingName name("detach");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  const std::string rec = fill_small_ring(ring);
  ASSERT_EQ(ring.try_write(as_bytes(rec)), WriteStatus::kFull);
  c.detach();
  EXPECT_EQ(ring.try_write(as_bytes(rec)), WriteStatus::kOk);
  EXPECT_FALSE(ring.stats().consumers[kJournalConsumer].active);
  EXPECT_EQ(c.peek([](uint64_t, std::span<const std::byte>) {}).records, 0u);
}

TEST(RingTest, AttachingTheSameIdTwiceInOneProcessIsBusyUntilReleased) {
  ScopedRingName name("busy");
  Ring ring = make_ring(name);
  {
    GatingConsumer c = attach(ring, kSpeedPathConsumer);
    auto again = ring.attach_consumer(kSpeedPathConsumer);
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.status().code(), Status::Code::kBusy);
    EXPECT_NE(again.status().message().find(name.str()), std::string::npos);
  }
  EXPECT_TRUE(ring.attach_consumer(kSpeedPathConsumer).ok());
  EXPECT_FALSE(ring.attach_consumer(kMaxConsumers).ok());
}

TEST(RingTest, AttachNowSeesOnlyLaterRecords) {
  ScopedRingName name("now");
  Ring ring = make_ring(name);
  ASSERT_EQ(ring.try_write(as_bytes("before")), WriteStatus::kOk);
  GatingConsumer c = attach(ring, 3, Ring::StartAt::kNow);
  ASSERT_EQ(ring.try_write(as_bytes("after")), WriteStatus::kOk);
  auto got = drain(c);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].second, "after");
}

TEST(RingTest, ZeroCopyClaimIsInvisibleUntilCommitted) {
  ScopedRingName name("claim");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  Claim claim = ring.try_claim(5);
  ASSERT_TRUE(claim);
  ASSERT_EQ(claim.payload().size(), 5u);
  std::memcpy(claim.payload().data(), "hello", 5);
  ASSERT_EQ(ring.try_write(as_bytes("second")), WriteStatus::kOk);
  EXPECT_TRUE(drain(c).empty());  // the first record blocks the second
  claim.commit();
  auto got = drain(c);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].second, "hello");
  EXPECT_EQ(got[1].second, "second");
}

TEST(RingTest, AbandonedClaimBecomesPaddingThatConsumersSkip) {
  ScopedRingName name("abandon");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  { Claim dropped = ring.try_claim(13); }
  ASSERT_EQ(ring.try_write(as_bytes("kept")), WriteStatus::kOk);
  auto got = drain(c);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], (std::pair<uint64_t, std::string>{32, "kept"}));
  EXPECT_EQ(ring.stats().abandoned_claims, 1u);
}

TEST(RingTest, SubscriberKeepingUpSeesEveryRecordAsACopy) {
  ScopedRingName name("sub");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  auto sub = Subscriber::open(name.str(), Subscriber::StartAt::kOldest);
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  EXPECT_EQ(sub->epoch(), ring.epoch());
  std::vector<std::string> seen;
  for (int i = 0; i < 500; ++i) {
    ASSERT_EQ(ring.try_write(as_bytes("record " + std::to_string(i))), WriteStatus::kOk);
    drain(c);
    auto b =
        sub->poll([&](uint64_t, std::span<const std::byte> p) { seen.push_back(as_string(p)); });
    EXPECT_EQ(b.overrun_bytes, 0u);
  }
  ASSERT_EQ(seen.size(), 500u);
  EXPECT_EQ(seen[499], "record 499");
  EXPECT_EQ(sub->overrun_bytes_total(), 0u);
}

TEST(RingTest, LappedSubscriberReportsOverrunAndJumpsToTheOldestRetainedRecord) {
  ScopedRingName name("overrun");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  auto sub = Subscriber::open(name.str(), Subscriber::StartAt::kOldest);
  ASSERT_TRUE(sub.ok());
  ASSERT_EQ(sub->position(), 0u);
  std::vector<std::byte> buf(256);
  uint64_t seq = 0;
  auto write = [&] {
    const size_t len = testing::test_record_length(1, seq);
    testing::fill_test_record(std::span(buf).first(len), 1, seq++);
    ASSERT_EQ(ring.try_write(std::span(buf).first(len)), WriteStatus::kOk);
  };
  while (ring.claim_position() < 3 * kSmall) {  // three laps, the journal keeps up
    write();
    drain(c);
  }
  for (int i = 0; i < 10; ++i) write();  // the journal lags by ten records
  const uint64_t retained_from = c.position();
  ASSERT_LT(retained_from, ring.claim_position());

  auto first =
      sub->poll([](uint64_t, std::span<const std::byte>) { FAIL() << "delivered a lost record"; });
  EXPECT_EQ(first.records, 0u);
  EXPECT_EQ(first.overrun_bytes, retained_from);  // jumped from 0 to the journal's position
  EXPECT_EQ(sub->position(), retained_from);
  EXPECT_EQ(sub->overrun_bytes_total(), retained_from);

  std::vector<uint64_t> seqs;
  uint64_t first_pos = 0;
  auto rest = sub->poll([&](uint64_t pos, std::span<const std::byte> p) {
    testing::TestRecordHead head{};
    ASSERT_TRUE(testing::check_test_record(p, &head));
    if (seqs.empty()) first_pos = pos;
    seqs.push_back(head.seq);
  });
  EXPECT_EQ(rest.overrun_bytes, 0u);
  ASSERT_EQ(seqs.size(), 10u);
  EXPECT_EQ(first_pos, retained_from);
  EXPECT_EQ(seqs.back(), seq - 1);
  for (size_t i = 1; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], seqs[i - 1] + 1);
}

TEST(RingTest, ReopenWithTheSameCapacityKeepsEpochAndRecords) {
  ScopedRingName name("reopen");
  uint64_t epoch = 0;
  {
    Ring ring = make_ring(name);
    epoch = ring.epoch();
    ASSERT_EQ(ring.try_write(as_bytes("survives")), WriteStatus::kOk);
  }
  Ring again = make_ring(name);
  EXPECT_EQ(again.epoch(), epoch);
  GatingConsumer c = attach(again, kJournalConsumer);
  auto got = drain(c);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].second, "survives");
  auto opened = Ring::open(name.str());
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ(opened->capacity_bytes(), kSmall);
}

TEST(RingTest, RecreatedRingGetsANewEpoch) {
  ScopedRingName name("epoch");
  uint64_t epoch = 0;
  {
    Ring ring = make_ring(name);
    epoch = ring.epoch();
  }
  ASSERT_TRUE(Ring::remove(name.str()).ok());
  Ring again = make_ring(name);
  EXPECT_NE(again.epoch(), epoch);
  EXPECT_NE(again.epoch(), 0u);
}

TEST(RingTest, ReopenWithAnotherCapacityIsRefusedNamingTheObject) {
  ScopedRingName name("cap");
  Ring ring = make_ring(name);
  auto other = Ring::open_or_create(name.str(), 2 * kSmall);
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find(name.str()), std::string::npos)
      << other.status().message();
  EXPECT_NE(other.status().message().find("capacity"), std::string::npos)
      << other.status().message();
}

TEST(RingTest, ReopenWithWrongMagicIsRefusedNamingTheObject) {
  ScopedRingName name("magic");
  { Ring ring = make_ring(name); }
  RawRing(name.str()).header()->magic.store(0x1234, std::memory_order_relaxed);
  for (auto status : {Ring::open_or_create(name.str(), kSmall).status(),
                      Ring::open(name.str()).status(), Subscriber::open(name.str()).status()}) {
    EXPECT_EQ(status.code(), Status::Code::kCorruption);
    EXPECT_NE(status.message().find(name.str()), std::string::npos) << status.message();
    EXPECT_NE(status.message().find("magic"), std::string::npos) << status.message();
  }
}

TEST(RingTest, ReopenWithWrongLayoutVersionIsRefusedNamingTheObject) {
  ScopedRingName name("version");
  { Ring ring = make_ring(name); }
  RawRing(name.str()).header()->layout_version = kRingLayoutVersion + 1;
  auto r = Ring::open_or_create(name.str(), kSmall);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kUnsupported);
  EXPECT_NE(r.status().message().find(name.str()), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("version"), std::string::npos) << r.status().message();
}

TEST(RingTest, ReopenWithHeaderCapacityDisagreeingWithObjectSizeIsRefused) {
  ScopedRingName name("size");
  { Ring ring = make_ring(name); }
  RawRing(name.str()).header()->capacity_bytes = 2 * kSmall;
  auto r = Ring::open(name.str());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(name.str()), std::string::npos) << r.status().message();
}

TEST(RingTest, BadNamesCapacitiesAndMissingObjectsAreErrors) {
  EXPECT_EQ(Ring::open_or_create("a/b", kSmall).status().code(), Status::Code::kInvalid);
  ScopedRingName name("badcap");
  EXPECT_EQ(Ring::open_or_create(name.str(), 5000).status().code(), Status::Code::kInvalid);
  EXPECT_EQ(Ring::open_or_create(name.str(), 1024).status().code(), Status::Code::kInvalid);
  EXPECT_EQ(Ring::open(name.str()).status().code(), Status::Code::kNotFound);
  EXPECT_EQ(Subscriber::open(name.str()).status().code(), Status::Code::kNotFound);
  EXPECT_FALSE(Ring::remove(name.str()).ok());
}

TEST(RingTest, ObjectIsCreatedWithTheRequestedMode) {
  ScopedRingName name("mode");
  Ring ring = make_ring(name);
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm/" + name.str()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
}

TEST(RingTest, ObjectIsChownedToTheConfiguredGroup) {
  ScopedRingName name("gid");
  RingOptions options;
  options.gid = getegid();
  auto ring = Ring::open_or_create(name.str(), kSmall, options);
  ASSERT_TRUE(ring.ok()) << ring.status().ToString();
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm/" + name.str()).c_str(), &st), 0);
  EXPECT_EQ(st.st_gid, getegid());
}

TEST(RingTest, SubscriberWaitSleepsOnTheReadOnlyMappingUntilTheTimeout) {
  ScopedRingName name("subwait");
  Ring ring = make_ring(name);
  auto sub = Subscriber::open(name.str());
  ASSERT_TRUE(sub.ok());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(sub->wait(60ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 55ms);
  ASSERT_EQ(ring.try_write(as_bytes("x")), WriteStatus::kOk);
  EXPECT_TRUE(sub->wait(60ms));
}

// Forges the state a producer leaves when killed between claim and commit: the claim cursor is
// past a region whose header was never committed (garbage inside).
uint64_t forge_uncommitted_claim(const std::string& name, uint64_t payload_bytes) {
  RawRing raw(name);
  const uint64_t at = raw.header()->claim.load();
  std::memset(raw.data() + (at & (kSmall - 1)) + kRecordHeaderBytes, 0xab, payload_bytes);
  raw.header()->claim.store(at + record_span(payload_bytes));
  return at;
}

TEST(RingTest, RecoverDiscardsOnlyTheUncommittedTail) {
  ScopedRingName name("recover");
  Ring ring = make_ring(name);
  {
    GatingConsumer c = attach(ring, kJournalConsumer);
    for (int i = 0; i < 5; ++i)
      ASSERT_EQ(ring.try_write(as_bytes("committed " + std::to_string(i))), WriteStatus::kOk);
    ASSERT_EQ(drain(c).size(), 5u);
    for (int i = 5; i < 8; ++i)
      ASSERT_EQ(ring.try_write(as_bytes("committed " + std::to_string(i))), WriteStatus::kOk);
  }
  const uint64_t torn_at = forge_uncommitted_claim(name.str(), 100);
  auto rep = ring.recover();
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_EQ(rep->discarded_bytes, record_span(100));
  EXPECT_EQ(rep->claim_position, torn_at);
  EXPECT_EQ(ring.claim_position(), torn_at);
  EXPECT_EQ(ring.try_write(as_bytes("after restart")), WriteStatus::kOk);
  GatingConsumer c = attach(ring, kJournalConsumer);
  auto got = drain(c);
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].second, "committed 5");
  EXPECT_EQ(got[2].second, "committed 7");
  EXPECT_EQ(got[3], (std::pair<uint64_t, std::string>{torn_at, "after restart"}));
}

TEST(RingTest, RecoverTruncatesAtTheFirstHoleAndScrubsWhatFollows) {
  ScopedRingName name("hole");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  ASSERT_EQ(ring.try_write(as_bytes("before")), WriteStatus::kOk);
  const uint64_t hole = forge_uncommitted_claim(name.str(), 40);
  ASSERT_EQ(ring.try_write(as_bytes("after the hole")),
            WriteStatus::kOk);  // committed, but unreachable
  auto rep = ring.recover();
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->discarded_bytes, record_span(40) + record_span(14));
  // New records reuse the positions: a stale committed header must not be mistaken for them.
  ASSERT_EQ(ring.try_write(as_bytes(std::string(40, 'n'))), WriteStatus::kOk);
  Claim open = ring.try_claim(8);  // sits exactly where "after the hole" was committed
  ASSERT_TRUE(open);
  EXPECT_EQ(open.position(), hole + record_span(40));
  auto got = drain(c);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].second, "before");
  EXPECT_EQ(got[1].first, hole);
}

TEST(RingTest, RecoverOfACleanRingDiscardsNothing) {
  ScopedRingName name("clean");
  Ring ring = make_ring(name);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(ring.try_write(as_bytes("x")), WriteStatus::kOk);
  auto rep = ring.recover();
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->discarded_bytes, 0u);
  EXPECT_EQ(ring.claim_position(), 100 * record_span(1));
}

TEST(RingTest, SetConsumerPositionResumesJournalingExactlyAfterTheLastLoggedRecord) {
  ScopedRingName name("resume");
  uint64_t logged_end = 0;
  {
    Ring ring = make_ring(name);
    GatingConsumer journal = attach(ring, kJournalConsumer);
    for (int i = 0; i < 10; ++i)
      ASSERT_EQ(ring.try_write(as_bytes("event " + std::to_string(i))), WriteStatus::kOk);
    // The journal logged four records, then the daemon died before advancing its cursor.
    auto b = journal.peek([](uint64_t, std::span<const std::byte>) {}, 4);
    logged_end = b.end_position;
  }
  Ring ring = make_ring(name);  // the restarted daemon
  ASSERT_TRUE(ring.recover().ok());
  EXPECT_FALSE(
      ring.set_consumer_position(kJournalConsumer, logged_end + 8).ok());  // not a boundary
  EXPECT_FALSE(ring.set_consumer_position(kJournalConsumer, ring.claim_position() + 8).ok());
  ASSERT_TRUE(ring.set_consumer_position(kJournalConsumer, logged_end).ok());
  GatingConsumer journal = attach(ring, kJournalConsumer);
  auto got = drain(journal);
  ASSERT_EQ(got.size(), 6u);
  EXPECT_EQ(got.front().second, "event 4");
  EXPECT_EQ(got.back().second, "event 9");
}

TEST(RingTest, ResumingALostPositionIsRefused) {
  ScopedRingName name("lost");
  Ring ring = make_ring(name);
  {
    GatingConsumer c = attach(ring, kSpeedPathConsumer);
    c.detach();
  }
  for (int i = 0; i < 100; ++i)
    ASSERT_EQ(ring.try_write(as_bytes(std::string(200, 'q'))), WriteStatus::kOk);
  auto r = ring.attach_consumer(kSpeedPathConsumer, Ring::StartAt::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("no longer retained"), std::string::npos)
      << r.status().message();
  EXPECT_TRUE(ring.attach_consumer(kSpeedPathConsumer, Ring::StartAt::kNow).ok());
}

TEST(RingTest, StatsReportClaimLagAndFill) {
  ScopedRingName name("stats");
  Ring ring = make_ring(name);
  GatingConsumer a = attach(ring, kJournalConsumer);
  GatingConsumer b = attach(ring, kSpeedPathConsumer);
  for (int i = 0; i < 4; ++i)
    ASSERT_EQ(ring.try_write(as_bytes(std::string(496, 's'))), WriteStatus::kOk);
  drain(a);
  RingStats s = ring.stats();
  EXPECT_EQ(s.capacity_bytes, kSmall);
  EXPECT_EQ(s.claim_position, 2048u);
  EXPECT_EQ(s.min_gating_position, 0u);
  EXPECT_DOUBLE_EQ(s.fill_ratio, 0.5);
  EXPECT_EQ(s.consumers[kJournalConsumer].lag_bytes, 0u);
  EXPECT_EQ(s.consumers[kSpeedPathConsumer].lag_bytes, 2048u);
  EXPECT_FALSE(s.consumers[2].active);
  EXPECT_EQ(ring.min_gating_position(), 0u);
}

TEST(RingTest, ConsumerWaitWakesPromptlyOnPublish) {
  ScopedRingName name("wake");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  const auto t0 = std::chrono::steady_clock::now();
  std::thread producer([&] {
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(ring.try_write(as_bytes("wake up")), WriteStatus::kOk);
  });
  EXPECT_TRUE(c.wait(10s));
  const auto waited = std::chrono::steady_clock::now() - t0;
  producer.join();
  EXPECT_GE(waited, 40ms);
  EXPECT_LT(waited, 5s);
  EXPECT_EQ(drain(c).size(), 1u);
}

TEST(RingTest, ConsumerWaitTimesOutWhenNothingIsPublished) {
  ScopedRingName name("timeout");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(c.wait(60ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 55ms);
  ASSERT_EQ(ring.try_write(as_bytes("x")), WriteStatus::kOk);
  EXPECT_TRUE(c.wait(0ms));  // returns at once when a record is there
}

TEST(RingTest, WaitForSpaceWakesWhenTheConsumerAdvancesAndTimesOutOtherwise) {
  ScopedRingName name("space");
  Ring ring = make_ring(name);
  GatingConsumer c = attach(ring, kJournalConsumer);
  const std::string rec = fill_small_ring(ring);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(ring.wait_for_space(rec.size(), 60ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 55ms);
  std::thread consumer([&] {
    std::this_thread::sleep_for(50ms);
    c.poll([](uint64_t, std::span<const std::byte>) {}, 1);
  });
  t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(ring.wait_for_space(rec.size(), 10s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  consumer.join();
  EXPECT_EQ(ring.try_write(as_bytes(rec)), WriteStatus::kOk);
}

}  // namespace
}  // namespace runnel::ipc
