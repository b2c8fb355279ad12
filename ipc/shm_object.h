// One mapping of a POSIX shared-memory object (/dev/shm/<name>): exclusive creation with a mode
// and group, opening once the creator has published the header, and the start-up replacement of
// objects whose contents the daemon rebuilds instead of reusing (live tables, series dictionary).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "model/status.h"

namespace runnel::ipc {

struct ShmOptions {
  uint32_t mode = 0640;      // permission bits of the object
  std::optional<gid_t> gid;  // chown the object to this group, so clients may map it read-only
  // Allocate the memory at creation (posix_fallocate): a full /dev/shm then fails create()
  // instead of raising SIGBUS at the first touch of a page later.
  bool reserve = false;
};

enum class ShmAccess : uint8_t { kReadOnly, kReadWrite };

// The first 48 bytes of every object that ShmObject::replace manages. Frozen across layout
// versions, so a successor of any version can retire its predecessor.
//   offset size  field
//        0    8  magic            per object kind, stored last at creation (release)
//        8    4  layout_version
//       12    4  header_bytes     the object's own header, this prefix included
//       16    8  total_bytes      == the object's size
//       24    8  instance_id      random, never 0: which daemon start-up created the object
//       32    8  created_unix_ns
//       40    4  retired          0, then 1 once a successor replaced this instance (release)
//       44    4  reserved
struct ShmPrefix {
  std::atomic<uint64_t> magic;
  uint32_t layout_version;
  uint32_t header_bytes;
  uint64_t total_bytes;
  uint64_t instance_id;
  uint64_t created_unix_ns;
  std::atomic<uint32_t> retired;
  uint32_t reserved;
};
static_assert(sizeof(ShmPrefix) == 48);
static_assert(offsetof(ShmPrefix, layout_version) == 8);
static_assert(offsetof(ShmPrefix, header_bytes) == 12);
static_assert(offsetof(ShmPrefix, total_bytes) == 16);
static_assert(offsetof(ShmPrefix, instance_id) == 24);
static_assert(offsetof(ShmPrefix, created_unix_ns) == 32);
static_assert(offsetof(ShmPrefix, retired) == 40);

// Random, never 0: ring epochs and instance ids.
uint64_t random_instance_id();
// CLOCK_REALTIME in ns.
uint64_t unix_now_ns();

// Owns one mapping; move-only, unmapped on destruction. `kind` ("ring", "live tables", ...)
// only names the object in error messages. Thread-compatible.
class ShmObject {
 public:
  ShmObject();
  ShmObject(ShmObject&&) noexcept;
  ShmObject& operator=(ShmObject&&) noexcept;
  ShmObject(const ShmObject&) = delete;
  ShmObject& operator=(const ShmObject&) = delete;
  ~ShmObject();

  // "ring 'x' (/dev/shm/x)".
  static std::string describe(std::string_view kind, const std::string& name);
  // 1-200 characters without '/'.
  static Status check_name(std::string_view kind, const std::string& name);
  // Creates the object exclusively with `size_bytes` zero bytes and maps it read-write. Busy
  // (message "exists") if it already exists; on any later failure the object is removed again.
  static Result<ShmObject> create(std::string_view kind, const std::string& name,
                                  uint64_t size_bytes, const ShmOptions& options);
  // Maps an existing object whose layout starts with a std::atomic<uint64_t> magic stored last by
  // its creator. While the object is smaller than `min_bytes` or the magic is still 0 (a creator
  // is initialising it), retries for about 200 ms; then returns the mapping, for the caller to
  // validate. NotFound when there is no such object.
  static Result<ShmObject> open(std::string_view kind, const std::string& name, ShmAccess access,
                                uint64_t min_bytes);
  static Status remove(std::string_view kind, const std::string& name);

  // Start-up only, by the one process that owns the name: if an object by this name carries
  // `magic` in its ShmPrefix, marks it retired (release) and calls `on_retire` with its
  // read-write mapping (to wake its readers); then unlinks it and creates a new object. Readers
  // of the old instance keep a valid mapping and learn from `retired` to reopen.
  static Result<ShmObject> replace(std::string_view kind, const std::string& name,
                                   uint64_t size_bytes, const ShmOptions& options, uint64_t magic,
                                   const std::function<void(ShmObject&)>& on_retire);

  // Checks the u64 magic at offset 0 (acquire) and the u32 layout version at offset 8, where
  // both the ring's header and ShmPrefix keep them; the message names the object.
  Status check_magic_and_version(uint64_t magic, uint32_t layout_version) const;
  // check_magic_and_version, then the prefix's header size, and total_bytes against the
  // object's size.
  Status validate_prefix(uint64_t magic, uint32_t layout_version, uint32_t header_bytes) const;
  // Fills the prefix of a new object whose header the caller has constructed in place (fresh
  // instance id and time); the magic is left for the caller to store last, with release.
  ShmPrefix* init_prefix(uint32_t layout_version, uint32_t header_bytes);

  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  std::string where() const { return describe(kind_, name_); }

 private:
  struct Region;
  std::string kind_;
  std::string name_;
  std::unique_ptr<Region> region_;
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace runnel::ipc
