// HyperLogLog registers and Ertl's improved raw estimator; see hyperloglog.h.
#include "model/hyperloglog.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>

namespace runnel {
namespace {

// Ertl 2017, sigma(x) = x + sum_k x^(2^k) 2^(k-1): the correction for empty registers.
double sigma(double x) {
  if (x == 1.0) return std::numeric_limits<double>::infinity();
  double y = 1.0;
  double z = x;
  for (;;) {
    x *= x;
    const double z_old = z;
    z += x * y;
    y += y;
    if (z == z_old) return z;
  }
}

// Ertl 2017, tau(x): the correction for registers that saturated at 64-p+1.
double tau(double x) {
  if (x == 0.0 || x == 1.0) return 0.0;
  double y = 1.0;
  double z = 1.0 - x;
  for (;;) {
    x = std::sqrt(x);
    const double z_old = z;
    y *= 0.5;
    z -= (1.0 - x) * (1.0 - x) * y;
    if (z == z_old) return z / 3.0;
  }
}

}  // namespace

Result<HyperLogLog> HyperLogLog::create(int precision) {
  if (precision < kMinPrecision || precision > kMaxPrecision) {
    return Status::Invalid("HyperLogLog precision " + std::to_string(precision) + " outside " +
                           std::to_string(kMinPrecision) + ".." + std::to_string(kMaxPrecision));
  }
  return HyperLogLog(precision);
}

double HyperLogLog::relative_standard_error() const {
  return 1.04 / std::sqrt(static_cast<double>(state_bytes()));
}

void HyperLogLog::init(std::span<std::byte> state) const {
  assert(state.size() == state_bytes());
  std::fill(state.begin(), state.end(), std::byte{0});
}

void HyperLogLog::add(std::span<std::byte> state, uint64_t hash) const {
  assert(state.size() == state_bytes());
  const int q = 64 - p_;
  const size_t j = hash >> q;
  // countl_zero(0) is 64, so an all-zero remainder saturates at q+1 as the estimator expects.
  const auto rank = static_cast<uint8_t>(std::min(std::countl_zero(hash << p_), q) + 1);
  if (static_cast<uint8_t>(state[j]) < rank) state[j] = std::byte{rank};
}

void HyperLogLog::merge(std::span<std::byte> dst, std::span<const std::byte> src) const {
  assert(dst.size() == state_bytes() && src.size() == state_bytes());
  for (size_t j = 0; j < dst.size(); ++j) dst[j] = std::max(dst[j], src[j]);
}

double HyperLogLog::estimate(std::span<const std::byte> state) const {
  assert(state.size() == state_bytes());
  const int q = 64 - p_;
  // Histogram of register values; corrupt registers above q+1 count as saturated.
  std::array<uint32_t, 66> c{};
  for (std::byte r : state) ++c[std::min(static_cast<int>(r), q + 1)];
  const double m = static_cast<double>(state.size());
  double z = m * tau(1.0 - c[q + 1] / m);
  for (int k = q; k >= 1; --k) z = 0.5 * (z + c[k]);
  z += m * sigma(c[0] / m);
  constexpr double kAlphaInf = 0.5 / std::numbers::ln2;
  return kAlphaInf * m * m / z;  // z is +inf when every register is 0: the estimate is 0
}

bool HyperLogLog::validate(std::span<const std::byte> state) const {
  if (state.size() != state_bytes()) return false;
  const auto max_rank = static_cast<std::byte>(64 - p_ + 1);
  return std::all_of(state.begin(), state.end(), [&](std::byte r) { return r <= max_rank; });
}

}  // namespace runnel
