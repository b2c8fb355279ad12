// Tests of the binary record: the documented layout, RecordBuilder's checks, RecordView's
// bounds checks on truncated and corrupted bytes, and the canonical line-protocol printer.
#include "model/record.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cmath>
#include <limits>
#include <memory>
#include <random>

namespace runnel {
namespace {

std::vector<std::byte> build_sample() {
  std::vector<std::byte> buf;
  RecordBuilder b(&buf);
  Tag tags[] = {{"region", "eu"}, {"host", "h1"}};
  EXPECT_EQ(b.begin("cpu", tags), RecordError::kOk);
  EXPECT_EQ(b.add_float("f", -1.5), RecordError::kOk);
  EXPECT_EQ(b.add_integer("i", std::numeric_limits<int64_t>::min()), RecordError::kOk);
  EXPECT_EQ(b.add_unsigned("u", std::numeric_limits<uint64_t>::max()), RecordError::kOk);
  EXPECT_EQ(b.add_boolean("b", true), RecordError::kOk);
  EXPECT_EQ(b.add_string("s", "a \"q\" \\ z"), RecordError::kOk);
  EXPECT_EQ(b.finish(1700000000000000001), RecordError::kOk);
  return buf;
}

std::string line_of(std::span<const std::byte> bytes) {
  auto view = RecordView::parse(bytes);
  EXPECT_TRUE(view.ok()) << view.status().message();
  std::string out;
  if (view.ok()) format_line_protocol(*view, &out);
  return out;
}

template <typename T>
T at(const std::vector<std::byte>& buf, size_t off) {
  T v;
  std::memcpy(&v, buf.data() + off, sizeof v);
  return v;
}

// Copies bytes into a heap block of exactly that size so ASan catches any read past the end.
std::unique_ptr<std::byte[]> exact_copy(std::span<const std::byte> bytes) {
  auto copy = std::make_unique<std::byte[]>(bytes.size());
  std::memcpy(copy.get(), bytes.data(), bytes.size());
  return copy;
}

// Touches every byte a view exposes, as a consumer would.
size_t walk(const RecordView& v) {
  size_t n = v.measurement().size() + v.series_key().size();
  for (const Tag& t : v.tags()) n += t.key.size() + t.value.size();
  for (const Field& f : v.fields()) n += f.key.size() + f.as_string().size() + (f.bits & 1);
  return n;
}

TEST(RecordBuilder, WritesDocumentedHeaderAndSeriesKeyBlock) {
  std::vector<std::byte> buf = build_sample();
  EXPECT_EQ(at<uint8_t>(buf, 0), 1);  // version
  EXPECT_EQ(at<uint8_t>(buf, 1), 1);  // kind: point
  EXPECT_EQ(at<uint16_t>(buf, 2), 0);
  const uint16_t key_len = at<uint16_t>(buf, 4);
  // u16 + "cpu" + u16 tag count + (u16 "host" u16 "h1") + (u16 "region" u16 "eu")
  EXPECT_EQ(key_len, 2 + 3 + 2 + (2 + 4 + 2 + 2) + (2 + 6 + 2 + 2));
  EXPECT_EQ(at<uint16_t>(buf, 6), 5);
  EXPECT_EQ(at<int64_t>(buf, 8), 1700000000000000001);
  EXPECT_EQ(at<uint64_t>(buf, 16), XXH3_64bits(buf.data() + 24, key_len));
  EXPECT_EQ(at<uint16_t>(buf, 24), 3);
  EXPECT_EQ(std::memcmp(buf.data() + 26, "cpu", 3), 0);
  EXPECT_EQ(at<uint16_t>(buf, 29), 2);
  EXPECT_EQ(at<uint16_t>(buf, 31), 4);
  EXPECT_EQ(std::memcmp(buf.data() + 33, "host", 4), 0);  // sorted first
  // First field: u8 type, u16 key_len, key, f64.
  const size_t f0 = 24 + key_len;
  EXPECT_EQ(at<uint8_t>(buf, f0), static_cast<uint8_t>(FieldType::kFloat));
  EXPECT_EQ(at<uint16_t>(buf, f0 + 1), 1);
  EXPECT_EQ(at<double>(buf, f0 + 4), -1.5);
  // Last field: string "s" = u32 length + bytes, ending the record.
  const std::string_view s = "a \"q\" \\ z";
  EXPECT_EQ(at<uint32_t>(buf, buf.size() - s.size() - 4), s.size());
}

TEST(RecordView, ReadsBackEveryFieldTypeAndSortedTags) {
  std::vector<std::byte> buf = build_sample();
  auto view = RecordView::parse(buf);
  ASSERT_TRUE(view.ok()) << view.status().message();
  EXPECT_EQ(view->measurement(), "cpu");
  EXPECT_EQ(view->ts_ns(), 1700000000000000001);
  EXPECT_EQ(view->series_key().size(), at<uint16_t>(buf, 4));
  std::vector<std::pair<std::string_view, std::string_view>> tags;
  for (const Tag& t : view->tags()) tags.emplace_back(t.key, t.value);
  ASSERT_EQ(tags.size(), 2u);
  EXPECT_EQ(tags[0].first, "host");
  EXPECT_EQ(tags[1].second, "eu");

  std::vector<Field> fields(view->fields().begin(), view->fields().end());
  ASSERT_EQ(fields.size(), 5u);
  EXPECT_EQ(fields[0].key, "f");
  EXPECT_EQ(fields[0].type, FieldType::kFloat);
  EXPECT_EQ(fields[0].as_float(), -1.5);
  EXPECT_EQ(fields[1].as_integer(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(fields[2].as_unsigned(), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(fields[3].type, FieldType::kBoolean);
  EXPECT_TRUE(fields[3].as_boolean());
  EXPECT_EQ(fields[3].to_double(), 1.0);
  EXPECT_EQ(fields[4].type, FieldType::kString);
  EXPECT_FALSE(fields[4].is_numeric());
  EXPECT_EQ(fields[4].as_string(), "a \"q\" \\ z");
}

TEST(RecordView, SameSeriesGetsSameIdWhateverTheTagOrder) {
  std::vector<std::byte> a, b;
  RecordBuilder ba(&a), bb(&b);
  Tag ta[] = {{"x", "1"}, {"y", "2"}};
  Tag tb[] = {{"y", "2"}, {"x", "1"}};
  ASSERT_EQ(ba.begin("m", ta), RecordError::kOk);
  ASSERT_EQ(bb.begin("m", tb), RecordError::kOk);
  ASSERT_EQ(ba.add_integer("v", 1), RecordError::kOk);
  ASSERT_EQ(bb.add_integer("w", 2), RecordError::kOk);
  ASSERT_EQ(ba.finish(1), RecordError::kOk);
  ASSERT_EQ(bb.finish(2), RecordError::kOk);
  EXPECT_EQ(RecordView::parse(a)->series_id(), RecordView::parse(b)->series_id());
}

TEST(RecordBuilder, RefusesWhatLineProtocolCannotCarry) {
  std::vector<std::byte> buf;
  RecordBuilder b(&buf);
  Tag none[1] = {};
  EXPECT_EQ(b.begin("", {none, 0}), RecordError::kMeasurement);
  EXPECT_EQ(b.begin("#m", {none, 0}), RecordError::kMeasurement);
  EXPECT_EQ(b.begin("a\nb", {none, 0}), RecordError::kMeasurement);
  EXPECT_EQ(b.begin(std::string(65536, 'm'), {none, 0}), RecordError::kTooLong);
  Tag dup[] = {{"k", "1"}, {"j", "0"}, {"k", "2"}};
  EXPECT_EQ(b.begin("m", dup), RecordError::kTag);
  EXPECT_STREQ(b.reason(), "duplicate tag key");
  Tag empty_value[] = {{"k", ""}};
  EXPECT_EQ(b.begin("m", empty_value), RecordError::kTag);
  Tag empty_key[] = {{"", "v"}};
  EXPECT_EQ(b.begin("m", empty_key), RecordError::kTag);
  const std::string big(40000, 'v');
  Tag too_big[] = {{"a", big}, {"b", big}};
  EXPECT_EQ(b.begin("m", too_big), RecordError::kTooLong);

  ASSERT_EQ(b.begin("m", {none, 0}), RecordError::kOk);
  EXPECT_EQ(b.finish(0), RecordError::kNoFields);
  EXPECT_TRUE(buf.empty());
  ASSERT_EQ(b.begin("m", {none, 0}), RecordError::kOk);
  EXPECT_EQ(b.add_float("v", std::nan("")), RecordError::kFieldValue);
  ASSERT_EQ(b.begin("m", {none, 0}), RecordError::kOk);
  EXPECT_EQ(b.add_float("v", -INFINITY), RecordError::kFieldValue);
  ASSERT_EQ(b.begin("m", {none, 0}), RecordError::kOk);
  EXPECT_EQ(b.add_string("v", "two\nlines"), RecordError::kFieldValue);
  ASSERT_EQ(b.begin("m", {none, 0}), RecordError::kOk);
  EXPECT_EQ(b.add_integer("", 1), RecordError::kFieldKey);
  EXPECT_TRUE(buf.empty());
}

TEST(RecordBuilder, ReusedBufferStopsAllocating) {
  std::vector<std::byte> buf;
  RecordBuilder b(&buf);
  Tag tags[] = {{"host", "h1"}};
  auto build = [&] {
    ASSERT_EQ(b.begin("cpu", tags), RecordError::kOk);
    ASSERT_EQ(b.add_float("usage", 1.0), RecordError::kOk);
    ASSERT_EQ(b.add_string("note", "ok"), RecordError::kOk);
    ASSERT_EQ(b.finish(7), RecordError::kOk);
  };
  build();
  build();
  const std::byte* data = buf.data();
  const size_t capacity = buf.capacity();
  for (int i = 0; i < 1000; ++i) build();
  EXPECT_EQ(buf.data(), data);
  EXPECT_EQ(buf.capacity(), capacity);
  EXPECT_TRUE(RecordView::parse(buf).ok());
}

TEST(RecordView, RejectsEveryTruncation) {
  const std::vector<std::byte> buf = build_sample();
  for (size_t n = 0; n < buf.size(); ++n) {
    auto copy = exact_copy({buf.data(), n});
    RecordView view;
    const char* reason = nullptr;
    EXPECT_FALSE(RecordView::validate({copy.get(), n}, &view, &reason)) << "length " << n;
    EXPECT_NE(reason, nullptr);
    reason = nullptr;
    EXPECT_FALSE(RecordView::validate_structure({copy.get(), n}, &view, &reason)) << "length " << n;
    EXPECT_NE(reason, nullptr);
  }
}

TEST(RecordView, RejectsTrailingBytes) {
  std::vector<std::byte> buf = build_sample();
  buf.push_back(std::byte{0});
  auto view = RecordView::parse(buf);
  ASSERT_FALSE(view.ok());
  EXPECT_EQ(view.status().code(), Status::Code::kCorruption);
  EXPECT_NE(view.status().message().find("bytes after the last field"), std::string::npos);
}

TEST(RecordView, RejectsCorruptHeaderAndSeriesId) {
  const std::vector<std::byte> good = build_sample();
  auto corrupt = [&](size_t off, std::byte value) {
    std::vector<std::byte> bad = good;
    bad[off] = value;
    return RecordView::parse(bad).ok();
  };
  EXPECT_FALSE(corrupt(0, std::byte{2}));              // version
  EXPECT_FALSE(corrupt(1, std::byte{0}));              // kind
  EXPECT_FALSE(corrupt(2, std::byte{1}));              // flags
  EXPECT_FALSE(corrupt(6, std::byte{0}));              // field_count = 0
  EXPECT_FALSE(corrupt(16, good[16] ^ std::byte{1}));  // series_id
  EXPECT_FALSE(corrupt(26, std::byte{'x'}));           // measurement no longer matches the id
}

TEST(RecordView, RejectsUnknownFieldTypeAndBadBoolean) {
  std::vector<std::byte> buf;
  RecordBuilder b(&buf);
  ASSERT_EQ(b.begin("m", {}), RecordError::kOk);
  ASSERT_EQ(b.add_boolean("b", false), RecordError::kOk);
  ASSERT_EQ(b.finish(0), RecordError::kOk);
  ASSERT_TRUE(RecordView::parse(buf).ok());
  const size_t field = 24 + at<uint16_t>(buf, 4);
  std::vector<std::byte> bad_type = buf;
  bad_type[field] = std::byte{9};
  EXPECT_FALSE(RecordView::parse(bad_type).ok());
  std::vector<std::byte> bad_bool = buf;
  bad_bool.back() = std::byte{2};
  EXPECT_FALSE(RecordView::parse(bad_bool).ok());
}

TEST(RecordView, RandomByteFlipsNeverReadOutOfBounds) {
  const std::vector<std::byte> good = build_sample();
  std::mt19937_64 rng(42);
  int accepted = 0, structural_accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<std::byte> bad = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) bad[rng() % bad.size()] = static_cast<std::byte>(rng());
    // Sometimes also cut the tail, so lengths and bounds disagree.
    const size_t n = (rng() % 4 == 0) ? rng() % bad.size() : bad.size();
    auto copy = exact_copy({bad.data(), n});
    RecordView view;
    const char* reason = nullptr;
    const bool valid = RecordView::validate({copy.get(), n}, &view, &reason);
    if (valid) {
      ++accepted;  // a flip in a timestamp or numeric value is still a valid record
      EXPECT_GT(walk(view), 0u);
    }
    // The structure check never reads outside the bytes either, and takes everything the full
    // check takes, with the same view.
    RecordView structural;
    if (RecordView::validate_structure({copy.get(), n}, &structural, &reason)) {
      ++structural_accepted;
      EXPECT_GT(walk(structural), 0u);
      if (valid) EXPECT_EQ(walk(structural), walk(view));
    } else {
      EXPECT_FALSE(valid) << "validate took what validate_structure refused: " << reason;
    }
  }
  EXPECT_LT(accepted, structural_accepted);
  EXPECT_LT(structural_accepted, 20000);
}

TEST(RecordView, TheStructureCheckLeavesOnlyTheContentRulesOut) {
  const std::vector<std::byte> good = build_sample();
  RecordView view;
  const char* reason = nullptr;
  ASSERT_TRUE(RecordView::validate_structure(good, &view, &reason));
  EXPECT_EQ(line_of(good), line_of(view.bytes()));
  // Content rules: the full check refuses these, the structure check takes them.
  auto both = [&](const std::vector<std::byte>& bad, const char* full_reason) {
    RecordView v;
    const char* why = nullptr;
    EXPECT_FALSE(RecordView::validate(bad, &v, &why));
    EXPECT_STREQ(why, full_reason);
    EXPECT_TRUE(RecordView::validate_structure(bad, &v, &why)) << why;
  };
  std::vector<std::byte> wrong_id = good;
  wrong_id[16] ^= std::byte{1};
  both(wrong_id, "series_id does not match the series key");
  // Tags are "host" then "region" (sorted): make the first key sort after the second.
  std::vector<std::byte> unordered = good;
  const size_t first_tag_key = 24 + 2 + 3 + 2 + 2;  // after u16 len, "cpu", u16 count, u16 len
  ASSERT_EQ(static_cast<char>(unordered[first_tag_key]), 'h');
  unordered[first_tag_key] = std::byte{'z'};
  both(unordered, "tag keys not strictly ascending");
  std::vector<std::byte> newline = good;
  newline[first_tag_key + 1] = std::byte{'\n'};
  both(newline, "bad tag key");
  // Structure: both refuse.
  for (auto [off, value] : {std::pair<size_t, std::byte>{0, std::byte{2}}, {1, std::byte{0}},
                            {2, std::byte{1}}, {6, std::byte{0}}}) {
    std::vector<std::byte> bad = good;
    bad[off] = value;
    RecordView v;
    const char* why = nullptr;
    EXPECT_FALSE(RecordView::validate_structure(bad, &v, &why)) << "offset " << off;
  }
}

TEST(FormatLineProtocol, PrintsCanonicalLineWithEveryFieldType) {
  EXPECT_EQ(line_of(build_sample()),
            "cpu,host=h1,region=eu f=-1.5,i=-9223372036854775808i,u=18446744073709551615u,"
            "b=true,s=\"a \\\"q\\\" \\\\ z\" 1700000000000000001\n");
}

TEST(FormatLineProtocol, EscapesEachContextAndDoublesBackslashOnlyWhereAmbiguous) {
  std::vector<std::byte> buf;
  RecordBuilder b(&buf);
  Tag tags[] = {{"k,= ", "v,= \\"}, {"a\\b", "\\\\"}};
  ASSERT_EQ(b.begin("m, =\\", tags), RecordError::kOk);
  ASSERT_EQ(b.add_boolean("f,= \\x", false), RecordError::kOk);
  ASSERT_EQ(b.finish(-5), RecordError::kOk);
  // Measurement escapes ',' and ' ' but not '='; a trailing backslash is doubled; "\x" and
  // "a\b" stay as they are because the parser reads them literally.
  EXPECT_EQ(line_of(buf),
            "m\\,\\ =\\\\,a\\b=\\\\\\\\,k\\,\\=\\ =v\\,\\=\\ \\\\ f\\,\\=\\ \\x=false -5\n");
}

TEST(FormatLineProtocol, FloatsUseShortestRoundTripForm) {
  const double values[] = {0.1, 12.0, -0.0, 1e300, 5e-324, 1.0 / 3.0, 123456789012345680.0};
  const char* expected[] = {
      "0.1", "12", "-0", "1e+300", "5e-324", "0.3333333333333333", "123456789012345680"};
  for (size_t i = 0; i < std::size(values); ++i) {
    std::vector<std::byte> buf;
    RecordBuilder b(&buf);
    ASSERT_EQ(b.begin("m", {}), RecordError::kOk);
    ASSERT_EQ(b.add_float("v", values[i]), RecordError::kOk);
    ASSERT_EQ(b.finish(0), RecordError::kOk);
    EXPECT_EQ(line_of(buf), std::string("m v=") + expected[i] + " 0\n");
  }
}

}  // namespace
}  // namespace runnel
