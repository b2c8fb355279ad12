// The speed layer's shared memory across processes: forked clients on read-only mappings of the
// live tables and the series dictionary read while the parent writes, sleep on a view's change
// sequence, and die of SIGSEGV when they write to a mapping.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ipc/live_table.h"
#include "ipc/series_dictionary.h"
#include "tests/ipc/ring_test_util.h"

namespace runnel::ipc {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kState = 128;  // 16 words, all equal to the entry's last position
constexpr int kKeys = 4;
constexpr int64_t kWidth = 1'000'000'000;

// A unique shm name; its ".live" and ".series" objects are removed at scope exit.
struct ScopedName {
  testing::ScopedRingName base{"xlive"};
  ~ScopedName() {
    (void)LiveTables::remove(base.str());
    (void)SeriesDictionary::remove(base.str());
  }
  const std::string& str() const { return base.str(); }
};

// A forked client: the child runs `body`, whose result is its exit code. The child says ready()
// once it has mapped what it reads, and may wait_go() for the parent's go().
class ForkedClient {
 public:
  explicit ForkedClient(const std::function<int(ForkedClient&)>& body) {
    if (pipe(ready_) != 0 || pipe(go_) != 0) return;
    pid_ = fork();
    if (pid_ == 0) _exit(body(*this));
  }
  ~ForkedClient() {
    if (pid_ > 0 && !status_) {
      kill(pid_, SIGKILL);
      finish();
    }
    for (int fd : {ready_[0], ready_[1], go_[0], go_[1]}) close(fd);
  }
  ForkedClient(const ForkedClient&) = delete;
  ForkedClient& operator=(const ForkedClient&) = delete;

  bool started() const { return pid_ > 0; }
  void ready() { (void)!write(ready_[1], "r", 1); }
  bool wait_ready() { return read_byte(ready_[0]); }
  void go() { (void)!write(go_[1], "g", 1); }
  bool wait_go() { return read_byte(go_[0]); }
  // The exit code, or 128 + the signal that ended the child; nullopt while it runs.
  std::optional<int> poll() { return reap(WNOHANG); }
  int finish() { return reap(0).value_or(-1); }

 private:
  static bool read_byte(int fd) {
    char c;
    return read(fd, &c, 1) == 1;
  }
  std::optional<int> reap(int flags) {
    int status = 0;
    if (!status_ && waitpid(pid_, &status, flags) == pid_) {
      status_ = WIFEXITED(status)     ? WEXITSTATUS(status)
                : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                      : -1;
    }
    return status_;
  }

  int ready_[2] = {-1, -1};
  int go_[2] = {-1, -1};
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// Child side: a store into a read-only mapping; the child dies of the signal itself (no
// sanitizer report), or exits 0 if the store went through.
int store_into(std::span<const std::byte> mapping, size_t offset) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGSEGV, &dfl, nullptr);
  sigaction(SIGBUS, &dfl, nullptr);
  *reinterpret_cast<volatile uint64_t*>(const_cast<std::byte*>(mapping.data()) + offset) = 42;
  return 0;
}

LiveTables create_tables(const ScopedName& name) {
  LiveViewSpec spec;
  spec.name = "cpu";
  spec.state_bytes = kState;
  spec.widths_ns = {kWidth};
  spec.capacity_entries = 64;
  auto t = LiveTables::create(name.str(), std::vector{spec});
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(t).value();
}

// One round: every key's state words and last position become n.
void write_round(ShardWriter& w, uint64_t n) {
  std::vector<std::byte> state(kState);
  for (size_t i = 0; i < kState; i += 8) std::memcpy(state.data() + i, &n, 8);
  for (int k = 0; k < kKeys; ++k) {
    LiveEntry* e = w.find_or_insert(EntryKey{1, 0, k * kWidth});
    if (e == nullptr) return;
    w.begin_write(e);
    w.store_state(e, state);
    w.note_position(e, n);
    w.end_write(e);
  }
}

TEST(LiveProcessTest, ForkedReadOnlyReaderNeverSeesATornEntry) {
  ScopedName name;
  LiveTables t = create_tables(name);
  auto w = t.attach_writer(0, 0);
  ASSERT_TRUE(w.ok());
  write_round(*w, 1);
  ForkedClient client([&](ForkedClient& self) {
    auto r = LiveTableReader::open(name.str());
    if (!r.ok()) return 2;
    self.ready();
    std::vector<std::byte> out(kState);
    uint64_t found = 0, torn = 0;
    const auto deadline = std::chrono::steady_clock::now() + 500ms;
    while (std::chrono::steady_clock::now() < deadline) {
      for (int k = 0; k < kKeys; ++k) {
        EntryMeta m;
        if (r->tables().read(0, EntryKey{1, 0, k * kWidth}, out, &m) != ReadStatus::kFound)
          continue;
        ++found;
        for (size_t i = 0; i < kState; i += 8) {
          uint64_t v;
          std::memcpy(&v, out.data() + i, 8);
          if (v != m.last_pos) ++torn;
        }
      }
    }
    return torn != 0 ? 1 : found == 0 ? 3 : 0;
  });
  ASSERT_TRUE(client.started());
  ASSERT_TRUE(client.wait_ready());
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  for (uint64_t n = 2; !client.poll() && std::chrono::steady_clock::now() < deadline; ++n)
    write_round(*w, n);
  EXPECT_EQ(client.finish(), 0);
}

TEST(LiveProcessTest, ForkedClientSleepingOnAViewIsWokenWhenABatchEnds) {
  ScopedName name;
  LiveTables t = create_tables(name);
  ForkedClient client([&](ForkedClient& self) {
    auto r = LiveTableReader::open(name.str());
    if (!r.ok()) return 2;
    const uint32_t seen = r->tables().change_seq(0);
    self.ready();
    const auto start = std::chrono::steady_clock::now();
    const WaitStatus st = r->tables().wait_for_change(0, seen, 10s);
    return st == WaitStatus::kChanged && std::chrono::steady_clock::now() - start < 5s ? 0 : 1;
  });
  ASSERT_TRUE(client.started());
  ASSERT_TRUE(client.wait_ready());
  std::this_thread::sleep_for(50ms);  // let the child reach the futex
  t.end_batch(0);
  EXPECT_EQ(client.finish(), 0);
}

TEST(LiveProcessTest, WriteThroughTheLiveTablesReadOnlyMappingFaults) {
  ScopedName name;
  LiveTables t = create_tables(name);
  auto w = t.attach_writer(0, 0);
  ASSERT_TRUE(w.ok());
  write_round(*w, 5);
  ForkedClient client([&](ForkedClient&) {
    auto r = LiveTableReader::open(name.str());
    if (!r.ok()) return 2;
    return store_into(r->mapping(), kLiveHeaderBytes + offsetof(ViewDescriptor, change_seq));
  });
  ASSERT_TRUE(client.started());
  EXPECT_EQ(client.finish(), 128 + SIGSEGV);
  EXPECT_EQ(t.tables().change_seq(0), 0u);
  std::vector<std::byte> out(kState);
  EXPECT_EQ(t.tables().read(0, EntryKey{1, 0, 0}, out, nullptr), ReadStatus::kFound);
}

// The key block of series `id`: measurement "m", one tag host=<id>.
std::vector<std::byte> series_key(uint64_t id) {
  const std::string host = std::to_string(id);
  std::vector<std::byte> k(2 + 1 + 2 + 2 + 4 + 2 + host.size());
  auto* p = reinterpret_cast<char*>(k.data());
  std::memcpy(p, "\x01\x00m\x01\x00\x04\x00host", 11);
  const uint16_t n = static_cast<uint16_t>(host.size());
  std::memcpy(p + 11, &n, 2);
  std::memcpy(p + 13, host.data(), host.size());
  return k;
}

TEST(LiveProcessTest, ForkedSeriesReaderSeesLaterInsertsAndCannotWrite) {
  ScopedName name;
  SeriesDictionaryOptions options;
  options.max_series = 16;
  options.arena_bytes = 4096;
  auto created = SeriesDictionary::create(name.str(), options);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  SeriesDictionary& d = created.value();
  ASSERT_EQ(d.insert(1, series_key(1)), InsertStatus::kInserted);
  ForkedClient client([&](ForkedClient& self) {
    auto r = SeriesDictionaryReader::open(name.str());
    if (!r.ok()) return 2;
    self.ready();
    if (!self.wait_go()) return 3;
    const auto e = r->series().find(2);
    const auto want = series_key(2);
    if (!e || !std::equal(e->key.begin(), e->key.end(), want.begin(), want.end())) return 4;
    return store_into(r->mapping(), offsetof(SeriesHeader, series_count));
  });
  ASSERT_TRUE(client.started());
  ASSERT_TRUE(client.wait_ready());
  ASSERT_EQ(d.insert(2, series_key(2)), InsertStatus::kInserted);
  client.go();
  EXPECT_EQ(client.finish(), 128 + SIGSEGV);
  EXPECT_EQ(d.series().size(), 2u);
}

}  // namespace
}  // namespace runnel::ipc
