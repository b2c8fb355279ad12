// LineParser: a single forward scan over the line that writes the record as it goes. Names are
// views into the line unless they hold escapes, in which case they are unescaped into scratch_.
#include "model/line_protocol.h"

#include <bit>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <system_error>

namespace runnel {
namespace {

// Bytes that end (or escape within) a name, one bit per context.
constexpr uint8_t kMeasurementStop = 1;  // ',' ' ' '\\'
constexpr uint8_t kKeyStop = 2;          // ',' '=' ' ' '\\' (tag keys, tag values, field keys)

struct StopTable {
  uint8_t bits[256] = {};
};

constexpr StopTable make_stop_table() {
  StopTable t;
  t.bits[static_cast<uint8_t>(',')] = kMeasurementStop | kKeyStop;
  t.bits[static_cast<uint8_t>(' ')] = kMeasurementStop | kKeyStop;
  t.bits[static_cast<uint8_t>('\\')] = kMeasurementStop | kKeyStop;
  t.bits[static_cast<uint8_t>('=')] = kKeyStop;
  return t;
}

constexpr StopTable kStops = make_stop_table();

bool stops(char c, uint8_t context) {
  return (kStops.bits[static_cast<uint8_t>(c)] & context) != 0;
}

// Returns the end of the name starting at p: its first unescaped terminator, or end. A
// backslash always carries the next byte with it, so that byte never terminates the name.
const char* scan_name(const char* p, const char* end, uint8_t context, bool* escaped) {
  while (p != end) {
    if (!stops(*p, context)) {
      ++p;
      continue;
    }
    if (*p != '\\') break;
    *escaped = true;
    p += (end - p >= 2) ? 2 : 1;
  }
  return p;
}

// Writes the unescaped form of `raw` at *out and advances *out: a backslash before a byte for
// which escapable() holds yields that byte; any other backslash is literal. Never lengthens.
template <typename Escapable>
std::string_view unescape(std::string_view raw, Escapable escapable, char** out) {
  char* start = *out;
  char* w = start;
  for (size_t i = 0; i < raw.size(); ++i) {
    char c = raw[i];
    if (c == '\\' && i + 1 < raw.size() && escapable(raw[i + 1])) c = raw[++i];
    *w++ = c;
  }
  *out = w;
  return {start, static_cast<size_t>(w - start)};
}

// Inside a string field value only \" and \\ are escapes.
bool string_escapable(char c) { return c == '"' || c == '\\'; }

// Scans one name and unescapes it into scratch only when it holds a backslash.
std::string_view take_name(const char** p, const char* end, uint8_t context, char** scratch) {
  bool escaped = false;
  const char* start = *p;
  *p = scan_name(start, end, context, &escaped);
  std::string_view raw(start, static_cast<size_t>(*p - start));
  if (!escaped) return raw;
  auto escapable = [context](char c) { return stops(c, context); };
  return unescape(raw, escapable, scratch);
}

// Scans a quoted string field value starting at the opening quote at *p, leaving *p past the
// closing quote. Returns nullptr, or why the value is malformed.
const char* take_string_value(const char** p, const char* end, char** scratch,
                              std::string_view* value) {
  const char* const start = ++*p;
  const char* q = start;
  bool escaped = false;
  while (q != end && *q != '"') {
    if (*q == '\\') {
      escaped = true;
      if (++q == end) break;  // a trailing backslash leaves the string unterminated
    }
    ++q;
  }
  if (q == end) return "unterminated string field value";
  const std::string_view raw(start, static_cast<size_t>(q - start));
  *p = ++q;  // past the closing quote
  if (q != end && *q != ',' && *q != ' ') return "text after closing quote of string field value";
  *value = escaped ? unescape(raw, string_escapable, scratch) : raw;
  return nullptr;
}

// RecordBuilder's refusals map one to one onto the parser's classes of the same name.
constexpr ParseError kFromRecordError[] = {
    ParseError::kOk,         ParseError::kMeasurement, ParseError::kTag,      ParseError::kFieldKey,
    ParseError::kFieldValue, ParseError::kTooLong,     ParseError::kNoFields,
};
static_assert(std::size(kFromRecordError) == static_cast<size_t>(RecordError::kNoFields) + 1);

ParseError to_parse_error(RecordError e) { return kFromRecordError[static_cast<size_t>(e)]; }

bool is_boolean(std::string_view v, bool* value) {
  if (v == "t" || v == "T" || v == "true" || v == "True" || v == "TRUE") {
    *value = true;
    return true;
  }
  if (v == "f" || v == "F" || v == "false" || v == "False" || v == "FALSE") {
    *value = false;
    return true;
  }
  return false;
}

template <typename T>
bool parse_whole(std::string_view s, T* v) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && ptr == s.data() + s.size();
}

// Eight ASCII digits, the first in the lowest byte of w (little-endian load).
bool eight_digits(uint64_t w) {
  return ((w & 0xF0F0F0F0F0F0F0F0ULL) |
          (((w + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4)) == 0x3333333333333333ULL;
}

// Their value: digit pairs, then pairs of pairs, then the two halves, by multiplications.
uint32_t eight_digits_value(uint64_t w) {
  w -= 0x3030303030303030ULL;
  w = w * 10 + (w >> 8);
  return static_cast<uint32_t>(
      ((w & 0x000000FF000000FFULL) * (100 + (1000000ULL << 32)) +
       ((w >> 16) & 0x000000FF000000FFULL) * (1 + (10000ULL << 32))) >>
      32);
}

// The timestamp at *p: an optional '-' and at most 19 digits, up to a ' ' or the end, read
// eight digits at a time (a W1 timestamp has 19). Returns false where it cannot tell (other
// text, more digits: leading zeros are valid), leaving *p alone; parse_whole() decides then.
bool take_timestamp_fast(const char** pp, const char* end, int64_t* ts) {
  if constexpr (std::endian::native != std::endian::little) return false;
  const char* p = *pp;
  const bool negative = p != end && *p == '-';
  const char* const digits = p + (negative ? 1 : 0);
  const char* q = digits;
  uint64_t v = 0;
  while (end - q >= 8 && q - digits <= 8) {
    uint64_t w;
    std::memcpy(&w, q, 8);
    if (!eight_digits(w)) break;
    v = v * 100'000'000 + eight_digits_value(w);
    q += 8;
  }
  for (; q != end && static_cast<unsigned char>(*q - '0') < 10; ++q) {
    if (q - digits == 19) return false;
    v = v * 10 + static_cast<unsigned>(*q - '0');
  }
  if (q == digits || (q != end && *q != ' ')) return false;
  // v < 10^19 < 2^64: no overflow so far.
  constexpr uint64_t kMax = uint64_t{INT64_MAX};
  if (v > kMax + (negative ? 1 : 0)) return false;
  *ts = negative ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
  *pp = q;
  return true;
}

// A plain decimal float value ("-12.34": an optional '-', digits, optionally a '.' and more
// digits, no exponent, at most 15 significant digits, at most 22 after the point), as
// std::from_chars reads it: the mantissa and 10^k are exact doubles, so one IEEE division
// rounds the quotient correctly, as from_chars must. False for anything else (from_chars
// decides then).
bool parse_decimal_fast(std::string_view v, double* out) {
  static constexpr double kPow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                      1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                      1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
  const char* p = v.data();
  const char* const end = p + v.size();
  const bool negative = p != end && *p == '-';
  if (negative) ++p;
  uint64_t m = 0;
  int digits = 0, after_point = -1;
  for (; p != end; ++p) {
    if (*p == '.') {
      if (after_point >= 0) return false;
      after_point = 0;
      continue;
    }
    const unsigned d = static_cast<unsigned char>(*p - '0');
    if (d >= 10 || digits == 15) return false;
    m = m * 10 + d;
    digits += m != 0 ? 1 : 0;  // leading zeros are not significant
    if (after_point >= 0 && ++after_point > 22) return false;
  }
  const char* const first = v.data() + (negative ? 1 : 0);
  if (p == first || *first == '.' || after_point == 0) return false;  // "", ".5", "5."
  const double d = after_point > 0 ? static_cast<double>(m) / kPow10[after_point]
                                   : static_cast<double>(m);
  *out = negative ? -d : d;
  return true;
}

// Adds the unquoted field value `v` (number or boolean) under `key`.
RecordError add_plain_value(RecordBuilder& builder, std::string_view key, std::string_view v,
                            const char** reason) {
  if (v.empty()) {
    *reason = "missing field value";
    return RecordError::kFieldValue;
  }
  const char first = v.front();
  if (first == 't' || first == 'T' || first == 'f' || first == 'F') {
    bool b;
    if (is_boolean(v, &b)) return builder.add_boolean(key, b);
    *reason = "invalid boolean field value";
    return RecordError::kFieldValue;
  }
  const char last = v.back();
  if (last == 'i') {
    int64_t i;
    if (parse_whole(v.substr(0, v.size() - 1), &i)) return builder.add_integer(key, i);
    *reason = "invalid or out-of-range integer field value";
    return RecordError::kFieldValue;
  }
  if (last == 'u') {
    uint64_t u;
    if (parse_whole(v.substr(0, v.size() - 1), &u)) return builder.add_unsigned(key, u);
    *reason = "invalid or out-of-range unsigned field value";
    return RecordError::kFieldValue;
  }
  double d;
  if (!parse_decimal_fast(v, &d) && !parse_whole(v, &d)) {
    *reason = "invalid or out-of-range float field value";
    return RecordError::kFieldValue;
  }
  return builder.add_float(key, d);  // refuses NaN and infinities
}

constexpr int64_t kNsPerUnit[] = {1, 1'000, 1'000'000, 1'000'000'000};  // indexed by Precision

}  // namespace

std::string_view parse_error_name(ParseError error) {
  // Counter names: never rename one.
  static constexpr std::string_view kNames[] = {
      "ok",          "skip",      "measurement", "tag",      "field_key",
      "field_value", "no_fields", "timestamp",   "too_long",
  };
  static_assert(std::size(kNames) == static_cast<size_t>(ParseError::kCount));
  const auto i = static_cast<size_t>(error);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

LineParser::LineParser() = default;

ParseError LineParser::parse(std::string_view line, const ParseOptions& options,
                             int64_t arrival_ts_ns, std::vector<std::byte>* record,
                             const char** reason) {
  record->clear();
  const char* p = line.data();
  const char* const end = p + line.size();
  auto fail = [record, reason](ParseError e, const char* why) {
    record->clear();
    *reason = why;
    return e;
  };

  while (p != end && *p == ' ') ++p;
  if (p == end || *p == '#') return fail(ParseError::kSkip, "blank line or comment");

  // Unescaping never lengthens a name, so the whole line fits and views into scratch stay
  // valid until the record is built.
  if (scratch_.size() < line.size()) scratch_.resize(line.size());
  char* scratch = scratch_.data();

  const std::string_view measurement = take_name(&p, end, kMeasurementStop, &scratch);
  size_t tag_count = 0;
  while (p != end && *p == ',') {
    ++p;
    if (tag_count == kMaxTags) return fail(ParseError::kTag, "more than 256 tags");
    Tag& tag = tags_[tag_count++];
    tag.key = take_name(&p, end, kKeyStop, &scratch);
    if (p == end || *p != '=') return fail(ParseError::kTag, "tag key without '='");
    ++p;
    tag.value = take_name(&p, end, kKeyStop, &scratch);
    if (p != end && *p == '=') return fail(ParseError::kTag, "unescaped '=' in tag value");
  }

  RecordBuilder builder(record);
  RecordError built = builder.begin(measurement, std::span<Tag>(tags_.data(), tag_count));
  if (built != RecordError::kOk) return fail(to_parse_error(built), builder.reason());

  while (p != end && *p == ' ') ++p;
  if (p == end) return fail(ParseError::kNoFields, "missing fields");
  for (;;) {
    const std::string_view key = take_name(&p, end, kKeyStop, &scratch);
    if (p == end || *p != '=') return fail(ParseError::kFieldKey, "field key without '='");
    ++p;
    const char* value_reason = nullptr;
    if (p != end && *p == '"') {
      std::string_view value;
      if (const char* why = take_string_value(&p, end, &scratch, &value)) {
        return fail(ParseError::kFieldValue, why);
      }
      built = builder.add_string(key, value);
    } else {
      const char* start = p;
      while (p != end && *p != ',' && *p != ' ') ++p;
      built = add_plain_value(builder, key, std::string_view(start, static_cast<size_t>(p - start)),
                              &value_reason);
    }
    if (built != RecordError::kOk) {
      return fail(to_parse_error(built), value_reason ? value_reason : builder.reason());
    }
    if (p == end || *p == ' ') break;
    ++p;  // ','
  }

  while (p != end && *p == ' ') ++p;
  int64_t ts_ns = arrival_ts_ns;
  if (p != end) {
    int64_t ts;
    if (!take_timestamp_fast(&p, end, &ts)) {
      const char* start = p;
      while (p != end && *p != ' ') ++p;
      if (!parse_whole(std::string_view(start, static_cast<size_t>(p - start)), &ts)) {
        return fail(ParseError::kTimestamp, "invalid or out-of-range timestamp");
      }
    }
    if (__builtin_mul_overflow(ts, kNsPerUnit[static_cast<size_t>(options.precision)], &ts_ns)) {
      return fail(ParseError::kTimestamp, "timestamp overflows int64 nanoseconds");
    }
    while (p != end && *p == ' ') ++p;
    if (p != end) return fail(ParseError::kTimestamp, "text after timestamp");
  }
  built = builder.finish(ts_ns);
  if (built != RecordError::kOk) return fail(to_parse_error(built), builder.reason());
  return ParseError::kOk;
}

}  // namespace runnel
