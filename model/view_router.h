// Routes one event record to the rows it feeds in each view: which views take its measurement,
// the row's group key, which fields count, the row id and the distinct-count input. The speed
// path, the batch layer and replay all route through this one class.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/record.h"
#include "model/view.h"

namespace runnel {

// A row is (group key, field). Its id keeps the low 8 bits of the group hash, so every field of
// a group lands in the same shard (shard = row_id % shards, shards a power of two <= 256) and
// one writer owns the whole group.
inline constexpr uint64_t kRowShardMask = 0xff;
uint64_t make_row_id(uint64_t group_hash, std::string_view field);

// Row key bytes, as stored in the series dictionary: the group key block (same encoding as a
// record's series key block: u16 measurement_len, measurement, u16 tag_count, then sorted
// (u16 len, key, u16 len, value) pairs) followed by u16 field_len and the field name.
struct RowKeyView {
  std::string_view measurement;
  std::vector<Tag> tags;  // sorted by key
  std::string_view field;
};
// Decodes untrusted row key bytes; false when malformed.
bool decode_row_key(std::span<const std::byte> key, RowKeyView* out);

// One update: fold `value` (at the record's ts) into row `row_id` of view `view`.
struct RowUpdate {
  uint32_t view = 0;
  uint64_t row_id = 0;
  uint64_t group_hash = 0;
  double value = 0;
  int64_t ts_ns = 0;
  uint64_t distinct_hash = 0;  // valid when has_distinct
  bool has_distinct = false;
  std::string_view field;
};

// REQUIRES: external synchronization (one per worker thread). Allocates only when it meets a
// measurement for the first time (its view list is cached) or a longer key than before.
class ViewRouter {
 public:
  explicit ViewRouter(std::vector<ViewDef> views);

  const std::vector<ViewDef>& views() const { return views_; }

  // For each view taking rec's measurement: computes the group hash, asks accept(group_hash)
  // (e.g. "is it my shard?"), and if so calls fn(const RowUpdate&) for every numeric field the
  // view takes. Returns the number of updates made.
  template <typename Accept, typename Fn>
  size_t route(const RecordView& rec, Accept&& accept, Fn&& fn);

  // The row key of the last group routed for `view`, with `field` appended (for the series
  // dictionary). Valid until the next call of route() or row_key().
  std::span<const std::byte> row_key(const RecordView& rec, uint32_t view, std::string_view field);

 private:
  struct Distinct {
    std::string target;  // tag key or field name of distinct(x); empty: none
  };
  const std::vector<uint32_t>& views_for(std::string_view measurement);
  // The group hash of rec for view v. The group key block is left in key_ when `want_key` (or
  // when the hash needs it: grouping by some tags); grouping by every tag, the hash is the
  // record's series id and route() does not copy the key.
  uint64_t group_hash(const RecordView& rec, uint32_t v, bool want_key = false);
  bool distinct_hash(const RecordView& rec, uint32_t v, uint64_t* out) const;

  std::vector<ViewDef> views_;
  std::vector<Distinct> distinct_;
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, std::vector<uint32_t>, Hash, std::equal_to<>> by_measurement_;
  std::vector<std::byte> key_;  // group key block of the last group (+ field in row_key)
  // views_for's last answer: the views of last_measurement_ (when has_last_).
  std::string last_measurement_;
  std::vector<uint32_t> last_views_;
  bool has_last_ = false;
};

template <typename Accept, typename Fn>
size_t ViewRouter::route(const RecordView& rec, Accept&& accept, Fn&& fn) {
  size_t n = 0;
  for (uint32_t v : views_for(rec.measurement())) {
    const ViewDef& def = views_[v];
    const uint64_t gh = group_hash(rec, v);
    if (!accept(gh)) continue;
    RowUpdate u;
    u.view = v;
    u.group_hash = gh;
    u.ts_ns = rec.ts_ns();
    u.has_distinct = distinct_hash(rec, v, &u.distinct_hash);
    for (const Field& f : rec.fields()) {
      if (!f.is_numeric() || !def.takes_field(f.key)) continue;
      u.field = f.key;
      u.value = f.to_double();
      u.row_id = make_row_id(gh, f.key);
      fn(static_cast<const RowUpdate&>(u));
      ++n;
    }
  }
  return n;
}

}  // namespace runnel
