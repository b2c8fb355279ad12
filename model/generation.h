// Generations: how the speed layer and the batch layer split the event stream between them
// without counting an event twice or missing one (the Lambda invariant).
//
// Every event has a place in log order: the ring epoch and ring position the journal logged it
// with. Its generation is derived from that place alone:
//
//   generation(epoch, pos) = epoch << kGenerationIndexBits | min(pos >> shift(epoch), max)
//
// A ring epoch is (counter << 6 | shift): runneld creates each new ring with the counter after
// the log's last one and the configured generation size (ring.generation_bytes = 2^shift), so
// that generations never decrease along the log, every generation is a contiguous run of log
// records, and a reader needs nothing but the record's (epoch, position) to place it.
// - The speed path keys every live entry by the generation of its events too: one entry never
//   mixes two generations.
// - The compactor advances the batch watermark only at generation boundaries: after a step, the
//   batch views hold every event of generations <= absorbed_generation(watermark) and none of
//   a later one.
// - A query takes the batch views at one watermark and adds exactly the live entries of later
//   generations; the speed path evicts entries of absorbed generations once the watermark
//   that absorbed them has been published.
#pragma once

#include <algorithm>
#include <cstdint>

namespace runnel {

// 32 MiB of ring positions per generation by default: small enough that the batch layer can
// take over often, large enough that long buckets (1 min, 1 h) are not split into many live
// entries.
inline constexpr unsigned kGenerationShift = 25;
inline constexpr unsigned kGenerationIndexBits = 40;
inline constexpr unsigned kEpochShiftBits = 6;
inline constexpr uint64_t kMaxGenerationIndex = (uint64_t{1} << kGenerationIndexBits) - 1;
// Ring epochs must stay below this for generations to order (ipc/ring.h keeps them small).
inline constexpr uint64_t kMaxGenerationEpoch = (uint64_t{1} << (64 - kGenerationIndexBits)) - 1;

constexpr uint64_t make_ring_epoch(uint64_t counter, unsigned generation_shift) {
  return counter << kEpochShiftBits | generation_shift;
}
constexpr uint64_t epoch_counter(uint64_t ring_epoch) { return ring_epoch >> kEpochShiftBits; }
constexpr unsigned epoch_generation_shift(uint64_t ring_epoch) {
  return static_cast<unsigned>(ring_epoch & ((1u << kEpochShiftBits) - 1));
}

// REQUIRES: epoch <= kMaxGenerationEpoch.
constexpr uint64_t generation_of(uint64_t ring_epoch, uint64_t ring_pos) {
  return ring_epoch << kGenerationIndexBits |
         std::min(ring_pos >> epoch_generation_shift(ring_epoch), kMaxGenerationIndex);
}

// No generation: what a batch store that has absorbed nothing covers.
inline constexpr uint64_t kNoGeneration = 0;

}  // namespace runnel
