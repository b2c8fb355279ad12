// Conformance tests of the line-protocol parser: field types, escapes, every rejection class,
// precision, and the round trip record -> line -> record (byte identical).
#include "model/line_protocol.h"

#include <gtest/gtest.h>

#include <charconv>
#include <cmath>
#include <limits>
#include <random>
#include <string>

namespace runnel {

void PrintTo(ParseError e, std::ostream* os) { *os << parse_error_name(e); }

namespace {

constexpr int64_t kArrivalNs = 42;

struct Parsed {
  ParseError error;
  std::string line;  // canonical form when error == kOk
  const char* reason = "";
};

Parsed parse_line(std::string_view line, Precision precision = Precision::kNs) {
  LineParser parser;
  std::vector<std::byte> record;
  Parsed out;
  out.error = parser.parse(line, ParseOptions{precision}, kArrivalNs, &record, &out.reason);
  if (out.error == ParseError::kOk) {
    auto view = RecordView::parse(record);
    EXPECT_TRUE(view.ok()) << view.status().message();
    if (view.ok()) format_line_protocol(*view, &out.line);
  } else {
    EXPECT_TRUE(record.empty());
  }
  return out;
}

// The canonical line for `line`, or the error name prefixed with '!'.
std::string canon(std::string_view line, Precision precision = Precision::kNs) {
  Parsed p = parse_line(line, precision);
  if (p.error != ParseError::kOk) return "!" + std::string(parse_error_name(p.error));
  p.line.pop_back();  // '\n'
  return p.line;
}

ParseError error_of(std::string_view line) { return parse_line(line).error; }

TEST(LineParser, ParsesEveryFieldType) {
  EXPECT_EQ(canon("m f=1.5,i=-3i,u=3u,b=t,s=\"x\" 10"), "m f=1.5,i=-3i,u=3u,b=true,s=\"x\" 10");
  LineParser parser;
  std::vector<std::byte> record;
  const char* reason = nullptr;
  ASSERT_EQ(parser.parse("m f=1.5,i=-3i,u=3u,b=F,s=\"x\" 10", {}, 0, &record, &reason),
            ParseError::kOk);
  auto view = RecordView::parse(record);
  ASSERT_TRUE(view.ok());
  std::vector<Field> f(view->fields().begin(), view->fields().end());
  ASSERT_EQ(f.size(), 5u);
  EXPECT_EQ(f[0].type, FieldType::kFloat);
  EXPECT_EQ(f[0].as_float(), 1.5);
  EXPECT_EQ(f[1].type, FieldType::kInteger);
  EXPECT_EQ(f[1].as_integer(), -3);
  EXPECT_EQ(f[2].type, FieldType::kUnsigned);
  EXPECT_EQ(f[2].as_unsigned(), 3u);
  EXPECT_EQ(f[3].type, FieldType::kBoolean);
  EXPECT_FALSE(f[3].as_boolean());
  EXPECT_EQ(f[4].type, FieldType::kString);
  EXPECT_EQ(f[4].as_string(), "x");
  EXPECT_EQ(view->ts_ns(), 10);
}

TEST(LineParser, UnsuffixedNumbersAreFloatsInAnyNotation) {
  EXPECT_EQ(canon("m v=1"), "m v=1 42");
  EXPECT_EQ(canon("m v=-1.5"), "m v=-1.5 42");
  EXPECT_EQ(canon("m v=1e3"), "m v=1000 42");
  EXPECT_EQ(canon("m v=1E-2"), "m v=0.01 42");
  EXPECT_EQ(canon("m v=-2.5e+2"), "m v=-250 42");
  EXPECT_EQ(canon("m v=.5"), "m v=0.5 42");
  EXPECT_EQ(canon("m v=0.1"), "m v=0.1 42");
}

TEST(LineParser, IntegersAndUnsignedAreRangeChecked) {
  EXPECT_EQ(canon("m v=9223372036854775807i"), "m v=9223372036854775807i 42");
  EXPECT_EQ(canon("m v=-9223372036854775808i"), "m v=-9223372036854775808i 42");
  EXPECT_EQ(canon("m v=18446744073709551615u"), "m v=18446744073709551615u 42");
  EXPECT_EQ(canon("m v=9223372036854775808i"), "!field_value");
  EXPECT_EQ(canon("m v=18446744073709551616u"), "!field_value");
  EXPECT_EQ(canon("m v=-1u"), "!field_value");
  EXPECT_EQ(canon("m v=1.5i"), "!field_value");
  EXPECT_EQ(canon("m v=i"), "!field_value");
  EXPECT_EQ(canon("m v=+1i"), "!field_value");
}

TEST(LineParser, AcceptsEveryBooleanSpelling) {
  for (const char* t : {"t", "T", "true", "True", "TRUE"}) {
    EXPECT_EQ(canon(std::string("m v=") + t), "m v=true 42") << t;
  }
  for (const char* f : {"f", "F", "false", "False", "FALSE"}) {
    EXPECT_EQ(canon(std::string("m v=") + f), "m v=false 42") << f;
  }
  for (const char* bad : {"tRUE", "yes", "truee", "fals"}) {
    EXPECT_EQ(canon(std::string("m v=") + bad), "!field_value") << bad;
  }
}

TEST(LineParser, RejectsNanAndInfinityFloats) {
  for (const char* v : {"nan", "NaN", "inf", "-inf", "Infinity", "1e400"}) {
    EXPECT_EQ(canon(std::string("m v=") + v), "!field_value") << v;
  }
}

TEST(LineParser, StringValuesUnescapeQuoteAndBackslashOnly) {
  LineParser parser;
  std::vector<std::byte> record;
  const char* reason = nullptr;
  ASSERT_EQ(parser.parse(R"(m s="a\"b\\c\d, =e" 1)", {}, 0, &record, &reason), ParseError::kOk);
  auto view = RecordView::parse(record);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->fields().begin()->as_string(), R"(a"b\c\d, =e)");
  EXPECT_EQ(canon(R"(m s="")"), R"(m s="" 42)");
  EXPECT_EQ(canon(R"(m s="x y",t=1i)"), R"(m s="x y",t=1i 42)");
}

TEST(LineParser, UnescapesMeasurementTagsAndFieldKeys) {
  LineParser parser;
  std::vector<std::byte> record;
  const char* reason = nullptr;
  ASSERT_EQ(
      parser.parse(R"(my\ meas\,x\=,t\ k\,\==v\ 1\,\= f\ \,\=k\q=1i 5)", {}, 0, &record, &reason),
      ParseError::kOk)
      << reason;
  auto view = RecordView::parse(record);
  ASSERT_TRUE(view.ok());
  // "\=" is not an escape in the measurement; "\q" is never one.
  EXPECT_EQ(view->measurement(), R"(my meas,x\=)");
  const Tag tag = *view->tags().begin();
  EXPECT_EQ(tag.key, "t k,=");
  EXPECT_EQ(tag.value, "v 1,=");
  EXPECT_EQ(view->fields().begin()->key, R"(f ,=k\q)");
}

TEST(LineParser, DoubleBackslashIsOneBackslash) {
  LineParser parser;
  std::vector<std::byte> record;
  const char* reason = nullptr;
  ASSERT_EQ(parser.parse(R"(a\\,t=x\\\ y v=1)", {}, 0, &record, &reason), ParseError::kOk);
  auto view = RecordView::parse(record);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->measurement(), R"(a\)");
  EXPECT_EQ(view->tags().begin()->value, R"(x\ y)");
}

TEST(LineParser, SortsTagsCanonically) {
  EXPECT_EQ(canon("m,c=3,a=1,b=2 v=1i 1"), "m,a=1,b=2,c=3 v=1i 1");
  EXPECT_EQ(canon("m,a=1,b=2,c=3 v=1i 1"), "m,a=1,b=2,c=3 v=1i 1");
  EXPECT_EQ(canon("m,b=1,B=2,ab=3,a=4 v=1i 1"), "m,B=2,a=4,ab=3,b=1 v=1i 1");
}

TEST(LineParser, KeepsFieldsInInputOrder) {
  EXPECT_EQ(canon("m z=1i,a=2i,m=3i 1"), "m z=1i,a=2i,m=3i 1");
}

TEST(LineParser, AcceptsRunsOfSpacesBetweenSections) {
  EXPECT_EQ(canon("  m,a=1   v=1i    7   "), "m,a=1 v=1i 7");
  EXPECT_EQ(canon("m v=1i   "), "m v=1i 42");
}

TEST(LineParser, BlankLinesAndCommentsAreSkipped) {
  EXPECT_EQ(error_of(""), ParseError::kSkip);
  EXPECT_EQ(error_of("    "), ParseError::kSkip);
  EXPECT_EQ(error_of("# a comment v=1"), ParseError::kSkip);
  EXPECT_EQ(error_of("  #indented"), ParseError::kSkip);
}

TEST(LineParser, MissingTimestampGetsArrivalTime) { EXPECT_EQ(canon("m v=1i"), "m v=1i 42"); }

TEST(LineParser, ScalesTimestampByPrecisionWithOverflowCheck) {
  EXPECT_EQ(canon("m v=1i 1700000000", Precision::kS), "m v=1i 1700000000000000000");
  EXPECT_EQ(canon("m v=1i 1700000000123", Precision::kMs), "m v=1i 1700000000123000000");
  EXPECT_EQ(canon("m v=1i -1700000000123456", Precision::kUs), "m v=1i -1700000000123456000");
  EXPECT_EQ(canon("m v=1i 1700000000123456789", Precision::kNs), "m v=1i 1700000000123456789");
  EXPECT_EQ(canon("m v=1i 9300000000", Precision::kS), "!timestamp");
  EXPECT_EQ(canon("m v=1i -9300000000000000", Precision::kUs), "!timestamp");
  // Precision does not apply to the arrival time, which is already in ns.
  EXPECT_EQ(canon("m v=1i", Precision::kS), "m v=1i 42");
}

TEST(LineParser, RejectsBadMeasurement) {
  EXPECT_EQ(error_of(",t=1 v=1"), ParseError::kMeasurement);
  EXPECT_EQ(error_of(",=x v=1"), ParseError::kMeasurement);  // checked before the tags
  EXPECT_EQ(error_of(std::string("a\nb v=1")), ParseError::kMeasurement);
  // Leading spaces are skipped, so " v=1" is the measurement "v=1" without fields.
  EXPECT_EQ(error_of(" v=1"), ParseError::kNoFields);
}

TEST(LineParser, RejectsBadTags) {
  EXPECT_EQ(error_of("m,t v=1"), ParseError::kTag);            // no '='
  EXPECT_EQ(error_of("m,t= v=1"), ParseError::kTag);           // empty value
  EXPECT_EQ(error_of("m,=x v=1"), ParseError::kTag);           // empty key
  EXPECT_EQ(error_of("m, v=1"), ParseError::kTag);             // empty tag
  EXPECT_EQ(error_of("m,t=a=b v=1"), ParseError::kTag);        // unescaped '=' in value
  EXPECT_EQ(error_of("m,t=1,u=2,t=3 v=1"), ParseError::kTag);  // duplicate key
  Parsed p = parse_line("m,a=1,a=1 v=1");
  EXPECT_STREQ(p.reason, "duplicate tag key");
}

TEST(LineParser, RejectsMoreThanMaxTags) {
  auto line_with_tags = [](size_t n) {
    std::string line = "m";
    for (size_t i = 0; i < n; ++i) line += ",k" + std::to_string(i) + "=v";
    return line + " v=1";
  };
  EXPECT_EQ(error_of(line_with_tags(LineParser::kMaxTags)), ParseError::kOk);
  EXPECT_EQ(error_of(line_with_tags(LineParser::kMaxTags + 1)), ParseError::kTag);
}

TEST(LineParser, RejectsBadFieldKeys) {
  EXPECT_EQ(error_of("m v"), ParseError::kFieldKey);
  EXPECT_EQ(error_of("m =1"), ParseError::kFieldKey);
  EXPECT_EQ(error_of("m v=1,w"), ParseError::kFieldKey);
  EXPECT_EQ(error_of("m v=1,"), ParseError::kFieldKey);
  EXPECT_EQ(error_of("m v=1,,w=2"), ParseError::kFieldKey);
}

TEST(LineParser, RejectsBadFieldValues) {
  EXPECT_EQ(error_of("m v="), ParseError::kFieldValue);
  EXPECT_EQ(error_of("m v=,w=1"), ParseError::kFieldValue);
  EXPECT_EQ(error_of("m v=1x"), ParseError::kFieldValue);
  EXPECT_EQ(error_of("m v=0x10"), ParseError::kFieldValue);
  EXPECT_EQ(error_of("m v=1.2.3"), ParseError::kFieldValue);
  EXPECT_EQ(error_of("m v=-"), ParseError::kFieldValue);
  EXPECT_EQ(error_of("m v=abc"), ParseError::kFieldValue);
  EXPECT_EQ(error_of("m v=\"x\"y"), ParseError::kFieldValue);
  Parsed p = parse_line("m v=\"abc");
  EXPECT_EQ(p.error, ParseError::kFieldValue);
  EXPECT_STREQ(p.reason, "unterminated string field value");
  EXPECT_EQ(error_of("m v=\"abc\\\""), ParseError::kFieldValue);  // the quote is escaped
  EXPECT_EQ(error_of("m v=\"abc\\"), ParseError::kFieldValue);    // trailing backslash
}

TEST(LineParser, RejectsLinesWithoutFields) {
  EXPECT_EQ(error_of("m"), ParseError::kNoFields);
  EXPECT_EQ(error_of("m,t=1"), ParseError::kNoFields);
  EXPECT_EQ(error_of("m,t=1    "), ParseError::kNoFields);
}

TEST(LineParser, RejectsBadTimestamps) {
  EXPECT_EQ(error_of("m v=1 12a"), ParseError::kTimestamp);
  EXPECT_EQ(error_of("m v=1 1.5"), ParseError::kTimestamp);
  EXPECT_EQ(error_of("m v=1 +5"), ParseError::kTimestamp);
  EXPECT_EQ(error_of("m v=1 9223372036854775808"), ParseError::kTimestamp);
  EXPECT_EQ(error_of("m v=1 5 6"), ParseError::kTimestamp);
  // Around the eight-digits-at-a-time reading.
  EXPECT_EQ(error_of("m v=1 -"), ParseError::kTimestamp);
  EXPECT_EQ(error_of("m v=1 12345678a"), ParseError::kTimestamp);
  EXPECT_EQ(error_of("m v=1 1234567812345678x"), ParseError::kTimestamp);
  EXPECT_EQ(error_of("m v=1 12345678/2345678"), ParseError::kTimestamp);
  EXPECT_EQ(error_of("m v=1 1700000000000000000 x"), ParseError::kTimestamp);
}

// Appends n random decimal digits to *s.
void append_digits(int n, std::mt19937_64& rng, std::string* s) {
  for (int d = 0; d < n; ++d) s->push_back(static_cast<char>('0' + rng() % 10));
}

// Timestamps of up to 19 digits are read eight digits at a time; every length, sign and edge
// must read as std::from_chars reads it, and what it refuses must be refused (the malformed
// ones: RejectsBadTimestamps).
TEST(LineParser, ReadsTimestampsOfEveryLengthAsFromChars) {
  std::mt19937_64 rng(7);
  for (int digits = 1; digits <= 19; ++digits) {
    for (int i = 0; i < 200; ++i) {
      std::string ts;
      append_digits(digits, rng, &ts);
      for (const std::string& t : {ts, "-" + ts}) {
        int64_t want = 0;
        const auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), want);
        ASSERT_EQ(ptr, t.data() + t.size()) << t;
        const std::string got = canon("m v=1i " + t);
        if (ec != std::errc()) {
          EXPECT_EQ(got, "!timestamp") << t;
        } else {
          EXPECT_EQ(got, "m v=1i " + std::to_string(want)) << t;
        }
      }
    }
  }
  EXPECT_EQ(canon("m v=1i 9223372036854775807"), "m v=1i 9223372036854775807");
  EXPECT_EQ(canon("m v=1i -9223372036854775808"), "m v=1i -9223372036854775808");
  EXPECT_EQ(canon("m v=1i -9223372036854775809"), "!timestamp");
  EXPECT_EQ(canon("m v=1i 9999999999999999999"), "!timestamp");
  EXPECT_EQ(canon("m v=1i 00000000000000000000000042"), "m v=1i 42");  // leading zeros
  EXPECT_EQ(canon("m v=1i -0"), "m v=1i 0");
  EXPECT_EQ(canon("m v=1i 1700000000000000000   "), "m v=1i 1700000000000000000");
}

// Plain decimals ("-12.34") are read without std::from_chars; every one must read as it does.
TEST(LineParser, ReadsPlainDecimalFloatsAsFromChars) {
  std::mt19937_64 rng(11);
  std::vector<std::string> values = {
      "0.0",  "-0.0",  "0",   "-0",    "007.50", "0.1",   "0.3", "2.675", "123456789012345",
      "1234567890123456", "0.0000000000000000000001", "0.00000000000000000000001",
      "9007199254740993", "5.", ".5", "-.5", "1e5", "1.5.5", "-", "12a.5"};
  for (int i = 0; i < 20000; ++i) {
    std::string v = rng() % 2 ? "-" : "";
    const int before = 1 + static_cast<int>(rng() % 12), after = static_cast<int>(rng() % 12);
    append_digits(before, rng, &v);
    if (after > 0) v.push_back('.');
    append_digits(after, rng, &v);
    values.push_back(v);
  }
  for (const std::string& v : values) {
    double want = 0;
    const auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), want);
    const bool valid = ec == std::errc() && ptr == v.data() + v.size();
    const Parsed got = parse_line("m v=" + v + " 1");
    if (!valid) {
      EXPECT_EQ(got.error, ParseError::kFieldValue) << v;
      continue;
    }
    ASSERT_EQ(got.error, ParseError::kOk) << v;
    char shortest[32];  // the canonical line prints floats in their shortest exact form
    const auto res = std::to_chars(shortest, shortest + sizeof shortest, want);
    EXPECT_EQ(got.line, "m v=" + std::string(shortest, res.ptr) + " 1\n") << v;
  }
}

TEST(LineParser, RejectsNamesBeyondTheRecordLimits) {
  const std::string big(65536, 'x');
  EXPECT_EQ(error_of(big + " v=1"), ParseError::kTooLong);
  EXPECT_EQ(error_of("m,k=" + big + " v=1"), ParseError::kTooLong);
  EXPECT_EQ(error_of("m " + big + "=1"), ParseError::kTooLong);
  const std::string half(33000, 'x');
  EXPECT_EQ(error_of("m,a=" + half + ",b=" + half + " v=1"), ParseError::kTooLong);
  std::string many_fields = "m f0=t";
  for (size_t i = 1; i <= kMaxFields; ++i) many_fields += ",f=t";
  EXPECT_EQ(error_of(many_fields), ParseError::kTooLong);
  // Escaped names are limited by their unescaped length.
  std::string escaped;
  for (int i = 0; i < 40000; ++i) escaped += "\\ ";
  EXPECT_EQ(error_of(escaped + " v=1"), ParseError::kOk);
}

TEST(LineParser, ErrorNamesAreStableCounterNames) {
  const char* expected[] = {"ok",          "skip",      "measurement", "tag",     "field_key",
                            "field_value", "no_fields", "timestamp",   "too_long"};
  for (size_t i = 0; i < std::size(expected); ++i) {
    EXPECT_EQ(parse_error_name(static_cast<ParseError>(i)), expected[i]);
  }
  EXPECT_EQ(std::size(expected), static_cast<size_t>(ParseError::kCount));
}

TEST(LineParser, ReusedParserGivesSameRecordsAsFreshOne) {
  const char* lines[] = {"cpu,host=a\\ b v=1", "m v=\"x\\\\y\"", "bad", "m,b=1,a=2 v=2u 3"};
  LineParser reused;
  std::vector<std::byte> a, b;
  const char* reason = nullptr;
  for (int round = 0; round < 3; ++round) {
    for (const char* line : lines) {
      LineParser fresh;
      ParseError ea = reused.parse(line, {}, 9, &a, &reason);
      ParseError eb = fresh.parse(line, {}, 9, &b, &reason);
      EXPECT_EQ(ea, eb) << line;
      EXPECT_EQ(a, b) << line;
    }
  }
}

// parse -> format -> parse must give the identical bytes.
void expect_round_trip(std::string_view line) {
  LineParser parser;
  std::vector<std::byte> first, second;
  const char* reason = nullptr;
  ASSERT_EQ(parser.parse(line, {}, kArrivalNs, &first, &reason), ParseError::kOk)
      << line << ": " << reason;
  std::string formatted;
  format_line_protocol(RecordView::parse(first).value(), &formatted);
  ASSERT_EQ(formatted.back(), '\n');
  formatted.pop_back();
  ASSERT_EQ(parser.parse(formatted, {}, 0, &second, &reason), ParseError::kOk)
      << formatted << ": " << reason;
  EXPECT_EQ(first, second) << line << " -> " << formatted;
}

TEST(LineParser, ParseFormatParseIsByteIdentical) {
  for (const char* line : {
           "cpu,host=h123,region=r4 usage_user=12.5,usage_system=3.25 1700000000000000000",
           R"(my\ meas\,x\=,t\ k\,\==v\ 1\,\= f\ \,\=k\q=1i 5)",
           R"(a\\,t=x\\\ y v=1)",
           R"(a\b,t=\\\\ s="a\"b\\c\d, =e",x=-0,y=5e-324,z=1.7976931348623157e308 -1)",
           "m\\ ,k=v\\= v=1u",
           "m v=t,w=F,x=\"\",y=0.1",
       }) {
    expect_round_trip(line);
  }
}

// Random points full of bytes that need escaping survive record -> line -> record.
TEST(LineParser, RandomNastyPointsRoundTripThroughLineProtocol) {
  std::mt19937_64 rng(7);
  const std::string alphabet = std::string("ab,= \\\"#\r\t'") + '\0' + "\xff\xc3\xa9";
  auto nasty = [&](size_t min_len) {
    std::string s(min_len + rng() % 6, 'x');
    for (char& c : s) c = alphabet[rng() % alphabet.size()];
    return s;
  };
  LineParser parser;
  std::vector<std::byte> built, reparsed;
  std::string line;
  for (int iter = 0; iter < 3000; ++iter) {
    RecordBuilder b(&built);
    std::string measurement = nasty(1);
    if (measurement[0] == '#') measurement[0] = '_';
    std::vector<std::string> keys, values;
    const size_t tag_count = rng() % 4;
    for (size_t i = 0; i < tag_count; ++i) {
      keys.push_back(nasty(1) + std::to_string(i));  // unique
      values.push_back(nasty(1));
    }
    std::vector<Tag> tags;
    for (size_t i = 0; i < tag_count; ++i) tags.push_back({keys[i], values[i]});
    ASSERT_EQ(b.begin(measurement, tags), RecordError::kOk) << b.reason();
    const size_t field_count = 1 + rng() % 5;
    std::vector<std::string> field_keys;
    for (size_t i = 0; i < field_count; ++i) field_keys.push_back(nasty(1));
    for (const std::string& key : field_keys) {
      RecordError e = RecordError::kOk;
      switch (rng() % 5) {
        case 0: {
          double d;
          do {
            d = std::bit_cast<double>(rng());
          } while (!std::isfinite(d));
          e = b.add_float(key, d);
          break;
        }
        case 1:
          e = b.add_integer(key, static_cast<int64_t>(rng()));
          break;
        case 2:
          e = b.add_unsigned(key, rng());
          break;
        case 3:
          e = b.add_boolean(key, rng() & 1);
          break;
        default:
          e = b.add_string(key, nasty(0));
          break;
      }
      ASSERT_EQ(e, RecordError::kOk) << b.reason();
    }
    ASSERT_EQ(b.finish(static_cast<int64_t>(rng())), RecordError::kOk);

    line.clear();
    format_line_protocol(RecordView::parse(built).value(), &line);
    line.pop_back();
    const char* reason = nullptr;
    ASSERT_EQ(parser.parse(line, {}, 0, &reparsed, &reason), ParseError::kOk)
        << line << ": " << reason;
    ASSERT_EQ(built, reparsed) << line;
  }
}

}  // namespace
}  // namespace runnel
