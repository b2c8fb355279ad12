// ShmObject on real POSIX shared memory: reserved objects are allocated when they are created
// (a full /dev/shm fails create(), not a later store with SIGBUS), others as they are touched.
#include "ipc/shm_object.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace runnel::ipc {
namespace {

constexpr char kKind[] = "test object";

std::string unique_name(const char* what) {
  return "runnel-test-" + std::to_string(getpid()) + "-shm-" + what;
}

// Bytes of tmpfs memory allocated to the object (st_blocks), by name.
uint64_t allocated_bytes(const std::string& name) {
  struct stat st {};
  if (::stat(("/dev/shm/" + name).c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

TEST(ShmObjectTest, AReservedObjectIsAllocatedInFullAtCreation) {
  constexpr uint64_t kBytes = uint64_t{8} << 20;
  const std::string reserved = unique_name("reserved"), lazy = unique_name("lazy");
  (void)ShmObject::remove(kKind, reserved);
  (void)ShmObject::remove(kKind, lazy);
  ShmOptions options;
  options.mode = 0600;
  options.reserve = true;
  {
    auto obj = ShmObject::create(kKind, reserved, kBytes, options);
    ASSERT_TRUE(obj.ok()) << obj.status().ToString();
    EXPECT_GE(allocated_bytes(reserved), kBytes);
    EXPECT_EQ(obj->size(), kBytes);
    // Still zero bytes, and writable through the mapping.
    EXPECT_EQ(obj->data()[kBytes - 1], std::byte{0});
    obj->data()[kBytes - 1] = std::byte{7};
  }
  options.reserve = false;
  {
    auto obj = ShmObject::create(kKind, lazy, kBytes, options);
    ASSERT_TRUE(obj.ok()) << obj.status().ToString();
    EXPECT_LT(allocated_bytes(lazy), kBytes);
    obj->data()[0] = std::byte{1};  // touched pages only
    EXPECT_LT(allocated_bytes(lazy), kBytes);
  }
  EXPECT_TRUE(ShmObject::remove(kKind, reserved).ok());
  EXPECT_TRUE(ShmObject::remove(kKind, lazy).ok());
}

}  // namespace
}  // namespace runnel::ipc
