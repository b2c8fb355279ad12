// HyperLogLog distinct counter over a caller-owned, fixed-size byte span: the state of the
// "distinct" aggregate wherever it is kept (shared memory, LMDB, a client's merge buffer).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "model/status.h"

namespace runnel {

// State layout: u8 register[2^p], nothing else (the precision p belongs to the view, not the
// blob). Register j holds the largest rank seen among hashes whose top p bits are j, where
// rank = 1 + leading zeros of the remaining 64-p bits (64-p+1 if they are all zero), or 0 if
// no hash fell there. Any byte values are memory-safe to read; a register above 65-p is
// corruption that validate() reports.
//
// The estimate is Ertl's improved raw estimator ("New cardinality estimation algorithms for
// HyperLogLog sketches", 2017, algorithm 6): no bias tables, no switch to linear counting,
// accurate from 0 to far beyond 2^32. Relative standard error ~1.04/sqrt(2^p): 1.6% at p=12
// (4 KiB), 0.81% at p=14 (16 KiB).
//
// The object holds only the precision; it is immutable and thread-safe. A state blob
// REQUIRES external synchronization (one writer). add() and merge() take no lock and
// allocate nothing; merge is a per-register max, so it is associative, commutative and
// idempotent, and merging sketches gives exactly the sketch of the union of their streams.
class HyperLogLog {
 public:
  static constexpr int kMinPrecision = 4;
  static constexpr int kMaxPrecision = 18;

  // Invalid (naming the precision and the allowed range) outside kMinPrecision..kMaxPrecision.
  static Result<HyperLogLog> create(int precision);

  int precision() const { return p_; }
  size_t state_bytes() const { return size_t{1} << p_; }
  double relative_standard_error() const;

  // Every span below must hold exactly state_bytes() bytes; no alignment is assumed.
  void init(std::span<std::byte> state) const;
  // `hash` must be a well-mixed 64-bit hash of the counted value (XXH3_64bits in runnel).
  void add(std::span<std::byte> state, uint64_t hash) const;
  void merge(std::span<std::byte> dst, std::span<const std::byte> src) const;
  // Estimated number of distinct hashes added; exactly 0 for an empty state.
  double estimate(std::span<const std::byte> state) const;
  // Whether every register is a rank this precision can produce (for bytes read from disk).
  bool validate(std::span<const std::byte> state) const;

 private:
  explicit HyperLogLog(int precision) : p_(precision) {}

  int p_;
};

}  // namespace runnel
