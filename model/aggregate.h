// Aggregates as fixed-width byte blobs: the one implementation of update, merge and finalize
// that the speed path (shared-memory slots), the batch layer (LMDB values) and the client
// (batch ⊕ live, bucket ⊕ bucket, series ⊕ series) all call.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/ddsketch.h"
#include "model/hyperloglog.h"
#include "model/status.h"

namespace runnel {

struct ViewDef;  // model/view.h

enum class AggKind : uint8_t {
  kCount,
  kSum,
  kMin,
  kMax,
  kMean,
  kFirst,
  kLast,
  kVariance,
  kStddev,
  kDistinct,
  kQuantile
};
inline constexpr size_t kAggKindCount = 11;

// Stable names, as written in the config and shown to users: "count", "sum", "min", "max",
// "mean", "first", "last", "variance", "stddev", "distinct", "quantile".
std::string_view agg_kind_name(AggKind kind);

// One requested output of a view.
struct AggOutput {
  AggKind kind = AggKind::kCount;
  double q = 0;        // kQuantile only, in [0, 1]; 0 otherwise
  std::string target;  // kDistinct only: the x of distinct(x), a tag key or field name that
                       // ViewRouter hashes; empty for plain "distinct"

  friend bool operator==(const AggOutput&, const AggOutput&) = default;
};

// Parses one aggregate as written in the TOML config:
//   count sum min max mean first last variance stddev distinct
//   distinct(x)    distinct values of tag or field x (ViewRouter computes the hash)
//   pX             the X-th percentile, X decimal in [0, 100]: p0 p50 p99 p99.9 p100
//   p999 p9999     three or more digits starting with "99", no dot: read as 0.<digits>,
//                  so p999 = 0.999, p9999 = 0.9999, p995 = 0.995
//   quantile(q)    q in [0, 1]: quantile(0.999)
// Invalid names the offending text and what was expected.
Result<AggOutput> parse_agg_output(std::string_view text);

// Canonical name of an output: the kind's name, "distinct(x)", or "p" + the percentile in
// shortest form for a quantile ("p50", "p99.9", "p0.01"). parse_agg_output() reads it back to
// the same output.
std::string agg_output_name(const AggOutput& output);

// Parameters of the sketches, shared by all outputs that use them.
struct SketchParams {
  int hll_precision = 12;  // distinct: 2^p one-byte registers, error ~1.04/sqrt(2^p)
  double quantile_relative_accuracy = DDSketch::kDefaultRelativeAccuracy;
  uint32_t quantile_max_bins = DDSketch::kDefaultMaxBins;  // u64 bins per sign
};

// What a view computes per (series, bucket width, bucket start): its outputs, in order.
struct AggregateSpec {
  std::vector<AggOutput> outputs;
  SketchParams sketch;

  // Parses each name with parse_agg_output(); the first bad one is the error. Everything else
  // (duplicates, sketch parameters) is checked by AggregateLayout::create().
  static Result<AggregateSpec> parse(const std::vector<std::string>& names,
                                     SketchParams sketch = {});
  // The default view's set: count, sum, min, max, mean, last.
  static AggregateSpec defaults();
};

// The pieces of state that outputs derive from. A layout holds each needed one once.
enum class AggComponent : uint8_t {
  kCount,      // always present: count, and whether the state is empty
  kSum,        // sum, mean
  kMin,        // min
  kMax,        // max
  kMoments,    // variance, stddev
  kFirst,      // first
  kLast,       // last
  kDistinct,   // distinct
  kQuantiles,  // every quantile output shares one sketch
};
inline constexpr size_t kAggComponentCount = 9;

// State blob layout. A blob is the needed components, in the order below, back to back; each
// is a multiple of 8 bytes so the blob is too. Fixed width, no pointers, little-endian, no
// alignment assumed (LMDB values are not aligned): copy it, store it, compare it as bytes.
//
//   component  bytes     fields                                       empty state
//   count      8         u64 n (events)                               0
//   sum        16        f64 sum, f64 compensation (Neumaier);        0, 0
//                        the sum is their sum
//   min        8         f64                                          +inf
//   max        8         f64                                          -inf
//   moments    24        f64 mean, f64 mean_low (the mean is their    0, 0, 0
//                        sum), f64 m2 = sum of squared deviations
//                        from the mean (Welford update, Chan merge)
//   first      16        i64 ts_ns, f64 value                         0, 0
//   last       16        i64 ts_ns, f64 value                         0, 0
//   distinct   2^p       HyperLogLog registers (model/hyperloglog.h)  all 0
//   quantiles  56 + 16m  DDSketch (model/ddsketch.h)                   see there
//
// The default set (count, sum, min, max, mean, last) is count@0 sum@8 min@24 max@32 last@40,
// 56 bytes. Which components a layout holds, and the sketch parameters, are summed up by
// state_format_id(): blobs with the same id have the same layout and merge with each other.
//
// Semantics:
// - first and last order events by (ts_ns, value bits as u64): first is the least, last the
//   greatest, so equal timestamps are broken by value and merge order never changes them.
// - min of -0.0 and +0.0 is -0.0, max is +0.0 (bitwise order-independent).
// - variance is the population variance m2 / n; stddev its square root.
// - mean is sum / n from the compensated sum.
// - count and min, max, first, last, distinct, quantiles are bitwise independent of the order
//   of updates and of how states are merged; sum, mean and variance are independent up to
//   floating-point rounding.
// - finalize() of an empty state is 0 for count, sum and distinct and NaN for every other
//   output.
// - update() expects finite values (runnel's records hold no others): a NaN or infinity would
//   poison sum, mean and variance, and the quantile sketch skips it.
//
// Thread-safety: an AggregateLayout is immutable after create() and may be used by any number
// of threads. A state blob REQUIRES external synchronization: one writer (the speed worker that
// owns the slot), readers copy it out (seqlock) and finalize or merge their copy. update() and
// merge() take no lock and allocate nothing.
class AggregateLayout {
 public:
  static constexpr size_t kAbsent = SIZE_MAX;

  // Checks the spec (at least one output, no duplicates, at most one distinct, quantiles in
  // [0, 1], parameters of the sketches that are used) and derives the components; Invalid
  // names the offending output.
  static Result<AggregateLayout> create(AggregateSpec spec);
  // The layout of a view's aggregates and sketch parameters; Invalid names the view too. The
  // speed path, the batch layer and clients all build their layout here.
  static Result<AggregateLayout> for_view(const ViewDef& view);

  const AggregateSpec& spec() const { return spec_; }
  size_t output_count() const { return spec_.outputs.size(); }
  size_t state_bytes() const { return state_bytes_; }
  // Byte offset of a component inside the blob, or kAbsent.
  size_t offset(AggComponent component) const;
  bool has(AggComponent component) const { return offset(component) != kAbsent; }
  // XXH3 of the components present and their parameters: equal ids, mergeable blobs.
  uint64_t state_format_id() const { return state_format_id_; }

  // Every state span below holds exactly state_bytes() bytes.
  void init(std::span<std::byte> state) const;
  // Adds one event. distinct_hash is XXH3_64bits of the distinct-counted value; it is ignored
  // when there is no distinct output, or when has_distinct is false (the event lacks the tag or
  // field that distinct(x) counts: it still counts everywhere else).
  void update(std::span<std::byte> state, double value, int64_t ts_ns,
              uint64_t distinct_hash, bool has_distinct = true) const;
  // dst ⊕= src. Associative and commutative; an empty state is the identity (bitwise).
  // REQUIRES: dst and src do not overlap (to double a state, merge a copy).
  void merge(std::span<std::byte> dst, std::span<const std::byte> src) const;
  // Output `output_index` of spec().outputs. REQUIRES: output_index < output_count().
  double finalize(std::span<const std::byte> state, size_t output_index) const;
  // Every output in order. REQUIRES: out.size() == output_count().
  void finalize_all(std::span<const std::byte> state, std::span<double> out) const;
  uint64_t count(std::span<const std::byte> state) const;
  bool is_empty(std::span<const std::byte> state) const { return count(state) == 0; }
  // Checks bytes from disk or another process before they are merged or finalized: the size
  // and the invariants of the sketches. Corruption names the component.
  Status validate(std::span<const std::byte> state) const;

 private:
  AggregateLayout() = default;

  AggregateSpec spec_;
  std::array<uint32_t, kAggComponentCount> offset_{};  // UINT32_MAX when absent
  size_t state_bytes_ = 0;
  uint64_t state_format_id_ = 0;
  std::optional<HyperLogLog> hll_;
  std::optional<DDSketch> sketch_;
};

}  // namespace runnel
