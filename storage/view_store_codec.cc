// The view store's record and block codecs (view_store_internal.h; layout in view_store.h).
#include "storage/view_store_internal.h"

#include <algorithm>

namespace runnel::storage {
namespace view_store_internal {

void put_be64(std::byte* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<std::byte>(v & 0xff);
}

uint64_t get_be64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::string data_db_name(std::string_view view, uint64_t version) {
  return "d/" + std::string(view) + "/" + std::to_string(version);
}

std::string view_key(std::string_view view) { return std::string(kViewPrefix) + std::string(view); }

std::string version_key(std::string_view view, uint64_t version) {
  std::string digits = std::to_string(version);
  return std::string(kVersionPrefix) + std::string(view) + "/" +
         std::string(20 - digits.size(), '0') + digits;
}

std::string encode_watermark(const Watermark& w) {
  std::string s;
  put(&s, w.log_offset);
  put(&s, w.records);
  put(&s, w.last_record_offset);
  put(&s, w.ring_epoch);
  put(&s, w.ring_pos);
  put(&s, w.commit_ns);
  return s;
}

bool decode_watermark(std::span<const std::byte> b, Watermark* w) {
  if (b.size() != kWatermarkRecordBytes) return false;
  w->log_offset = get<uint64_t>(b, 0);
  w->records = get<uint64_t>(b, 8);
  w->last_record_offset = get<uint64_t>(b, 16);
  w->ring_epoch = get<uint64_t>(b, 24);
  w->ring_pos = get<uint64_t>(b, 32);
  w->commit_ns = get<int64_t>(b, 40);
  return true;
}

std::string encode_store(uint64_t next_version) {
  std::string s(kViewStoreMagic, sizeof kViewStoreMagic);
  put(&s, kViewStoreLayoutVersion);
  put(&s, uint32_t{0});
  put(&s, next_version);
  return s;
}

std::string encode_view(const ViewMeta& v, const VersionMeta* current) {
  std::string s;
  put(&s, v.current_version);
  put(&s, v.building_version);
  put(&s, current ? current->definition_hash : uint64_t{0});
  put(&s, current ? current->state_format_id : uint64_t{0});
  put(&s, current ? current->state_bytes : uint32_t{0});
  const std::string_view text = current ? std::string_view(current->canonical) : "";
  put(&s, static_cast<uint32_t>(text.size()));
  put(&s, current ? current->buckets_per_block : uint32_t{0});
  const size_t widths = current ? current->def.widths_ns.size() : 0;
  put(&s, static_cast<uint32_t>(widths));
  for (size_t w = 0; w < ViewDef::kMaxWidths; ++w)
    put(&s, w < widths ? current->def.widths_ns[w] : int64_t{0});
  s += text;
  return s;
}

bool decode_view(std::span<const std::byte> b, ViewInfo* v) {
  if (b.size() < kViewRecordHeader) return false;
  const uint32_t len = get<uint32_t>(b, 36);
  const uint32_t widths = get<uint32_t>(b, 44);
  if (b.size() != kViewRecordHeader + len || widths > ViewDef::kMaxWidths) return false;
  v->current_version = get<uint64_t>(b, 0);
  v->building_version = get<uint64_t>(b, 8);
  v->definition_hash = get<uint64_t>(b, 16);
  v->state_format_id = get<uint64_t>(b, 24);
  v->state_bytes = get<uint32_t>(b, 32);
  v->buckets_per_block = get<uint32_t>(b, 40);
  v->widths_ns.clear();
  for (uint32_t w = 0; w < widths; ++w) {
    v->widths_ns.push_back(get<int64_t>(b, 48 + 8 * w));
    if (v->widths_ns.back() <= 0) return false;
  }
  if (v->current_version != 0 &&
      (v->buckets_per_block == 0 || v->buckets_per_block > kMaxBucketsPerBlock || widths == 0)) {
    return false;
  }
  v->definition.assign(reinterpret_cast<const char*>(b.data()) + kViewRecordHeader, len);
  return true;
}

std::string encode_version(const VersionMeta& v) {
  std::string s;
  put(&s, v.covered_offset);
  put(&s, v.definition_hash);
  put(&s, v.state_format_id);
  put(&s, v.state_bytes);
  put(&s, static_cast<uint32_t>(v.state));
  put(&s, v.created_ns);
  put(&s, static_cast<uint32_t>(v.canonical.size()));
  put(&s, v.buckets_per_block);
  put(&s, v.bucket_count);
  s += v.canonical;
  return s;
}

bool decode_version(std::span<const std::byte> b, VersionMeta* v) {
  if (b.size() < kVersionRecordHeader) return false;
  const uint32_t len = get<uint32_t>(b, 40);
  const uint32_t state = get<uint32_t>(b, 28);
  const uint32_t per_block = get<uint32_t>(b, 44);
  if (b.size() != kVersionRecordHeader + len || state < 1 || state > 3 || per_block == 0 ||
      per_block > kMaxBucketsPerBlock) {
    return false;
  }
  v->covered_offset = get<uint64_t>(b, 0);
  v->definition_hash = get<uint64_t>(b, 8);
  v->state_format_id = get<uint64_t>(b, 16);
  v->state_bytes = get<uint32_t>(b, 24);
  v->state = static_cast<VersionState>(state);
  v->created_ns = get<int64_t>(b, 32);
  v->buckets_per_block = per_block;
  v->bucket_count = get<uint64_t>(b, 48);
  v->canonical.assign(reinterpret_cast<const char*>(b.data()) + kVersionRecordHeader, len);
  return true;
}

int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return q - ((a % b) < 0 ? 1 : 0);
}

Wide first_bucket_at_or_after(int64_t t_ns, int64_t width_ns) {
  const int64_t q = floor_div(t_ns, width_ns);
  return static_cast<Wide>(q) * width_ns < t_ns ? Wide{q} + 1 : Wide{q};
}

Wide floor_div(Wide a, int64_t b) {
  const Wide q = a / b;
  return q - ((a % b) < 0 ? 1 : 0);
}

bool compact_form(const AggregateLayout& layout, std::span<const std::byte> state,
                  std::span<std::byte> scratch, std::byte (&out)[kCompactStateBytes]) {
  if (state.size() <= kCompactStateBytes || layout.count(state) != 1) return false;
  int64_t ts = 0;
  double value = 0;
  size_t at = layout.offset(AggComponent::kLast);
  if (at == AggregateLayout::kAbsent) at = layout.offset(AggComponent::kFirst);
  if (at != AggregateLayout::kAbsent) {
    std::memcpy(&ts, state.data() + at, 8);
    std::memcpy(&value, state.data() + at + 8, 8);
  } else {
    at = layout.offset(AggComponent::kSum);
    for (AggComponent c : {AggComponent::kMin, AggComponent::kMax, AggComponent::kMoments}) {
      if (at == AggregateLayout::kAbsent) at = layout.offset(c);
    }
    if (at == AggregateLayout::kAbsent) return false;
    std::memcpy(&value, state.data() + at, 8);
  }
  layout.init(scratch);
  layout.update(scratch, value, ts, 0, false);
  if (std::memcmp(scratch.data(), state.data(), state.size()) != 0) return false;
  std::memcpy(out, &ts, 8);
  std::memcpy(out + 8, &value, 8);
  return true;
}

// The full state of a compact one.
void expand_compact(const AggregateLayout& layout, const std::byte* compact,
                    std::span<std::byte> out) {
  layout.init(out);
  fold_single(layout, compact, out);
}

// Calls fn(key suffix after prefix, value) for every meta record whose key starts with prefix.
Status for_each_prefixed(const lmdb::Txn& txn, MDB_dbi dbi, std::string_view prefix,
                         const PrefixedFn& fn) {
  auto cursor = lmdb::Cursor::open(txn, dbi);
  if (!cursor.ok()) return cursor.status();
  MDB_val k = lmdb::val(prefix), v{};
  for (auto found = cursor->seek(&k, &v, MDB_SET_RANGE);; found = cursor->seek(&k, &v, MDB_NEXT)) {
    if (!found.ok()) return found.status();
    if (!*found || !as_chars(k).starts_with(prefix)) return Status::Ok();
    Status s = fn(as_chars(k).substr(prefix.size()), lmdb::bytes(v));
    if (!s.ok()) return s;
  }
}

Status check_store_record(const lmdb::Txn& txn, MDB_dbi meta, const std::filesystem::path& dir,
                          uint64_t* next_version) {
  auto rec = txn.get(meta, lmdb::val(kStoreKey));
  if (!rec.ok()) return rec.status();
  const auto b = *rec;
  if (b.size() != kStoreRecordBytes || std::memcmp(b.data(), kViewStoreMagic, 8) != 0) {
    return Status::Corruption(dir.string() + ": meta 'store' record is not a runnel view store");
  }
  if (get<uint32_t>(b, 8) != kViewStoreLayoutVersion) {
    return Status::Unsupported(
        dir.string() + ": batch views in layout version " + std::to_string(get<uint32_t>(b, 8)) +
        ", this build reads only version " + std::to_string(kViewStoreLayoutVersion) +
        ". Stop runneld and remove " + dir.string() +
        " (or run the runnel that wrote it); runneld then rebuilds the views from the retained log "
        "(buckets older than the oldest retained log segment are not rebuilt)");
  }
  if (next_version) *next_version = get<uint64_t>(b, 16);
  return Status::Ok();
}

bool is_lmdb(const Status& s, int rc) { return !s.ok() && s.message().ends_with(mdb_strerror(rc)); }

}  // namespace view_store_internal

using namespace view_store_internal;

void fold_single(const AggregateLayout& layout, const std::byte* single, std::span<std::byte> into) {
  int64_t ts;
  double value;
  std::memcpy(&ts, single, 8);
  std::memcpy(&value, single + 8, 8);
  layout.update(into, value, ts, 0, false);
}

uint32_t buckets_per_block(size_t state_bytes) {
  const size_t room = kBlockTargetBytes - kBlockHeaderBytes;
  return static_cast<uint32_t>(
      std::clamp<size_t>(room / std::max<size_t>(state_bytes, 1), 1, kMaxBucketsPerBlock));
}

void encode_block_key(const BlockKey& key, std::span<std::byte, kBlockKeyBytes> out) {
  const uint64_t block = static_cast<uint64_t>(key.block) ^ kBucketSignBit;
  if (time_major(key.width_index)) {
    out[0] = std::byte{1};
    put_be64(out.data() + 1, block);
    put_be64(out.data() + 9, key.row_id);
    out[17] = static_cast<std::byte>(key.width_index);
  } else {
    out[0] = std::byte{0};
    put_be64(out.data() + 1, key.row_id);
    out[9] = static_cast<std::byte>(key.width_index);
    put_be64(out.data() + 10, block);
  }
}

BlockKey decode_block_key(std::span<const std::byte> bytes) {
  BlockKey k;
  if (bytes[0] != std::byte{0}) {
    k.block = static_cast<int64_t>(get_be64(bytes.data() + 1) ^ kBucketSignBit);
    k.row_id = get_be64(bytes.data() + 9);
    k.width_index = static_cast<uint8_t>(bytes[17]);
  } else {
    k.row_id = get_be64(bytes.data() + 1);
    k.width_index = static_cast<uint8_t>(bytes[9]);
    k.block = static_cast<int64_t>(get_be64(bytes.data() + 10) ^ kBucketSignBit);
  }
  return k;
}

BlockKey block_of(const BucketKey& key, const std::vector<int64_t>& widths_ns,
                  uint32_t buckets_per_block, uint32_t* slot) {
  const int64_t q = key.bucket_start_ns / widths_ns[key.width_index];
  const int64_t b = floor_div(q, buckets_per_block);
  if (slot) *slot = static_cast<uint32_t>(q - b * buckets_per_block);
  return BlockKey{key.row_id, key.width_index, b};
}

bool step_order_less(const BucketKey& a, const BucketKey& b, const std::vector<int64_t>& widths_ns,
                     uint32_t buckets_per_block) {
  std::byte ka[kBlockKeyBytes], kb[kBlockKeyBytes];
  encode_block_key(block_of(a, widths_ns, buckets_per_block, nullptr), ka);
  encode_block_key(block_of(b, widths_ns, buckets_per_block, nullptr), kb);
  const int c = std::memcmp(ka, kb, kBlockKeyBytes);
  return c != 0 ? c < 0 : a.bucket_start_ns < b.bucket_start_ns;
}

bool same_batch_states(const ViewDef& a, const ViewDef& b) {
  ViewDef x = a, y = b;
  x.live_window_ns = y.live_window_ns = 0;
  x.capacity = y.capacity = 0;
  return x.canonical() == y.canonical();
}

int64_t BucketRetention::keep_ns(int64_t width_ns) const {
  for (const Rule& r : rules) {
    if (width_ns <= r.max_width_ns) return r.keep_ns;
  }
  return 0;
}

const ViewMeta* StoreState::find_view(std::string_view name) const {
  for (const ViewMeta& v : views) {
    if (v.name == name) return &v;
  }
  return nullptr;
}

const VersionMeta* StoreState::find_version(uint64_t version) const {
  auto it = versions.find(version);
  return it == versions.end() ? nullptr : &it->second;
}

}  // namespace runnel::storage
