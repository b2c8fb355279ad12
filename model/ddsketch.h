// DDSketch: a mergeable quantile sketch with relative-error guarantees over a caller-owned,
// fixed-size byte span: the state of the "quantile" aggregates wherever it is kept.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "model/status.h"

namespace runnel {

// Accessors of fixed-width fields inside state blobs, shared by every aggregate state. Blobs
// live in shared memory, LMDB values and client buffers, so no alignment is assumed.
namespace blob {

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void store(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

// Extremes that never depend on merge order: of -0.0 and +0.0 the minimum is -0.0 and the
// maximum +0.0, so the stored bits are a function of the multiset of values.
inline void fold_min(std::byte* p, double v) {
  const double cur = load<double>(p);
  if (v < cur || (v == cur && std::signbit(v))) store(p, v);
}
inline void fold_max(std::byte* p, double v) {
  const double cur = load<double>(p);
  if (v > cur || (v == cur && !std::signbit(v))) store(p, v);
}

}  // namespace blob

// A value x with |x| >= kMinIndexable goes to bin i = ceil(log_gamma(|x|)) of the store of its
// sign, gamma = (1+a)/(1-a) for relative accuracy a. Every x in bin i lies in
// (gamma^(i-1), gamma^i], so the bin's representative 2 gamma^i / (gamma+1) is within a * |x|
// of each of them. |x| < kMinIndexable (zero, subnormals) is counted in zero_count.
//
// State layout, m = max_bins, 56 + 16 m bytes, little-endian, no alignment assumed:
//
//   off      size
//   0        8    u64 zero_count
//   8        8    f64 min        +inf when empty
//   16       8    f64 max        -inf when empty
//   24       16   positive store header: u64 count, i32 offset, i32 hi
//   40       16   negative store header (bins by |x|): u64 count, i32 offset, i32 hi
//   56       8 m  u64 positive bins: bin[k] counts index offset+k
//   56+8m    8 m  u64 negative bins
//
// Each store is a window of at most m consecutive indices [offset, hi]; an empty store is all
// zero (count 0). The window is canonical: offset = max(lowest index seen, hi - m + 1), bin[0]
// also holds every index below offset, and bins past hi - offset are zero. So the bytes are a
// function of the multiset of values alone, and merging sketches of parts of a stream, in any
// order or tree shape, yields byte for byte the sketch of the whole stream.
//
// Collapsing: once a store's indices span more than m bins, its lowest bins (the smallest
// magnitudes: values nearest zero, for the negative store too) fold into bin[0]. Quantiles whose
// true value lies in a collapsed bin are overestimated in magnitude; every other quantile keeps
// the relative-accuracy guarantee. With a = 0.01 and m = 2048 one store covers magnitudes over
// a factor of ~6e17 before anything collapses.
//
// The object holds only the parameters; it is immutable and thread-safe. A state blob
// REQUIRES external synchronization (one writer). add() and merge() take no lock and allocate
// nothing; they cost O(1) except when a store's window moves (a memmove of at most 8 m bytes).
// Reads of corrupt bytes are memory-safe (windows are clamped to m bins) but meaningless;
// validate() checks bytes that come from disk.
class DDSketch {
 public:
  static constexpr double kDefaultRelativeAccuracy = 0.01;
  static constexpr uint32_t kDefaultMaxBins = 2048;
  static constexpr double kMinRelativeAccuracy = 1e-6;  // keeps every index inside an i32
  static constexpr double kMaxRelativeAccuracy = 0.5;
  static constexpr uint32_t kMinMaxBins = 8;
  static constexpr uint32_t kMaxMaxBins = 1u << 16;
  static constexpr double kMinIndexable = 2.2250738585072014e-308;  // DBL_MIN, the least normal
  static constexpr size_t kHeaderBytes = 56;

  // Invalid, naming the parameter and its range, unless relative_accuracy lies in
  // [kMinRelativeAccuracy, kMaxRelativeAccuracy] and max_bins in [kMinMaxBins, kMaxMaxBins].
  static Result<DDSketch> create(double relative_accuracy, uint32_t max_bins);

  double relative_accuracy() const { return alpha_; }
  uint32_t max_bins() const { return max_bins_; }
  size_t state_bytes() const { return kHeaderBytes + 16 * size_t{max_bins_}; }

  // Every span below must hold exactly state_bytes() bytes.
  void init(std::span<std::byte> state) const;
  // Ignores NaN and infinities (runnel's records carry finite values only).
  void add(std::span<std::byte> state, double value) const;
  // Both states must come from sketches with the same parameters and must not overlap.
  void merge(std::span<std::byte> dst, std::span<const std::byte> src) const;
  // The value of rank floor(q * (count - 1)) in the sorted multiset (0-based), i.e. the lower
  // q-quantile, within relative_accuracy() of the true one unless its bin collapsed; clamped to
  // [min, max], so q = 0 and q = 1 give the exact extremes. NaN when empty or q is NaN; q is
  // clamped to [0, 1].
  double quantile(std::span<const std::byte> state, double q) const;
  uint64_t count(std::span<const std::byte> state) const;
  // Whether the bytes satisfy every invariant of the layout (for bytes read from disk).
  bool validate(std::span<const std::byte> state) const;

  // Bin index of a magnitude >= kMinIndexable, and the representative magnitude of a bin.
  int32_t index_of(double magnitude) const;
  double value_of(int32_t index) const;

 private:
  DDSketch(double relative_accuracy, uint32_t max_bins);

  double alpha_;
  uint32_t max_bins_;
  double ln_gamma_;
  double inv_ln_gamma_;
  double ln_bin_center_;  // log(2 / (gamma + 1)): representative = gamma^i * 2 / (gamma + 1)
};

}  // namespace runnel
