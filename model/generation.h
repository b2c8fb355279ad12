// Generations: how the speed layer and the batch layer split the event stream between them
// without counting an event twice or missing one (the Lambda invariant).
//
// Every event has a place in log order: the ring epoch and ring position the journal logged it
// with. Its generation is derived from that place alone:
//
//   generation(epoch, pos) = epoch << kGenerationIndexBits | min(pos >> kGenerationShift, max)
//
// so generations never decrease along the log (ring epochs increase by one whenever the daemon
// creates a new ring, see ipc/ring.h) and every generation is a contiguous run of log records.
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

// 32 MiB of ring positions per generation: small enough that the batch layer can take over
// often, large enough that long buckets (1 min, 1 h) are not split into many live entries.
inline constexpr unsigned kGenerationShift = 25;
inline constexpr unsigned kGenerationIndexBits = 40;
inline constexpr uint64_t kMaxGenerationIndex = (uint64_t{1} << kGenerationIndexBits) - 1;
// Ring epochs must stay below this for generations to order (ipc/ring.h keeps them small).
inline constexpr uint64_t kMaxGenerationEpoch = (uint64_t{1} << (64 - kGenerationIndexBits)) - 1;

// REQUIRES: epoch <= kMaxGenerationEpoch.
constexpr uint64_t generation_of(uint64_t ring_epoch, uint64_t ring_pos) {
  return ring_epoch << kGenerationIndexBits | std::min(ring_pos >> kGenerationShift, kMaxGenerationIndex);
}

// No generation: what a batch store that has absorbed nothing covers.
inline constexpr uint64_t kNoGeneration = 0;

}  // namespace runnel
