// Aggregate names, spec validation, the state layout and the blob operations; see aggregate.h.
#include "model/aggregate.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "model/view.h"

namespace runnel {
namespace {

using blob::load;
using blob::store;

constexpr std::array<std::string_view, kAggKindCount> kKindNames = {
    "count", "sum",      "min",    "max",      "mean",    "first",
    "last",  "variance", "stddev", "distinct", "quantile"};

constexpr uint32_t kNoOffset = std::numeric_limits<uint32_t>::max();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Bytes of each fixed-size component; kDistinct and kQuantiles depend on the sketch params.
constexpr std::array<size_t, kAggComponentCount> kFixedBytes = {8, 16, 8, 8, 24, 16, 16, 0, 0};
static_assert(kAggComponentCount == static_cast<size_t>(AggComponent::kQuantiles) + 1);

AggComponent component_of(AggKind kind) {
  switch (kind) {
    case AggKind::kCount:
      return AggComponent::kCount;
    case AggKind::kSum:
    case AggKind::kMean:
      return AggComponent::kSum;
    case AggKind::kMin:
      return AggComponent::kMin;
    case AggKind::kMax:
      return AggComponent::kMax;
    case AggKind::kFirst:
      return AggComponent::kFirst;
    case AggKind::kLast:
      return AggComponent::kLast;
    case AggKind::kVariance:
    case AggKind::kStddev:
      return AggComponent::kMoments;
    case AggKind::kDistinct:
      return AggComponent::kDistinct;
    case AggKind::kQuantile:
      return AggComponent::kQuantiles;
  }
  return AggComponent::kCount;
}

// Parses a whole string as a double in `format`; rejects signs, spaces and trailing bytes.
std::optional<double> parse_number(std::string_view text, std::chars_format format) {
  if (text.empty() || !(std::isdigit(static_cast<unsigned char>(text[0])) || text[0] == '.')) {
    return std::nullopt;
  }
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v, format);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

// "pX" with X a percent ("99.9") or the "99..." shorthand ("999"), as a decimal string of q,
// so that p99.9 parses to exactly the double quantile(0.999) does.
std::optional<std::string> percentile_to_q_text(std::string_view digits) {
  if (digits.empty() || digits.find_first_not_of("0123456789.") != std::string_view::npos) {
    return std::nullopt;
  }
  const size_t dot = digits.find('.');
  if (dot == std::string_view::npos && digits.size() >= 3 && digits.starts_with("99")) {
    return "0." + std::string(digits);
  }
  std::string whole(digits.substr(0, dot));
  const std::string_view frac = dot == std::string_view::npos ? "" : digits.substr(dot + 1);
  if (whole.empty() || frac.find('.') != std::string_view::npos) return std::nullopt;
  if (dot != std::string_view::npos && frac.empty()) return std::nullopt;
  if (whole.size() < 2) whole.insert(0, 2 - whole.size(), '0');
  // Dividing by 100 moves the decimal point two digits left.
  return whole.substr(0, whole.size() - 2) + (whole.size() == 2 ? "0." : ".") +
         whole.substr(whole.size() - 2) + std::string(frac);
}

// Neumaier's compensated addition into (sum, compensation) at p.
void add_compensated(std::byte* p, double x) {
  const double s = load<double>(p);
  const double t = s + x;
  const double c = std::fabs(s) >= std::fabs(x) ? (s - t) + x : (x - t) + s;
  store(p, t);
  store(p + 8, load<double>(p + 8) + c);
}

// The moments' mean is a double-double (high, low at p + 8): with data far from zero (1e9 +
// noise) a plain double mean moves in ulps of 1.2e-7, which would leave ~1e-7 relative error
// in the variance; the low part keeps it at rounding level.
double deviation(const std::byte* p, double x) {
  return (x - load<double>(p)) - load<double>(p + 8);
}

void add_to_mean(std::byte* p, double inc) {
  const double hi = load<double>(p);
  const double s = hi + inc;  // Knuth's TwoSum: s + err == hi + inc exactly
  const double hi_part = s - inc;
  const double err = (hi - hi_part) + (inc - (s - hi_part));
  const double lo = load<double>(p + 8) + err;
  const double renormalized = s + lo;  // Fast2Sum, |s| >= |lo|
  store(p, renormalized);
  store(p + 8, lo - (renormalized - s));
}

// Whether event (ts_a, value_a) precedes (ts_b, value_b) in the total order of first/last.
bool precedes(int64_t ts_a, double value_a, int64_t ts_b, double value_b) {
  if (ts_a != ts_b) return ts_a < ts_b;
  return std::bit_cast<uint64_t>(value_a) < std::bit_cast<uint64_t>(value_b);
}

// Replaces the (ts_ns, value) event at p with the given one if it comes earlier (keep_first)
// or later, or if the slot holds no event yet.
void fold_event(std::byte* p, int64_t ts_ns, double value, bool keep_first, bool slot_empty) {
  const int64_t cur_ts = load<int64_t>(p);
  const double cur = load<double>(p + 8);
  if (slot_empty ||
      (keep_first ? precedes(ts_ns, value, cur_ts, cur) : precedes(cur_ts, cur, ts_ns, value))) {
    store(p, ts_ns);
    store(p + 8, value);
  }
}

std::string bad_output(const AggOutput& output, std::string_view why) {
  return "aggregate '" + agg_output_name(output) + "': " + std::string(why);
}

}  // namespace

std::string_view agg_kind_name(AggKind kind) {
  const auto i = static_cast<size_t>(kind);
  return i < kKindNames.size() ? kKindNames[i] : "unknown";
}

Result<AggOutput> parse_agg_output(std::string_view text) {
  for (size_t i = 0; i < kKindNames.size(); ++i) {
    if (text == kKindNames[i] && static_cast<AggKind>(i) != AggKind::kQuantile) {
      return AggOutput{static_cast<AggKind>(i), 0, {}};
    }
  }
  const auto quoted = "aggregate '" + std::string(text) + "': ";
  if (text.starts_with("distinct(") && text.ends_with(")")) {
    const std::string_view target = text.substr(9, text.size() - 10);
    if (target.empty() || target.find_first_of("() ") != std::string_view::npos) {
      return Status::Invalid(quoted + "expected a tag key or field name in distinct(x)");
    }
    return AggOutput{AggKind::kDistinct, 0, std::string(target)};
  }
  std::optional<double> q;
  if (text.starts_with("quantile(") && text.ends_with(")")) {
    q = parse_number(text.substr(9, text.size() - 10), std::chars_format::general);
    if (!q) return Status::Invalid(quoted + "expected a number q in quantile(q)");
  } else if (text.size() >= 2 && text[0] == 'p' &&
             std::isdigit(static_cast<unsigned char>(text[1]))) {
    const auto q_text = percentile_to_q_text(text.substr(1));
    if (q_text) q = parse_number(*q_text, std::chars_format::fixed);
    if (!q) return Status::Invalid(quoted + "expected a percentile such as p50, p99.9 or p999");
  } else {
    return Status::Invalid(quoted +
                           "unknown aggregate; expected count, sum, min, max, mean, first, "
                           "last, variance, stddev, distinct, distinct(x), pNN (e.g. p99) or "
                           "quantile(q)");
  }
  if (!(*q >= 0 && *q <= 1)) return Status::Invalid(quoted + "quantile outside [0, 1]");
  return AggOutput{AggKind::kQuantile, *q, {}};
}

std::string agg_output_name(const AggOutput& output) {
  if (output.kind == AggKind::kDistinct && !output.target.empty()) {
    return "distinct(" + output.target + ")";
  }
  if (output.kind != AggKind::kQuantile) return std::string(agg_kind_name(output.kind));
  const double q = output.q + 0.0;  // -0.0 becomes +0.0, which prints without a sign
  char buf[64];
  if (!(q >= 0 && q <= 1)) {  // only a hand-built spec gets here; create() refuses it
    const auto res = std::to_chars(buf, buf + sizeof buf, q);
    return "quantile(" + std::string(buf, res.ptr) + ")";
  }
  // A tiny q (below ~1e-60) does not fit the buffer in fixed notation; it keeps the
  // quantile(q) form, which reads back just as well.
  auto res = std::to_chars(buf, buf + sizeof buf, q, std::chars_format::fixed);
  if (res.ec != std::errc()) {
    res = std::to_chars(buf, buf + sizeof buf, q);
    return "quantile(" + std::string(buf, res.ptr) + ")";
  }
  const std::string q_text(buf, res.ptr);
  // q in fixed notation is "I" or "I.F"; the percentile moves the point two digits right.
  const size_t dot = q_text.find('.');
  std::string frac = dot == std::string::npos ? "" : q_text.substr(dot + 1);
  if (frac.size() < 2) frac.append(2 - frac.size(), '0');
  std::string whole = q_text.substr(0, dot) + frac.substr(0, 2);
  whole.erase(0, std::min(whole.find_first_not_of('0'), whole.size() - 1));
  frac.erase(0, 2);
  return "p" + whole + (frac.empty() ? "" : "." + frac);
}

Result<AggregateSpec> AggregateSpec::parse(const std::vector<std::string>& names,
                                           SketchParams sketch) {
  AggregateSpec spec;
  spec.sketch = sketch;
  for (const std::string& name : names) {
    auto output = parse_agg_output(name);
    if (!output.ok()) return output.status();
    spec.outputs.push_back(*output);
  }
  return spec;
}

AggregateSpec AggregateSpec::defaults() {
  AggregateSpec spec;
  for (AggKind kind : {AggKind::kCount, AggKind::kSum, AggKind::kMin, AggKind::kMax, AggKind::kMean,
                       AggKind::kLast}) {
    spec.outputs.push_back({kind, 0, {}});
  }
  return spec;
}

Result<AggregateLayout> AggregateLayout::create(AggregateSpec spec) {
  if (spec.outputs.empty()) return Status::Invalid("no aggregates requested");
  std::array<bool, kAggComponentCount> needed{};
  needed[static_cast<size_t>(AggComponent::kCount)] = true;
  AggregateLayout layout;
  for (size_t i = 0; i < spec.outputs.size(); ++i) {
    const AggOutput& output = spec.outputs[i];
    if (static_cast<size_t>(output.kind) >= kAggKindCount) {
      return Status::Invalid("aggregate #" + std::to_string(i) + ": unknown kind " +
                             std::to_string(static_cast<int>(output.kind)));
    }
    if (output.kind == AggKind::kQuantile ? !(output.q >= 0 && output.q <= 1) : output.q != 0) {
      return Status::Invalid(bad_output(output, output.kind == AggKind::kQuantile
                                                    ? "quantile outside [0, 1]"
                                                    : "takes no quantile parameter"));
    }
    if (std::find(spec.outputs.begin(), spec.outputs.begin() + i, output) !=
        spec.outputs.begin() + i) {
      return Status::Invalid(bad_output(output, "requested twice"));
    }
    if (output.kind != AggKind::kDistinct && !output.target.empty()) {
      return Status::Invalid(bad_output(output, "takes no distinct target"));
    }
    if (output.kind == AggKind::kDistinct && layout.hll_) {
      return Status::Invalid(bad_output(output, "a view counts one distinct value at most"));
    }
    if (output.kind == AggKind::kDistinct) {
      auto hll = HyperLogLog::create(spec.sketch.hll_precision);
      if (!hll.ok()) return Status::Invalid(bad_output(output, hll.status().message()));
      layout.hll_ = *hll;
    }
    if (output.kind == AggKind::kQuantile && !layout.sketch_) {
      auto sketch =
          DDSketch::create(spec.sketch.quantile_relative_accuracy, spec.sketch.quantile_max_bins);
      if (!sketch.ok()) return Status::Invalid(bad_output(output, sketch.status().message()));
      layout.sketch_ = *sketch;
    }
    needed[static_cast<size_t>(component_of(output.kind))] = true;
  }

  // The format id hashes what fixes the bytes: which components, at which sizes.
  std::string format = "runnel-aggregate-state-v1";
  size_t at = 0;
  for (size_t c = 0; c < kAggComponentCount; ++c) {
    layout.offset_[c] = kNoOffset;
    if (!needed[c]) continue;
    size_t bytes = kFixedBytes[c];
    if (c == static_cast<size_t>(AggComponent::kDistinct)) {
      bytes = layout.hll_->state_bytes();
      format += ";hll=" + std::to_string(layout.hll_->precision());
    } else if (c == static_cast<size_t>(AggComponent::kQuantiles)) {
      bytes = layout.sketch_->state_bytes();
      char alpha[32];
      const auto res =
          std::to_chars(alpha, alpha + sizeof alpha, layout.sketch_->relative_accuracy());
      format += ";ddsketch=" + std::string(alpha, res.ptr) + "/" +
                std::to_string(layout.sketch_->max_bins());
    } else {
      format += ";" + std::to_string(c);
    }
    assert(bytes % 8 == 0);
    layout.offset_[c] = static_cast<uint32_t>(at);
    at += bytes;
  }
  layout.state_bytes_ = at;
  layout.state_format_id_ = XXH3_64bits(format.data(), format.size());
  layout.spec_ = std::move(spec);
  return layout;
}

Result<AggregateLayout> AggregateLayout::for_view(const ViewDef& view) {
  const SketchParams params{static_cast<int>(std::min<uint32_t>(view.hll_precision, 64)),
                            view.quantile_accuracy, view.quantile_max_bins};
  auto spec = AggregateSpec::parse(view.aggregates, params);
  if (!spec.ok()) return Status::Invalid("view '" + view.name + "': " + spec.status().message());
  auto layout = create(std::move(spec).value());
  if (!layout.ok())
    return Status::Invalid("view '" + view.name + "': " + layout.status().message());
  return layout;
}

size_t AggregateLayout::offset(AggComponent component) const {
  const uint32_t off = offset_[static_cast<size_t>(component)];
  return off == kNoOffset ? kAbsent : off;
}

void AggregateLayout::init(std::span<std::byte> state) const {
  assert(state.size() == state_bytes_);
  std::byte* p = state.data();
  std::memset(p, 0, state_bytes_);
  if (has(AggComponent::kMin)) store(p + offset(AggComponent::kMin), HUGE_VAL);
  if (has(AggComponent::kMax)) store(p + offset(AggComponent::kMax), -HUGE_VAL);
  if (hll_) hll_->init(state.subspan(offset(AggComponent::kDistinct), hll_->state_bytes()));
  if (sketch_) {
    sketch_->init(state.subspan(offset(AggComponent::kQuantiles), sketch_->state_bytes()));
  }
}

void AggregateLayout::update(std::span<std::byte> state, double value, int64_t ts_ns,
                             uint64_t distinct_hash, bool has_distinct) const {
  assert(state.size() == state_bytes_);
  std::byte* p = state.data();
  const uint64_t n = load<uint64_t>(p) + 1;  // the count component is always at offset 0
  store(p, n);
  if (const size_t off = offset(AggComponent::kSum); off != kAbsent)
    add_compensated(p + off, value);
  if (const size_t off = offset(AggComponent::kMin); off != kAbsent) blob::fold_min(p + off, value);
  if (const size_t off = offset(AggComponent::kMax); off != kAbsent) blob::fold_max(p + off, value);
  if (const size_t off = offset(AggComponent::kMoments); off != kAbsent) {
    // Welford: m2 accumulates delta_before * delta_after.
    const double delta = deviation(p + off, value);
    add_to_mean(p + off, delta / static_cast<double>(n));
    store(p + off + 16, load<double>(p + off + 16) + delta * deviation(p + off, value));
  }
  // The first event of a state replaces the placeholder (0, 0) unconditionally.
  if (const size_t off = offset(AggComponent::kFirst); off != kAbsent) {
    fold_event(p + off, ts_ns, value, /*keep_first=*/true, n == 1);
  }
  if (const size_t off = offset(AggComponent::kLast); off != kAbsent) {
    fold_event(p + off, ts_ns, value, /*keep_first=*/false, n == 1);
  }
  if (hll_ && has_distinct) {
    hll_->add(state.subspan(offset(AggComponent::kDistinct), hll_->state_bytes()), distinct_hash);
  }
  if (sketch_) {
    sketch_->add(state.subspan(offset(AggComponent::kQuantiles), sketch_->state_bytes()), value);
  }
}

void AggregateLayout::merge(std::span<std::byte> dst, std::span<const std::byte> src) const {
  assert(dst.size() == state_bytes_ && src.size() == state_bytes_);
  const uint64_t nb = count(src);
  if (nb == 0) return;
  const uint64_t na = count(dst);
  if (na == 0) {
    std::memcpy(dst.data(), src.data(), state_bytes_);
    return;
  }
  std::byte* d = dst.data();
  const std::byte* s = src.data();
  const uint64_t n = na + nb;
  store(d, n);
  if (const size_t off = offset(AggComponent::kSum); off != kAbsent) {
    add_compensated(d + off, load<double>(s + off));
    store(d + off + 8, load<double>(d + off + 8) + load<double>(s + off + 8));
  }
  if (const size_t off = offset(AggComponent::kMin); off != kAbsent) {
    blob::fold_min(d + off, load<double>(s + off));
  }
  if (const size_t off = offset(AggComponent::kMax); off != kAbsent) {
    blob::fold_max(d + off, load<double>(s + off));
  }
  if (const size_t off = offset(AggComponent::kMoments); off != kAbsent) {
    // Chan, Golub and LeVeque's pairwise combination of (n, mean, m2).
    const double delta = (load<double>(s + off) - load<double>(d + off)) +
                         (load<double>(s + off + 8) - load<double>(d + off + 8));
    const double share_b = static_cast<double>(nb) / static_cast<double>(n);
    add_to_mean(d + off, delta * share_b);
    store(d + off + 16, load<double>(d + off + 16) + load<double>(s + off + 16) +
                            delta * delta * static_cast<double>(na) * share_b);
  }
  if (const size_t off = offset(AggComponent::kFirst); off != kAbsent) {
    fold_event(d + off, load<int64_t>(s + off), load<double>(s + off + 8), true, false);
  }
  if (const size_t off = offset(AggComponent::kLast); off != kAbsent) {
    fold_event(d + off, load<int64_t>(s + off), load<double>(s + off + 8), false, false);
  }
  if (hll_) {
    const size_t off = offset(AggComponent::kDistinct);
    hll_->merge(dst.subspan(off, hll_->state_bytes()), src.subspan(off, hll_->state_bytes()));
  }
  if (sketch_) {
    const size_t off = offset(AggComponent::kQuantiles);
    sketch_->merge(dst.subspan(off, sketch_->state_bytes()),
                   src.subspan(off, sketch_->state_bytes()));
  }
}

uint64_t AggregateLayout::count(std::span<const std::byte> state) const {
  assert(state.size() == state_bytes_);
  return load<uint64_t>(state.data());
}

double AggregateLayout::finalize(std::span<const std::byte> state, size_t output_index) const {
  assert(state.size() == state_bytes_ && output_index < spec_.outputs.size());
  const AggOutput& output = spec_.outputs[output_index];
  const std::byte* p = state.data() + offset(component_of(output.kind));
  const uint64_t n = count(state);
  const auto n_double = static_cast<double>(n);
  switch (output.kind) {
    case AggKind::kCount:
      return n_double;
    case AggKind::kDistinct:
      return hll_->estimate(state.subspan(offset(AggComponent::kDistinct), hll_->state_bytes()));
    case AggKind::kSum: {
      // An overflowed sum leaves inf - inf = NaN in the compensation; report the overflow.
      const double sum = load<double>(p);
      return std::isfinite(sum) ? sum + load<double>(p + 8) : sum;
    }
    default:
      break;
  }
  if (n == 0) return kNaN;
  switch (output.kind) {
    case AggKind::kMin:
    case AggKind::kMax:
      return load<double>(p);
    case AggKind::kMean: {
      const double sum = load<double>(p);
      return (std::isfinite(sum) ? sum + load<double>(p + 8) : sum) / n_double;
    }
    case AggKind::kFirst:
    case AggKind::kLast:
      return load<double>(p + 8);
    case AggKind::kVariance:
      return std::max(load<double>(p + 16), 0.0) / n_double;
    case AggKind::kStddev:
      return std::sqrt(std::max(load<double>(p + 16), 0.0) / n_double);
    case AggKind::kQuantile:
      return sketch_->quantile(
          state.subspan(offset(AggComponent::kQuantiles), sketch_->state_bytes()), output.q);
    default:
      return kNaN;
  }
}

void AggregateLayout::finalize_all(std::span<const std::byte> state, std::span<double> out) const {
  assert(out.size() == spec_.outputs.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = finalize(state, i);
}

Status AggregateLayout::validate(std::span<const std::byte> state) const {
  if (state.size() != state_bytes_) {
    return Status::Corruption("aggregate state of " + std::to_string(state.size()) +
                              " bytes, layout expects " + std::to_string(state_bytes_));
  }
  if (hll_ &&
      !hll_->validate(state.subspan(offset(AggComponent::kDistinct), hll_->state_bytes()))) {
    return Status::Corruption("aggregate state: distinct (HyperLogLog) register out of range");
  }
  if (sketch_) {
    const auto bytes = state.subspan(offset(AggComponent::kQuantiles), sketch_->state_bytes());
    if (!sketch_->validate(bytes)) {
      return Status::Corruption("aggregate state: quantile sketch violates its invariants");
    }
    if (sketch_->count(bytes) != count(state)) {
      return Status::Corruption("aggregate state: quantile sketch count differs from count");
    }
  }
  return Status::Ok();
}

}  // namespace runnel
