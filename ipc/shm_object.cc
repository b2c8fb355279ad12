// Creation, opening, validation and replacement of POSIX shared-memory objects (shm_object.h),
// shared by the ring, the live tables and the series dictionary.
#include "ipc/shm_object.h"

#include <errno.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <chrono>
#include <memory>
#include <new>
#include <random>
#include <thread>

namespace runnel::ipc {

namespace bip = boost::interprocess;

struct ShmObject::Region {
  bip::mapped_region region;
};

namespace {

// Asks for transparent huge pages on a large mapping. The ring and the live tables are read and
// written at random across hundreds of MiB: with 4 KiB pages nearly every entry access is also
// a TLB miss. The kernel honours the advice only where the tmpfs behind /dev/shm allows it
// (mount option huge=advise, or huge=within_size / always; Debian mounts it huge=never by
// default, and then this changes nothing): see README "Tuning". Failure (a kernel without THP) is
// harmless and not reported.
void advise_huge_pages(void* data, size_t bytes) {
  constexpr size_t kHugePageBytes = size_t{2} << 20;
  if (bytes >= kHugePageBytes) ::madvise(data, bytes, MADV_HUGEPAGE);
}

}  // namespace

uint64_t random_instance_id() {
  std::random_device rd;
  const uint64_t e = (uint64_t{rd()} << 32) ^ uint64_t { rd() };
  return e == 0 ? 1 : e;
}

uint64_t unix_now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

ShmObject::ShmObject() = default;
ShmObject::ShmObject(ShmObject&&) noexcept = default;
ShmObject& ShmObject::operator=(ShmObject&&) noexcept = default;
ShmObject::~ShmObject() = default;

std::string ShmObject::describe(std::string_view kind, const std::string& name) {
  return fmt::format("{} '{}' (/dev/shm/{})", kind, name, name);
}

Status ShmObject::check_name(std::string_view kind, const std::string& name) {
  if (name.empty() || name.size() > 200 || name.find('/') != std::string::npos) {
    return Status::Invalid(
        fmt::format("{} name '{}': must be 1-200 characters without '/'", kind, name));
  }
  return Status::Ok();
}

Result<ShmObject> ShmObject::create(std::string_view kind, const std::string& name,
                                    uint64_t size_bytes, const ShmOptions& options) {
  if (Status st = check_name(kind, name); !st.ok()) return st;
  const std::string where = describe(kind, name);
  std::optional<bip::shared_memory_object> shm;
  try {
    shm.emplace(bip::create_only, name.c_str(), bip::read_write, bip::permissions(options.mode));
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::already_exists_error) return Status::Busy("exists");
    return Status::IoError(fmt::format("{}: create failed: {}", where, e.what()));
  }
  auto fail = [&](Status st) {
    bip::shared_memory_object::remove(name.c_str());
    return st;
  };
  if (options.gid &&
      fchown(shm->get_mapping_handle().handle, static_cast<uid_t>(-1), *options.gid) != 0) {
    return fail(Status::Errno(fmt::format("{}: fchown to gid {}", where, *options.gid), errno));
  }
  ShmObject obj;
  obj.kind_ = kind;
  obj.name_ = name;
  obj.region_ = std::make_unique<Region>();
  try {
    shm->truncate(static_cast<bip::offset_t>(size_bytes));
    obj.region_->region = bip::mapped_region(*shm, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    return fail(Status::IoError(
        fmt::format("{}: size/map {} bytes failed: {}", where, size_bytes, e.what())));
  }
  obj.data_ = static_cast<std::byte*>(obj.region_->region.get_address());
  obj.size_ = obj.region_->region.get_size();
  advise_huge_pages(obj.data_, obj.size_);
  if (options.reserve) {
    // Through the mapping, after the advice, so that huge pages are what gets allocated
    // (posix_fallocate allocates without a mapping: small pages under huge=advise). Both fail
    // with an error where a full /dev/shm would otherwise raise SIGBUS later.
    int err = 0;
    if (::madvise(obj.data_, obj.size_, MADV_POPULATE_WRITE) != 0) {
      err = errno;
      // Before Linux 5.14 (EINVAL), or refused by a system-call filter: allocate without it.
      if (err == EINVAL || err == EPERM || err == ENOSYS) {
        err = posix_fallocate(shm->get_mapping_handle().handle, 0, static_cast<off_t>(size_bytes));
      }
    }
    if (err != 0) {
      obj = ShmObject();
      return fail(Status::Errno(
          fmt::format("{}: reserving {} bytes (is /dev/shm full?)", where, size_bytes), err));
    }
  }
  return obj;
}

Result<ShmObject> ShmObject::open(std::string_view kind, const std::string& name, ShmAccess access,
                                  uint64_t min_bytes) {
  if (Status st = check_name(kind, name); !st.ok()) return st;
  const std::string where = describe(kind, name);
  const bip::mode_t mode = access == ShmAccess::kReadOnly ? bip::read_only : bip::read_write;
  Status last;
  for (int attempt = 0; attempt < 100; ++attempt) {
    try {
      bip::shared_memory_object shm(bip::open_only, name.c_str(), mode);
      bip::offset_t size = 0;
      if (!shm.get_size(size) || size < static_cast<bip::offset_t>(min_bytes)) {
        last = Status::Corruption(
            fmt::format("{}: object is {} bytes, smaller than the {}-byte header; a creator died "
                        "or is still initialising it",
                        where, size, min_bytes));
      } else {
        ShmObject obj;
        obj.kind_ = kind;
        obj.name_ = name;
        obj.region_ = std::make_unique<Region>();
        obj.region_->region = bip::mapped_region(shm, mode);
        obj.data_ = static_cast<std::byte*>(obj.region_->region.get_address());
        obj.size_ = obj.region_->region.get_size();
        advise_huge_pages(obj.data_, obj.size_);
        const auto* magic = std::launder(reinterpret_cast<const std::atomic<uint64_t>*>(obj.data_));
        // Acquire: pairs with the creator's release store of the magic after the header.
        if (magic->load(std::memory_order_acquire) != 0 || attempt == 99) return obj;
        last = Status::Corruption(fmt::format("{}: header never initialised", where));
      }
    } catch (const bip::interprocess_exception& e) {
      if (e.get_error_code() == bip::not_found_error) {
        return Status::NotFound(fmt::format("{}: no such shared memory object", where));
      }
      return Status::IoError(fmt::format("{}: open/map failed: {}", where, e.what()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return last;
}

Status ShmObject::remove(std::string_view kind, const std::string& name) {
  if (Status st = check_name(kind, name); !st.ok()) return st;
  if (!bip::shared_memory_object::remove(name.c_str())) {
    return Status::NotFound(fmt::format("{}: remove failed (not found?)", describe(kind, name)));
  }
  return Status::Ok();
}

Result<ShmObject> ShmObject::replace(std::string_view kind, const std::string& name,
                                     uint64_t size_bytes, const ShmOptions& options, uint64_t magic,
                                     const std::function<void(ShmObject&)>& on_retire) {
  if (Status st = check_name(kind, name); !st.ok()) return st;
  auto old = open(kind, name, ShmAccess::kReadWrite, sizeof(ShmPrefix));
  if (old.ok()) {
    auto* prefix = std::launder(reinterpret_cast<ShmPrefix*>(old->data()));
    // Acquire: pairs with the release store of the magic by the old instance's creator.
    if (prefix->magic.load(std::memory_order_acquire) == magic) {
      // Release: pairs with the acquire load of `retired` by the old instance's readers.
      prefix->retired.store(1, std::memory_order_release);
      if (on_retire) on_retire(*old);
    }
  }
  (void)remove(kind, name);  // NotFound is the usual case
  auto created = create(kind, name, size_bytes, options);
  if (!created.ok() && created.status().code() == Status::Code::kBusy) {
    return Status::IoError(fmt::format("{}: exists and could not be removed (permissions?)",
                                       describe(kind, name)));
  }
  return created;
}

Status ShmObject::check_magic_and_version(uint64_t magic, uint32_t layout_version) const {
  if (size_ < sizeof(ShmPrefix)) {
    return Status::Corruption(fmt::format("{}: object is {} bytes, too small", where(), size_));
  }
  // Both the ring's header and ShmPrefix start with these two fields.
  const auto* p = reinterpret_cast<const ShmPrefix*>(data_);
  // Acquire: pairs with the creator's release store of the magic, after every other field.
  const uint64_t m = p->magic.load(std::memory_order_acquire);
  if (m != magic) {
    return Status::Corruption(
        fmt::format("{}: magic {:#018x} is not a runnel {} ({:#018x}); remove it if it is stale",
                    where(), m, kind_, magic));
  }
  if (p->layout_version != layout_version) {
    return Status::Unsupported(fmt::format("{}: layout version {} but this build speaks version {}",
                                           where(), p->layout_version, layout_version));
  }
  return Status::Ok();
}

Status ShmObject::validate_prefix(uint64_t magic, uint32_t layout_version,
                                  uint32_t header_bytes) const {
  if (Status st = check_magic_and_version(magic, layout_version); !st.ok()) return st;
  const auto* p = reinterpret_cast<const ShmPrefix*>(data_);
  const std::string at = where();
  if (p->header_bytes != header_bytes || p->total_bytes != size_) {
    return Status::Corruption(
        fmt::format("{}: header_bytes {} / total_bytes {}, expected {} / the object's {} bytes", at,
                    p->header_bytes, p->total_bytes, header_bytes, size_));
  }
  return Status::Ok();
}

ShmPrefix* ShmObject::init_prefix(uint32_t layout_version, uint32_t header_bytes) {
  auto* p = std::launder(reinterpret_cast<ShmPrefix*>(data_));
  p->layout_version = layout_version;
  p->header_bytes = header_bytes;
  p->total_bytes = size_;
  p->instance_id = random_instance_id();
  p->created_unix_ns = unix_now_ns();
  return p;
}

}  // namespace runnel::ipc
