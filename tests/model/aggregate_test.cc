// Tests of aggregate specs and state blobs: name parsing and errors, the derived layout, and
// update/merge/finalize against references computed directly from random streams, including
// shuffled streams and random merge trees.
#include "model/aggregate.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "model/view.h"

namespace runnel {
namespace {

using State = std::vector<std::byte>;

AggregateLayout layout_of(const std::vector<std::string>& names, SketchParams params = {}) {
  auto spec = AggregateSpec::parse(names, params);
  EXPECT_TRUE(spec.ok()) << spec.status().message();
  auto layout = AggregateLayout::create(spec.value());
  EXPECT_TRUE(layout.ok()) << layout.status().message();
  return std::move(layout).value();
}

std::string layout_error(const std::vector<std::string>& names, SketchParams params = {}) {
  auto spec = AggregateSpec::parse(names, params);
  if (!spec.ok()) return spec.status().message();
  auto layout = AggregateLayout::create(spec.value());
  return layout.ok() ? "" : layout.status().message();
}

State fresh(const AggregateLayout& layout) {
  State state(layout.state_bytes());
  layout.init(state);
  return state;
}

struct Event {
  double value;
  int64_t ts_ns;
  uint64_t key;  // the distinct-counted value
};

uint64_t hash_of(uint64_t key) { return XXH3_64bits(&key, sizeof key); }

void add(const AggregateLayout& layout, State& state, const Event& e) {
  layout.update(state, e.value, e.ts_ns, hash_of(e.key));
}

// Timestamps from a narrow range and values on a coarse grid, so that equal timestamps (and
// equal events) are common and first/last must break ties.
std::vector<Event> random_events(size_t n, uint64_t seed, double offset = 0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0.0, 50.0);
  std::vector<Event> events(n);
  for (Event& e : events) {
    e.value = offset + std::round(noise(rng) * 2) / 2;
    e.ts_ns = 1'700'000'000'000'000'000 + static_cast<int64_t>(rng() % 200);
    e.key = rng() % 3000;
  }
  return events;
}

const std::vector<std::string> kAll = {"count", "sum",  "min",        "max",    "mean",
                                       "first", "last", "variance",   "stddev", "distinct(user)",
                                       "p50",   "p99",  "quantile(0)"};

// Outputs whose value is bitwise independent of update and merge order.
bool order_independent(const AggOutput& o) {
  return o.kind != AggKind::kSum && o.kind != AggKind::kMean && o.kind != AggKind::kVariance &&
         o.kind != AggKind::kStddev;
}

// What every output must be, computed directly from the events.
struct Reference {
  explicit Reference(const std::vector<Event>& events) {
    n = events.size();
    // Two passes in long double, shifted by the first value so that a large common offset
    // costs the reference no precision either.
    const long double shift = events[0].value;
    long double s = 0;
    for (const Event& e : events) s += e.value - shift;
    const long double mean_l = shift + s / n;
    long double m2 = 0;
    for (const Event& e : events) m2 += (e.value - mean_l) * (e.value - mean_l);
    sum = static_cast<double>(s + shift * n);
    mean = static_cast<double>(mean_l);
    variance = static_cast<double>(m2 / n);
    auto key = [](const Event& e) { return std::pair(e.ts_ns, std::bit_cast<uint64_t>(e.value)); };
    const auto [lo, hi] =
        std::minmax_element(events.begin(), events.end(),
                            [&](const Event& a, const Event& b) { return key(a) < key(b); });
    first = lo->value;
    last = hi->value;
    std::set<uint64_t> keys;
    for (const Event& e : events) keys.insert(e.key);
    distinct = static_cast<double>(keys.size());
    for (const Event& e : events) sorted.push_back(e.value);
    std::sort(sorted.begin(), sorted.end());
  }

  double quantile(double q) const {
    return sorted[static_cast<size_t>(q * static_cast<double>(sorted.size() - 1))];
  }

  void expect_matches(const AggregateLayout& layout, const State& state) const {
    const double abs_sum = sorted.empty() ? 0 : std::max(-sorted.front(), sorted.back()) * n;
    for (size_t i = 0; i < layout.output_count(); ++i) {
      const AggOutput& o = layout.spec().outputs[i];
      const double got = layout.finalize(state, i);
      const std::string name = agg_output_name(o);
      switch (o.kind) {
        case AggKind::kCount:
          EXPECT_EQ(got, static_cast<double>(n)) << name;
          break;
        case AggKind::kSum:
          EXPECT_NEAR(got, sum, 1e-15 * abs_sum) << name;
          break;
        case AggKind::kMin:
          EXPECT_EQ(got, sorted.front()) << name;
          break;
        case AggKind::kMax:
          EXPECT_EQ(got, sorted.back()) << name;
          break;
        case AggKind::kMean:
          EXPECT_NEAR(got, mean, 1e-15 * abs_sum / n) << name;
          break;
        case AggKind::kFirst:
          EXPECT_EQ(got, first) << name;
          break;
        case AggKind::kLast:
          EXPECT_EQ(got, last) << name;
          break;
        case AggKind::kVariance:
          EXPECT_NEAR(got, variance, 1e-11 * variance) << name;
          break;
        case AggKind::kStddev:
          EXPECT_NEAR(got, std::sqrt(variance), 1e-11 * std::sqrt(variance)) << name;
          break;
        case AggKind::kDistinct:
          EXPECT_NEAR(got, distinct, 3 * 0.0163 * distinct) << name;
          break;
        case AggKind::kQuantile: {
          const double exact = quantile(o.q);
          EXPECT_LE(std::fabs(got - exact), 0.01 * (1 + 1e-9) * std::fabs(exact)) << name;
          break;
        }
      }
    }
  }

  size_t n;
  double sum, mean, variance, first, last, distinct;
  std::vector<double> sorted;
};

// Merges all states into one in a random tree: pairs chosen at random, either side the target.
State merge_randomly(const AggregateLayout& layout, std::vector<State> states,
                     std::mt19937_64& rng) {
  while (states.size() > 1) {
    const size_t a = rng() % states.size();
    size_t b = rng() % (states.size() - 1);
    if (b >= a) ++b;
    layout.merge(states[a], states[b]);
    states.erase(states.begin() + static_cast<std::ptrdiff_t>(b));
  }
  return states[0];
}

void expect_same_order_independent_outputs(const AggregateLayout& layout, const State& a,
                                           const State& b) {
  for (size_t i = 0; i < layout.output_count(); ++i) {
    if (!order_independent(layout.spec().outputs[i])) continue;
    EXPECT_EQ(std::bit_cast<uint64_t>(layout.finalize(a, i)),
              std::bit_cast<uint64_t>(layout.finalize(b, i)))
        << agg_output_name(layout.spec().outputs[i]);
  }
}

TEST(AggKind, NamesAreStable) {
  const char* expected[] = {"count", "sum",      "min",    "max",      "mean",    "first",
                            "last",  "variance", "stddev", "distinct", "quantile"};
  for (size_t i = 0; i < kAggKindCount; ++i) {
    EXPECT_EQ(agg_kind_name(static_cast<AggKind>(i)), expected[i]);
  }
}

TEST(ParseAggOutput, ReadsNamesPercentilesAndQuantileCalls) {
  const std::pair<const char*, double> quantiles[] = {{"p50", 0.5},
                                                      {"p99", 0.99},
                                                      {"p999", 0.999},
                                                      {"p9999", 0.9999},
                                                      {"p99.9", 0.999},
                                                      {"p0", 0.0},
                                                      {"p100", 1.0},
                                                      {"p5", 0.05},
                                                      {"p0.1", 0.001},
                                                      {"p995", 0.995},
                                                      {"quantile(0.999)", 0.999},
                                                      {"quantile(1e-3)", 0.001},
                                                      {"quantile(1)", 1.0}};
  for (const auto& [text, q] : quantiles) {
    auto out = parse_agg_output(text);
    ASSERT_TRUE(out.ok()) << text << ": " << out.status().message();
    EXPECT_EQ(out->kind, AggKind::kQuantile) << text;
    EXPECT_EQ(out->q, q) << text;  // bitwise: p99.9 and quantile(0.999) are the same output
  }
  for (size_t i = 0; i + 1 < kAggKindCount; ++i) {
    const auto kind = static_cast<AggKind>(i);
    auto out = parse_agg_output(agg_kind_name(kind));
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(out->kind, kind);
  }
  auto distinct = parse_agg_output("distinct(user)");
  ASSERT_TRUE(distinct.ok());
  EXPECT_EQ(distinct->kind, AggKind::kDistinct);
  EXPECT_EQ(distinct->target, "user");
}

TEST(ParseAggOutput, CanonicalNamesReadBackToTheSameOutput) {
  const std::pair<const char*, const char*> names[] = {{"p50", "p50"},
                                                       {"p999", "p99.9"},
                                                       {"quantile(0.5)", "p50"},
                                                       {"p0.01", "p0.01"},
                                                       {"p100", "p100"},
                                                       {"p0", "p0"},
                                                       {"quantile(1e-6)", "p0.0001"},
                                                       {"distinct", "distinct"},
                                                       {"distinct(user)", "distinct(user)"},
                                                       {"stddev", "stddev"}};
  // Outputs built by hand rather than parsed still get a name that reads back.
  EXPECT_EQ(agg_output_name({AggKind::kQuantile, -0.0, {}}), "p0");
  EXPECT_EQ(agg_output_name({AggKind::kQuantile, 1e-300, {}}), "quantile(1e-300)");
  EXPECT_EQ(agg_output_name({AggKind::kQuantile, 1e300, {}}), "quantile(1e+300)");
  ASSERT_TRUE(parse_agg_output("quantile(1e-300)").ok());
  EXPECT_EQ(parse_agg_output("quantile(1e-300)")->q, 1e-300);
  for (const auto& [text, canonical] : names) {
    auto out = parse_agg_output(text);
    ASSERT_TRUE(out.ok()) << text;
    EXPECT_EQ(agg_output_name(*out), canonical) << text;
    auto again = parse_agg_output(canonical);
    ASSERT_TRUE(again.ok()) << canonical;
    EXPECT_EQ(*again, *out) << canonical;
  }
}

TEST(ParseAggOutput, ErrorsNameTheOffendingAggregate) {
  for (const char* text : {"bogus", "p101", "p", "p9.", "p.5", "p1.2.3", "P99", "p-1", "p99x",
                           "quantile(2)", "quantile(-0.1)", "quantile(x)", "quantile()",
                           "quantile(0.5", "distinct()", "count ", "Count"}) {
    auto out = parse_agg_output(text);
    ASSERT_FALSE(out.ok()) << text;
    EXPECT_NE(out.status().message().find("'" + std::string(text) + "'"), std::string::npos)
        << out.status().message();
  }
  auto spec = AggregateSpec::parse({"count", "p99", "median"});
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("'median'"), std::string::npos);
}

TEST(AggregateLayout, RejectsBadSpecsNamingTheAggregate) {
  EXPECT_NE(layout_error({"count", "sum", "count"}).find("'count': requested twice"),
            std::string::npos);
  EXPECT_NE(layout_error({"p99", "quantile(0.99)"}).find("'p99': requested twice"),
            std::string::npos);
  EXPECT_NE(layout_error({"distinct(a)", "distinct(b)"}).find("'distinct(b)'"), std::string::npos);
  EXPECT_NE(layout_error({"count", "distinct"}, {.hll_precision = 20}).find("'distinct'"),
            std::string::npos);
  EXPECT_NE(layout_error({"count", "distinct"}, {.hll_precision = 20}).find("precision 20"),
            std::string::npos);
  EXPECT_NE(layout_error({"p99"}, {.quantile_relative_accuracy = 2}).find("'p99'"),
            std::string::npos);
  EXPECT_NE(layout_error({"p50", "p99"}, {.quantile_max_bins = 1}).find("'p50'"),
            std::string::npos);
  EXPECT_NE(layout_error({}).find("no aggregates"), std::string::npos);
  // Parameters of sketches no output uses do not matter.
  EXPECT_EQ(layout_error({"count"}, {.hll_precision = 99, .quantile_max_bins = 0}), "");

  AggregateSpec handmade;
  handmade.outputs = {{AggKind::kQuantile, 1.5, {}}};
  auto layout = AggregateLayout::create(handmade);
  ASSERT_FALSE(layout.ok());
  EXPECT_NE(layout.status().message().find("quantile outside [0, 1]"), std::string::npos);
}

TEST(AggregateLayout, ForViewUsesTheViewsParametersAndNamesTheView) {
  auto layout = AggregateLayout::for_view(default_view());
  ASSERT_TRUE(layout.ok()) << layout.status().message();
  EXPECT_EQ(layout->state_bytes(), 56u);

  ViewDef view;
  view.name = "latency";
  view.aggregates = {"count", "distinct(host)", "p99"};
  view.hll_precision = 14;
  view.quantile_max_bins = 512;
  layout = AggregateLayout::for_view(view);
  ASSERT_TRUE(layout.ok()) << layout.status().message();
  EXPECT_EQ(layout->state_bytes(), 8u + (1u << 14) + 56 + 16 * 512);

  view.aggregates = {"count", "p101"};
  layout = AggregateLayout::for_view(view);
  ASSERT_FALSE(layout.ok());
  EXPECT_NE(layout.status().message().find("view 'latency'"), std::string::npos);
  EXPECT_NE(layout.status().message().find("'p101'"), std::string::npos);
}

TEST(AggregateLayout, DefaultSetIsFiftySixBytesWithDocumentedOffsets) {
  auto layout = AggregateLayout::create(AggregateSpec::defaults());
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->state_bytes(), 56u);
  EXPECT_EQ(layout->offset(AggComponent::kCount), 0u);
  EXPECT_EQ(layout->offset(AggComponent::kSum), 8u);
  EXPECT_EQ(layout->offset(AggComponent::kMin), 24u);
  EXPECT_EQ(layout->offset(AggComponent::kMax), 32u);
  EXPECT_EQ(layout->offset(AggComponent::kLast), 40u);
  for (auto c : {AggComponent::kMoments, AggComponent::kFirst, AggComponent::kDistinct,
                 AggComponent::kQuantiles}) {
    EXPECT_FALSE(layout->has(c));
  }
}

TEST(AggregateLayout, DerivesTheMinimalComponents) {
  EXPECT_EQ(layout_of({"mean"}).state_bytes(), 8u + 16);                // count + sum
  EXPECT_EQ(layout_of({"variance", "stddev"}).state_bytes(), 8u + 24);  // count + moments
  EXPECT_EQ(layout_of({"p50", "p99", "p999"}).state_bytes(), 8u + 56 + 16 * 2048);  // 1 sketch
  EXPECT_EQ(layout_of({"distinct"}).state_bytes(), 8u + 4096);
  EXPECT_EQ(layout_of({"count", "distinct(user)", "p50", "p99"}).state_bytes(),
            8u + 4096 + 56 + 16 * 2048);
  EXPECT_EQ(layout_of(kAll).state_bytes() % 8, 0u);
  const auto mean_only = layout_of({"mean"});
  EXPECT_TRUE(mean_only.has(AggComponent::kSum));
  EXPECT_FALSE(mean_only.has(AggComponent::kMoments));
}

TEST(AggregateLayout, StateFormatIdFollowsComponentsNotOutputs) {
  EXPECT_EQ(layout_of({"p50"}).state_format_id(), layout_of({"p99", "p999"}).state_format_id());
  EXPECT_EQ(layout_of({"sum"}).state_format_id(), layout_of({"mean"}).state_format_id());
  EXPECT_NE(layout_of({"p50"}).state_format_id(),
            layout_of({"p50"}, {.quantile_relative_accuracy = 0.02}).state_format_id());
  EXPECT_NE(layout_of({"distinct"}).state_format_id(),
            layout_of({"distinct"}, {.hll_precision = 14}).state_format_id());
  EXPECT_NE(layout_of({"min"}).state_format_id(), layout_of({"max"}).state_format_id());
}

TEST(AggregateState, EmptyStateFinalizesToZeroCountsAndNaN) {
  const auto layout = layout_of(kAll);
  const State state = fresh(layout);
  EXPECT_TRUE(layout.is_empty(state));
  EXPECT_EQ(layout.count(state), 0u);
  EXPECT_TRUE(layout.validate(state).ok());
  for (size_t i = 0; i < layout.output_count(); ++i) {
    const AggKind kind = layout.spec().outputs[i].kind;
    const double v = layout.finalize(state, i);
    if (kind == AggKind::kCount || kind == AggKind::kSum || kind == AggKind::kDistinct) {
      EXPECT_EQ(v, 0.0) << i;
    } else {
      EXPECT_TRUE(std::isnan(v)) << agg_output_name(layout.spec().outputs[i]);
    }
  }
}

TEST(AggregateState, EveryOutputMatchesADirectReference) {
  const auto layout = layout_of(kAll);
  for (uint64_t seed : {1, 2, 3}) {
    const auto events = random_events(5000, seed);
    State state = fresh(layout);
    for (const Event& e : events) add(layout, state, e);
    Reference(events).expect_matches(layout, state);
    std::vector<double> all(layout.output_count());
    layout.finalize_all(state, all);
    for (size_t i = 0; i < all.size(); ++i) {
      EXPECT_EQ(std::bit_cast<uint64_t>(all[i]),
                std::bit_cast<uint64_t>(layout.finalize(state, i)));
    }
  }
}

TEST(AggregateState, ShuffledStreamGivesTheSameOrderStatistics) {
  const auto layout = layout_of(kAll);
  auto events = random_events(5000, 4);
  State in_order = fresh(layout);
  for (const Event& e : events) add(layout, in_order, e);
  std::mt19937_64 rng(4);
  std::shuffle(events.begin(), events.end(), rng);
  State shuffled = fresh(layout);
  for (const Event& e : events) add(layout, shuffled, e);
  Reference(events).expect_matches(layout, shuffled);
  expect_same_order_independent_outputs(layout, in_order, shuffled);
}

TEST(AggregateState, RandomPartsMergedInRandomTreesMatchTheWholeStream) {
  const auto layout = layout_of(kAll);
  std::mt19937_64 rng(5);
  const auto events = random_events(6000, 5);
  State whole = fresh(layout);
  for (const Event& e : events) add(layout, whole, e);
  const Reference reference(events);
  for (int trial = 0; trial < 5; ++trial) {
    // Some parts stay empty: the identity must not disturb anything.
    std::vector<State> parts(1 + rng() % 20, fresh(layout));
    for (const Event& e : events) add(layout, parts[rng() % parts.size()], e);
    const State merged = merge_randomly(layout, parts, rng);
    reference.expect_matches(layout, merged);
    expect_same_order_independent_outputs(layout, merged, whole);
  }
}

TEST(AggregateState, MergeIsCommutativeAndAssociative) {
  const auto layout = layout_of(kAll);
  State a = fresh(layout), b = fresh(layout), c = fresh(layout);
  const auto events = random_events(3000, 6);
  for (size_t i = 0; i < events.size(); ++i)
    add(layout, i % 3 == 0 ? a : i % 3 == 1 ? b : c, events[i]);

  State ab = a, ba = b;
  layout.merge(ab, b);
  layout.merge(ba, a);
  expect_same_order_independent_outputs(layout, ab, ba);
  for (size_t i = 0; i < layout.output_count(); ++i) {
    EXPECT_NEAR(layout.finalize(ab, i), layout.finalize(ba, i),
                1e-12 * std::fabs(layout.finalize(ab, i)));
  }

  State ab_c = ab, bc = b, a_bc = a;
  layout.merge(ab_c, c);
  layout.merge(bc, c);
  layout.merge(a_bc, bc);
  expect_same_order_independent_outputs(layout, ab_c, a_bc);
  Reference(events).expect_matches(layout, ab_c);
  Reference(events).expect_matches(layout, a_bc);
}

TEST(AggregateState, EmptyStateIsTheMergeIdentityBitwise) {
  const auto layout = layout_of(kAll);
  State s = fresh(layout);
  for (const Event& e : random_events(100, 7)) add(layout, s, e);
  State left = fresh(layout);
  layout.merge(left, s);
  EXPECT_EQ(left, s);
  State right = s;
  layout.merge(right, fresh(layout));
  EXPECT_EQ(right, s);
  State empty = fresh(layout);
  layout.merge(empty, fresh(layout));
  EXPECT_EQ(empty, fresh(layout));
}

TEST(AggregateState, VarianceIsStableForLargeOffsets) {
  const auto layout = layout_of({"mean", "variance", "stddev"});
  std::mt19937_64 rng(8);
  std::normal_distribution<double> noise(0.0, 1.0);
  std::vector<Event> events(20000);
  for (Event& e : events) e = {1e9 + noise(rng), 0, 0};
  State whole = fresh(layout);
  for (const Event& e : events) add(layout, whole, e);
  const Reference reference(events);
  ASSERT_NEAR(reference.variance, 1.0, 0.05);
  EXPECT_NEAR(layout.finalize(whole, 1), reference.variance, 1e-12 * reference.variance);
  EXPECT_NEAR(layout.finalize(whole, 0), reference.mean, 1e-15 * reference.mean);

  std::vector<State> parts(16, fresh(layout));
  for (const Event& e : events) add(layout, parts[rng() % parts.size()], e);
  const State merged = merge_randomly(layout, parts, rng);
  EXPECT_NEAR(layout.finalize(merged, 1), reference.variance, 1e-12 * reference.variance);
  EXPECT_NEAR(layout.finalize(merged, 2), std::sqrt(reference.variance), 1e-12);
}

TEST(AggregateState, VarianceIsPopulationVariance) {
  const auto layout = layout_of({"variance", "stddev"});
  State s = fresh(layout);
  for (double v : {2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0}) layout.update(s, v, 0, 0);
  EXPECT_DOUBLE_EQ(layout.finalize(s, 0), 4.0);
  EXPECT_DOUBLE_EQ(layout.finalize(s, 1), 2.0);
  State one = fresh(layout);
  layout.update(one, 42.0, 0, 0);
  EXPECT_EQ(layout.finalize(one, 0), 0.0);
}

TEST(AggregateState, CompensatedSumKeepsSmallAddends) {
  const auto layout = layout_of({"sum", "mean"});
  State s = fresh(layout);
  layout.update(s, 1e16, 0, 0);
  for (int i = 0; i < 1000; ++i) layout.update(s, 1.0, 0, 0);
  layout.update(s, -1e16, 0, 0);
  EXPECT_EQ(layout.finalize(s, 0), 1000.0);  // a plain double sum gives 0
  // Merging carries the compensation along.
  State big = fresh(layout), small = fresh(layout);
  layout.update(big, 1e16, 0, 0);
  for (int i = 0; i < 1000; ++i) layout.update(small, 1.0, 0, 0);
  layout.merge(big, small);
  layout.update(big, -1e16, 0, 0);
  EXPECT_EQ(layout.finalize(big, 0), 1000.0);
}

TEST(AggregateState, FirstAndLastBreakTimestampTiesByValueBits) {
  const auto layout = layout_of({"first", "last"});
  const double values[] = {3.0, -1.0, 7.5, 0.25};
  std::vector<double> order(std::begin(values), std::end(values));
  std::sort(order.begin(), order.end());
  std::set<std::pair<double, double>> answers;
  do {
    State s = fresh(layout);
    for (double v : order) layout.update(s, v, 100, 0);
    answers.insert({layout.finalize(s, 0), layout.finalize(s, 1)});
  } while (std::next_permutation(order.begin(), order.end()));
  ASSERT_EQ(answers.size(), 1u);
  // Least and greatest bit patterns: positives below negatives (sign bit set).
  EXPECT_EQ(answers.begin()->first, 0.25);
  EXPECT_EQ(answers.begin()->second, -1.0);

  State s = fresh(layout);
  layout.update(s, 1.0, 200, 0);
  layout.update(s, 2.0, -5, 0);  // out of order: earlier event arrives later
  layout.update(s, 3.0, 100, 0);
  EXPECT_EQ(layout.finalize(s, 0), 2.0);
  EXPECT_EQ(layout.finalize(s, 1), 1.0);
}

TEST(AggregateState, SignedZerosGiveOrderIndependentMinAndMax) {
  const auto layout = layout_of({"min", "max"});
  State a = fresh(layout), b = fresh(layout);
  layout.update(a, 0.0, 0, 0);
  layout.update(a, -0.0, 0, 0);
  layout.update(b, -0.0, 0, 0);
  layout.update(b, 0.0, 0, 0);
  EXPECT_EQ(a, b);
  EXPECT_TRUE(std::signbit(layout.finalize(a, 0)));
  EXPECT_FALSE(std::signbit(layout.finalize(a, 1)));
}

TEST(AggregateState, WorksOnUnalignedBlobs) {
  // LMDB values and packed shared-memory slots need not be 8-byte aligned.
  const auto layout = layout_of(kAll);
  std::vector<std::byte> buffer(2 * layout.state_bytes() + 3);
  const std::span<std::byte> a(buffer.data() + 1, layout.state_bytes());
  const std::span<std::byte> b(buffer.data() + 2 + layout.state_bytes(), layout.state_bytes());
  layout.init(a);
  layout.init(b);
  const auto events = random_events(1000, 9);
  for (size_t i = 0; i < events.size(); ++i) {
    layout.update(i % 2 ? a : b, events[i].value, events[i].ts_ns, hash_of(events[i].key));
  }
  layout.merge(a, b);
  Reference(events).expect_matches(layout, State(a.begin(), a.end()));
}

TEST(AggregateState, ValidateRejectsWrongSizesAndCorruptSketches) {
  const auto layout = layout_of({"count", "distinct", "p99"});
  State s = fresh(layout);
  for (const Event& e : random_events(100, 10)) add(layout, s, e);
  EXPECT_TRUE(layout.validate(s).ok());
  EXPECT_FALSE(layout.validate(std::span(s).first(s.size() - 8)).ok());
  State bad = s;
  bad[layout.offset(AggComponent::kDistinct)] = std::byte{0xff};
  EXPECT_NE(layout.validate(bad).message().find("distinct"), std::string::npos);
  bad = s;
  bad[0] = std::byte{0x55};  // count no longer matches the sketch
  EXPECT_NE(layout.validate(bad).message().find("quantile"), std::string::npos);
}

}  // namespace
}  // namespace runnel
