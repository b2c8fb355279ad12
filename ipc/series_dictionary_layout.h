// The series dictionary's shared-memory layout: series_id -> series key block, written by the
// daemon, read by clients through read-only mappings. Change a field only with the version.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "ipc/shm_object.h"

namespace runnel::ipc {

// Object "/dev/shm/<shm_name>.series" = SeriesHeader, the series index, the measurement index,
// then the arena. Host-endian. Recreated at every daemon start-up like the live tables (the
// successor sets `retired` in the old instance).
//
// SeriesHeader, 256 bytes:
//   offset size  field
//        0   48  prefix             ShmPrefix: magic kSeriesMagic, layout_version,
//                                   header_bytes = 256, total_bytes, instance_id, created, retired
//       48    8  index_slots        power of two
//       56    8  max_series         inserts beyond it are refused: the index stays <= 3/4 full
//       64    8  measurement_slots  power of two
//       72    8  max_measurements   measurements beyond it get no chain (see `unchained`)
//       80    8  index_offset       = 256
//       88    8  measurement_offset = index_offset + index_slots * 16
//       96    8  arena_offset       = measurement_offset + measurement_slots * 16
//      104    8  arena_bytes        a multiple of 8; the object ends with the arena
//      112   16  reserved
//      128    8  series_count       published series (release, after the records)
//      136    8  arena_published    arena bytes holding complete records (release)
//      144   48  reserved
//      192    8  rejected_full      inserts refused: max_series reached or the arena full
//      200    8  rejected_invalid   keys that are not a series key block
//      208    8  unchained          series inserted without a measurement chain
//      216   40  reserved
//
// Index slot, 16 bytes, open addressing with linear probing from series_id & (index_slots - 1):
//        0    8  series_id
//        8    8  record_ref         0 = empty; else arena offset of the record + 1 (release,
//                                   after series_id and the record's bytes)
//
// Measurement slot, 16 bytes, linear probing from hash & (measurement_slots - 1):
//        0    8  measurement_hash   XXH3-64 (seed 0) of the measurement bytes
//        8    8  head_ref           newest record of the measurement, as record_ref (release)
//
// Arena record, at an 8-aligned offset, never rewritten once published:
//        0    8  series_id
//        8    4  key_len            bytes of the series key block
//       12    4  reserved
//       16    8  prev_ref           previous record of the same measurement (a record_ref
//                                   smaller than this record's), 0 = none
//       24    -  key                the series key block of model/record.h (u16 measurement_len,
//                                   measurement, u16 tag_count, tags), zero-padded to 8
//
// A record becomes visible through three release stores made after its bytes: the index slot's
// record_ref, the measurement slot's head_ref, then arena_published and series_count. Readers
// load each with acquire before reading the bytes behind it, so no reader sees a partial key.

inline constexpr uint64_t kSeriesMagic = 0x31535245534c4e52ULL;  // "RNLSERS1" little-endian
inline constexpr uint32_t kSeriesLayoutVersion = 1;
inline constexpr uint32_t kSeriesHeaderBytes = 256;
inline constexpr uint32_t kSeriesSlotBytes = 16;
inline constexpr uint32_t kSeriesRecordHeaderBytes = 24;
inline constexpr uint64_t kMaxSeriesIndexSlots = uint64_t{1} << 32;

struct SeriesHeader {
  ShmPrefix prefix;
  uint64_t index_slots;
  uint64_t max_series;
  uint64_t measurement_slots;
  uint64_t max_measurements;
  uint64_t index_offset;
  uint64_t measurement_offset;
  uint64_t arena_offset;
  uint64_t arena_bytes;
  uint8_t reserved0[16];
  alignas(64) std::atomic<uint64_t> series_count;
  std::atomic<uint64_t> arena_published;
  uint8_t reserved1[48];
  alignas(64) std::atomic<uint64_t> rejected_full;
  std::atomic<uint64_t> rejected_invalid;
  std::atomic<uint64_t> unchained;
  uint8_t reserved2[40];
};
static_assert(sizeof(SeriesHeader) == kSeriesHeaderBytes);
static_assert(offsetof(SeriesHeader, index_slots) == 48);
static_assert(offsetof(SeriesHeader, max_series) == 56);
static_assert(offsetof(SeriesHeader, measurement_slots) == 64);
static_assert(offsetof(SeriesHeader, max_measurements) == 72);
static_assert(offsetof(SeriesHeader, index_offset) == 80);
static_assert(offsetof(SeriesHeader, measurement_offset) == 88);
static_assert(offsetof(SeriesHeader, arena_offset) == 96);
static_assert(offsetof(SeriesHeader, arena_bytes) == 104);
static_assert(offsetof(SeriesHeader, series_count) == 128);
static_assert(offsetof(SeriesHeader, arena_published) == 136);
static_assert(offsetof(SeriesHeader, rejected_full) == 192);
static_assert(offsetof(SeriesHeader, rejected_invalid) == 200);
static_assert(offsetof(SeriesHeader, unchained) == 208);

// An index slot or a measurement slot: a key and a release-published reference.
struct SeriesSlot {
  std::atomic<uint64_t> key;
  std::atomic<uint64_t> ref;
};
static_assert(sizeof(SeriesSlot) == kSeriesSlotBytes);
static_assert(offsetof(SeriesSlot, ref) == 8);

struct SeriesRecordHeader {
  uint64_t series_id;
  uint32_t key_len;
  uint32_t reserved;
  uint64_t prev_ref;
};
static_assert(sizeof(SeriesRecordHeader) == kSeriesRecordHeaderBytes);
static_assert(offsetof(SeriesRecordHeader, key_len) == 8);
static_assert(offsetof(SeriesRecordHeader, prev_ref) == 16);

constexpr uint64_t series_record_bytes(uint64_t key_len) {
  return kSeriesRecordHeaderBytes + (key_len + 7) / 8 * 8;
}

}  // namespace runnel::ipc
