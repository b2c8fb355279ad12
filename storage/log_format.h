// On-disk format of the master dataset: a directory of append-only segment files, each a
// fixed header followed by CRC-framed records. Shared by LogWriter, LogReader and verify_log.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace runnel::storage {

static_assert(std::endian::native == std::endian::little,
              "the log format is little-endian and written by memcpy of these structs");

// ---------------------------------------------------------------------------------------------
// Log offsets
//
// A log offset is a 64-bit byte position in the global record stream: the concatenation of
// every segment's record area (segment headers are not part of it). The first record ever
// written is at offset 0; a record's offset is the offset of its framing header; segment
// k+1's base offset equals the end offset of segment k, so offsets are contiguous across
// segments. Within a segment: file position = kSegmentHeaderSize + (offset - base_offset).
//
// Directory layout: <dir>/<base offset as 20 decimal digits>.seg, e.g.
// 00000000000000000000.seg, 00000000000268435392.seg; plus <dir>/LOCK (held by the writer).
// A new segment is written as <name>.seg.tmp, fdatasync'ed and renamed into place, so a
// segment file always has its complete header. Every segment but the newest is sealed:
// flushed, fdatasync'ed and never modified again.
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Segment header (64 bytes, at file position 0)
//
//   offset  size  field
//   0       8     magic          "RNLSEG01" (bytes in this order)
//   8       4     version        kLogFormatVersion
//   12      4     header_size    kSegmentHeaderSize; records start at this file position
//   16      8     base_offset    log offset of the first record; equals the file name
//   24      8     created_ns     i64, CLOCK_REALTIME ns when the segment was created
//   32      8     segment_bytes  the writer's size limit for this file (header included)
//   40      20    reserved       zero
//   60      4     header_crc     crc32c of bytes [0, 60)
// ---------------------------------------------------------------------------------------------
struct SegmentHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_size;
  uint64_t base_offset;
  int64_t created_ns;
  uint64_t segment_bytes;
  uint8_t reserved[20];
  uint32_t header_crc;
};

inline constexpr char kSegmentMagic[8] = {'R', 'N', 'L', 'S', 'E', 'G', '0', '1'};
inline constexpr uint32_t kLogFormatVersion = 1;
inline constexpr uint64_t kSegmentHeaderSize = 64;
inline constexpr size_t kSegmentHeaderCrcOffset = 60;

static_assert(sizeof(SegmentHeader) == kSegmentHeaderSize);
static_assert(offsetof(SegmentHeader, magic) == 0);
static_assert(offsetof(SegmentHeader, version) == 8);
static_assert(offsetof(SegmentHeader, header_size) == 12);
static_assert(offsetof(SegmentHeader, base_offset) == 16);
static_assert(offsetof(SegmentHeader, created_ns) == 24);
static_assert(offsetof(SegmentHeader, segment_bytes) == 32);
static_assert(offsetof(SegmentHeader, reserved) == 40);
static_assert(offsetof(SegmentHeader, header_crc) == kSegmentHeaderCrcOffset);

// ---------------------------------------------------------------------------------------------
// Record (24-byte framing header + payload + zero padding to a multiple of 8 bytes)
//
//   offset  size  field
//   0       4     crc          crc32c of bytes [4, 24 + payload_len): the rest of the
//                              header and the payload (not the padding)
//   4       4     payload_len  bytes of payload, <= kMaxPayloadBytes
//   8       8     ring_epoch   opaque to storage: where the record came from in the
//   16      8     ring_pos       shared-memory ring, so the daemon can resume exactly once
//   24      n     payload      opaque bytes
//   24+n    0..7  padding      zero; the next record starts 8-aligned
//
// A record never spans segments. A run of zeros never validates: a zero header claims an
// empty payload whose crc32c is not 0.
// ---------------------------------------------------------------------------------------------
struct RecordHeader {
  uint32_t crc;
  uint32_t payload_len;
  uint64_t ring_epoch;
  uint64_t ring_pos;
};

inline constexpr uint64_t kRecordHeaderSize = 24;
inline constexpr uint64_t kRecordAlignment = 8;
inline constexpr size_t kRecordCrcCoverageOffset = 4;
// A bound that lets readers reject a garbled length without reading further.
inline constexpr uint32_t kMaxPayloadBytes = 64u << 20;

static_assert(sizeof(RecordHeader) == kRecordHeaderSize);
static_assert(offsetof(RecordHeader, crc) == 0);
static_assert(offsetof(RecordHeader, payload_len) == kRecordCrcCoverageOffset);
static_assert(offsetof(RecordHeader, ring_epoch) == 8);
static_assert(offsetof(RecordHeader, ring_pos) == 16);
static_assert(kSegmentHeaderSize % kRecordAlignment == 0);
static_assert(kRecordHeaderSize % kRecordAlignment == 0);

// Bytes a record with `payload_len` payload bytes occupies on disk, padding included.
constexpr uint64_t record_size(uint64_t payload_len) {
  return (kRecordHeaderSize + payload_len + kRecordAlignment - 1) & ~(kRecordAlignment - 1);
}

inline constexpr std::string_view kSegmentSuffix = ".seg";
inline constexpr std::string_view kLockFileName = "LOCK";

inline constexpr size_t kSegmentNameDigits = 20;  // UINT64_MAX has 20 decimal digits

// "<dir>/<20-digit base offset>.seg".
inline std::filesystem::path segment_path(const std::filesystem::path& dir, uint64_t base_offset) {
  std::string name(kSegmentNameDigits, '0');
  for (size_t i = kSegmentNameDigits; base_offset != 0; base_offset /= 10) {
    name[--i] = static_cast<char>('0' + base_offset % 10);
  }
  name += kSegmentSuffix;
  return dir / name;
}

// The base offset named by a segment file name, or nullopt if `file_name` is not one.
inline std::optional<uint64_t> parse_segment_file_name(std::string_view file_name) {
  if (file_name.size() != kSegmentNameDigits + kSegmentSuffix.size() ||
      !file_name.ends_with(kSegmentSuffix)) {
    return std::nullopt;
  }
  uint64_t value = 0;
  for (size_t i = 0; i < kSegmentNameDigits; ++i) {
    const char c = file_name[i];
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (UINT64_MAX - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  return value;
}

}  // namespace runnel::storage
