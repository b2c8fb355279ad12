// InfluxDB line protocol parser: one line of text in, one binary record (model/record.h) out.
// The hot path of every text ingest path (TCP, UDP, Unix sockets, HTTP /write).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "model/record.h"

namespace runnel {

enum class Precision : uint8_t { kNs, kUs, kMs, kS };

// Outcome of parsing one line. Every value but kOk and kSkip is a rejection class that is
// counted under parse_error_name().
enum class ParseError : uint8_t {
  kOk,
  kSkip,  // blank line or '#' comment: not an error, produces no record
  kMeasurement,
  kTag,
  kFieldKey,
  kFieldValue,
  kNoFields,
  kTimestamp,
  kTooLong,  // a name, the series key or the field count exceeds the record's u16 limits
  kCount,
};

// Stable snake_case name of each class, used as a counter name: "measurement", "tag",
// "field_key", "field_value", "no_fields", "timestamp", "too_long" (and "ok", "skip").
std::string_view parse_error_name(ParseError error);

struct ParseOptions {
  Precision precision = Precision::kNs;  // unit of the line's timestamp
};

// Parses single lines of line protocol:
//
//   measurement[,tag_key=tag_value...] field_key=field_value[,...] [timestamp]
//
// - Sections are separated by one or more spaces; leading and trailing spaces are ignored. A
//   line that is empty, all spaces, or whose first non-space byte is '#' is kSkip.
// - Escapes: in the measurement "\," and "\ "; in tag keys, tag values and field keys "\,",
//   "\=" and "\ "; everywhere there "\\" is one backslash, and a backslash before any other
//   byte is literal. An unescaped '=' inside a tag value is an error.
// - Field values: float (1, -1.5, 1e3, .5; an unsuffixed number is a float; NaN and
//   infinities are refused), integer 12i (int64), unsigned 12u (uint64), boolean t T true True
//   TRUE f F false False FALSE, string "..." in which \" and \\ are escapes and a backslash
//   before any other byte is literal.
// - The timestamp is a signed integer in options.precision, scaled to ns with an overflow
//   check; a line without one gets arrival_ts_ns.
// - Tags are sorted by key; a duplicate key, an empty key or value, or more than kMaxTags
//   tags is kTag.
// One per thread (REQUIRES: external synchronization). Takes no lock, and allocates nothing
// once its scratch space and the record buffer have grown to the longest line seen.
class LineParser {
 public:
  static constexpr size_t kMaxTags = 256;

  LineParser();

  // Parses `line` (no '\n'; LineFramer strips it and a trailing '\r') into *record, which is
  // cleared first and on success holds exactly one record. On any result other than kOk,
  // *reason is a short static explanation (e.g. "unterminated string field value").
  ParseError parse(std::string_view line, const ParseOptions& options, int64_t arrival_ts_ns,
                   std::vector<std::byte>* record, const char** reason);

 private:
  std::vector<char> scratch_;       // unescaped names and strings of the current line
  std::array<Tag, kMaxTags> tags_;  // the current line's tags, sorted by RecordBuilder
};

}  // namespace runnel
