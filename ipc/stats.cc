// Creation and read-only mapping of the stats block (see stats.h for the layout).
#include "ipc/stats.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <new>

#include "model/clock.h"

namespace runnel::ipc {
namespace {

std::string object_name(const std::string& shm_name) { return "/" + shm_name + ".stats"; }

}  // namespace

Result<std::unique_ptr<StatsSegment>> StatsSegment::create(const std::string& shm_name,
                                                           unsigned mode, int gid) {
  const std::string name = object_name(shm_name);
  // The block holds no data worth keeping across restarts (counters restart with the daemon),
  // so a leftover object from an earlier run is replaced.
  shm_unlink(name.c_str());
  int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, mode);
  if (fd < 0) return Status::Errno("shm_open " + name, errno);
  if (fchmod(fd, mode) != 0 || (gid >= 0 && fchown(fd, static_cast<uid_t>(-1), gid) != 0)) {
    int e = errno;
    close(fd);
    return Status::Errno("chmod/chown " + name, e);
  }
  const size_t len = sizeof(StatsBlock);
  if (ftruncate(fd, static_cast<off_t>(len)) != 0) {
    int e = errno;
    close(fd);
    return Status::Errno("ftruncate " + name, e);
  }
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) return Status::Errno("mmap " + name, e);
  auto* b = new (p) StatsBlock();
  std::memset(static_cast<void*>(b), 0, sizeof(StatsBlock));
  b->layout_version = kStatsLayoutVersion;
  b->size_bytes = sizeof(StatsBlock);
  b->pid = static_cast<uint64_t>(getpid());
  b->started_ns = realtime_ns();
  b->heartbeat_ns.store(b->started_ns, std::memory_order_relaxed);
  // Readers check the magic last-written: release pairs with the acquire in open_read_only.
  std::atomic_ref<uint64_t>(b->magic).store(kStatsMagic, std::memory_order_release);
  return std::unique_ptr<StatsSegment>(new StatsSegment(b, len));
}

Result<std::unique_ptr<StatsSegment>> StatsSegment::open_read_only(const std::string& shm_name) {
  const std::string name = object_name(shm_name);
  int fd = shm_open(name.c_str(), O_RDONLY, 0);
  if (fd < 0) {
    return errno == ENOENT
               ? Status::NotFound("no runneld instance '" + shm_name + "' (" + name +
                                  " does not exist)")
               : Status::Errno("shm_open " + name, errno);
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < sizeof(StatsBlock)) {
    close(fd);
    return Status::Corruption(name + ": too small for the stats layout");
  }
  void* p = mmap(nullptr, sizeof(StatsBlock), PROT_READ, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) return Status::Errno("mmap " + name, e);
  auto* b = static_cast<StatsBlock*>(p);
  auto fail = [&](std::string why) {
    munmap(p, sizeof(StatsBlock));
    return Status::Unsupported(name + ": " + why);
  };
  if (std::atomic_ref<uint64_t>(b->magic).load(std::memory_order_acquire) != kStatsMagic) {
    return fail("bad magic (not a runnel stats block, or still being created)");
  }
  if (b->layout_version != kStatsLayoutVersion) {
    return fail("layout version " + std::to_string(b->layout_version) + ", this build reads " +
                std::to_string(kStatsLayoutVersion));
  }
  if (b->size_bytes != sizeof(StatsBlock)) return fail("unexpected size");
  return std::unique_ptr<StatsSegment>(new StatsSegment(b, sizeof(StatsBlock)));
}

void StatsSegment::remove(const std::string& shm_name) {
  shm_unlink(object_name(shm_name).c_str());
}

StatsSegment::~StatsSegment() { munmap(static_cast<void*>(block_), len_); }

}  // namespace runnel::ipc
