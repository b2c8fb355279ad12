// DDSketch stores as canonical collapsing windows on a byte span; see ddsketch.h.
#include "model/ddsketch.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace runnel {
namespace {

constexpr size_t kOffZeroCount = 0;
constexpr size_t kOffMin = 8;
constexpr size_t kOffMax = 16;
constexpr size_t kOffPositive = 24;
constexpr size_t kOffNegative = 40;
static_assert(DDSketch::kHeaderBytes == 56);

using blob::load;
using blob::store;

struct StoreHeader {
  uint64_t count;
  int32_t offset;
  int32_t hi;
};
static_assert(sizeof(StoreHeader) == 16);

// A store's window in i64 arithmetic, so that corrupt headers cannot overflow; width is
// clamped to [0, m], which keeps every bin access inside the span whatever the bytes say.
struct Window {
  uint64_t count = 0;
  int64_t offset = 0;
  int64_t width = 0;  // 0 iff the store is empty

  int64_t hi() const { return offset + width - 1; }
};

Window read_window(const std::byte* header, int64_t m) {
  const auto h = load<StoreHeader>(header);
  Window w;
  w.count = h.count;
  w.offset = h.offset;
  if (h.count != 0) w.width = std::clamp<int64_t>(int64_t{h.hi} - h.offset + 1, 1, m);
  return w;
}

void write_window(std::byte* header, const Window& w) {
  store(header, StoreHeader{w.count, static_cast<int32_t>(w.offset), static_cast<int32_t>(w.hi())});
}

uint64_t bin(const std::byte* bins, int64_t k) { return load<uint64_t>(bins + 8 * k); }
void add_to_bin(std::byte* bins, int64_t k, uint64_t n) { store(bins + 8 * k, bin(bins, k) + n); }

// Moves a non-empty window to [new_offset, new_hi] keeping the canonical form: bins below
// new_offset fold into bin 0. REQUIRES: new_hi >= w->hi(), new_offset <= new_hi,
// new_hi - new_offset < m, and new_offset <= w->offset unless new_offset = new_hi - m + 1.
void move_window(std::byte* bins, Window* w, int64_t new_offset, int64_t new_hi) {
  if (new_offset < w->offset) {
    const int64_t d = w->offset - new_offset;
    std::memmove(bins + 8 * d, bins, 8 * w->width);
    std::memset(bins, 0, 8 * d);
  } else if (new_offset > w->offset) {
    const int64_t d = new_offset - w->offset;
    const int64_t folded = std::min(d + 1, w->width);
    uint64_t low = 0;
    for (int64_t k = 0; k < folded; ++k) low += bin(bins, k);
    const int64_t kept = w->width - folded;
    std::memmove(bins + 8, bins + 8 * folded, 8 * kept);
    std::memset(bins + 8 * (1 + kept), 0, 8 * (w->width - 1 - kept));
    store(bins, low);
  }
  w->offset = new_offset;
  w->width = new_hi - new_offset + 1;
}

// Adds `n` counts at bin index `index` to the store.
void store_add(std::byte* header, std::byte* bins, int64_t m, int64_t index, uint64_t n) {
  Window w = read_window(header, m);
  if (w.count == 0) {
    w.offset = index;
    w.width = 1;
  } else {
    const int64_t new_hi = std::max(w.hi(), index);
    move_window(bins, &w, std::max(std::min(w.offset, index), new_hi - m + 1), new_hi);
  }
  add_to_bin(bins, std::max(index, w.offset) - w.offset, n);
  w.count += n;
  write_window(header, w);
}

void store_merge(std::byte* dst_header, std::byte* dst_bins, const std::byte* src_header,
                 const std::byte* src_bins, int64_t m) {
  const Window s = read_window(src_header, m);
  if (s.count == 0) return;
  Window d = read_window(dst_header, m);
  if (d.count == 0) {
    // An empty store's bins are all zero, so the window alone is copied.
    std::memcpy(dst_bins, src_bins, 8 * s.width);
    write_window(dst_header, s);
    return;
  }
  const int64_t new_hi = std::max(d.hi(), s.hi());
  move_window(dst_bins, &d, std::max(std::min(d.offset, s.offset), new_hi - m + 1), new_hi);
  for (int64_t k = 0; k < s.width; ++k) {
    const int64_t index = s.offset + k;
    add_to_bin(dst_bins, std::max(index, d.offset) - d.offset, bin(src_bins, k));
  }
  d.count += s.count;
  write_window(dst_header, d);
}

bool valid_store(const std::byte* header, const std::byte* bins, int64_t m) {
  const auto h = load<StoreHeader>(header);
  int64_t width = 0;
  if (h.count == 0) {
    if (h.offset != 0 || h.hi != 0) return false;
  } else {
    width = int64_t{h.hi} - h.offset + 1;
    if (width < 1 || width > m) return false;
  }
  uint64_t total = 0;
  for (int64_t k = 0; k < m; ++k) {
    const uint64_t c = bin(bins, k);
    if (k >= width && c != 0) return false;
    if (__builtin_add_overflow(total, c, &total)) return false;
  }
  // The window's ends hold counts: offset is the lowest index seen (or collapsed into) and
  // hi the highest.
  return total == h.count && (width == 0 || (bin(bins, 0) != 0 && bin(bins, width - 1) != 0));
}

}  // namespace

Result<DDSketch> DDSketch::create(double relative_accuracy, uint32_t max_bins) {
  if (!(relative_accuracy >= kMinRelativeAccuracy && relative_accuracy <= kMaxRelativeAccuracy)) {
    return Status::Invalid("DDSketch relative accuracy " + std::to_string(relative_accuracy) +
                           " outside [" + std::to_string(kMinRelativeAccuracy) + ", " +
                           std::to_string(kMaxRelativeAccuracy) + "]");
  }
  if (max_bins < kMinMaxBins || max_bins > kMaxMaxBins) {
    return Status::Invalid("DDSketch max bins " + std::to_string(max_bins) + " outside " +
                           std::to_string(kMinMaxBins) + ".." + std::to_string(kMaxMaxBins));
  }
  return DDSketch(relative_accuracy, max_bins);
}

DDSketch::DDSketch(double relative_accuracy, uint32_t max_bins)
    : alpha_(relative_accuracy), max_bins_(max_bins) {
  const double gamma = (1 + alpha_) / (1 - alpha_);
  ln_gamma_ = std::log1p(2 * alpha_ / (1 - alpha_));  // log(gamma), accurate for small alpha
  inv_ln_gamma_ = 1 / ln_gamma_;
  ln_bin_center_ = std::log(2 / (gamma + 1));
}

int32_t DDSketch::index_of(double magnitude) const {
  return static_cast<int32_t>(std::ceil(std::log(magnitude) * inv_ln_gamma_));
}

double DDSketch::value_of(int32_t index) const {
  // One exp of the sum, so the top bins do not overflow before the 2/(gamma+1) factor.
  return std::exp(index * ln_gamma_ + ln_bin_center_);
}

void DDSketch::init(std::span<std::byte> state) const {
  assert(state.size() == state_bytes());
  std::memset(state.data(), 0, state.size());
  store(state.data() + kOffMin, std::numeric_limits<double>::infinity());
  store(state.data() + kOffMax, -std::numeric_limits<double>::infinity());
}

void DDSketch::add(std::span<std::byte> state, double value) const {
  assert(state.size() == state_bytes());
  if (!std::isfinite(value)) return;
  std::byte* p = state.data();
  blob::fold_min(p + kOffMin, value);
  blob::fold_max(p + kOffMax, value);
  const double magnitude = std::fabs(value);
  if (magnitude < kMinIndexable) {
    store(p + kOffZeroCount, load<uint64_t>(p + kOffZeroCount) + 1);
    return;
  }
  const int64_t m = max_bins_;
  const size_t bins = value > 0 ? kHeaderBytes : kHeaderBytes + 8 * size_t{max_bins_};
  store_add(p + (value > 0 ? kOffPositive : kOffNegative), p + bins, m, index_of(magnitude), 1);
}

void DDSketch::merge(std::span<std::byte> dst, std::span<const std::byte> src) const {
  assert(dst.size() == state_bytes() && src.size() == state_bytes());
  std::byte* d = dst.data();
  const std::byte* s = src.data();
  const int64_t m = max_bins_;
  const size_t neg_bins = kHeaderBytes + 8 * size_t{max_bins_};
  store(d + kOffZeroCount, load<uint64_t>(d + kOffZeroCount) + load<uint64_t>(s + kOffZeroCount));
  blob::fold_min(d + kOffMin, load<double>(s + kOffMin));
  blob::fold_max(d + kOffMax, load<double>(s + kOffMax));
  store_merge(d + kOffPositive, d + kHeaderBytes, s + kOffPositive, s + kHeaderBytes, m);
  store_merge(d + kOffNegative, d + neg_bins, s + kOffNegative, s + neg_bins, m);
}

uint64_t DDSketch::count(std::span<const std::byte> state) const {
  const std::byte* p = state.data();
  return load<uint64_t>(p + kOffZeroCount) + load<StoreHeader>(p + kOffPositive).count +
         load<StoreHeader>(p + kOffNegative).count;
}

double DDSketch::quantile(std::span<const std::byte> state, double q) const {
  assert(state.size() == state_bytes());
  const uint64_t n = count(state);
  if (n == 0 || std::isnan(q)) return std::numeric_limits<double>::quiet_NaN();
  const std::byte* p = state.data();
  const double min = load<double>(p + kOffMin);
  const double max = load<double>(p + kOffMax);
  const double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(n - 1);
  // The extremes are stored exactly.
  if (rank < 1) return min;
  if (rank >= static_cast<double>(n - 1)) return max;
  // Not std::clamp: corrupt bytes may hold min > max or NaN, a precondition violation there.
  const auto clamped = [&](double v) { return v < min ? min : (v > max ? max : v); };

  const int64_t m = max_bins_;
  // Ascending value order: negatives by descending magnitude, zeros, then positives.
  uint64_t seen = 0;
  const Window neg = read_window(p + kOffNegative, m);
  const std::byte* neg_bins = p + kHeaderBytes + 8 * size_t{max_bins_};
  for (int64_t k = neg.width - 1; k >= 0; --k) {
    seen += bin(neg_bins, k);
    if (static_cast<double>(seen) > rank) {
      return clamped(-value_of(static_cast<int32_t>(neg.offset + k)));
    }
  }
  seen += load<uint64_t>(p + kOffZeroCount);
  if (static_cast<double>(seen) > rank) return clamped(0.0);
  const Window pos = read_window(p + kOffPositive, m);
  for (int64_t k = 0; k < pos.width; ++k) {
    seen += bin(p + kHeaderBytes, k);
    if (static_cast<double>(seen) > rank) {
      return clamped(value_of(static_cast<int32_t>(pos.offset + k)));
    }
  }
  return max;  // only reached when the counts disagree with the bins (corrupt bytes)
}

bool DDSketch::validate(std::span<const std::byte> state) const {
  if (state.size() != state_bytes()) return false;
  const std::byte* p = state.data();
  const int64_t m = max_bins_;
  if (!valid_store(p + kOffPositive, p + kHeaderBytes, m) ||
      !valid_store(p + kOffNegative, p + kHeaderBytes + 8 * size_t{max_bins_}, m)) {
    return false;
  }
  const double min = load<double>(p + kOffMin);
  const double max = load<double>(p + kOffMax);
  if (count(state) == 0) {
    return min == std::numeric_limits<double>::infinity() &&
           max == -std::numeric_limits<double>::infinity();
  }
  return std::isfinite(min) && std::isfinite(max) && min <= max;
}

}  // namespace runnel
