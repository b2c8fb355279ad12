// CRC32C with runtime dispatch: SSE4.2 crc32 instruction, or Boost.CRC's table-driven fallback.
#include "storage/crc32c.h"

#include <nmmintrin.h>

#include <boost/crc.hpp>
#include <cstring>

namespace runnel::storage {

namespace detail {

bool crc32c_has_sse42() {
  static const bool kHas = __builtin_cpu_supports("sse4.2");
  return kHas;
}

// The next sizeof(T) bytes at *p (unaligned-safe; compiles to a plain load), and moves past them.
template <typename T>
T take(const std::byte** p) {
  T v;
  std::memcpy(&v, *p, sizeof v);
  *p += sizeof v;
  return v;
}

// The instruction computes the raw (reflected) remainder; CRC32C pre- and post-inverts it.
__attribute__((target("sse4.2"))) uint32_t crc32c_extend_sse42(uint32_t crc,
                                                               std::span<const std::byte> data) {
  const std::byte* p = data.data();
  size_t n = data.size();
  uint64_t c = ~crc;
  for (; n >= 8; n -= 8) c = _mm_crc32_u64(c, take<uint64_t>(&p));
  // The last 0-7 bytes in at most three steps (4, 2, 1) rather than one byte at a time: each
  // crc32 instruction waits for the previous one.
  auto c32 = static_cast<uint32_t>(c);
  if (n & 4) c32 = _mm_crc32_u32(c32, take<uint32_t>(&p));
  if (n & 2) c32 = _mm_crc32_u16(c32, take<uint16_t>(&p));
  if (n & 1) c32 = _mm_crc32_u8(c32, take<uint8_t>(&p));
  return ~c32;
}

uint32_t crc32c_extend_portable(uint32_t crc, std::span<const std::byte> data) {
  using Crc32c = boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true>;
  // Boost takes the initial remainder unreflected: undo both the final xor and the reflection.
  uint32_t rem = ~crc;
  uint32_t unreflected = 0;
  for (int i = 0; i < 32; ++i, rem >>= 1) unreflected = (unreflected << 1) | (rem & 1u);
  Crc32c engine(unreflected);
  engine.process_bytes(data.data(), data.size());
  return engine.checksum();
}

}  // namespace detail

uint32_t crc32c_extend(uint32_t crc, std::span<const std::byte> data) {
  return detail::crc32c_has_sse42() ? detail::crc32c_extend_sse42(crc, data)
                                    : detail::crc32c_extend_portable(crc, data);
}

}  // namespace runnel::storage
