// ViewRouter: which rows a record feeds, in each view.
#include "model/view_router.h"

#include <gtest/gtest.h>

#include <map>

#include "model/line_protocol.h"

namespace runnel {
namespace {

class ViewRouterTest : public ::testing::Test {
 protected:
  RecordView parse(const std::string& line) {
    buf_.emplace_back();
    const char* reason = "";
    EXPECT_EQ(parser_.parse(line, {}, 0, &buf_.back(), &reason), ParseError::kOk) << reason;
    return RecordView::parse(buf_.back()).value();
  }
  std::vector<RowUpdate> route(ViewRouter& r, const RecordView& rec) {
    std::vector<RowUpdate> out;
    r.route(rec, [](uint64_t) { return true; }, [&](const RowUpdate& u) { out.push_back(u); });
    return out;
  }
  LineParser parser_;
  std::vector<std::vector<std::byte>> buf_;
};

ViewDef view(const std::string& name) {
  ViewDef v = default_view();
  v.name = name;
  return v;
}

TEST_F(ViewRouterTest, DefaultViewMakesOneRowPerSeriesAndNumericField) {
  ViewRouter r({default_view()});
  auto u = route(r, parse("cpu,host=a,region=x user=1.5,sys=2i,ok=true,msg=\"s\" 100"));
  ASSERT_EQ(u.size(), 3u);  // the string field is not numeric
  EXPECT_EQ(u[0].field, "user");
  EXPECT_EQ(u[0].value, 1.5);
  EXPECT_EQ(u[1].value, 2.0);
  EXPECT_EQ(u[2].value, 1.0);
  EXPECT_EQ(u[0].ts_ns, 100);
  EXPECT_NE(u[0].row_id, u[1].row_id);
  // Every field of a group shares the shard bits of the group hash.
  for (const auto& x : u) EXPECT_EQ(x.row_id & kRowShardMask, x.group_hash & kRowShardMask);
  // The same series and field give the same row, whatever the tag order on the wire.
  auto again = route(r, parse("cpu,region=x,host=a user=7 200"));
  EXPECT_EQ(again[0].row_id, u[0].row_id);
}

TEST_F(ViewRouterTest, GroupByTagsMergesSeriesAndLeavesOutMissingTags) {
  ViewDef v = view("by_region");
  v.group_all_tags = false;
  v.group_by = {"region"};
  ViewRouter r({v});
  auto a = route(r, parse("cpu,host=a,region=x user=1 1"));
  auto b = route(r, parse("cpu,host=b,region=x user=2 2"));
  auto c = route(r, parse("cpu,host=c,region=y user=3 3"));
  auto d = route(r, parse("cpu,host=d user=4 4"));
  EXPECT_EQ(a[0].row_id, b[0].row_id);
  EXPECT_NE(a[0].row_id, c[0].row_id);
  EXPECT_NE(a[0].row_id, d[0].row_id);
  RowKeyView key;
  ASSERT_TRUE(decode_row_key(r.row_key(parse("cpu,host=a,region=x user=1 1"), 0, "user"), &key));
  EXPECT_EQ(key.measurement, "cpu");
  ASSERT_EQ(key.tags.size(), 1u);
  EXPECT_EQ(key.tags[0].key, "region");
  EXPECT_EQ(key.tags[0].value, "x");
  EXPECT_EQ(key.field, "user");
  ASSERT_TRUE(decode_row_key(r.row_key(parse("cpu,host=d user=4 4"), 0, "user"), &key));
  EXPECT_TRUE(key.tags.empty());
}

TEST_F(ViewRouterTest, MeasurementGlobsAndFieldListsSelect) {
  ViewDef only_user = view("u");
  only_user.measurements = {"cpu*"};
  only_user.fields = {"user"};
  ViewDef disk = view("d");
  disk.measurements = {"disk"};
  ViewRouter r({only_user, disk});
  auto u = route(r, parse("cpu_total,host=a user=1,sys=2 1"));
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0].view, 0u);
  EXPECT_EQ(u[0].field, "user");
  auto d = route(r, parse("disk,host=a used=5 1"));
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].view, 1u);
  EXPECT_TRUE(route(r, parse("mem,host=a used=5 1")).empty());
}

TEST_F(ViewRouterTest, AlternatingMeasurementsAndACopiedRouterRouteTheSame) {
  ViewDef cpu = view("c");
  cpu.measurements = {"cpu"};
  ViewDef disk = view("d");
  disk.measurements = {"disk", "cpu"};
  ViewRouter r({cpu, disk});
  for (int i = 0; i < 3; ++i) {  // each measurement right after the other, and again
    EXPECT_EQ(route(r, parse("cpu,host=a user=1 1")).size(), 2u);
    auto d = route(r, parse("disk,host=a used=5 1"));
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].view, 1u);
    EXPECT_TRUE(route(r, parse("mem,host=a used=5 1")).empty());
  }
  ViewRouter copy = r;  // r's last answer (mem) came along with it
  r = ViewRouter({disk});
  EXPECT_TRUE(route(copy, parse("mem,host=a used=5 1")).empty());
  EXPECT_EQ(route(copy, parse("cpu,host=a user=1 1")).size(), 2u);
  EXPECT_EQ(route(r, parse("cpu,host=a user=1 1")).size(), 1u);
}

TEST_F(ViewRouterTest, AcceptFiltersWholeGroups) {
  ViewRouter r({default_view()});
  size_t n = r.route(parse("cpu,host=a user=1,sys=2 1"), [](uint64_t) { return false; },
                     [](const RowUpdate&) { FAIL(); });
  EXPECT_EQ(n, 0u);
}

TEST_F(ViewRouterTest, DistinctHashesTheNamedTagOrField) {
  ViewDef v = view("dc");
  v.aggregates = {"count", "distinct(host)"};
  ViewRouter r({v});
  auto a = route(r, parse("cpu,host=a user=1 1"));
  auto b = route(r, parse("cpu,host=b user=1 1"));
  auto a2 = route(r, parse("cpu,host=a user=9 2"));
  ASSERT_TRUE(a[0].has_distinct);
  EXPECT_NE(a[0].distinct_hash, b[0].distinct_hash);
  EXPECT_EQ(a[0].distinct_hash, a2[0].distinct_hash);
  EXPECT_FALSE(route(r, parse("cpu,region=z user=1 1"))[0].has_distinct);
}

}  // namespace
}  // namespace runnel
