// Live tables in one process against real POSIX shared memory: creation and validation,
// probing, overflow, eviction and tombstones, range reads and scans, change waits, and readers
// racing with a writer (state words all equal, so a torn copy shows).
#include "ipc/live_table.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "tests/ipc/ring_test_util.h"

namespace runnel::ipc {
namespace {

using namespace std::chrono_literals;

// A unique shm name; its ".live" object is removed at scope exit.
struct ScopedLiveName {
  testing::ScopedRingName base{"live"};
  ~ScopedLiveName() { (void)LiveTables::remove(base.str()); }
  const std::string& str() const { return base.str(); }
};

LiveViewSpec make_spec(std::string name, uint32_t state_bytes, uint64_t capacity,
                       uint32_t shards = 1, uint32_t max_probe = 32) {
  LiveViewSpec s;
  s.name = std::move(name);
  s.view_id = 7;
  s.definition_hash = 0xfeedULL;
  s.definition = "view " + s.name + " widths=10ns,100ns";
  s.state_bytes = state_bytes;
  s.widths_ns = {10, 100};
  s.capacity_entries = capacity;
  s.shard_count = shards;
  s.max_probe = max_probe;
  return s;
}

LiveTables create(const ScopedLiveName& name, std::vector<LiveViewSpec> specs) {
  auto t = LiveTables::create(name.str(), specs);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(t).value();
}

ShardWriter attach(LiveTables& t, uint32_t view, uint32_t shard) {
  auto w = t.attach_writer(view, shard);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return std::move(w).value();
}

std::vector<std::byte> words(uint32_t state_bytes, uint64_t value) {
  std::vector<std::byte> s(state_bytes);
  for (size_t i = 0; i + 8 <= s.size(); i += 8) std::memcpy(s.data() + i, &value, 8);
  return s;
}

// Every 8-byte word of the state holds the same value, returned in *value.
bool all_words_equal(std::span<const std::byte> s, uint64_t* value) {
  std::memcpy(value, s.data(), 8);
  for (size_t i = 8; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if (w != *value) return false;
  }
  return true;
}

// One event folded into `key`: the state's words all become `value`, at position `value`.
LiveEntry* put(ShardWriter& w, const EntryKey& key, uint64_t value, uint32_t state_bytes) {
  LiveEntry* e = w.find_or_insert(key);
  if (e == nullptr) return nullptr;
  w.begin_write(e);
  w.store_state(e, words(state_bytes, value));
  w.note_position(e, value);
  w.end_write(e);
  return e;
}

// `count` keys of one series and width that share a home slot in a shard of `capacity` slots.
std::vector<EntryKey> colliding_keys(uint64_t series_id, uint64_t capacity, size_t count) {
  std::map<uint64_t, std::vector<EntryKey>> by_home;
  for (int64_t b = 0;; b += 10) {
    const EntryKey k{series_id, 0, b};
    auto& v = by_home[home_slot(k.series_id, k.width_index, k.bucket_start_ns, capacity)];
    v.push_back(k);
    if (v.size() == count) return v;
  }
}

ReadStatus read_value(const LiveTablesView& t, const EntryKey& key, uint64_t* value,
                      EntryMeta* meta = nullptr) {
  std::vector<std::byte> out(t.info(0).state_bytes);
  const ReadStatus st = t.read(0, key, out, meta);
  if (st == ReadStatus::kFound) {
    EXPECT_TRUE(all_words_equal(out, value));
  }
  return st;
}

TEST(LiveTableTest, CreatedTablesOpenReadOnlyWithTheirDirectory) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 48, 100, 4), make_spec("mem", 8, 10)});
  auto r = LiveTableReader::open(name.str());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const LiveTablesView& v = r->tables();
  ASSERT_EQ(v.view_count(), 2u);
  EXPECT_EQ(v.find_view("mem"), 1u);
  EXPECT_FALSE(v.find_view("disk").has_value());
  const LiveViewInfo i = v.info(0);
  EXPECT_EQ(i.name, "cpu");
  EXPECT_EQ(i.view_id, 7u);
  EXPECT_EQ(i.definition_hash, 0xfeedULL);
  EXPECT_EQ(i.definition, "view cpu widths=10ns,100ns");
  EXPECT_EQ(v.info(1).definition, "view mem widths=10ns,100ns");
  EXPECT_EQ(i.state_bytes, 48u);
  EXPECT_EQ(std::vector<int64_t>(i.widths_ns.begin(), i.widths_ns.end()),
            (std::vector<int64_t>{10, 100}));
  EXPECT_EQ(i.shard_count, 4u);
  EXPECT_EQ(i.shard_capacity, 25u);
  EXPECT_EQ(i.max_probe, 25u);  // capped at the shard capacity
  EXPECT_EQ(v.instance_id(), t.instance_id());
  EXPECT_NE(v.instance_id(), 0u);
  EXPECT_FALSE(v.retired());
  EXPECT_EQ(v.stats(0).capacity_entries, 100u);
  EXPECT_EQ(v.stats(0).entries_used, 0u);
}

TEST(LiveTableTest, InvalidViewSpecsAreRefusedNamingTheView) {
  ScopedLiveName name;
  std::vector<LiveViewSpec> bad;
  bad.push_back(make_spec("", 8, 10));
  bad.push_back(make_spec(std::string(64, 'x'), 8, 10));
  bad.push_back(make_spec("zero_state", 0, 10));
  bad.push_back(make_spec("huge_state", kMaxStateBytes + 1, 10));
  bad.push_back(make_spec("no_shards", 8, 10, 0));
  bad.push_back(make_spec("tiny", 8, 3, 4));
  bad.push_back(make_spec("no_probe", 8, 10, 1, 0));
  bad.push_back(make_spec("widths", 8, 10));
  bad.back().widths_ns = std::vector<int64_t>(kMaxWidths + 1, 10);
  bad.push_back(make_spec("zero_width", 8, 10));
  bad.back().widths_ns = {10, 0};
  bad.push_back(make_spec("init", 8, 10));
  bad.back().initial_state.resize(9);
  bad.push_back(make_spec("definition", 8, 10));
  bad.back().definition.assign(kMaxDefinitionBytes + 1, 'd');
  for (const LiveViewSpec& s : bad) {
    auto t = LiveTables::create(name.str(), std::vector<LiveViewSpec>{s});
    ASSERT_FALSE(t.ok()) << s.name;
    EXPECT_EQ(t.status().code(), Status::Code::kInvalid) << s.name;
    EXPECT_NE(t.status().message().find("'" + s.name + "'"), std::string::npos)
        << t.status().message();
  }
  auto dup =
      LiveTables::create(name.str(), std::vector{make_spec("a", 8, 10), make_spec("a", 8, 10)});
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("'a'"), std::string::npos) << dup.status().message();
}

// Damages the object through a second read-write mapping; open() must then fail with `code`,
// naming the object and `word`.
void expect_open_refused(const ScopedLiveName& name, const std::function<void(std::byte*)>& damage,
                         Status::Code code, const std::string& word) {
  auto raw = ShmObject::open("test", name.str() + ".live", ShmAccess::kReadWrite, 0);
  ASSERT_TRUE(raw.ok());
  damage(raw->data());
  auto r = LiveTableReader::open(name.str());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), code);
  EXPECT_NE(r.status().message().find(name.str() + ".live"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find(word), std::string::npos) << r.status().message();
}

TEST(LiveTableTest, OpenWithBadMagicIsRefusedNamingTheObject) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 10)});
  expect_open_refused(
      name, [](std::byte* p) { reinterpret_cast<LiveHeader*>(p)->prefix.magic.store(0x1234); },
      Status::Code::kCorruption, "magic");
}

TEST(LiveTableTest, OpenWithWrongLayoutVersionIsRefusedNamingTheObject) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 10)});
  expect_open_refused(
      name,
      [](std::byte* p) {
        reinterpret_cast<LiveHeader*>(p)->prefix.layout_version = kLiveLayoutVersion + 1;
      },
      Status::Code::kUnsupported, "version");
}

TEST(LiveTableTest, OpenWithAnEntryAreaOutsideTheObjectIsRefusedNamingTheView) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 10)});
  expect_open_refused(
      name,
      [](std::byte* p) {
        reinterpret_cast<ViewDescriptor*>(p + kLiveHeaderBytes)->shard_capacity = 1 << 20;
      },
      Status::Code::kCorruption, "'cpu'");
}

TEST(LiveTableTest, OpeningAMissingObjectIsNotFound) {
  ScopedLiveName name;
  EXPECT_EQ(LiveTableReader::open(name.str()).status().code(), Status::Code::kNotFound);
  EXPECT_EQ(LiveTableReader::open("a/b").status().code(), Status::Code::kInvalid);
}

TEST(LiveTableTest, ObjectIsCreatedWithTheRequestedModeAndGroup) {
  ScopedLiveName name;
  ShmOptions options;
  options.mode = 0640;
  options.gid = getegid();
  auto t = LiveTables::create(name.str(), std::vector{make_spec("cpu", 8, 10)}, options);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm/" + name.str() + ".live").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_EQ(st.st_gid, getegid());
}

TEST(LiveTableTest, RecreatingRetiresThePreviousInstanceAndWakesItsWaiters) {
  ScopedLiveName name;
  LiveTables first = create(name, {make_spec("cpu", 8, 10)});
  auto old_reader = LiveTableReader::open(name.str());
  ASSERT_TRUE(old_reader.ok());
  const LiveTablesView old = old_reader->tables();
  std::atomic<int> result{-1};
  std::thread waiter(
      [&] { result = static_cast<int>(old.wait_for_change(0, old.change_seq(0), 10s)); });
  std::this_thread::sleep_for(50ms);
  const auto start = std::chrono::steady_clock::now();
  LiveTables second = create(name, {make_spec("cpu", 8, 10)});
  waiter.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_EQ(result.load(), static_cast<int>(WaitStatus::kReplaced));
  EXPECT_TRUE(old.retired());
  auto fresh = LiveTableReader::open(name.str());
  ASSERT_TRUE(fresh.ok());
  EXPECT_FALSE(fresh->tables().retired());
  EXPECT_NE(fresh->tables().instance_id(), old.instance_id());
  EXPECT_EQ(fresh->tables().instance_id(), second.instance_id());
}

TEST(LiveTableTest, InsertedEntryIsReadBackWithItsStateAndPositionRange) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 24, 64)});
  ShardWriter w = attach(t, 0, 0);
  const EntryKey key{42, 1, 300};
  LiveEntry* e = w.find_or_insert(key);
  ASSERT_NE(e, nullptr);
  w.begin_write(e);
  std::memcpy(w.state(e).data(), "abcdefghijklmnopqrstuvw", 24);  // in place
  w.note_position(e, 100);
  w.note_position(e, 120);
  w.note_position(e, 110);
  w.end_write(e);
  std::vector<std::byte> out(24);
  EntryMeta m;
  ASSERT_EQ(t.tables().read(0, key, out, &m), ReadStatus::kFound);
  EXPECT_EQ(std::memcmp(out.data(), "abcdefghijklmnopqrstuvw", 24), 0);
  EXPECT_EQ(m.key, key);
  EXPECT_EQ(m.first_pos, 100u);
  EXPECT_EQ(m.last_pos, 120u);
  EXPECT_EQ(m.update_count, 3u);
  EXPECT_EQ(t.tables().read(0, EntryKey{42, 0, 300}, out, &m), ReadStatus::kNotFound);
  EXPECT_EQ(t.tables().read(0, EntryKey{42, 1, 310}, out, &m), ReadStatus::kNotFound);
}

TEST(LiveTableTest, NewEntryStartsFromTheViewsInitialState) {
  ScopedLiveName name;
  LiveViewSpec spec = make_spec("cpu", 12, 16);
  for (int i = 0; i < 12; ++i) spec.initial_state.push_back(static_cast<std::byte>(0xa0 + i));
  LiveTables t = create(name, {spec});
  ShardWriter w = attach(t, 0, 0);
  ASSERT_NE(w.find_or_insert(EntryKey{1, 0, 0}), nullptr);
  std::vector<std::byte> out(12);
  EntryMeta m;
  ASSERT_EQ(t.tables().read(0, EntryKey{1, 0, 0}, out, &m), ReadStatus::kFound);
  EXPECT_EQ(out, spec.initial_state);
  EXPECT_EQ(m.update_count, 0u);
  EXPECT_EQ(m.first_pos, 0u);
}

TEST(LiveTableTest, FindOrInsertReturnsOneEntryPerKeyAndDistinctOnesPerWidthAndBucket) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 64)});
  ShardWriter w = attach(t, 0, 0);
  LiveEntry* a = w.find_or_insert(EntryKey{5, 0, 10});
  EXPECT_EQ(w.find_or_insert(EntryKey{5, 0, 10}), a);
  EXPECT_NE(w.find_or_insert(EntryKey{5, 1, 10}), a);
  EXPECT_NE(w.find_or_insert(EntryKey{5, 0, 20}), a);
  EXPECT_NE(w.find_or_insert(EntryKey{6, 0, 10}), a);
  EXPECT_EQ(t.tables().stats(0).entries_used, 4u);
  EXPECT_EQ(t.tables().stats(0).inserts, 4u);
}

TEST(LiveTableTest, WriterRefusesKeysOfAnotherShardOrAnUnknownWidth) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 64, 4)});
  ShardWriter w = attach(t, 0, 1);
  EXPECT_EQ(t.tables().shard_of(0, 9), 1u);
  EXPECT_NE(w.find_or_insert(EntryKey{9, 0, 0}), nullptr);
  EXPECT_EQ(w.find_or_insert(EntryKey{10, 0, 0}), nullptr);  // shard 2
  EXPECT_EQ(w.find_or_insert(EntryKey{9, 2, 0}), nullptr);   // two widths only
}

TEST(LiveTableTest, AttachingAShardTwiceIsBusyUntilTheWriterIsGone) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 64, 2)});
  {
    ShardWriter w = attach(t, 0, 1);
    EXPECT_EQ(t.attach_writer(0, 1).status().code(), Status::Code::kBusy);
    EXPECT_TRUE(t.attach_writer(0, 0).ok());
    ShardWriter moved = std::move(w);
    EXPECT_EQ(t.attach_writer(0, 1).status().code(), Status::Code::kBusy);
  }
  EXPECT_TRUE(t.attach_writer(0, 1).ok());
  EXPECT_EQ(t.attach_writer(0, 2).status().code(), Status::Code::kInvalid);
  EXPECT_EQ(t.attach_writer(1, 0).status().code(), Status::Code::kInvalid);
}

TEST(LiveTableTest, FullShardReturnsNullAndTheCallerCountsOverflow) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 8, 1, 8)});
  ShardWriter w = attach(t, 0, 0);
  for (int64_t b = 0; b < 8; ++b) ASSERT_NE(put(w, EntryKey{3, 0, b * 10}, 1, 8), nullptr);
  EXPECT_EQ(w.find_or_insert(EntryKey{3, 0, 80}), nullptr);
  w.add_overflow();
  EXPECT_NE(w.find_or_insert(EntryKey{3, 0, 70}), nullptr);  // existing keys still update
  const LiveViewStats s = t.tables().stats(0);
  EXPECT_EQ(s.entries_used, 8u);
  EXPECT_EQ(s.overflow, 1u);
}

TEST(LiveTableTest, ProbeBoundRefusesAKeyBeforeTheShardIsFull) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 64, 1, 2)});
  ShardWriter w = attach(t, 0, 0);
  const auto keys = colliding_keys(3, 64, 3);
  EXPECT_NE(w.find_or_insert(keys[0]), nullptr);
  EXPECT_NE(w.find_or_insert(keys[1]), nullptr);
  EXPECT_EQ(w.find_or_insert(keys[2]), nullptr);
  EXPECT_EQ(t.tables().stats(0).entries_used, 2u);
}

TEST(LiveTableTest, LongChainsThatWrapAroundTheShardKeepOneEntryPerKey) {
  // Chains longer than the eight slots the writer's slot index reads per step, crossing the
  // end of the shard, with tombstones in them, against a probe bound that is no multiple of
  // eight: every key present is found in its one slot (also by a reader, which probes the
  // entries themselves), and none evicted is.
  constexpr uint64_t kCapacity = 64;
  constexpr uint32_t kMaxProbe = 21;
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, kCapacity, 1, kMaxProbe)});
  ShardWriter w = attach(t, 0, 0);
  // Keys homed at the last two slots and the first one, a dozen each.
  std::vector<EntryKey> keys;
  std::map<uint64_t, int> per_home;
  for (int64_t b = 0; keys.size() < 36; b += 10) {
    const EntryKey k{7, 0, b};
    const uint64_t h = home_slot(k.series_id, k.width_index, k.bucket_start_ns, kCapacity);
    if ((h == kCapacity - 2 || h == kCapacity - 1 || h == 0) && per_home[h] < 12) {
      ++per_home[h];
      keys.push_back(k);
    }
  }
  std::map<size_t, LiveEntry*> present;  // key index -> its entry
  uint64_t value = 0;
  auto check = [&] {
    for (size_t i = 0; i < keys.size(); ++i) {
      uint64_t v = 0;
      const auto it = present.find(i);
      const ReadStatus st = read_value(t.tables(), keys[i], &v);
      if (it == present.end()) {
        EXPECT_EQ(st, ReadStatus::kNotFound) << "key " << i;
        continue;
      }
      EXPECT_EQ(st, ReadStatus::kFound) << "key " << i;
      EXPECT_EQ(w.find_or_insert(keys[i]), it->second) << "key " << i;
    }
    EXPECT_EQ(t.tables().stats(0).entries_used, present.size());
  };
  for (int round = 0; round < 3; ++round) {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (present.count(i) != 0) continue;
      if (LiveEntry* e = put(w, keys[i], ++value, 8)) present[i] = e;
    }
    EXPECT_GE(present.size(), kMaxProbe);  // one run of slots from 62 on, longer than 8
    check();
    // Every third key present leaves (tombstones inside the chains), then every other one.
    size_t n = 0;
    w.evict_if([&](const EntryMeta& m) {
      for (auto it = present.begin(); it != present.end(); ++it) {
        if (!(keys[it->first] == m.key)) continue;
        if (++n % (round == 1 ? 2 : 3) != 0) return false;
        present.erase(it);
        return true;
      }
      return false;
    });
    check();
  }
}

TEST(LiveTableTest, EvictionLeavesATombstoneThatKeepsTheChainBehindItReadable) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 16, 32, 1, 8)});
  ShardWriter w = attach(t, 0, 0);
  const auto k = colliding_keys(4, 32, 4);
  for (int i = 0; i < 3; ++i) ASSERT_NE(put(w, k[i], 10 + i, 16), nullptr);
  EXPECT_EQ(w.evict_if([&](const EntryMeta& m) { return m.key == k[1]; }), 1u);
  uint64_t v = 0;
  EXPECT_EQ(read_value(t.tables(), k[0], &v), ReadStatus::kFound);
  EXPECT_EQ(v, 10u);
  EXPECT_EQ(read_value(t.tables(), k[1], &v), ReadStatus::kNotFound);
  EXPECT_EQ(read_value(t.tables(), k[2], &v), ReadStatus::kFound);
  EXPECT_EQ(v, 12u);
  LiveViewStats s = t.tables().stats(0);
  EXPECT_EQ(s.tombstones, 1u);
  EXPECT_EQ(s.entries_used, 2u);
  EXPECT_EQ(s.evictions, 1u);
  // A new key of the same chain takes the tombstone's slot; an old key is not duplicated.
  ASSERT_NE(put(w, k[3], 13, 16), nullptr);
  ASSERT_NE(put(w, k[2], 22, 16), nullptr);
  s = t.tables().stats(0);
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.entries_used, 3u);
  EXPECT_EQ(read_value(t.tables(), k[3], &v), ReadStatus::kFound);
  EXPECT_EQ(v, 13u);
  EXPECT_EQ(read_value(t.tables(), k[2], &v), ReadStatus::kFound);
  EXPECT_EQ(v, 22u);
  size_t seen = 0;
  t.tables().scan(0, std::nullopt, [&](const EntryMeta&, std::span<const std::byte>) { ++seen; });
  EXPECT_EQ(seen, 3u);
}

TEST(LiveTableTest, TombstonesThatEndAChainBecomeEmptySlotsAgain) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 32, 1, 8)});
  ShardWriter w = attach(t, 0, 0);
  const auto k = colliding_keys(4, 32, 3);
  for (int i = 0; i < 3; ++i) ASSERT_NE(put(w, k[i], 1, 8), nullptr);
  w.evict_if([&](const EntryMeta& m) { return m.key == k[1]; });
  EXPECT_EQ(t.tables().stats(0).tombstones, 1u);  // bridges k[0] -> k[2]
  w.evict_if([&](const EntryMeta& m) { return m.key == k[2]; });
  EXPECT_EQ(t.tables().stats(0).tombstones, 0u);  // nothing lies behind either any more
  uint64_t v = 0;
  EXPECT_EQ(read_value(t.tables(), k[0], &v), ReadStatus::kFound);
  w.evict_if([](const EntryMeta&) { return true; });
  const LiveViewStats s = t.tables().stats(0);
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.entries_used, 0u);
  EXPECT_EQ(s.evictions, 3u);
}

TEST(LiveTableTest, AWriterAttachedToAShardWithEntriesFindsThemAndKeepsTheirChains) {
  // The writer's slot index is built from the entries at attach: a later writer of the shard
  // updates the keys there (no duplicates), passes tombstones, and reuses them.
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 32, 1, 8)});
  const auto k = colliding_keys(4, 32, 4);
  LiveEntry* first[3];
  {
    ShardWriter w = attach(t, 0, 0);
    for (int i = 0; i < 3; ++i) ASSERT_NE(first[i] = put(w, k[i], 1 + i, 8), nullptr);
    w.evict_if([&](const EntryMeta& m) { return m.key == k[1]; });  // a tombstone: k0 -> k2
  }
  ShardWriter w = attach(t, 0, 0);
  EXPECT_EQ(put(w, k[0], 10, 8), first[0]);
  EXPECT_EQ(put(w, k[2], 12, 8), first[2]);
  EXPECT_EQ(put(w, k[3], 13, 8), first[1]);  // takes the tombstone's slot
  const LiveViewStats s = t.tables().stats(0);
  EXPECT_EQ(s.entries_used, 3u);
  EXPECT_EQ(s.tombstones, 0u);
  uint64_t v = 0;
  EXPECT_EQ(read_value(t.tables(), k[2], &v), ReadStatus::kFound);
  EXPECT_EQ(v, 12u);
  // Evicting the chain's end empties its slot, and the one before it once that is evicted.
  w.evict_if([&](const EntryMeta& m) { return m.key == k[2]; });
  w.evict_if([&](const EntryMeta& m) { return m.key == k[3]; });
  EXPECT_EQ(t.tables().stats(0).tombstones, 0u);
  EXPECT_EQ(read_value(t.tables(), k[0], &v), ReadStatus::kFound);
  EXPECT_EQ(v, 10u);
}

TEST(LiveTableTest, EvictOldestTakesEntriesInInsertionOrderAndStopsWhereTold) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 256, 1, 32)});
  ShardWriter w = attach(t, 0, 0);
  w.track_inserts();
  // Inserted out of bucket order: 0 10 70 20 30 ... 60 (the 70 arrives early).
  std::vector<int64_t> order = {0, 10, 70, 20, 30, 40, 50, 60};
  for (int64_t b : order) ASSERT_NE(put(w, EntryKey{1, 0, b}, 1, 8), nullptr);
  ASSERT_NE(put(w, EntryKey{1, 0, 10}, 2, 8), nullptr);  // an update queues nothing
  EXPECT_EQ(w.queued(), order.size());
  auto older_than_45 = [](const EntryMeta& m, bool) { return m.key.bucket_start_ns < 45; };
  auto every = [](const EntryMeta&, bool) { return true; };
  auto never = [](const EntryMeta&) { return false; };
  auto always = [](const EntryMeta&) { return true; };
  bool stopped = false;
  // Stops at the first entry it keeps (70), which stays first in the queue.
  EXPECT_EQ(w.evict_oldest(100, older_than_45, never, &stopped), 2u);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(w.queued(), 6u);
  uint64_t v = 0;
  EXPECT_EQ(read_value(t.tables(), EntryKey{1, 0, 0}, &v), ReadStatus::kNotFound);
  EXPECT_EQ(read_value(t.tables(), EntryKey{1, 0, 10}, &v), ReadStatus::kNotFound);
  EXPECT_EQ(read_value(t.tables(), EntryKey{1, 0, 70}, &v), ReadStatus::kFound);
  // Going on past it: 70 is queued again at the back, and the look budget ends the call.
  EXPECT_EQ(w.evict_oldest(2, older_than_45, always, &stopped), 1u);  // 70 kept, 20 evicted
  EXPECT_FALSE(stopped);
  EXPECT_EQ(w.evict_oldest(100, older_than_45, always, &stopped), 2u);  // 30 and 40
  EXPECT_FALSE(stopped);  // ran out of looks while cycling through the kept ones
  EXPECT_EQ(read_value(t.tables(), EntryKey{1, 0, 50}, &v), ReadStatus::kFound);
  EXPECT_EQ(read_value(t.tables(), EntryKey{1, 0, 70}, &v), ReadStatus::kFound);
  EXPECT_EQ(w.queued(), 3u);
  EXPECT_EQ(w.evict_oldest(100, every, never, &stopped), 3u);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(w.queued(), 0u);
  const LiveViewStats s = t.tables().stats(0);
  EXPECT_EQ(s.entries_used, 0u);
  EXPECT_EQ(s.evictions, 8u);
  EXPECT_EQ(s.tombstones, 0u);  // every slot came back empty: no chain is left to bridge
}

TEST(LiveTableTest, EvictOldestTellsWhichEntriesWereUpdatedSinceTheyWereQueued) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 256, 1, 32)});
  ShardWriter w = attach(t, 0, 0);
  w.track_inserts();
  for (int64_t b : {0, 10, 20}) ASSERT_NE(put(w, EntryKey{1, 0, b}, 1, 8), nullptr);
  ASSERT_NE(put(w, EntryKey{1, 0, 0}, 2, 8), nullptr);  // 0 is updated once more
  // A second chance: evict what was not updated since it was queued, queue the rest again.
  auto unless_updated = [](const EntryMeta&, bool updated) { return !updated; };
  auto always = [](const EntryMeta&) { return true; };
  EXPECT_EQ(w.evict_oldest(3, unless_updated, always), 2u);  // 10 and 20; 0 goes to the back
  uint64_t v = 0;
  EXPECT_EQ(read_value(t.tables(), EntryKey{1, 0, 0}, &v), ReadStatus::kFound);
  EXPECT_EQ(w.queued(), 1u);
  EXPECT_EQ(w.evict_oldest(1, unless_updated, always), 1u);  // not updated since requeued
  EXPECT_EQ(read_value(t.tables(), EntryKey{1, 0, 0}, &v), ReadStatus::kNotFound);
}

TEST(LiveTableTest, EvictOldestLeavesTombstonesOnlyWhereAChainContinues) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 32, 1, 8)});
  ShardWriter w = attach(t, 0, 0);
  w.track_inserts();
  const auto k = colliding_keys(4, 32, 3);  // one chain: k[0] k[1] k[2] in consecutive slots
  for (int i = 0; i < 3; ++i) ASSERT_NE(put(w, k[i], 1, 8), nullptr);
  auto is = [](const EntryKey& key) {
    return [key](const EntryMeta& m, bool) { return m.key == key; };
  };
  auto always = [](const EntryMeta&) { return true; };
  EXPECT_EQ(w.evict_oldest(3, is(k[1]), always), 1u);
  EXPECT_EQ(t.tables().stats(0).tombstones, 1u);  // bridges k[0] -> k[2]
  uint64_t v = 0;
  EXPECT_EQ(read_value(t.tables(), k[2], &v), ReadStatus::kFound);
  // The chain's last entry leaves: its slot and the tombstone before it become empty.
  EXPECT_EQ(w.evict_oldest(3, is(k[2]), always), 1u);
  EXPECT_EQ(t.tables().stats(0).tombstones, 0u);
  EXPECT_EQ(read_value(t.tables(), k[0], &v), ReadStatus::kFound);
  EXPECT_EQ(w.queued(), 1u);
}

TEST(LiveTableTest, EvictionByWatermarkRemovesOnlyAbsorbedEntries) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 256, 1, 32)});
  ShardWriter w = attach(t, 0, 0);
  for (uint64_t i = 0; i < 100; ++i)
    ASSERT_NE(put(w, EntryKey{1, 0, int64_t(i) * 10}, i, 8), nullptr);
  const uint64_t watermark = 60;  // the batch layer has absorbed positions below 60
  EXPECT_EQ(w.evict_if([&](const EntryMeta& m) { return m.last_pos < watermark; }), 60u);
  for (uint64_t i = 0; i < 100; ++i) {
    uint64_t v = 0;
    EXPECT_EQ(read_value(t.tables(), EntryKey{1, 0, int64_t(i) * 10}, &v),
              i < watermark ? ReadStatus::kNotFound : ReadStatus::kFound)
        << i;
  }
  EXPECT_EQ(t.tables().stats(0).entries_used, 40u);
}

TEST(LiveTableTest, ReadRangeReturnsTheSeriesBucketsOfOneWidthInAscendingOrder) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 512, 2, 32)});
  ShardWriter w = attach(t, 0, 0);
  for (int64_t b = -50; b < 100; b += 10)
    ASSERT_NE(put(w, EntryKey{2, 0, b}, uint64_t(b + 1000), 8), nullptr);
  ASSERT_NE(put(w, EntryKey{2, 1, 0}, 1, 8), nullptr);   // another width
  ASSERT_NE(put(w, EntryKey{4, 0, 20}, 1, 8), nullptr);  // another series, same shard
  auto range = [&](int64_t from, int64_t to) {
    std::vector<int64_t> got;
    const ScanResult r = t.tables().read_range(
        0, 2, 0, from, to, [&](const EntryMeta& m, std::span<const std::byte> s) {
          uint64_t v = 0;
          EXPECT_TRUE(all_words_equal(s, &v));
          EXPECT_EQ(v, uint64_t(m.key.bucket_start_ns + 1000));
          got.push_back(m.key.bucket_start_ns);
        });
    EXPECT_EQ(r.entries, got.size());
    EXPECT_EQ(r.busy, 0u);
    return got;
  };
  // Few bucket starts: probed one by one.
  EXPECT_EQ(range(15, 65), (std::vector<int64_t>{20, 30, 40, 50, 60}));
  EXPECT_EQ(range(-25, 1), (std::vector<int64_t>{-20, -10, 0}));
  EXPECT_EQ(range(20, 21), (std::vector<int64_t>{20}));
  EXPECT_TRUE(range(21, 29).empty());
  EXPECT_TRUE(range(30, 30).empty());
  // More bucket starts than slots: the shard is scanned, the result is the same.
  std::vector<int64_t> all;
  for (int64_t b = -50; b < 100; b += 10) all.push_back(b);
  EXPECT_EQ(range(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()), all);
  EXPECT_EQ(range(-1'000'000, 65), (std::vector<int64_t>(all.begin(), all.begin() + 12)));
}

TEST(LiveTableTest, GenerationsOfOneBucketAreSeparateEntriesThatReadRangeReturnsTogether) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 512, 1, 32)});
  ShardWriter w = attach(t, 0, 0);
  LiveEntry* g1 = put(w, EntryKey{3, 0, 40, 1}, 11, 8);
  LiveEntry* g2 = put(w, EntryKey{3, 0, 40, 2}, 22, 8);
  ASSERT_NE(g1, nullptr);
  ASSERT_NE(g2, nullptr);
  EXPECT_NE(g1, g2);
  EXPECT_EQ(w.find_or_insert(EntryKey{3, 0, 40, 2}), g2);
  uint64_t v = 0;
  EntryMeta m;
  ASSERT_EQ(read_value(t.tables(), EntryKey{3, 0, 40, 1}, &v, &m), ReadStatus::kFound);
  EXPECT_EQ(v, 11u);
  EXPECT_EQ(m.key.generation, 1u);
  EXPECT_EQ(read_value(t.tables(), EntryKey{3, 0, 40, 3}, &v), ReadStatus::kNotFound);
  std::map<uint64_t, uint64_t> by_generation;
  const ScanResult r = t.tables().read_range(0, 3, 0, 40, 50, [&](const EntryMeta& e, std::span<const std::byte> s) {
    uint64_t x = 0;
    EXPECT_TRUE(all_words_equal(s, &x));
    by_generation[e.key.generation] = x;
  });
  EXPECT_EQ(r.entries, 2u);
  EXPECT_EQ(by_generation, (std::map<uint64_t, uint64_t>{{1, 11}, {2, 22}}));
  // Absorbed generations leave; the announcement comes first and never goes back.
  EXPECT_EQ(t.tables().evicted_generation(0), 0u);
  t.publish_evicted_generation(0, 1);
  t.publish_evicted_generation(0, 0);
  EXPECT_EQ(t.tables().evicted_generation(0), 1u);
  EXPECT_EQ(w.evict_if([](const EntryMeta& e) { return e.key.generation <= 1; }), 1u);
  by_generation.clear();
  t.tables().read_range(0, 3, 0, 40, 50, [&](const EntryMeta& e, std::span<const std::byte>) {
    by_generation[e.key.generation] = 1;
  });
  EXPECT_EQ(by_generation.size(), 1u);
  EXPECT_TRUE(by_generation.contains(2));
}

TEST(LiveTableTest, TheBatchDirectoryIsAnnouncedToReaders) {
  ScopedLiveName name;
  auto t = LiveTables::create(name.str(), std::vector<LiveViewSpec>{make_spec("cpu", 8, 64)}, {},
                              "/var/lib/runnel/views");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  auto r = LiveTableReader::open(name.str());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tables().batch_dir(), "/var/lib/runnel/views");
  auto too_long = LiveTables::create(name.str(), std::vector<LiveViewSpec>{make_spec("cpu", 8, 64)},
                                     {}, std::string(kMaxBatchDirBytes + 1, 'x'));
  EXPECT_EQ(too_long.status().code(), Status::Code::kInvalid);
}

TEST(LiveTableTest, ScanVisitsEveryOccupiedEntryOfOneShardOrOfAll) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 64, 2, 32)});
  ShardWriter w0 = attach(t, 0, 0);
  ShardWriter w1 = attach(t, 0, 1);
  for (uint64_t s = 0; s < 10; ++s)
    ASSERT_NE(put(s % 2 == 0 ? w0 : w1, EntryKey{s, 0, 0}, s, 8), nullptr);
  w0.evict_if([](const EntryMeta& m) { return m.key.series_id == 4; });
  std::vector<uint64_t> all, odd;
  t.tables().scan(0, std::nullopt, [&](const EntryMeta& m, std::span<const std::byte>) {
    all.push_back(m.key.series_id);
  });
  t.tables().scan(0, 1u, [&](const EntryMeta& m, std::span<const std::byte>) {
    odd.push_back(m.key.series_id);
  });
  std::sort(all.begin(), all.end());
  std::sort(odd.begin(), odd.end());
  EXPECT_EQ(all, (std::vector<uint64_t>{0, 1, 2, 3, 5, 6, 7, 8, 9}));
  EXPECT_EQ(odd, (std::vector<uint64_t>{1, 3, 5, 7, 9}));
  EXPECT_EQ(t.tables().scan(0, 2u, [](const EntryMeta&, std::span<const std::byte>) {}).entries,
            0u);
}

TEST(LiveTableTest, ReadRefusesAnUnknownViewOrWidthAndAShortBuffer) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 16, 16)});
  std::vector<std::byte> out(16), short_out(15);
  EXPECT_EQ(t.tables().read(1, EntryKey{}, out, nullptr), ReadStatus::kInvalid);
  EXPECT_EQ(t.tables().read(0, EntryKey{0, 2, 0}, out, nullptr), ReadStatus::kInvalid);
  EXPECT_EQ(t.tables().read(0, EntryKey{}, short_out, nullptr), ReadStatus::kInvalid);
  EXPECT_EQ(t.tables().read(0, EntryKey{}, out, nullptr), ReadStatus::kNotFound);
}

TEST(LiveTableTest, StatsSumTheCountersOfEveryShard) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 64, 2), make_spec("mem", 8, 64, 2)});
  ShardWriter a = attach(t, 0, 0);
  ShardWriter b = attach(t, 0, 1);
  a.add_late(2);
  b.add_late(3);
  a.add_overflow();
  b.add_overflow(4);
  const LiveViewStats s = t.tables().stats(0);
  EXPECT_EQ(s.late_events, 5u);
  EXPECT_EQ(s.overflow, 5u);
  EXPECT_EQ(t.tables().stats(1).late_events, 0u);
}

TEST(LiveTableTest, BucketStartFloorsAlsoBeforeTheEpoch) {
  EXPECT_EQ(bucket_start(0, 10), 0);
  EXPECT_EQ(bucket_start(9, 10), 0);
  EXPECT_EQ(bucket_start(10, 10), 10);
  EXPECT_EQ(bucket_start(-1, 10), -10);
  EXPECT_EQ(bucket_start(-10, 10), -10);
  EXPECT_EQ(bucket_start(-11, 10), -20);
}

TEST(LiveTableTest, WaitForChangeReturnsAtOnceWhenTheSequenceHasMoved) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 16)});
  const uint32_t seen = t.tables().change_seq(0);
  t.end_batch(0);
  EXPECT_EQ(t.tables().change_seq(0), seen + 1);
  EXPECT_EQ(t.tables().wait_for_change(0, seen, 10s), WaitStatus::kChanged);
}

TEST(LiveTableTest, WaitForChangeTimesOutWhenNoBatchEnds) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 16)});
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(t.tables().wait_for_change(0, t.tables().change_seq(0), 50ms), WaitStatus::kTimeout);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
}

TEST(LiveTableTest, EndOfABatchWakesAWaitingReader) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 16)});
  auto r = LiveTableReader::open(name.str());
  ASSERT_TRUE(r.ok());
  const uint32_t seen = r->tables().change_seq(0);
  std::atomic<int> result{-1};
  std::thread waiter([&] { result = static_cast<int>(r->tables().wait_for_change(0, seen, 10s)); });
  std::this_thread::sleep_for(50ms);
  const auto start = std::chrono::steady_clock::now();
  t.end_batch(0);
  waiter.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_EQ(result.load(), static_cast<int>(WaitStatus::kChanged));
}

TEST(LiveTableTest, WakeWaitersDeliversAChangeThatEndBatchDidNotWakeFor) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 8, 16)});
  // As if end_batch had just woken: the next one stays within kWakeInterval and does not wake.
  auto raw = ShmObject::open("test", name.str() + ".live", ShmAccess::kReadWrite, 0);
  ASSERT_TRUE(raw.ok());
  reinterpret_cast<ViewDescriptor*>(raw->data() + kLiveHeaderBytes)
      ->last_wake_ns.store(std::numeric_limits<int64_t>::max() / 2);
  const uint32_t seen = t.tables().change_seq(0);
  std::atomic<bool> done{false};
  std::thread waiter([&] {
    EXPECT_EQ(t.tables().wait_for_change(0, seen, 10s), WaitStatus::kChanged);
    done = true;
  });
  std::this_thread::sleep_for(100ms);
  t.end_batch(0);
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(done.load());  // still asleep: nobody woke the futex
  const auto start = std::chrono::steady_clock::now();
  t.wake_waiters();
  waiter.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

// How long each race runs; sanitizer builds simply get through fewer rounds.
constexpr auto kRaceTime = std::chrono::milliseconds(600);

TEST(LiveTableTest, ReadersRacingWithAWriterNeverSeeATornEntry) {
  ScopedLiveName name;
  constexpr uint32_t kState = 256;  // 32 words, all equal to the entry's last position
  LiveTables t = create(name, {make_spec("cpu", kState, 64, 1, 16)});
  ShardWriter w = attach(t, 0, 0);
  constexpr int kKeys = 8;
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (uint64_t n = 1; !stop.load(std::memory_order_relaxed); ++n) {
      for (int k = 0; k < kKeys; ++k) {
        LiveEntry* e = w.find_or_insert(EntryKey{1, 0, k * 10});
        ASSERT_NE(e, nullptr);
        w.begin_write(e);
#if defined(__SANITIZE_THREAD__)
        w.store_state(e, words(kState, n));  // TSan sees plain in-place stores as races
#else
        if (n % 2 == 0) {
          w.store_state(e, words(kState, n));
        } else {
          std::span<std::byte> s = w.state(e);
          for (size_t i = 0; i < kState; i += 8) std::memcpy(s.data() + i, &n, 8);
        }
#endif
        w.note_position(e, n);
        w.end_write(e);
      }
      t.end_batch(0);
    }
  });
  std::atomic<uint64_t> torn{0}, found{0}, regressions{0};
  auto reader = [&](bool use_scan) {
    std::vector<uint64_t> last(kKeys, 0);
    std::vector<std::byte> out(kState);
    const auto deadline = std::chrono::steady_clock::now() + kRaceTime;
    while (std::chrono::steady_clock::now() < deadline) {
      auto check = [&](const EntryMeta& m, std::span<const std::byte> s) {
        uint64_t v = 0;
        if (!all_words_equal(s, &v) || v != m.last_pos || m.update_count != v) ++torn;
        const size_t k = static_cast<size_t>(m.key.bucket_start_ns / 10);
        if (v < last[k]) ++regressions;
        last[k] = v;
        ++found;
      };
      if (use_scan) {
        t.tables().scan(0, std::nullopt, check);
      } else {
        for (int k = 0; k < kKeys; ++k) {
          EntryMeta m;
          if (t.tables().read(0, EntryKey{1, 0, k * 10}, out, &m) == ReadStatus::kFound)
            check(m, out);
        }
      }
    }
  };
  std::thread r1(reader, false), r2(reader, true);
  r1.join();
  r2.join();
  stop = true;
  writer.join();
  EXPECT_EQ(torn.load(), 0u);
  EXPECT_EQ(regressions.load(), 0u);
  EXPECT_GT(found.load(), 0u);
}

TEST(LiveTableTest, ReadersRacingWithEvictionSeeNotFoundOrAConsistentEntry) {
  ScopedLiveName name;
  LiveTables t = create(name, {make_spec("cpu", 64, 32, 1, 8)});
  ShardWriter w = attach(t, 0, 0);
  // Two churning keys ahead of a stable one in the same probe chain.
  const auto k = colliding_keys(1, 32, 3);
  for (int i = 0; i < 3; ++i) ASSERT_NE(put(w, k[i], 1, 64), nullptr);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (uint64_t n = 2; !stop.load(std::memory_order_relaxed); ++n) {
      const EntryKey& churn = k[n % 2];
      w.evict_if([&](const EntryMeta& m) { return m.key == churn; });
      ASSERT_NE(put(w, churn, n, 64), nullptr);
      ASSERT_NE(put(w, k[2], n, 64), nullptr);
    }
  });
  std::atomic<uint64_t> torn{0}, stable_missing{0}, churn_missing{0}, busy{0}, reads{0};
  auto reader = [&] {
    std::vector<std::byte> out(64);
    const auto deadline = std::chrono::steady_clock::now() + kRaceTime;
    while (std::chrono::steady_clock::now() < deadline) {
      for (int i = 0; i < 3; ++i) {
        EntryMeta m;
        const ReadStatus st = t.tables().read(0, k[i], out, &m);
        uint64_t v = 0;
        if (st == ReadStatus::kFound && (!all_words_equal(out, &v) || v != m.last_pos)) ++torn;
        if (st == ReadStatus::kNotFound) ++(i == 2 ? stable_missing : churn_missing);
        if (st == ReadStatus::kBusy) ++busy;
        ++reads;
      }
    }
  };
  std::thread r1(reader), r2(reader);
  r1.join();
  r2.join();
  stop = true;
  writer.join();
  EXPECT_EQ(torn.load(), 0u);
  EXPECT_EQ(stable_missing.load(), 0u);        // a tombstone ahead never hides a live key
  EXPECT_GT(churn_missing.load(), 0u);         // the race did happen
  EXPECT_LT(busy.load(), reads.load() / 100);  // only while the writer was preempted mid-write
  EXPECT_EQ(t.tables().stats(0).entries_used, 3u);
}

}  // namespace
}  // namespace runnel::ipc
