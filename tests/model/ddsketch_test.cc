// Tests of the DDSketch state: quantiles within the relative accuracy of the exact (sorted)
// quantile on several distributions, merges equal to the sketch of the union byte for byte,
// collapsing of the lowest bins, and memory safety on corrupt bytes.
#include "model/ddsketch.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

namespace runnel {
namespace {

using State = std::vector<std::byte>;

constexpr double kQuantiles[] = {0, .01, .25, .5, .75, .9, .99, .999, 1};

DDSketch make(double alpha = DDSketch::kDefaultRelativeAccuracy,
              uint32_t max_bins = DDSketch::kDefaultMaxBins) {
  auto sketch = DDSketch::create(alpha, max_bins);
  EXPECT_TRUE(sketch.ok()) << sketch.status().message();
  return sketch.value();
}

State fresh(const DDSketch& sketch) {
  State state(sketch.state_bytes());
  sketch.init(state);
  return state;
}

State sketch_of(const DDSketch& sketch, const std::vector<double>& values) {
  State state = fresh(sketch);
  for (double v : values) sketch.add(state, v);
  return state;
}

// The same rank definition as DDSketch::quantile: element floor(q * (n - 1)) of the sorted data.
double exact_quantile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<size_t>(q * static_cast<double>(values.size() - 1));
  return values[rank];
}

void expect_accurate(const DDSketch& sketch, const State& state, const std::vector<double>& values,
                     const char* what) {
  // Values on a bin boundary may land one bin up after log() rounding: error alpha + ~1e-15.
  const double tolerance = sketch.relative_accuracy() * (1 + 1e-9);
  for (double q : kQuantiles) {
    const double exact = exact_quantile(values, q);
    const double estimate = sketch.quantile(state, q);
    EXPECT_LE(std::fabs(estimate - exact), tolerance * std::fabs(exact))
        << what << " q=" << q << " exact=" << exact << " estimate=" << estimate;
  }
}

std::vector<double> draw(size_t n, const std::function<double(std::mt19937_64&)>& dist,
                         uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> values(n);
  for (double& v : values) v = dist(rng);
  return values;
}

struct Dataset {
  const char* name;
  std::function<double(std::mt19937_64&)> dist;
};

std::vector<Dataset> datasets() {
  return {
      {"uniform", [](std::mt19937_64& r) { return std::uniform_real_distribution(0.0, 1e3)(r); }},
      {"lognormal", [](std::mt19937_64& r) { return std::lognormal_distribution(0.0, 2.0)(r); }},
      {"negative", [](std::mt19937_64& r) { return -std::lognormal_distribution(3.0, 1.5)(r); }},
      {"mixed_sign_with_zeros",
       [](std::mt19937_64& r) {
         const double v = std::normal_distribution(0.0, 100.0)(r);
         return r() % 10 == 0 ? 0.0 : v;
       }},
  };
}

TEST(DDSketch, QuantilesAreWithinRelativeAccuracyOfExactQuantiles) {
  // Enough bins that nothing collapses: 0.1% needs ~500 bins per factor of e.
  for (const auto& [alpha, max_bins] : {std::pair{0.01, 2048u}, std::pair{0.001, 1u << 16}}) {
    const DDSketch sketch = make(alpha, max_bins);
    for (const Dataset& d : datasets()) {
      const auto values = draw(20000, d.dist, 42);
      const State state = sketch_of(sketch, values);
      EXPECT_EQ(sketch.count(state), values.size());
      EXPECT_TRUE(sketch.validate(state)) << d.name;
      expect_accurate(sketch, state, values, d.name);
    }
  }
}

TEST(DDSketch, MergeInRandomTreeShapesEqualsSketchOfUnionBytewise) {
  const DDSketch sketch = make();
  std::mt19937_64 rng(9);
  for (const Dataset& d : datasets()) {
    const auto values = draw(20000, d.dist, 1234);
    const State whole = sketch_of(sketch, values);
    for (int trial = 0; trial < 3; ++trial) {
      std::vector<State> parts(2 + rng() % 12, fresh(sketch));
      for (double v : values) sketch.add(parts[rng() % parts.size()], v);
      while (parts.size() > 1) {
        const size_t a = rng() % parts.size();
        size_t b = rng() % (parts.size() - 1);
        if (b >= a) ++b;
        sketch.merge(parts[a], parts[b]);
        parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(b));
      }
      EXPECT_EQ(parts[0], whole) << d.name;
      expect_accurate(sketch, parts[0], values, d.name);
    }
  }
}

TEST(DDSketch, StateBytesDependOnlyOnTheMultiset) {
  // Ascending, descending and shuffled insertion move the windows in different ways.
  const DDSketch sketch = make(0.01, 64);
  auto values = draw(
      5000,
      [](std::mt19937_64& r) {
        return (r() % 2 ? 1 : -1) * std::lognormal_distribution(0.0, 3.0)(r);
      },
      5);
  const State shuffled = sketch_of(sketch, values);
  std::sort(values.begin(), values.end());
  EXPECT_EQ(sketch_of(sketch, values), shuffled);
  std::reverse(values.begin(), values.end());
  EXPECT_EQ(sketch_of(sketch, values), shuffled);
  EXPECT_TRUE(sketch.validate(shuffled));
}

TEST(DDSketch, CollapsedLowBinsKeepHighQuantilesAccurate) {
  // 64 bins at 1% span a factor of ~3.6, so uniform [1, 100) collapses everything below ~28.
  const DDSketch sketch = make(0.01, 64);
  const auto values = draw(
      20000, [](std::mt19937_64& r) { return std::uniform_real_distribution(1.0, 100.0)(r); }, 77);
  const State state = sketch_of(sketch, values);
  EXPECT_TRUE(sketch.validate(state));
  const double floor_value = 100.0 / std::pow((1 + 0.01) / (1 - 0.01), 63);
  for (double q : kQuantiles) {
    const double exact = exact_quantile(values, q);
    const double estimate = sketch.quantile(state, q);
    if (q == 0 || exact > floor_value * 1.03) {
      EXPECT_LE(std::fabs(estimate - exact), 0.01 * (1 + 1e-9) * exact) << "q=" << q;
    } else {
      // A collapsed quantile is overestimated, never under.
      EXPECT_GE(estimate, exact * (1 - 0.01)) << "q=" << q;
    }
  }
}

TEST(DDSketch, EmptySketchHasNoQuantiles) {
  const DDSketch sketch = make();
  const State state = fresh(sketch);
  EXPECT_EQ(sketch.count(state), 0u);
  EXPECT_TRUE(std::isnan(sketch.quantile(state, 0.5)));
  EXPECT_TRUE(sketch.validate(state));
  State merged = fresh(sketch);
  sketch.merge(merged, state);
  EXPECT_EQ(merged, state);
}

TEST(DDSketch, ZerosSubnormalsAndExtremesAreExactOrClamped) {
  const DDSketch sketch = make();
  State state = fresh(sketch);
  for (double v : {0.0, -0.0, 4.9e-324, 1e308, -1e308, 1.0}) sketch.add(state, v);
  sketch.add(state, std::nan(""));  // ignored
  sketch.add(state, HUGE_VAL);      // ignored
  EXPECT_EQ(sketch.count(state), 6u);
  EXPECT_EQ(sketch.quantile(state, 0), -1e308);
  EXPECT_EQ(sketch.quantile(state, 1), 1e308);
  EXPECT_EQ(sketch.quantile(state, 0.4), 0.0);  // rank 2 of -1e308, 0, 0, 4.9e-324, 1, 1e308
  EXPECT_TRUE(std::isnan(sketch.quantile(state, std::nan(""))));
  EXPECT_TRUE(sketch.validate(state));
}

TEST(DDSketch, BinRepresentativeIsWithinRelativeAccuracyOfEveryMember) {
  const DDSketch sketch = make(0.02);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 100000; ++i) {
    const double x = std::exp(std::uniform_real_distribution(-700.0, 700.0)(rng));
    const double rep = sketch.value_of(sketch.index_of(x));
    ASSERT_LE(std::fabs(rep - x), 0.02 * (1 + 1e-9) * x) << x;
  }
}

TEST(DDSketch, RejectsParametersOutsideTheirRanges) {
  for (double alpha : {0.0, -0.1, 0.9, 1.0, std::nan("")}) {
    auto sketch = DDSketch::create(alpha, 2048);
    ASSERT_FALSE(sketch.ok()) << alpha;
    EXPECT_NE(sketch.status().message().find("relative accuracy"), std::string::npos);
  }
  for (uint32_t bins : {0u, 7u, (1u << 16) + 1}) {
    auto sketch = DDSketch::create(0.01, bins);
    ASSERT_FALSE(sketch.ok()) << bins;
    EXPECT_NE(sketch.status().message().find("max bins " + std::to_string(bins)),
              std::string::npos);
  }
  EXPECT_EQ(make(0.01, 2048).state_bytes(), 56u + 16 * 2048);
}

TEST(DDSketch, CorruptBytesAreRejectedAndStayMemorySafe) {
  const DDSketch sketch = make(0.01, 16);
  std::mt19937_64 rng(11);
  const State good = sketch_of(sketch, {1, 2, 3, -4, 0});
  for (int trial = 0; trial < 2000; ++trial) {
    State bad = good;
    // Scribble over the header, where offsets and counts live.
    for (int k = 0; k < 4; ++k) {
      bad[rng() % DDSketch::kHeaderBytes] = static_cast<std::byte>(rng());
    }
    if (bad == good) continue;
    // No checksum: a self-consistent scribble (say, a smaller min) may validate; what matters
    // is that nothing reads or writes outside the span (ASan) whatever validate() says.
    (void)sketch.validate(bad);
    for (double q : kQuantiles) (void)sketch.quantile(bad, q);
    State dst = good;
    sketch.merge(dst, bad);
    sketch.add(bad, 123.0);
    sketch.merge(bad, good);
  }
  State bad = good;
  bad[DDSketch::kHeaderBytes + 8 * 16 + 8 * 15] = std::byte{1};  // negative bin past the window
  EXPECT_FALSE(sketch.validate(bad));
  bad = good;
  bad[24] = std::byte{9};  // positive store count differs from its bins
  EXPECT_FALSE(sketch.validate(bad));
  bad = good;
  bad[36] = std::byte{0x7f};  // positive window wider than max_bins
  EXPECT_FALSE(sketch.validate(bad));
}

}  // namespace
}  // namespace runnel
