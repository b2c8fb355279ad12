// The binary event record: one line-protocol point as it travels through the shared-memory
// ring and the on-disk log. RecordBuilder writes it; RecordView reads it from untrusted bytes.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/status.h"

namespace runnel {

// Record layout, version 1. Little-endian, no alignment assumed: read with memcpy. The ring and
// the log carry a record as opaque bytes and supply its length.
//
//   off size
//   0   1  u8  version = 1
//   1   1  u8  kind = 1 (point)
//   2   2  u16 flags = 0 (reserved)
//   4   2  u16 series_key_len  (bytes of the series key block that starts at 24)
//   6   2  u16 field_count (>= 1)
//   8   8  i64 ts_ns     event time, ns since the Unix epoch
//   16  8  u64 series_id = XXH3_64bits(series key block)
//   24  series key block: u16 measurement_len, measurement bytes, u16 tag_count,
//       then tag_count x (u16 key_len, key bytes, u16 value_len, value bytes), sorted by key bytes
//   then field_count x (u8 type, u16 key_len, key bytes, value) in input order;
//       value: float f64 (8), integer i64 (8), unsigned u64 (8), boolean u8 (1),
//       string u32 len + bytes
//
// All strings are raw (unescaped) bytes. A valid record also satisfies these rules, checked by
// both RecordBuilder and RecordView::parse, so that every record prints as line protocol that
// parses back to the same bytes:
//   - measurement, tag keys, tag values and field keys are non-empty, and no string holds '\n';
//   - the measurement does not start with '#' (such a line would be a comment);
//   - tag keys are strictly ascending by unsigned bytes (hence unique);
//   - floats are finite; booleans are 0 or 1; the record ends where its last field ends.
inline constexpr uint8_t kRecordVersion = 1;
inline constexpr uint8_t kRecordKindPoint = 1;
inline constexpr size_t kRecordOffsetVersion = 0;
inline constexpr size_t kRecordOffsetKind = 1;
inline constexpr size_t kRecordOffsetFlags = 2;
inline constexpr size_t kRecordOffsetSeriesKeyLen = 4;
inline constexpr size_t kRecordOffsetFieldCount = 6;
inline constexpr size_t kRecordOffsetTsNs = 8;
inline constexpr size_t kRecordOffsetSeriesId = 16;
inline constexpr size_t kRecordHeaderBytes = 24;
// Longest measurement, tag key/value, field key and series key block (u16 length prefixes).
inline constexpr size_t kMaxNameBytes = 65535;
inline constexpr size_t kMaxFields = 65535;

static_assert(std::endian::native == std::endian::little,
              "records are stored little-endian; a big-endian host needs byte swaps here");

enum class FieldType : uint8_t {
  kFloat = 1,
  kInteger = 2,
  kUnsigned = 3,
  kBoolean = 4,
  kString = 5
};

struct Tag {
  std::string_view key;
  std::string_view value;
};

// One field as read from a record. Views point into the record's bytes.
struct Field {
  std::string_view key;
  FieldType type = FieldType::kFloat;
  uint64_t bits = 0;     // numeric payload as stored: f64 bits, i64, u64, or 0/1 for a boolean
  std::string_view str;  // payload of a kString field

  double as_float() const { return std::bit_cast<double>(bits); }
  int64_t as_integer() const { return static_cast<int64_t>(bits); }
  uint64_t as_unsigned() const { return bits; }
  bool as_boolean() const { return bits != 0; }
  std::string_view as_string() const { return str; }
  bool is_numeric() const { return type != FieldType::kString; }
  // The value as a double for aggregation (booleans are 0/1). REQUIRES: is_numeric().
  double to_double() const;
};

namespace record_internal {

template <typename T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Decoders of one packed item; they trust bytes that RecordView::parse has checked.
inline Tag decode_tag(const char*& p) {
  Tag t;
  uint16_t n = load<uint16_t>(p);
  t.key = {p + 2, n};
  p += 2 + n;
  n = load<uint16_t>(p);
  t.value = {p + 2, n};
  p += 2 + n;
  return t;
}

inline Field decode_field(const char*& p) {
  Field f;
  f.type = static_cast<FieldType>(load<uint8_t>(p));
  uint16_t n = load<uint16_t>(p + 1);
  f.key = {p + 3, n};
  p += 3 + n;
  switch (f.type) {
    case FieldType::kBoolean:
      f.bits = load<uint8_t>(p);
      p += 1;
      break;
    case FieldType::kString: {
      uint32_t len = load<uint32_t>(p);
      f.str = {p + 4, len};
      p += 4 + len;
      break;
    }
    default:
      f.bits = load<uint64_t>(p);
      p += 8;
      break;
  }
  return f;
}

// Forward iteration over `count` items packed back to back, decoding each once.
template <typename Item, Item (*kDecode)(const char*&)>
class PackedIterator {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = Item;
  using difference_type = std::ptrdiff_t;
  using pointer = const Item*;
  using reference = const Item&;

  PackedIterator() = default;
  PackedIterator(const char* next, uint32_t left) : next_(next), left_(left) {
    if (left_ != 0) item_ = kDecode(next_);
  }
  const Item& operator*() const { return item_; }
  const Item* operator->() const { return &item_; }
  PackedIterator& operator++() {
    if (--left_ != 0) item_ = kDecode(next_);
    return *this;
  }
  void operator++(int) { ++*this; }
  // Iterators of one range compare by how many items remain; end() has none left.
  friend bool operator==(const PackedIterator& a, const PackedIterator& b) {
    return a.left_ == b.left_;
  }

 private:
  const char* next_ = nullptr;
  uint32_t left_ = 0;
  Item item_{};
};

template <typename Item, Item (*kDecode)(const char*&)>
class PackedRange {
 public:
  using iterator = PackedIterator<Item, kDecode>;
  PackedRange(const char* first, uint32_t count) : first_(first), count_(count) {}
  iterator begin() const { return iterator(first_, count_); }
  iterator end() const { return iterator(); }
  uint32_t size() const { return count_; }

 private:
  const char* first_;
  uint32_t count_;
};

}  // namespace record_internal

using TagRange = record_internal::PackedRange<Tag, record_internal::decode_tag>;
using FieldRange = record_internal::PackedRange<Field, record_internal::decode_field>;

// A checked, read-only view of one record; it borrows the bytes and allocates nothing.
// Thread-compatible: any number of threads may read one view.
class RecordView {
 public:
  RecordView() = default;

  // Checks every length, bound and rule of the layout above on untrusted bytes (shared memory,
  // disk) and returns a view, or Corruption naming what is wrong.
  static Result<RecordView> parse(std::span<const std::byte> bytes);
  // The same check without allocating: on failure *reason is a static explanation.
  static bool validate(std::span<const std::byte> bytes, RecordView* out, const char** reason);
  // The layout's structure only: version, kind, flags, counts, every length and bound, field
  // types, finite floats and 0/1 booleans; not the content rules (no '\n' in any string, tag
  // keys ascending, series_id = XXH3 of the series key block). For bytes whose integrity is
  // already established, which RecordBuilder wrote under those rules: the daemon's own ring,
  // and log records whose CRC matched. It never reads outside `bytes`, whatever they hold.
  // About a third of validate()'s cost goes to the content rules (seven short scans per W1
  // record), which the speed path and compaction would otherwise pay again for every event.
  static bool validate_structure(std::span<const std::byte> bytes, RecordView* out, const char** reason);

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  int64_t ts_ns() const { return record_internal::load<int64_t>(chars() + kRecordOffsetTsNs); }
  uint64_t series_id() const {
    return record_internal::load<uint64_t>(chars() + kRecordOffsetSeriesId);
  }
  // The raw series key block (measurement + sorted tags), the identity behind series_id().
  std::span<const std::byte> series_key() const {
    return {data_ + kRecordHeaderBytes, series_key_len_};
  }
  std::string_view measurement() const {
    return {chars() + kRecordHeaderBytes + 2, measurement_len_};
  }
  TagRange tags() const {
    return {chars() + kRecordHeaderBytes + 4 + measurement_len_, tag_count_};
  }
  FieldRange fields() const {
    return {chars() + kRecordHeaderBytes + series_key_len_, field_count_};
  }

 private:
  template <bool kContent>
  static bool check(std::span<const std::byte> bytes, RecordView* out, const char** reason);
  const char* chars() const { return reinterpret_cast<const char*>(data_); }

  const std::byte* data_ = nullptr;
  size_t size_ = 0;
  uint16_t series_key_len_ = 0;
  uint16_t measurement_len_ = 0;
  uint16_t tag_count_ = 0;
  uint16_t field_count_ = 0;
};

// Which part of a point RecordBuilder refused (LineParser maps these onto its ParseError).
enum class RecordError : uint8_t {
  kOk,
  kMeasurement,
  kTag,
  kFieldKey,
  kFieldValue,
  kTooLong,
  kNoFields
};

// Writes one record into a caller-owned byte buffer that is reused across records: once the
// buffer has grown to the largest record seen, building allocates nothing.
// Call begin(), then add_*() once per field, then finish(); *out then holds exactly the record.
// Every call checks the rules of the layout and returns kOk or what was refused, with reason();
// after a refusal *out is empty and the next record starts again with begin().
// REQUIRES: external synchronization (one builder per thread).
class RecordBuilder {
 public:
  explicit RecordBuilder(std::vector<std::byte>* out) : out_(out) {}

  // Writes the header and series key block. Sorts `tags` in place by key bytes; the views in
  // `measurement` and `tags` are copied and need not outlive the call.
  RecordError begin(std::string_view measurement, std::span<Tag> tags);
  RecordError add_float(std::string_view key, double value);  // refuses NaN and infinities
  RecordError add_integer(std::string_view key, int64_t value);
  RecordError add_unsigned(std::string_view key, uint64_t value);
  RecordError add_boolean(std::string_view key, bool value);
  RecordError add_string(std::string_view key, std::string_view value);
  // Sets the event time and trims *out to the record. Refuses a record without fields.
  RecordError finish(int64_t ts_ns);

  // Static explanation of the last refusal, e.g. "duplicate tag key".
  const char* reason() const { return reason_; }

 private:
  RecordError fail(RecordError error, const char* reason);
  RecordError add_field(FieldType type, std::string_view key, const void* value, size_t n);
  std::byte* room(size_t n);  // n writable bytes at pos_, which advances past them

  std::vector<std::byte>* out_;
  size_t pos_ = 0;  // bytes of the record written so far; out_->size() may run ahead
  uint16_t field_count_ = 0;
  const char* reason_ = "";
};

// Appends `record` as one line of canonical InfluxDB line protocol, '\n' included: tags in
// stored (sorted) order, floats in shortest round-trip form, integers with 'i', unsigned with
// 'u', the timestamp in ns. Parsing the line at ns precision rebuilds the identical record.
void format_line_protocol(const RecordView& record, std::string* out);

}  // namespace runnel
