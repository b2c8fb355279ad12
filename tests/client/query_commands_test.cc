// runnelctl's time arguments: now, relative durations, ns since the epoch and RFC 3339.
#include "client/query_commands.h"

#include <gtest/gtest.h>

namespace runnel {
namespace {

constexpr int64_t kNow = 1'700'000'000'123'456'789;
constexpr int64_t kS = 1'000'000'000;

int64_t t(std::string_view text) {
  auto r = parse_time_ns(text, kNow);
  EXPECT_TRUE(r.ok()) << text << ": " << r.status().ToString();
  return r.ok() ? r.value() : 0;
}

TEST(ParseTimeTest, NowAndDurationsBeforeNow) {
  EXPECT_EQ(t("now"), kNow);
  EXPECT_EQ(t("-1h"), kNow - 3600 * kS);
  EXPECT_EQ(t("now-30m"), kNow - 1800 * kS);
  EXPECT_EQ(t("-500ms"), kNow - 500'000'000);
}

TEST(ParseTimeTest, IntegersAreNanosecondsSinceTheEpoch) {
  EXPECT_EQ(t("1700000000000000000"), 1'700'000'000 * kS);
  EXPECT_EQ(t("0"), 0);
  EXPECT_EQ(t("-5"), -5);
}

TEST(ParseTimeTest, Rfc3339WithFractionsAndOffsets) {
  EXPECT_EQ(t("2023-11-14T22:13:20Z"), 1'700'000'000 * kS);
  EXPECT_EQ(t("2023-11-14T22:13:20.5Z"), 1'700'000'000 * kS + 500'000'000);
  EXPECT_EQ(t("2023-11-14T22:13:20.000000001z"), 1'700'000'000 * kS + 1);
  EXPECT_EQ(t("2023-11-14T23:13:20+01:00"), 1'700'000'000 * kS);
  EXPECT_EQ(t("2023-11-14T20:43:20-01:30"), 1'700'000'000 * kS);
  EXPECT_EQ(t("1969-12-31T23:59:59Z"), -kS);
  EXPECT_EQ(t("2024-02-29T00:00:00Z"), 1'709'164'800 * kS);
}

TEST(ParseTimeTest, BadTimesAreRefusedSayingWhatIsExpected) {
  for (const char* bad :
       {"", "yesterday", "-1y", "2023-11-14", "2023-11-14T22:13:20", "2023-02-30T00:00:00Z",
        "2023-11-14T25:00:00Z", "2023-11-14T22:13:20.1234567890Z", "2023-11-14T22:13:20+1:00",
        "99999999999999999999"}) {
    auto r = parse_time_ns(bad, kNow);
    EXPECT_FALSE(r.ok()) << bad;
  }
  EXPECT_NE(parse_time_ns("yesterday", kNow).status().message().find("RFC 3339"),
            std::string::npos);
}

}  // namespace
}  // namespace runnel
