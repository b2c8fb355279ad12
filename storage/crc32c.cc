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

// The instruction computes the raw (reflected) remainder; CRC32C pre- and post-inverts it.
__attribute__((target("sse4.2"))) uint32_t crc32c_extend_sse42(uint32_t crc,
                                                               std::span<const std::byte> data) {
  const std::byte* p = data.data();
  size_t n = data.size();
  uint64_t c = ~crc;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);  // unaligned-safe; compiles to a plain load
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<uint32_t>(c);
  while (n > 0) {
    c32 = _mm_crc32_u8(c32, static_cast<uint8_t>(*p));
    ++p;
    --n;
  }
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
