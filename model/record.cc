// RecordBuilder, RecordView's bounds checks, and the canonical line-protocol printer.
// The escaping here is the inverse of the unescaping in model/line_protocol.cc.
#include "model/record.h"

#include <xxhash.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace runnel {
namespace {

using record_internal::load;

bool has_newline(std::string_view s) { return std::memchr(s.data(), '\n', s.size()) != nullptr; }

template <typename T>
std::byte* put(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
  return p + sizeof v;
}

std::byte* put_name(std::byte* p, std::string_view s) {
  p = put(p, static_cast<uint16_t>(s.size()));
  std::memcpy(p, s.data(), s.size());
  return p + s.size();
}

// Bounds-checked reader over untrusted bytes; every take fails rather than read past end_.
class Cursor {
 public:
  Cursor(const char* p, const char* end) : p_(p), end_(end) {}
  bool at_end() const { return p_ == end_; }
  const char* pos() const { return p_; }

  template <typename T>
  bool take(T* v) {
    if (static_cast<size_t>(end_ - p_) < sizeof(T)) return false;
    *v = load<T>(p_);
    p_ += sizeof(T);
    return true;
  }
  bool take_bytes(size_t n, std::string_view* s) {
    if (static_cast<size_t>(end_ - p_) < n) return false;
    *s = {p_, n};
    p_ += n;
    return true;
  }
  // A u16-prefixed string that must be non-empty and, when kContent, hold no '\n'.
  template <bool kContent>
  bool take_name(std::string_view* s) {
    uint16_t n;
    return take(&n) && n != 0 && take_bytes(n, s) && (!kContent || !has_newline(*s));
  }

 private:
  const char* p_;
  const char* end_;
};

bool invalid(const char* why, const char** reason) {
  *reason = why;
  return false;
}

// Appends s with a backslash before each byte s[i] for which escape(i) holds.
template <typename Escape>
void append_escaped(std::string_view s, Escape escape, std::string* out) {
  size_t copied = 0;  // s[0, copied) is already in *out
  for (size_t i = 0; i < s.size(); ++i) {
    if (!escape(i)) continue;
    out->append(s.data() + copied, i - copied);
    out->push_back('\\');
    copied = i;
  }
  out->append(s.data() + copied, s.size() - copied);
}

bool is_measurement_special(char c) { return c == ',' || c == ' '; }
bool is_key_special(char c) { return c == ',' || c == '=' || c == ' '; }

// Inside a name a backslash escapes the terminators of its context and itself (see
// model/line_protocol.h). A literal backslash needs doubling only where the parser would
// otherwise read it as an escape: before such a byte, or as the last byte of the name.
template <bool (*kIsSpecial)(char)>
void append_name(std::string_view s, std::string* out) {
  append_escaped(
      s,
      [s](size_t i) {
        if (s[i] != '\\') return kIsSpecial(s[i]);
        return i + 1 == s.size() || s[i + 1] == '\\' || kIsSpecial(s[i + 1]);
      },
      out);
}

// Canonical string field values escape every '"' and every backslash.
void append_string_value(std::string_view s, std::string* out) {
  append_escaped(
      s, [s](size_t i) { return s[i] == '"' || s[i] == '\\'; }, out);
}

template <typename T>
void append_number(T v, std::string* out) {
  char buf[32];  // holds the shortest form of any double or 64-bit integer
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  out->append(buf, res.ptr);
}

}  // namespace

double Field::to_double() const {
  switch (type) {
    case FieldType::kFloat:
      return as_float();
    case FieldType::kInteger:
      return static_cast<double>(as_integer());
    case FieldType::kUnsigned:
      return static_cast<double>(as_unsigned());
    case FieldType::kBoolean:
      return as_boolean() ? 1.0 : 0.0;
    case FieldType::kString:
      break;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// ---- RecordView ----

Result<RecordView> RecordView::parse(std::span<const std::byte> bytes) {
  RecordView view;
  const char* reason = "";
  if (!validate(bytes, &view, &reason)) {
    return Status::Corruption("record of " + std::to_string(bytes.size()) + " bytes: " + reason);
  }
  return view;
}

namespace {

// RecordView::validate (kContent) and validate_structure.
template <bool kContent>
bool check_record(std::span<const std::byte> bytes, const char** reason, uint16_t* key_len_out,
                  uint16_t* measurement_len_out, uint16_t* tag_count_out, uint16_t* field_count_out) {
  const char* base = reinterpret_cast<const char*>(bytes.data());
  if (bytes.size() < kRecordHeaderBytes) return invalid("shorter than the record header", reason);
  if (load<uint8_t>(base + kRecordOffsetVersion) != kRecordVersion) {
    return invalid("unknown record version", reason);
  }
  if (load<uint8_t>(base + kRecordOffsetKind) != kRecordKindPoint) {
    return invalid("unknown record kind", reason);
  }
  if (load<uint16_t>(base + kRecordOffsetFlags) != 0) return invalid("reserved flags set", reason);
  const uint16_t key_len = load<uint16_t>(base + kRecordOffsetSeriesKeyLen);
  const uint16_t field_count = load<uint16_t>(base + kRecordOffsetFieldCount);
  if (field_count == 0) return invalid("record has no fields", reason);
  if (bytes.size() - kRecordHeaderBytes < key_len) {
    return invalid("series key block runs past the record", reason);
  }

  const char* key_block = base + kRecordHeaderBytes;
  Cursor key(key_block, key_block + key_len);
  std::string_view measurement;
  if (!key.template take_name<kContent>(&measurement)) return invalid("bad measurement", reason);
  if (measurement.front() == '#') return invalid("measurement starts with '#'", reason);
  uint16_t tag_count;
  if (!key.take(&tag_count)) return invalid("series key block ends before the tag count", reason);
  std::string_view prev_key;
  for (uint32_t i = 0; i < tag_count; ++i) {
    std::string_view k, v;
    if (!key.template take_name<kContent>(&k)) return invalid("bad tag key", reason);
    if (kContent && i != 0 && !(prev_key < k)) return invalid("tag keys not strictly ascending", reason);
    if (!key.template take_name<kContent>(&v)) return invalid("bad tag value", reason);
    prev_key = k;
  }
  if (!key.at_end()) return invalid("series key block has trailing bytes", reason);
  if (kContent && XXH3_64bits(key_block, key_len) != load<uint64_t>(base + kRecordOffsetSeriesId)) {
    return invalid("series_id does not match the series key", reason);
  }

  Cursor fields(key_block + key_len, base + bytes.size());
  for (uint32_t i = 0; i < field_count; ++i) {
    uint8_t type;
    std::string_view k;
    if (!fields.take(&type) || !fields.template take_name<kContent>(&k)) return invalid("bad field key", reason);
    switch (static_cast<FieldType>(type)) {
      case FieldType::kFloat: {
        double v;
        if (!fields.take(&v)) return invalid("truncated float field", reason);
        if (!std::isfinite(v)) return invalid("float field is NaN or infinite", reason);
        break;
      }
      case FieldType::kInteger:
      case FieldType::kUnsigned: {
        uint64_t v;
        if (!fields.take(&v)) return invalid("truncated integer field", reason);
        break;
      }
      case FieldType::kBoolean: {
        uint8_t v;
        if (!fields.take(&v)) return invalid("truncated boolean field", reason);
        if (v > 1) return invalid("boolean field is neither 0 nor 1", reason);
        break;
      }
      case FieldType::kString: {
        uint32_t n;
        std::string_view s;
        if (!fields.take(&n) || !fields.take_bytes(n, &s)) {
          return invalid("truncated string field", reason);
        }
        if (kContent && has_newline(s)) return invalid("newline in string field", reason);
        break;
      }
      default:
        return invalid("unknown field type", reason);
    }
  }
  if (!fields.at_end()) return invalid("bytes after the last field", reason);

  *key_len_out = key_len;
  *measurement_len_out = static_cast<uint16_t>(measurement.size());
  *tag_count_out = tag_count;
  *field_count_out = field_count;
  return true;
}

}  // namespace

template <bool kContent>
bool RecordView::check(std::span<const std::byte> bytes, RecordView* out, const char** reason) {
  uint16_t key_len, measurement_len, tag_count, field_count;
  if (!check_record<kContent>(bytes, reason, &key_len, &measurement_len, &tag_count, &field_count)) {
    return false;
  }
  out->data_ = bytes.data();
  out->size_ = bytes.size();
  out->series_key_len_ = key_len;
  out->measurement_len_ = measurement_len;
  out->tag_count_ = tag_count;
  out->field_count_ = field_count;
  return true;
}

bool RecordView::validate(std::span<const std::byte> bytes, RecordView* out, const char** reason) {
  return check<true>(bytes, out, reason);
}

bool RecordView::validate_structure(std::span<const std::byte> bytes, RecordView* out, const char** reason) {
  return check<false>(bytes, out, reason);
}

// ---- RecordBuilder ----

RecordError RecordBuilder::fail(RecordError error, const char* reason) {
  out_->clear();
  pos_ = 0;
  reason_ = reason;
  return error;
}

std::byte* RecordBuilder::room(size_t n) {
  // Growing by at least the current size keeps resizes rare when a record outgrows the last.
  if (out_->size() - pos_ < n) out_->resize(std::max(pos_ + n, 2 * out_->size()));
  std::byte* p = out_->data() + pos_;
  pos_ += n;
  return p;
}

RecordError RecordBuilder::begin(std::string_view measurement, std::span<Tag> tags) {
  pos_ = 0;
  field_count_ = 0;
  if (measurement.empty()) return fail(RecordError::kMeasurement, "empty measurement");
  if (measurement.size() > kMaxNameBytes) {
    return fail(RecordError::kTooLong, "measurement longer than 65535 bytes");
  }
  if (measurement.front() == '#') {
    return fail(RecordError::kMeasurement, "measurement starts with '#'");
  }
  if (has_newline(measurement)) return fail(RecordError::kMeasurement, "newline in measurement");
  if (tags.size() > kMaxNameBytes) return fail(RecordError::kTag, "more than 65535 tags");

  auto by_key = [](const Tag& a, const Tag& b) { return a.key < b.key; };
  if (!std::is_sorted(tags.begin(), tags.end(), by_key)) {
    std::sort(tags.begin(), tags.end(), by_key);
  }
  size_t key_len = 4 + measurement.size();
  for (size_t i = 0; i < tags.size(); ++i) {
    const Tag& t = tags[i];
    if (t.key.empty()) return fail(RecordError::kTag, "empty tag key");
    if (t.value.empty()) return fail(RecordError::kTag, "empty tag value");
    if (t.key.size() > kMaxNameBytes || t.value.size() > kMaxNameBytes) {
      return fail(RecordError::kTooLong, "tag key or value longer than 65535 bytes");
    }
    if (has_newline(t.key) || has_newline(t.value)) {
      return fail(RecordError::kTag, "newline in tag");
    }
    if (i != 0 && tags[i - 1].key == t.key) return fail(RecordError::kTag, "duplicate tag key");
    key_len += 4 + t.key.size() + t.value.size();
  }
  if (key_len > kMaxNameBytes) {
    return fail(RecordError::kTooLong, "series key longer than 65535 bytes");
  }

  std::byte* header = room(kRecordHeaderBytes + key_len);
  std::byte* p = header + kRecordHeaderBytes;
  p = put_name(p, measurement);
  p = put(p, static_cast<uint16_t>(tags.size()));
  for (const Tag& t : tags) {
    p = put_name(p, t.key);
    p = put_name(p, t.value);
  }
  put(header + kRecordOffsetVersion, kRecordVersion);
  put(header + kRecordOffsetKind, kRecordKindPoint);
  put(header + kRecordOffsetFlags, uint16_t{0});
  put(header + kRecordOffsetSeriesKeyLen, static_cast<uint16_t>(key_len));
  put(header + kRecordOffsetSeriesId, uint64_t{XXH3_64bits(header + kRecordHeaderBytes, key_len)});
  return RecordError::kOk;
}

RecordError RecordBuilder::add_field(FieldType type, std::string_view key, const void* value,
                                     size_t n) {
  if (key.empty()) return fail(RecordError::kFieldKey, "empty field key");
  if (key.size() > kMaxNameBytes) {
    return fail(RecordError::kTooLong, "field key longer than 65535 bytes");
  }
  if (has_newline(key)) return fail(RecordError::kFieldKey, "newline in field key");
  if (field_count_ == kMaxFields) return fail(RecordError::kTooLong, "more than 65535 fields");
  std::byte* p = room(1 + 2 + key.size() + n);
  p = put(p, static_cast<uint8_t>(type));
  p = put_name(p, key);
  std::memcpy(p, value, n);
  ++field_count_;
  return RecordError::kOk;
}

RecordError RecordBuilder::add_float(std::string_view key, double value) {
  if (!std::isfinite(value)) {
    return fail(RecordError::kFieldValue, "float field value is NaN or infinite");
  }
  return add_field(FieldType::kFloat, key, &value, sizeof value);
}

RecordError RecordBuilder::add_integer(std::string_view key, int64_t value) {
  return add_field(FieldType::kInteger, key, &value, sizeof value);
}

RecordError RecordBuilder::add_unsigned(std::string_view key, uint64_t value) {
  return add_field(FieldType::kUnsigned, key, &value, sizeof value);
}

RecordError RecordBuilder::add_boolean(std::string_view key, bool value) {
  const uint8_t v = value ? 1 : 0;
  return add_field(FieldType::kBoolean, key, &v, sizeof v);
}

RecordError RecordBuilder::add_string(std::string_view key, std::string_view value) {
  if (value.size() > std::numeric_limits<uint32_t>::max()) {
    return fail(RecordError::kTooLong, "string field value longer than 4 GiB");
  }
  if (has_newline(value)) return fail(RecordError::kFieldValue, "newline in string field value");
  const uint32_t n = static_cast<uint32_t>(value.size());
  if (RecordError e = add_field(FieldType::kString, key, &n, sizeof n); e != RecordError::kOk) {
    return e;
  }
  std::memcpy(room(value.size()), value.data(), value.size());
  return RecordError::kOk;
}

RecordError RecordBuilder::finish(int64_t ts_ns) {
  if (field_count_ == 0) return fail(RecordError::kNoFields, "point has no fields");
  std::byte* header = out_->data();
  put(header + kRecordOffsetFieldCount, field_count_);
  put(header + kRecordOffsetTsNs, ts_ns);
  out_->resize(pos_);
  return RecordError::kOk;
}

// ---- line protocol output ----

void format_line_protocol(const RecordView& record, std::string* out) {
  append_name<is_measurement_special>(record.measurement(), out);
  for (const Tag& t : record.tags()) {
    out->push_back(',');
    append_name<is_key_special>(t.key, out);
    out->push_back('=');
    append_name<is_key_special>(t.value, out);
  }
  char sep = ' ';
  for (const Field& f : record.fields()) {
    out->push_back(sep);
    sep = ',';
    append_name<is_key_special>(f.key, out);
    out->push_back('=');
    switch (f.type) {
      case FieldType::kFloat:
        append_number(f.as_float(), out);
        break;
      case FieldType::kInteger:
        append_number(f.as_integer(), out);
        out->push_back('i');
        break;
      case FieldType::kUnsigned:
        append_number(f.as_unsigned(), out);
        out->push_back('u');
        break;
      case FieldType::kBoolean:
        out->append(f.as_boolean() ? "true" : "false");
        break;
      case FieldType::kString:
        out->push_back('"');
        append_string_value(f.as_string(), out);
        out->push_back('"');
        break;
    }
  }
  out->push_back(' ');
  append_number(record.ts_ns(), out);
  out->push_back('\n');
}

}  // namespace runnel
