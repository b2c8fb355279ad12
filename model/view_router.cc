// ViewRouter (see view_router.h).
#include "model/view_router.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>

namespace runnel {
namespace {

void put_u16(std::vector<std::byte>* out, size_t v) {
  const uint16_t x = static_cast<uint16_t>(v);
  const size_t at = out->size();
  out->resize(at + 2);
  std::memcpy(out->data() + at, &x, 2);
}

void put_str(std::vector<std::byte>* out, std::string_view s) {
  put_u16(out, s.size());
  const size_t at = out->size();
  out->resize(at + s.size());
  if (!s.empty()) std::memcpy(out->data() + at, s.data(), s.size());
}

bool get_str(std::span<const std::byte> b, size_t* at, std::string_view* out) {
  if (*at + 2 > b.size()) return false;
  uint16_t len;
  std::memcpy(&len, b.data() + *at, 2);
  *at += 2;
  if (*at + len > b.size()) return false;
  *out = std::string_view(reinterpret_cast<const char*>(b.data()) + *at, len);
  *at += len;
  return true;
}

}  // namespace

uint64_t make_row_id(uint64_t group_hash, std::string_view field) {
  const uint64_t h = XXH3_64bits_withSeed(field.data(), field.size(), group_hash);
  return (h & ~kRowShardMask) | (group_hash & kRowShardMask);
}

bool decode_row_key(std::span<const std::byte> key, RowKeyView* out) {
  size_t at = 0;
  out->tags.clear();
  if (!get_str(key, &at, &out->measurement)) return false;
  if (at + 2 > key.size()) return false;
  uint16_t n;
  std::memcpy(&n, key.data() + at, 2);
  at += 2;
  for (uint16_t i = 0; i < n; ++i) {
    Tag t;
    if (!get_str(key, &at, &t.key) || !get_str(key, &at, &t.value)) return false;
    out->tags.push_back(t);
  }
  return get_str(key, &at, &out->field) && at == key.size();
}

ViewRouter::ViewRouter(std::vector<ViewDef> views) : views_(std::move(views)) {
  for (const auto& v : views_) {
    Distinct d;
    for (const auto& a : v.aggregates) {
      if (a.starts_with("distinct(") && a.ends_with(")")) d.target = a.substr(9, a.size() - 10);
    }
    distinct_.push_back(std::move(d));
  }
  key_.reserve(1024);
}

const std::vector<uint32_t>& ViewRouter::views_for(std::string_view measurement) {
  // Records of one measurement usually follow each other: the last answer is checked first.
  if (has_last_ && measurement == last_measurement_) return last_views_;
  auto it = by_measurement_.find(measurement);
  if (it == by_measurement_.end()) {
    std::vector<uint32_t> list;
    for (uint32_t i = 0; i < views_.size(); ++i) {
      if (views_[i].matches_measurement(measurement)) list.push_back(i);
    }
    it = by_measurement_.emplace(std::string(measurement), std::move(list)).first;
  }
  // Copies (not pointers into the map), so that a copied router stays valid; they allocate
  // only for a longer name or list than any before.
  last_measurement_ = it->first;
  last_views_ = it->second;
  has_last_ = true;
  return last_views_;
}

uint64_t ViewRouter::group_hash(const RecordView& rec, uint32_t v, bool want_key) {
  const ViewDef& def = views_[v];
  key_.clear();
  if (def.group_all_tags) {
    if (want_key) {
      const auto sk = rec.series_key();
      key_.insert(key_.end(), sk.begin(), sk.end());
    }
    return rec.series_id();  // == XXH3 of the series key block
  }
  put_str(&key_, rec.measurement());
  const size_t count_at = key_.size();
  put_u16(&key_, 0);
  uint16_t count = 0;
  // Both lists are sorted by key: one merge pass. A group tag the point lacks is left out.
  auto want = def.group_by.begin();
  for (const Tag& t : rec.tags()) {
    while (want != def.group_by.end() && *want < t.key) ++want;
    if (want == def.group_by.end()) break;
    if (*want == t.key) {
      put_str(&key_, t.key);
      put_str(&key_, t.value);
      ++count;
    }
  }
  std::memcpy(key_.data() + count_at, &count, 2);
  return XXH3_64bits(key_.data(), key_.size());
}

bool ViewRouter::distinct_hash(const RecordView& rec, uint32_t v, uint64_t* out) const {
  const std::string& target = distinct_[v].target;
  if (target.empty()) return false;
  for (const Tag& t : rec.tags()) {
    if (t.key == target) {
      *out = XXH3_64bits(t.value.data(), t.value.size());
      return true;
    }
  }
  for (const Field& f : rec.fields()) {
    if (f.key != target) continue;
    if (f.type == FieldType::kString) {
      *out = XXH3_64bits(f.str.data(), f.str.size());
    } else {
      // Numbers count by their value as a double, so 1i and 1.0 are the same element.
      const double d = f.to_double();
      *out = XXH3_64bits(&d, sizeof d);
    }
    return true;
  }
  return false;
}

std::span<const std::byte> ViewRouter::row_key(const RecordView& rec, uint32_t view, std::string_view field) {
  group_hash(rec, view, /*want_key=*/true);
  put_str(&key_, field);
  return key_;
}

}  // namespace runnel
