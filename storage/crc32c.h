// CRC32C (Castagnoli, the iSCSI/ext4 polynomial) used to protect log records and headers.
// Uses the SSE4.2 crc32 instruction when the CPU has it, else Boost.CRC; both give equal values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace runnel::storage {

// Returns the CRC32C of `prefix ++ data` given crc == crc32c(prefix).
// Thread-safe; allocates nothing.
uint32_t crc32c_extend(uint32_t crc, std::span<const std::byte> data);

inline uint32_t crc32c(std::span<const std::byte> data) { return crc32c_extend(0, data); }

namespace detail {
// Both implementations, exposed so tests can check that they agree.
bool crc32c_has_sse42();
uint32_t crc32c_extend_sse42(uint32_t crc, std::span<const std::byte> data);  // REQUIRES: sse4.2
uint32_t crc32c_extend_portable(uint32_t crc, std::span<const std::byte> data);
}  // namespace detail

}  // namespace runnel::storage
