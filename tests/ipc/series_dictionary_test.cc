// The series dictionary against real POSIX shared memory: insert and lookup, iteration and
// measurement chains, full and malformed inserts, validation on open, replacement, and readers
// racing with inserters (every key is derived from its id, so a partial key shows). Forked
// read-only readers: live_process_test.cc.
#include "ipc/series_dictionary.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/ipc/ring_test_util.h"

namespace runnel::ipc {
namespace {

using namespace std::chrono_literals;

struct ScopedSeriesName {
  testing::ScopedRingName base{"series"};
  ~ScopedSeriesName() { (void)SeriesDictionary::remove(base.str()); }
  const std::string& str() const { return base.str(); }
};

// A series key block as model/record.h lays it out: u16 length-prefixed measurement, u16 tag
// count, then u16 length-prefixed tag keys and values (already sorted by the caller).
std::vector<std::byte> series_key(std::string_view measurement,
                                  std::vector<std::pair<std::string, std::string>> tags) {
  std::vector<std::byte> out;
  auto put16 = [&](size_t v) {
    const uint16_t u = static_cast<uint16_t>(v);
    const auto* p = reinterpret_cast<const std::byte*>(&u);
    out.insert(out.end(), p, p + 2);
  };
  auto put = [&](std::string_view s) {
    put16(s.size());
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    out.insert(out.end(), p, p + s.size());
  };
  put(measurement);
  put16(tags.size());
  for (const auto& [k, v] : tags) {
    put(k);
    put(v);
  }
  return out;
}

// The key inserted for `id` in the race tests: its measurement and tag value derive from id.
std::vector<std::byte> key_for(uint64_t id) {
  return series_key(
      "m" + std::to_string(id % 5),
      {{"host", std::string(1 + id % 37, static_cast<char>('a' + id % 26)) + std::to_string(id)}});
}

SeriesDictionaryOptions sized(uint64_t max_series, uint64_t arena_bytes,
                              uint64_t max_measurements) {
  SeriesDictionaryOptions o;
  o.max_series = max_series;
  o.arena_bytes = arena_bytes;
  o.max_measurements = max_measurements;
  return o;
}

SeriesDictionary create(const ScopedSeriesName& name,
                        const SeriesDictionaryOptions& options = sized(1024, 1 << 20, 64)) {
  auto d = SeriesDictionary::create(name.str(), options);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return std::move(d).value();
}

bool same_bytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

TEST(SeriesDictionaryTest, InsertedSeriesIsFoundByIdWithItsExactKeyBytes) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  const auto cpu = series_key("cpu", {{"host", "a"}, {"region", "eu"}});
  const auto mem = series_key("mem", {});
  ASSERT_EQ(d.insert(11, cpu), InsertStatus::kInserted);
  ASSERT_EQ(d.insert(22, mem), InsertStatus::kInserted);
  auto r = SeriesDictionaryReader::open(name.str());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const auto e = r->series().find(11);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->series_id, 11u);
  EXPECT_TRUE(same_bytes(e->key, cpu));
  EXPECT_EQ(e->measurement, "cpu");
  EXPECT_EQ(r->series().find(22)->measurement, "mem");
  EXPECT_FALSE(r->series().find(33).has_value());
  EXPECT_EQ(r->series().size(), 2u);
  EXPECT_EQ(r->series().instance_id(), d.series().instance_id());
}

TEST(SeriesDictionaryTest, InsertingAKnownIdKeepsTheFirstKey) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  const auto first = series_key("cpu", {{"host", "a"}});
  ASSERT_EQ(d.insert(5, first), InsertStatus::kInserted);
  EXPECT_EQ(d.insert(5, series_key("cpu", {{"host", "b"}})), InsertStatus::kExists);
  EXPECT_TRUE(same_bytes(d.series().find(5)->key, first));
  EXPECT_EQ(d.series().size(), 1u);
}

TEST(SeriesDictionaryTest, CollidingIdsAreAllFoundThroughTheProbeChain) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  // Ids equal modulo every power of two up to 2^20 share a home slot.
  for (uint64_t i = 0; i < 50; ++i)
    ASSERT_EQ(d.insert(7 + (i << 20), key_for(i)), InsertStatus::kInserted);
  for (uint64_t i = 0; i < 50; ++i) {
    const auto e = d.series().find(7 + (i << 20));
    ASSERT_TRUE(e.has_value()) << i;
    EXPECT_TRUE(same_bytes(e->key, key_for(i))) << i;
  }
  EXPECT_FALSE(d.series().find(7 + (50ull << 20)).has_value());
}

TEST(SeriesDictionaryTest, ForEachVisitsEverySeriesInInsertionOrder) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  for (uint64_t id = 100; id > 0; --id)
    ASSERT_EQ(d.insert(id, key_for(id)), InsertStatus::kInserted);
  std::vector<uint64_t> ids;
  d.series().for_each([&](const SeriesEntry& e) {
    EXPECT_TRUE(same_bytes(e.key, key_for(e.series_id)));
    ids.push_back(e.series_id);
  });
  ASSERT_EQ(ids.size(), 100u);
  EXPECT_TRUE(std::is_sorted(ids.rbegin(), ids.rend()));
}

TEST(SeriesDictionaryTest, SeriesOfOneMeasurementAreFoundThroughItsChainNewestFirst) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  for (uint64_t id = 1; id <= 40; ++id)
    ASSERT_EQ(d.insert(id, key_for(id)), InsertStatus::kInserted);
  std::vector<uint64_t> m3;
  d.series().for_each_in_measurement("m3", [&](const SeriesEntry& e) {
    EXPECT_EQ(e.measurement, "m3");
    m3.push_back(e.series_id);
  });
  EXPECT_EQ(m3, (std::vector<uint64_t>{38, 33, 28, 23, 18, 13, 8, 3}));
  size_t none = 0;
  d.series().for_each_in_measurement("m9", [&](const SeriesEntry&) { ++none; });
  d.series().for_each_in_measurement("m", [&](const SeriesEntry&) { ++none; });
  EXPECT_EQ(none, 0u);
  EXPECT_EQ(d.series().stats().unchained, 0u);
}

TEST(SeriesDictionaryTest, ClientsFilterSeriesByMeasurementAndTags) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  ASSERT_EQ(d.insert(1, series_key("cpu", {{"host", "a"}, {"region", "eu"}})),
            InsertStatus::kInserted);
  ASSERT_EQ(d.insert(2, series_key("cpu", {{"host", "b"}, {"region", "us"}})),
            InsertStatus::kInserted);
  ASSERT_EQ(d.insert(3, series_key("cpu", {{"host", "c"}, {"region", "eu"}})),
            InsertStatus::kInserted);
  ASSERT_EQ(d.insert(4, series_key("mem", {{"host", "a"}, {"region", "eu"}})),
            InsertStatus::kInserted);
  auto r = SeriesDictionaryReader::open(name.str());
  ASSERT_TRUE(r.ok());
  std::vector<uint64_t> eu;  // cpu,region=eu
  r->series().for_each_in_measurement("cpu", [&](const SeriesEntry& e) {
    for (const Tag& t : e.tags)
      if (t.key == "region" && t.value == "eu") eu.push_back(e.series_id);
  });
  EXPECT_EQ(eu, (std::vector<uint64_t>{3, 1}));
  const auto e = r->series().find(2);
  ASSERT_TRUE(e.has_value());
  ASSERT_EQ(e->tags.size(), 2u);
  EXPECT_EQ(e->tags.begin()->key, "host");
  EXPECT_EQ(e->tags.begin()->value, "b");
}

TEST(SeriesDictionaryTest, MeasurementsBeyondTheLimitAreStillFoundByFiltering) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name, sized(64, 1 << 16, 2));
  for (uint64_t id = 1; id <= 20; ++id)
    ASSERT_EQ(d.insert(id, key_for(id)), InsertStatus::kInserted);
  EXPECT_GT(d.series().stats().unchained, 0u);
  for (int m = 0; m < 5; ++m) {
    std::set<uint64_t> got;
    d.series().for_each_in_measurement("m" + std::to_string(m),
                                       [&](const SeriesEntry& e) { got.insert(e.series_id); });
    std::set<uint64_t> want;
    for (uint64_t id = 1; id <= 20; ++id)
      if (id % 5 == static_cast<uint64_t>(m)) want.insert(id);
    EXPECT_EQ(got, want) << m;
  }
}

TEST(SeriesDictionaryTest, FullDictionaryRefusesInsertsAndCountsThem) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name, sized(4, 1 << 16, 4));
  for (uint64_t id = 1; id <= 4; ++id)
    ASSERT_EQ(d.insert(id, key_for(id)), InsertStatus::kInserted);
  EXPECT_EQ(d.insert(5, key_for(5)), InsertStatus::kFull);
  EXPECT_EQ(d.insert(4, key_for(4)), InsertStatus::kExists);
  EXPECT_FALSE(d.series().find(5).has_value());
  EXPECT_EQ(d.series().stats().rejected_full, 1u);
  EXPECT_EQ(d.series().size(), 4u);

  ScopedSeriesName small_name;
  // Room for two records of a 5-byte key (24 + 8 bytes each).
  SeriesDictionary small = create(small_name, sized(100, 64, 4));
  const auto k = series_key("m", {});
  EXPECT_EQ(small.insert(1, k), InsertStatus::kInserted);
  EXPECT_EQ(small.insert(2, k), InsertStatus::kInserted);
  EXPECT_EQ(small.insert(3, k), InsertStatus::kFull);
  const SeriesDictionaryStats s = small.series().stats();
  EXPECT_EQ(s.rejected_full, 1u);
  EXPECT_EQ(s.arena_used_bytes, 64u);
  EXPECT_EQ(s.series, 2u);
}

TEST(SeriesDictionaryTest, MalformedKeysAreRefusedAndCounted) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  EXPECT_EQ(d.insert(1, {}), InsertStatus::kInvalid);
  auto no_tag_count = series_key("cpu", {});
  no_tag_count.resize(no_tag_count.size() - 1);
  EXPECT_EQ(d.insert(2, no_tag_count), InsertStatus::kInvalid);
  EXPECT_EQ(d.insert(3, series_key("", {})), InsertStatus::kInvalid);
  auto trailing = series_key("cpu", {{"host", "a"}});
  trailing.push_back(std::byte{0});
  EXPECT_EQ(d.insert(4, trailing), InsertStatus::kInvalid);
  auto cut_tag = series_key("cpu", {{"host", "a"}});
  cut_tag.pop_back();
  EXPECT_EQ(d.insert(5, cut_tag), InsertStatus::kInvalid);
  EXPECT_EQ(d.insert(6, series_key("cpu", {{"host", ""}})), InsertStatus::kInvalid);
  EXPECT_EQ(d.series().stats().rejected_invalid, 6u);
  EXPECT_EQ(d.series().size(), 0u);
}

TEST(SeriesDictionaryTest, ARowKeyWithItsFieldIsStoredAndFoundByMeasurement) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  auto row = series_key("cpu", {{"host", "a"}});
  const std::string field = "usage";
  const uint16_t n = static_cast<uint16_t>(field.size());
  row.resize(row.size() + 2);
  std::memcpy(row.data() + row.size() - 2, &n, 2);
  for (char c : field) row.push_back(static_cast<std::byte>(c));
  ASSERT_EQ(d.insert(7, row), InsertStatus::kInserted);
  auto empty_field = series_key("cpu", {{"host", "b"}});
  empty_field.resize(empty_field.size() + 2);  // a zero length: no field name
  EXPECT_EQ(d.insert(8, empty_field), InsertStatus::kInvalid);
  int seen = 0;
  d.series().for_each_in_measurement("cpu", [&](const SeriesEntry& e) {
    ++seen;
    EXPECT_EQ(e.series_id, 7u);
    EXPECT_EQ(e.field, "usage");
    EXPECT_EQ(e.key.size(), row.size());
  });
  EXPECT_EQ(seen, 1);
}

TEST(SeriesDictionaryTest, OpenWithBadMagicOrVersionIsRefusedNamingTheObject) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  auto raw = ShmObject::open("test", name.str() + ".series", ShmAccess::kReadWrite, 0);
  ASSERT_TRUE(raw.ok());
  auto* prefix = reinterpret_cast<ShmPrefix*>(raw->data());
  prefix->layout_version = kSeriesLayoutVersion + 1;
  auto r = SeriesDictionaryReader::open(name.str());
  EXPECT_EQ(r.status().code(), Status::Code::kUnsupported);
  EXPECT_NE(r.status().message().find(name.str() + ".series"), std::string::npos)
      << r.status().message();
  prefix->magic.store(0x1234);
  r = SeriesDictionaryReader::open(name.str());
  EXPECT_EQ(r.status().code(), Status::Code::kCorruption);
  EXPECT_NE(r.status().message().find(name.str() + ".series"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("magic"), std::string::npos) << r.status().message();
}

TEST(SeriesDictionaryTest, OpenWithAnArenaOutsideTheObjectIsRefused) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name);
  auto raw = ShmObject::open("test", name.str() + ".series", ShmAccess::kReadWrite, 0);
  ASSERT_TRUE(raw.ok());
  reinterpret_cast<SeriesHeader*>(raw->data())->arena_bytes += 8;
  EXPECT_EQ(SeriesDictionaryReader::open(name.str()).status().code(), Status::Code::kCorruption);
}

TEST(SeriesDictionaryTest, MissingObjectAndBadOptionsAreErrors) {
  ScopedSeriesName name;
  EXPECT_EQ(SeriesDictionaryReader::open(name.str()).status().code(), Status::Code::kNotFound);
  SeriesDictionaryOptions options;
  options.max_series = 0;
  EXPECT_EQ(SeriesDictionary::create(name.str(), options).status().code(), Status::Code::kInvalid);
}

TEST(SeriesDictionaryTest, RecreatingRetiresThePreviousInstance) {
  ScopedSeriesName name;
  SeriesDictionary first = create(name);
  ASSERT_EQ(first.insert(1, key_for(1)), InsertStatus::kInserted);
  auto old = SeriesDictionaryReader::open(name.str());
  ASSERT_TRUE(old.ok());
  SeriesDictionary second = create(name);
  EXPECT_TRUE(old->series().retired());
  EXPECT_TRUE(old->series().find(1).has_value());  // the old mapping stays readable
  auto fresh = SeriesDictionaryReader::open(name.str());
  ASSERT_TRUE(fresh.ok());
  EXPECT_FALSE(fresh->series().retired());
  EXPECT_FALSE(fresh->series().find(1).has_value());
  EXPECT_NE(fresh->series().instance_id(), old->series().instance_id());
}

TEST(SeriesDictionaryTest, ReadersRacingWithInsertersNeverSeeAPartialKey) {
  ScopedSeriesName name;
  SeriesDictionary d = create(name, sized(20'000, 4 << 20, 16));
  constexpr uint64_t kIds = 6000;
  std::atomic<uint64_t> inserted_below{0};  // every id < this is in (release by the inserter)
  std::atomic<uint64_t> bad{0};
  // Two inserters with overlapping ids: the mutex serializes them, each id lands once.
  auto inserter = [&](uint64_t first) {
    for (uint64_t id = first; id < kIds; ++id) {
      const InsertStatus st = d.insert(id, key_for(id));
      if (st != InsertStatus::kInserted && st != InsertStatus::kExists) ++bad;
      if (first == 0) inserted_below.store(id + 1, std::memory_order_release);
    }
  };
  auto reader = [&] {
    while (inserted_below.load(std::memory_order_acquire) < kIds) {
      const uint64_t below = inserted_below.load(std::memory_order_acquire);
      for (uint64_t id = below > 50 ? below - 50 : 0; id < below; ++id) {
        const auto e = d.series().find(id);
        if (!e || !same_bytes(e->key, key_for(id))) ++bad;
      }
      uint64_t seen = 0;
      d.series().for_each([&](const SeriesEntry& e) {
        if (!same_bytes(e.key, key_for(e.series_id))) ++bad;
        ++seen;
      });
      if (seen < below) ++bad;
      d.series().for_each_in_measurement("m2", [&](const SeriesEntry& e) {
        if (e.series_id % 5 != 2 || !same_bytes(e.key, key_for(e.series_id))) ++bad;
      });
    }
  };
  std::thread i1(inserter, 0), i2(inserter, kIds / 2), r1(reader), r2(reader);
  i1.join();
  i2.join();
  r1.join();
  r2.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(d.series().size(), kIds);
  std::set<uint64_t> ids;
  d.series().for_each([&](const SeriesEntry& e) { ids.insert(e.series_id); });
  EXPECT_EQ(ids.size(), kIds);
}

}  // namespace
}  // namespace runnel::ipc
