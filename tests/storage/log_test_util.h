// Helpers shared by the storage tests: a scratch directory that cleans up after itself,
// deterministic records, small file surgery for recovery tests, and page cache residency.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "storage/log_reader.h"
#include "storage/log_writer.h"

namespace runnel::storage::testing {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "runnel-storage-XXXXXX");
    if (::mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path log_dir() const { return path_ / "log"; }

 private:
  std::filesystem::path path_;
};

// Record i: ring position i in epoch 7, a 60..200-byte payload that depends on i.
inline constexpr uint64_t kEpoch = 7;
inline constexpr int64_t kSecond = 1'000'000'000;
inline constexpr int64_t kMinute = 60 * kSecond;
inline constexpr int64_t kHour = 60 * kMinute;

inline std::vector<std::byte> payload_for(uint64_t i) {
  std::vector<std::byte> p(60 + (i * 37) % 141);
  for (size_t j = 0; j < p.size(); ++j) p[j] = static_cast<std::byte>((i * 131 + j * 7) & 0xff);
  return p;
}

// Appends records [first, first + count), committing every `batch` records.
inline void append_records(LogWriter& writer, uint64_t first, uint64_t count, uint64_t batch = 64) {
  for (uint64_t i = first; i < first + count; ++i) {
    const auto payload = payload_for(i);
    ASSERT_TRUE(writer.append(kEpoch, i, payload).ok()) << "record " << i;
    if ((i + 1 - first) % batch == 0) {
      ASSERT_TRUE(writer.commit().ok());
    }
  }
  ASSERT_TRUE(writer.commit().ok());
}

struct ReadRecord {
  uint64_t offset;
  uint64_t next_offset;
  uint64_t ring_epoch;
  uint64_t ring_pos;
  std::vector<std::byte> payload;
};

inline ReadRecord copy_record(const Record& r) {
  return ReadRecord{r.offset, r.next_offset, r.ring_epoch, r.ring_pos,
                    std::vector<std::byte>(r.payload.begin(), r.payload.end())};
}

// Every record from the oldest retained one to the current end.
inline std::vector<ReadRecord> read_all(const std::filesystem::path& dir) {
  std::vector<ReadRecord> out;
  auto reader = LogReader::open(dir);
  if (!reader.ok()) {
    ADD_FAILURE() << reader.status().ToString();
    return out;
  }
  Record r;
  for (;;) {
    auto got = reader->next(&r);
    if (!got.ok()) {
      ADD_FAILURE() << got.status().ToString();
      return out;
    }
    if (!*got) return out;
    out.push_back(copy_record(r));
  }
}

// Checks that `records` are exactly records [first, first + n) laid out back to back from
// `first_offset`.
inline void expect_records(const std::vector<ReadRecord>& records, uint64_t first, uint64_t n,
                           uint64_t first_offset = 0) {
  ASSERT_EQ(records.size(), n);
  uint64_t offset = first_offset;
  for (uint64_t k = 0; k < n; ++k) {
    const ReadRecord& r = records[k];
    ASSERT_EQ(r.offset, offset) << "record " << first + k;
    ASSERT_EQ(r.next_offset, offset + record_size(r.payload.size()));
    ASSERT_EQ(r.ring_epoch, kEpoch);
    ASSERT_EQ(r.ring_pos, first + k);
    ASSERT_EQ(r.payload, payload_for(first + k)) << "record " << first + k;
    offset = r.next_offset;
  }
}

// The fraction of the file's pages that are in the page cache (mincore over a read-only
// mapping), or -1 if it cannot be told.
inline double resident_fraction(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat st;
  double fraction = -1;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    const size_t pages = (static_cast<size_t>(st.st_size) + page - 1) / page;
    void* map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (map != MAP_FAILED) {
      std::vector<unsigned char> in(pages);
      if (::mincore(map, static_cast<size_t>(st.st_size), in.data()) == 0) {
        size_t resident = 0;
        for (unsigned char c : in) resident += c & 1;
        fraction = static_cast<double>(resident) / static_cast<double>(pages);
      }
      ::munmap(map, static_cast<size_t>(st.st_size));
    }
  }
  ::close(fd);
  return fraction;
}

// Whether POSIX_FADV_DONTNEED can take `dir`'s files out of the page cache (not on tmpfs,
// where the page cache is the only copy).
inline bool page_cache_droppable(const std::filesystem::path& dir) {
  struct statfs fs;
  return ::statfs(dir.c_str(), &fs) == 0 && fs.f_type != TMPFS_MAGIC;
}

inline LogOptions options_for(const std::filesystem::path& dir, uint64_t segment_bytes,
                              LogOptions::FsyncPolicy fsync = LogOptions::FsyncPolicy::kNever) {
  LogOptions o;
  o.dir = dir;
  o.segment_bytes = segment_bytes;
  o.fsync = fsync;
  o.buffer_bytes = 64 << 10;
  return o;
}

// Runs `body` in a forked child, which must end itself with ::_exit(code) where it wants
// to die: no destructors run, as after kill -9. Returns that code (100 if body returned,
// -1 if the child did not exit normally).
inline int run_in_child(const std::function<void()>& body) {
  const pid_t child = ::fork();
  if (child == 0) {
    body();
    ::_exit(100);
  }
  int wstatus = 0;
  if (child < 0 || ::waitpid(child, &wstatus, 0) != child || !WIFEXITED(wstatus)) return -1;
  return WEXITSTATUS(wstatus);
}

inline std::vector<std::byte> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) out[i] = static_cast<std::byte>(raw[i]);
  return out;
}

inline void flip_bit(const std::filesystem::path& path, uint64_t file_offset, int bit = 3) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekg(static_cast<std::streamoff>(file_offset));
  char c = 0;
  f.get(c);
  c = static_cast<char>(c ^ (1 << bit));
  f.seekp(static_cast<std::streamoff>(file_offset));
  f.put(c);
}

inline void append_bytes(const std::filesystem::path& path, const std::vector<char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::app);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace runnel::storage::testing
