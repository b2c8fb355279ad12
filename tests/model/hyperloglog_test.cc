// Tests of the HyperLogLog state: accuracy of Ertl's estimator across cardinalities and
// precisions, merge as the union of streams, and precision and register checks.
#include "model/hyperloglog.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cmath>
#include <random>
#include <vector>

namespace runnel {
namespace {

HyperLogLog make(int precision) {
  auto hll = HyperLogLog::create(precision);
  EXPECT_TRUE(hll.ok()) << hll.status().message();
  return *hll;
}

uint64_t hash_of(uint64_t key) { return XXH3_64bits(&key, sizeof key); }

std::vector<std::byte> fresh(const HyperLogLog& hll) {
  std::vector<std::byte> state(hll.state_bytes());
  hll.init(state);
  return state;
}

TEST(HyperLogLog, EmptyStateEstimatesExactlyZero) {
  const HyperLogLog hll = make(12);
  EXPECT_EQ(hll.state_bytes(), 4096u);
  EXPECT_EQ(hll.estimate(fresh(hll)), 0.0);
}

class HyperLogLogAccuracy : public testing::TestWithParam<std::tuple<int, uint64_t>> {};

TEST_P(HyperLogLogAccuracy, EstimateIsWithinThreeStandardErrors) {
  const auto [precision, cardinality] = GetParam();
  const HyperLogLog hll = make(precision);
  auto state = fresh(hll);
  // Every key twice: repeats must not count.
  for (int round = 0; round < 2; ++round) {
    for (uint64_t k = 0; k < cardinality; ++k) hll.add(state, hash_of(k * 7919 + 13));
  }
  const double estimate = hll.estimate(state);
  const auto n = static_cast<double>(cardinality);
  EXPECT_NEAR(estimate, n, 3 * hll.relative_standard_error() * n + 1e-9)
      << "p=" << precision << " n=" << cardinality;
}

INSTANTIATE_TEST_SUITE_P(Cardinalities, HyperLogLogAccuracy,
                         testing::Combine(testing::Values(12, 14),
                                          testing::Values(0u, 1u, 10u, 1000u, 100000u)));

TEST(HyperLogLog, SmallCardinalitiesAreNearlyExact) {
  const HyperLogLog hll = make(14);
  auto state = fresh(hll);
  for (uint64_t k = 1; k <= 100; ++k) {
    hll.add(state, hash_of(k));
    EXPECT_NEAR(hll.estimate(state), static_cast<double>(k), 0.02 * k + 0.5) << k;
  }
}

TEST(HyperLogLog, MergeOfPartsEqualsSketchOfUnionBytewise) {
  const HyperLogLog hll = make(12);
  std::mt19937_64 rng(7);
  std::vector<std::vector<std::byte>> parts(5, fresh(hll));
  auto whole = fresh(hll);
  for (int i = 0; i < 50000; ++i) {
    const uint64_t h = hash_of(rng() % 30000);  // overlapping parts
    hll.add(whole, h);
    hll.add(parts[rng() % parts.size()], h);
  }
  auto merged = fresh(hll);
  for (size_t i = parts.size(); i-- > 0;) hll.merge(merged, parts[i]);
  EXPECT_EQ(merged, whole);
  auto other_order = parts[2];
  for (size_t i : {4, 0, 3, 1}) hll.merge(other_order, parts[i]);
  EXPECT_EQ(other_order, whole);
  hll.merge(merged, whole);  // idempotent
  EXPECT_EQ(merged, whole);
}

TEST(HyperLogLog, RejectsPrecisionOutsideFourToEighteen) {
  for (int p : {3, 19, -1}) {
    auto hll = HyperLogLog::create(p);
    ASSERT_FALSE(hll.ok());
    EXPECT_NE(hll.status().message().find(std::to_string(p)), std::string::npos);
    EXPECT_NE(hll.status().message().find("4..18"), std::string::npos);
  }
  EXPECT_TRUE(HyperLogLog::create(4).ok());
  EXPECT_TRUE(HyperLogLog::create(18).ok());
}

TEST(HyperLogLog, SaturatedRegistersStayInRangeAndValidate) {
  const HyperLogLog hll = make(4);
  auto state = fresh(hll);
  hll.add(state, 0);  // all-zero remainder: the largest rank, 64 - 4 + 1
  hll.add(state, ~uint64_t{0});
  EXPECT_EQ(static_cast<int>(state[0]), 61);
  EXPECT_TRUE(hll.validate(state));
  EXPECT_TRUE(std::isfinite(hll.estimate(state)));
  state[3] = std::byte{62};
  EXPECT_FALSE(hll.validate(state));
  EXPECT_TRUE(std::isfinite(hll.estimate(state)));  // corrupt registers stay memory-safe
  EXPECT_FALSE(hll.validate(std::span(state).first(8)));
}

}  // namespace
}  // namespace runnel
