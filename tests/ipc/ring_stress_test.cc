// Multi-producer, multi-consumer stress of the ingest ring inside one process (also run under
// TSan): every gating consumer sees every record exactly once, in per-producer order, untorn.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "ipc/ring.h"
#include "tests/ipc/ring_test_util.h"

namespace runnel::ipc {
namespace {

using namespace std::chrono_literals;
using testing::ScopedRingName;

constexpr uint32_t kProducers = 4;
constexpr uint32_t kConsumers = 2;
constexpr uint64_t kPerProducer = 500'000 / testing::kScale;  // 2M records in all (Release)

// Producer p writes seq 0..count-1; odd producers use the zero-copy claim, even ones try_write.
void produce(Ring& ring, uint32_t p, uint64_t count) {
  std::vector<std::byte> buf(ring.max_payload_bytes());
  for (uint64_t seq = 0; seq < count; ++seq) {
    const size_t len = testing::test_record_length(p, seq);
    for (;;) {
      if (p % 2 == 1) {
        Claim claim = ring.try_claim(len);
        if (claim) {
          testing::fill_test_record(claim.payload(), p, seq);
          claim.commit();
          break;
        }
      } else {
        testing::fill_test_record(std::span(buf).first(len), p, seq);
        if (ring.try_write(std::span(buf).first(len)) == WriteStatus::kOk) break;
      }
      ring.wait_for_space(len, 10ms);
    }
  }
}

struct ConsumerResult {
  uint64_t records = 0;
  uint64_t torn = 0;
  uint64_t out_of_order = 0;
};

void consume(GatingConsumer& c, uint64_t total, ConsumerResult* out) {
  std::vector<uint64_t> next(kProducers, 0);
  while (out->records < total) {
    auto b = c.poll(
        [&](uint64_t, std::span<const std::byte> payload) {
          testing::TestRecordHead head{};
          if (!testing::check_test_record(payload, &head) || head.producer >= kProducers) {
            ++out->torn;
            return;
          }
          if (head.seq != next[head.producer]) ++out->out_of_order;
          next[head.producer] = head.seq + 1;
          ++out->records;
        },
        512);
    ASSERT_FALSE(b.corrupt);
    if (b.records == 0) c.wait(10ms);
  }
}

TEST(RingStressTest, FourProducersTwoGatingConsumersSeeEveryRecordOnceInOrderUntorn) {
  ScopedRingName name("stress");
  auto created = Ring::open_or_create(name.str(), 1 << 16);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Ring ring = std::move(created).value();
  std::vector<GatingConsumer> handles;
  for (uint32_t id = 0; id < kConsumers; ++id) {
    auto c = ring.attach_consumer(id);
    ASSERT_TRUE(c.ok());
    handles.push_back(std::move(c).value());
  }
  const uint64_t total = kProducers * kPerProducer;
  std::vector<ConsumerResult> results(kConsumers);
  std::vector<std::thread> threads;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint32_t id = 0; id < kConsumers; ++id) {
    threads.emplace_back([&, id] { consume(handles[id], total, &results[id]); });
  }
  for (uint32_t p = 0; p < kProducers; ++p)
    threads.emplace_back([&, p] { produce(ring, p, kPerProducer); });
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const ConsumerResult& r : results) {
    EXPECT_EQ(r.records, total);
    EXPECT_EQ(r.torn, 0u);
    EXPECT_EQ(r.out_of_order, 0u);
  }
  RingStats s = ring.stats();
  EXPECT_EQ(s.consumers[0].position, s.claim_position);
  EXPECT_EQ(s.consumers[1].position, s.claim_position);
  EXPECT_GT(s.claim_position, 100u * (1 << 16));  // wrapped many times
  std::printf("%llu records in %.2fs (%.1f M/s), %llu full claims\n",
              static_cast<unsigned long long>(total), secs, static_cast<double>(total) / secs / 1e6,
              static_cast<unsigned long long>(s.full_claims));
}

struct JournaledRing {
  Ring ring;
  GatingConsumer journal;
};

JournaledRing make_journaled_ring(const ScopedRingName& name, uint64_t capacity) {
  auto created = Ring::open_or_create(name.str(), capacity);
  EXPECT_TRUE(created.ok()) << created.status().ToString();
  Ring ring = std::move(created).value();
  auto journal = ring.attach_consumer(kJournalConsumer);
  EXPECT_TRUE(journal.ok()) << journal.status().ToString();
  return JournaledRing{std::move(ring), std::move(journal).value()};
}

TEST(RingStressTest, ConsumerAttachingAtTheClaimUnderLoadSeesAContiguousUntornSuffix) {
  ScopedRingName name("stress-late");
  auto [ring, journal] = make_journaled_ring(name, 1 << 14);
  const uint64_t per_producer = 200'000 / testing::kScale;
  ConsumerResult journal_result;
  std::atomic<uint32_t> producers_done{0};
  std::thread consumer([&] { consume(journal, 2 * per_producer, &journal_result); });
  std::vector<std::thread> producers;
  for (uint32_t p = 0; p < 2; ++p) {
    producers.emplace_back([&, p] {
      produce(ring, p, per_producer);
      producers_done.fetch_add(1);
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto late = ring.attach_consumer(kSpeedPathConsumer, Ring::StartAt::kNow);
  ASSERT_TRUE(late.ok());
  std::vector<int64_t> next(2, -1);  // -1: nothing seen yet from that producer
  uint64_t torn = 0, gaps = 0, records = 0;
  for (;;) {
    const bool finished = producers_done.load() == 2;
    auto b = late->poll([&](uint64_t, std::span<const std::byte> payload) {
      testing::TestRecordHead head{};
      if (!testing::check_test_record(payload, &head) || head.producer >= 2) {
        ++torn;
        return;
      }
      if (next[head.producer] >= 0 && head.seq != static_cast<uint64_t>(next[head.producer]))
        ++gaps;
      next[head.producer] = static_cast<int64_t>(head.seq + 1);
      ++records;
    });
    if (finished && b.records == 0 && late->position() == ring.claim_position()) break;
    if (b.records == 0) late->wait(std::chrono::milliseconds(10));
  }
  for (auto& t : producers) t.join();
  consumer.join();
  EXPECT_EQ(journal_result.records, 2 * per_producer);
  EXPECT_EQ(torn, 0u);
  EXPECT_EQ(gaps, 0u);
  EXPECT_GT(records, 0u);
  EXPECT_EQ(next[0], static_cast<int64_t>(per_producer));
  EXPECT_EQ(next[1], static_cast<int64_t>(per_producer));
}

// Subscribers copy racily (seqlock) by design, so this test is left out of the TSan run.
TEST(RingStressTest, SubscriberUnderLoadNeverDeliversATornRecord) {
  ScopedRingName name("stress-sub");
  auto [ring, journal] = make_journaled_ring(name, 1 << 14);
  auto sub = Subscriber::open(name.str(), Subscriber::StartAt::kOldest);
  ASSERT_TRUE(sub.ok());
  const uint64_t per_producer = 200'000 / testing::kScale;
  const uint64_t total = 2 * per_producer;
  ConsumerResult journal_result;
  std::atomic<bool> done{false};
  uint64_t sub_records = 0, sub_torn = 0, sub_overruns = 0, polls = 0;
  // The journal holds back until the subscriber read a record: on a loaded machine the
  // subscriber thread might otherwise first run once everything is consumed, and a lapped
  // subscriber resumes at the oldest unconsumed record, of which there are none by then.
  std::atomic<bool> sub_started{false};
  std::thread sub_thread([&] {
    std::vector<uint64_t> next(kProducers, 0);
    while (!done.load(std::memory_order_acquire)) {
      auto b = sub->poll([&](uint64_t, std::span<const std::byte> payload) {
        testing::TestRecordHead head{};
        if (!testing::check_test_record(payload, &head) || head.producer >= kProducers ||
            head.seq < next[head.producer]) {
          ++sub_torn;
          return;
        }
        next[head.producer] = head.seq + 1;
        ++sub_records;
        sub_started.store(true, std::memory_order_release);
      });
      if (b.overrun_bytes != 0) ++sub_overruns;
      // Sleep now and then so that producers lap the subscriber.
      if (++polls % 64 == 0) {
        std::this_thread::sleep_for(200us);
      } else if (b.records == 0) {
        std::this_thread::yield();
      }
    }
  });
  std::thread consumer([&] {
    for (int i = 0; i < 10'000 && !sub_started.load(std::memory_order_acquire); ++i) {
      std::this_thread::sleep_for(1ms);
    }
    consume(journal, total, &journal_result);
  });
  std::thread p0([&] { produce(ring, 0, per_producer); });
  std::thread p1([&] { produce(ring, 1, per_producer); });
  p0.join();
  p1.join();
  consumer.join();
  done.store(true, std::memory_order_release);
  sub_thread.join();
  EXPECT_EQ(journal_result.records, total);
  EXPECT_EQ(sub_torn, 0u);
  EXPECT_GT(sub_records, 0u);
  EXPECT_GT(sub_overruns, 0u);
  std::printf("subscriber: %llu records, %llu overruns, %llu bytes skipped\n",
              static_cast<unsigned long long>(sub_records),
              static_cast<unsigned long long>(sub_overruns),
              static_cast<unsigned long long>(sub->overrun_bytes_total()));
}

}  // namespace
}  // namespace runnel::ipc
