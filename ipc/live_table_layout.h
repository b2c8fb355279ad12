// The live tables' shared-memory layout: what the speed-path workers (writers) and read-only
// clients agree on byte for byte. Change a field only together with kLiveLayoutVersion.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "ipc/shm_object.h"
#include "model/clock.h"
#include "model/view.h"

namespace runnel::ipc {

// Object "/dev/shm/<shm_name>.live" = LiveHeader, the view directory (view_count
// ViewDescriptors), then one area per view at its area_offset. Host-endian; never leaves the
// host. The daemon recreates the object at every start-up (live state is rebuilt from the log);
// the successor sets `retired` in the old instance and bumps every view's change_seq, so a
// client sees the replacement, reopens by name and compares instance_id.
//
// LiveHeader, 256 bytes:
//   offset size  field
//        0   48  prefix             ShmPrefix (shm_object.h): magic kLiveMagic, layout_version,
//                                   header_bytes = 256, total_bytes, instance_id,
//                                   created_unix_ns, retired
//       48    4  view_count         0..kMaxLiveViews
//       52    4  descriptor_bytes   sizeof(ViewDescriptor) = 320
//       56    8  reserved
//       64    4  batch_dir_len      0..kMaxBatchDirBytes; 0: no batch layer
//       68    4  reserved
//       72  184  batch_dir          the LMDB batch views' directory (DATA_DIR/views), not
//                                   NUL-terminated, batch_dir_len bytes
//
// ViewDescriptor, 320 bytes, at 256 + i * 320. Bytes 0-255 are written once before the magic;
// the last cache line is the view's change notification, written by the workers:
//        0   64  name               1..63 bytes, NUL-padded
//       64    4  view_id            the configuration's id for the view
//       68    4  state_bytes        aggregate state per entry (opaque to this layer)
//       72    8  definition_hash    model/view.h ViewDef::definition_hash()
//       80    4  width_count        1..8
//       84    4  shard_count        S: series_id % S picks the shard; one writer per shard
//       88    4  entry_bytes        kEntryHeaderBytes + state_bytes rounded up to 64
//       92    4  max_probe          a key lies at most max_probe - 1 slots past its home slot
//       96    8  shard_capacity     entry slots per shard
//      104    8  area_offset        from the object's start, a multiple of 64
//      112    8  area_bytes         view_area_bytes(shard_count, state_bytes, definition_bytes,
//                                   shard_capacity)
//      120    4  definition_bytes   0..kMaxDefinitionBytes: the view's canonical definition text
//      124    4  reserved
//      128   64  widths_ns[8]       bucket widths in ns (i64), width_count of them, rest 0
//      192   64  reserved
//      256    4  change_seq         futex word: +1 (release) by a worker after each batch
//      260    4  woken_seq          change_seq as of the last FUTEX_WAKE (daemon-internal)
//      264    8  last_wake_ns       CLOCK_MONOTONIC of that wake (daemon-internal)
//      272    8  evicted_generation entries of generations <= this may have been evicted
//                                   because the batch layer absorbed them for this view
//                                   (model/generation.h); stored (release) before such an
//                                   eviction starts, so a client that read the batch views at
//                                   a lower generation retries. 0: none evicted.
//      280   40  reserved
//
// View area, at area_offset:
//        0  S*64  ShardCounters[S]  one cache line per shard, written by its writer only
//     S*64   I    initial_state     state_bytes, then zeros up to I = state_bytes rounded up
//                                   to 64: the state a new entry starts from (aggregate init)
//  S*64+I    D    definition        definition_bytes of ViewDef::canonical() (parse_view()
//                                   reads it back: how to decode the state), zeros up to D =
//                                   definition_bytes rounded up to 64
//  S*64+I+D  -    entries           shard s's slots at s * shard_capacity * entry_bytes
//
// ShardCounters, 64 bytes (relaxed u64 each: statistics, no snapshot across fields):
//        0    8  entries_used       gauge: occupied slots
//        8    8  tombstones         gauge: evicted slots still bridging a probe chain
//       16    8  inserts            keys inserted
//       24    8  overflow           events that found no room (counted by the caller)
//       32    8  evictions          entries evicted (evict_if, evict_oldest)
//       40    8  late_events        events older than the live window (counted by the caller)
//       48   16  reserved
//
// Entry, entry_bytes (a multiple of 64), at a 64-aligned address, so that the header (what a
// probe reads) is one cache line:
//        0    8  seq                seqlock: odd while the shard's writer changes the entry
//        8    8  series_id          row id: the record's series_id when grouping by all tags
//       16    8  bucket_start_ns    i64, a multiple of the width (bucket_start() below)
//       24    4  width_index        into widths_ns
//       28    4  flags              kSlotEmpty / kSlotOccupied / kSlotTombstone
//       32    8  first_pos          ring/log position of the first event folded in
//       40    8  last_pos           ... and of the last; the batch layer's absorption test
//       48    8  update_count       events folded in; 0 for a fresh entry (initial state)
//       56    8  generation         of every event folded in (model/generation.h); part of the
//                                   key, but not of the home slot: all generations of one
//                                   bucket share a probe chain
//       64    -  state              state_bytes, then zeros up to entry_bytes
//
// Every field of an entry, the state included, is read and written with atomic (relaxed) word
// accesses between the seqlock's seq loads, so a reader copy is never formally racy.
//
// Keys: (series_id, width_index, bucket_start_ns, generation). Open addressing with linear probing inside a
// shard: a key's home slot is home_slot() below, its slot the first usable one after it, at most
// max_probe - 1 slots further (wrapping at shard_capacity). Every slot between a key's home and
// its slot is non-empty (occupied or tombstone); entries never move, eviction leaves a
// tombstone, and a tombstone becomes empty again only once the slot after it is empty (no probe
// chain crosses it then).

inline constexpr uint64_t kLiveMagic = 0x314556494c4c4e52ULL;  // "RNLLIVE1" little-endian
inline constexpr uint32_t kLiveLayoutVersion = 3;  // 3: entries cache-line aligned
inline constexpr uint32_t kLiveHeaderBytes = 256;
inline constexpr uint32_t kViewDescriptorBytes = 320;
inline constexpr uint32_t kMaxLiveViews = 256;
inline constexpr uint32_t kMaxWidths = 8;
inline constexpr uint32_t kViewNameBytes = 64;  // 63 bytes and a NUL
inline constexpr uint32_t kMaxShards = 1024;
inline constexpr uint32_t kMaxStateBytes = 1u << 16;
inline constexpr uint32_t kMaxProbeLimit = 4096;
inline constexpr uint64_t kMaxShardCapacity = uint64_t{1} << 32;
inline constexpr uint64_t kMaxLiveBytes = uint64_t{1} << 44;  // the whole object
inline constexpr uint32_t kMaxDefinitionBytes = 1u << 16;
inline constexpr uint32_t kEntryHeaderBytes = 64;
inline constexpr uint32_t kMaxBatchDirBytes = 184;
inline constexpr uint32_t kShardCountersBytes = 64;

inline constexpr uint32_t kSlotEmpty = 0;
inline constexpr uint32_t kSlotOccupied = 1;
inline constexpr uint32_t kSlotTombstone = 2;

static_assert(kMaxWidths == ViewDef::kMaxWidths && kViewNameBytes == ViewDef::kMaxNameBytes + 1,
              "the live layout holds every valid view definition");

struct LiveHeader {
  ShmPrefix prefix;
  uint32_t view_count;
  uint32_t descriptor_bytes;
  uint64_t reserved0;
  uint32_t batch_dir_len;
  uint32_t reserved;
  char batch_dir[kMaxBatchDirBytes];
};
static_assert(sizeof(LiveHeader) == kLiveHeaderBytes);
static_assert(offsetof(LiveHeader, batch_dir_len) == 64);
static_assert(offsetof(LiveHeader, batch_dir) == 72);
static_assert(offsetof(LiveHeader, prefix) == 0);
static_assert(offsetof(LiveHeader, view_count) == 48);
static_assert(offsetof(LiveHeader, descriptor_bytes) == 52);

struct alignas(64) ViewDescriptor {
  char name[kViewNameBytes];
  uint32_t view_id;
  uint32_t state_bytes;
  uint64_t definition_hash;
  uint32_t width_count;
  uint32_t shard_count;
  uint32_t entry_bytes;
  uint32_t max_probe;
  uint64_t shard_capacity;
  uint64_t area_offset;
  uint64_t area_bytes;
  uint32_t definition_bytes;
  uint32_t reserved0;
  int64_t widths_ns[kMaxWidths];
  uint8_t reserved1[64];
  alignas(64) std::atomic<uint32_t> change_seq;
  std::atomic<uint32_t> woken_seq;
  std::atomic<int64_t> last_wake_ns;
  std::atomic<uint64_t> evicted_generation;
  uint8_t reserved2[40];
};
static_assert(sizeof(ViewDescriptor) == kViewDescriptorBytes);
static_assert(offsetof(ViewDescriptor, view_id) == 64);
static_assert(offsetof(ViewDescriptor, state_bytes) == 68);
static_assert(offsetof(ViewDescriptor, definition_hash) == 72);
static_assert(offsetof(ViewDescriptor, width_count) == 80);
static_assert(offsetof(ViewDescriptor, shard_count) == 84);
static_assert(offsetof(ViewDescriptor, entry_bytes) == 88);
static_assert(offsetof(ViewDescriptor, max_probe) == 92);
static_assert(offsetof(ViewDescriptor, shard_capacity) == 96);
static_assert(offsetof(ViewDescriptor, area_offset) == 104);
static_assert(offsetof(ViewDescriptor, area_bytes) == 112);
static_assert(offsetof(ViewDescriptor, definition_bytes) == 120);
static_assert(offsetof(ViewDescriptor, widths_ns) == 128);
static_assert(offsetof(ViewDescriptor, change_seq) == 256);
static_assert(offsetof(ViewDescriptor, woken_seq) == 260);
static_assert(offsetof(ViewDescriptor, last_wake_ns) == 264);
static_assert(offsetof(ViewDescriptor, evicted_generation) == 272);

struct alignas(64) ShardCounters {
  std::atomic<uint64_t> entries_used;
  std::atomic<uint64_t> tombstones;
  std::atomic<uint64_t> inserts;
  std::atomic<uint64_t> overflow;
  std::atomic<uint64_t> evictions;
  std::atomic<uint64_t> late_events;
  uint64_t reserved[2];
};
static_assert(sizeof(ShardCounters) == kShardCountersBytes);
static_assert(offsetof(ShardCounters, overflow) == 24);
static_assert(offsetof(ShardCounters, late_events) == 40);

// The fixed part of an entry; the state follows at kEntryHeaderBytes.
struct LiveEntry {
  std::atomic<uint64_t> seq;
  std::atomic<uint64_t> series_id;
  std::atomic<int64_t> bucket_start_ns;
  std::atomic<uint32_t> width_index;
  std::atomic<uint32_t> flags;
  std::atomic<uint64_t> first_pos;
  std::atomic<uint64_t> last_pos;
  std::atomic<uint64_t> update_count;
  std::atomic<uint64_t> generation;
};
static_assert(sizeof(LiveEntry) == kEntryHeaderBytes);
static_assert(offsetof(LiveEntry, generation) == 56);
static_assert(offsetof(LiveEntry, seq) == 0);
static_assert(offsetof(LiveEntry, series_id) == 8);
static_assert(offsetof(LiveEntry, bucket_start_ns) == 16);
static_assert(offsetof(LiveEntry, width_index) == 24);
static_assert(offsetof(LiveEntry, flags) == 28);
static_assert(offsetof(LiveEntry, first_pos) == 32);
static_assert(offsetof(LiveEntry, last_pos) == 40);
static_assert(offsetof(LiveEntry, update_count) == 48);
static_assert(std::atomic<uint64_t>::is_always_lock_free &&
                  std::atomic<int64_t>::is_always_lock_free,
              "cross-process atomics must be lock-free");

constexpr uint64_t round_up(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

constexpr uint32_t entry_bytes_for(uint32_t state_bytes) {
  return kEntryHeaderBytes + static_cast<uint32_t>(round_up(state_bytes, 64));
}
constexpr uint64_t initial_state_offset(uint32_t shard_count) {
  return uint64_t{shard_count} * kShardCountersBytes;
}
constexpr uint64_t definition_offset(uint32_t shard_count, uint32_t state_bytes) {
  return initial_state_offset(shard_count) + round_up(state_bytes, 64);
}
constexpr uint64_t entries_offset(uint32_t shard_count, uint32_t state_bytes,
                                  uint32_t definition_bytes) {
  return definition_offset(shard_count, state_bytes) + round_up(definition_bytes, 64);
}
constexpr uint64_t view_area_bytes(uint32_t shard_count, uint32_t state_bytes,
                                   uint32_t definition_bytes, uint64_t shard_capacity) {
  return round_up(entries_offset(shard_count, state_bytes, definition_bytes) +
                      uint64_t{shard_count} * shard_capacity * entry_bytes_for(state_bytes),
                  64);
}

// Keys hold bucket starts as model/clock.h computes them.
using ::runnel::bucket_start;

// Home slot of a key in a shard of `shard_capacity` slots: key_hash(), XXH3-64 (seed 0) of the
// 24 bytes series_id (u64), bucket_start_ns (i64), width_index (as u64), little-endian, mapped
// onto [0, shard_capacity) by multiply-high (slot_of_hash). Part of the layout: every reader
// computes the same.
uint64_t key_hash(uint64_t series_id, uint32_t width_index, int64_t bucket_start_ns);
constexpr uint64_t slot_of_hash(uint64_t hash, uint64_t shard_capacity) {
  __extension__ typedef unsigned __int128 U128;
  return static_cast<uint64_t>((static_cast<U128>(hash) * shard_capacity) >> 64);
}
inline uint64_t home_slot(uint64_t series_id, uint32_t width_index, int64_t bucket_start_ns,
                          uint64_t shard_capacity) {
  return slot_of_hash(key_hash(series_id, width_index, bucket_start_ns), shard_capacity);
}

}  // namespace runnel::ipc
