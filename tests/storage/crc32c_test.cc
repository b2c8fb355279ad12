// CRC32C: published vectors, incremental use, and agreement of the SSE4.2 and Boost paths.
#include "storage/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string_view>
#include <vector>

namespace runnel::storage {
namespace {

std::span<const std::byte> bytes_of(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

using CrcFn = uint32_t (*)(uint32_t, std::span<const std::byte>);

std::vector<CrcFn> implementations() {
  std::vector<CrcFn> fns{&detail::crc32c_extend_portable};
  if (detail::crc32c_has_sse42()) fns.push_back(&detail::crc32c_extend_sse42);
  return fns;
}

TEST(Crc32c, CheckValueOf123456789IsE3069283) {
  EXPECT_EQ(crc32c(bytes_of("123456789")), 0xE3069283u);
  for (CrcFn fn : implementations()) EXPECT_EQ(fn(0, bytes_of("123456789")), 0xE3069283u);
}

TEST(Crc32c, EmptyInputIsZero) { EXPECT_EQ(crc32c({}), 0u); }

TEST(Crc32c, MatchesRfc3720Vectors) {
  std::vector<std::byte> buf(32);
  for (CrcFn fn : implementations()) {
    std::fill(buf.begin(), buf.end(), std::byte{0});
    EXPECT_EQ(fn(0, buf), 0x8A9136AAu);
    std::fill(buf.begin(), buf.end(), std::byte{0xff});
    EXPECT_EQ(fn(0, buf), 0x62A8AB43u);
    for (size_t i = 0; i < 32; ++i) buf[i] = static_cast<std::byte>(i);
    EXPECT_EQ(fn(0, buf), 0x46DD794Eu);
    for (size_t i = 0; i < 32; ++i) buf[i] = static_cast<std::byte>(31 - i);
    EXPECT_EQ(fn(0, buf), 0x113FDB5Cu);
  }
}

TEST(Crc32c, ExtendingInPiecesEqualsOneShot) {
  const auto all = bytes_of("123456789");
  for (CrcFn fn : implementations()) {
    for (size_t split = 0; split <= all.size(); ++split) {
      EXPECT_EQ(fn(fn(0, all.first(split)), all.subspan(split)), 0xE3069283u) << split;
    }
  }
}

TEST(Crc32c, HardwareAndPortablePathsAgreeAtEveryLengthAndAlignment) {
  if (!detail::crc32c_has_sse42()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  std::mt19937_64 rng(42);
  std::vector<std::byte> buf(600);
  for (auto& b : buf) b = static_cast<std::byte>(rng());
  for (size_t start = 0; start < 8; ++start) {
    for (size_t len = 0; start + len <= buf.size(); len += 7) {
      const auto piece = std::span(buf).subspan(start, len);
      ASSERT_EQ(detail::crc32c_extend_sse42(0x1234, piece),
                detail::crc32c_extend_portable(0x1234, piece))
          << "start " << start << " len " << len;
    }
  }
}

}  // namespace
}  // namespace runnel::storage
