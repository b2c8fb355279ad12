// Internals of the view store shared by its writer (view_store.cc) and its readers
// (view_reader.cc): the meta records' and blocks' codecs (layout in view_store.h) and Shared,
// the LMDB environment with its table of named-database handles.
#pragma once

#include <bit>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "storage/view_store.h"

namespace runnel::storage::view_store_internal {

inline constexpr const char* kMetaDb = "meta";
inline constexpr const char* kSeriesDb = "series";
inline constexpr std::string_view kStoreKey = "store";
inline constexpr std::string_view kWatermarkKey = "watermark";
inline constexpr std::string_view kViewPrefix = "view/";
inline constexpr std::string_view kVersionPrefix = "version/";
inline constexpr size_t kStoreRecordBytes = 24;
inline constexpr size_t kWatermarkRecordBytes = 48;
inline constexpr size_t kViewRecordHeader = 112;
inline constexpr size_t kVersionRecordHeader = 56;

// ----- little-endian records -----

template <typename T>
void put(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->append(b, sizeof(T));
}

template <typename T>
T get(std::span<const std::byte> b, size_t at) {
  T v;
  std::memcpy(&v, b.data() + at, sizeof(T));
  return v;
}

void put_be64(std::byte* p, uint64_t v);
uint64_t get_be64(const std::byte* p);

std::string data_db_name(std::string_view view, uint64_t version);
std::string view_key(std::string_view view);
std::string version_key(std::string_view view, uint64_t version);
std::string encode_watermark(const Watermark& w);
bool decode_watermark(std::span<const std::byte> b, Watermark* w);
std::string encode_store(uint64_t next_version);
std::string encode_view(const ViewMeta& v, const VersionMeta* current);
bool decode_view(std::span<const std::byte> b, ViewInfo* v);
std::string encode_version(const VersionMeta& v);
bool decode_version(std::span<const std::byte> b, VersionMeta* v);

// ----- blocks (layout in view_store.h) -----

// Bucket numbers times widths, block numbers times buckets_per_block: exact, never overflowing.
__extension__ typedef __int128 Wide;

int64_t floor_div(int64_t a, int64_t b);
Wide floor_div(Wide a, int64_t b);
// The first bucket number whose start (number * width_ns) is at or after t_ns.
Wide first_bucket_at_or_after(int64_t t_ns, int64_t width_ns);

inline uint64_t slots_below(uint32_t slot) {
  return slot >= 64 ? ~uint64_t{0} : (uint64_t{1} << slot) - 1;
}

// A block value, decoded (layout in view_store.h).
struct Block {
  uint64_t present = 0;
  uint64_t compact = 0;               // present slots stored as kCompactStateBytes
  const std::byte* states = nullptr;  // just past the header

  // Whether `value` is a well-formed block of `per_block` slots of `state_bytes` states.
  bool parse(const MDB_val& value, uint32_t per_block, size_t state_bytes) {
    if (value.mv_size < kBlockHeaderBytes) return false;
    const auto* p = static_cast<const std::byte*>(value.mv_data);
    std::memcpy(&present, p, 8);
    std::memcpy(&compact, p + 8, 8);
    states = p + kBlockHeaderBytes;
    return present != 0 && (present & ~slots_below(per_block)) == 0 && (compact & ~present) == 0 &&
           value.mv_size == kBlockHeaderBytes + bytes_of(present, compact, state_bytes);
  }
  // Offset from `states` of the state of `slot`: after the states of the present slots below.
  size_t offset_of(uint32_t slot, size_t state_bytes) const {
    return bytes_of(present & slots_below(slot), compact, state_bytes);
  }
  bool is_compact(uint32_t slot) const { return (compact >> slot & 1) != 0; }
  // Bytes of the states of `slots`, `compact` of them compact.
  static size_t bytes_of(uint64_t slots, uint64_t compact, size_t state_bytes) {
    return static_cast<size_t>(std::popcount(slots & ~compact)) * state_bytes +
           static_cast<size_t>(std::popcount(slots & compact)) * kCompactStateBytes;
  }
};

// The compact form (i64 ts_ns, f64 value) of `state` when it is exactly what one update of an
// empty state gives (scratch: state_bytes of room); false otherwise, e.g. with a distinct count.
bool compact_form(const AggregateLayout& layout, std::span<const std::byte> state,
                  std::span<std::byte> scratch, std::byte (&out)[kCompactStateBytes]);
// The full state of a compact one.
void expand_compact(const AggregateLayout& layout, const std::byte* compact,
                    std::span<std::byte> out);

// ----- meta records in LMDB -----

inline std::string_view as_chars(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}
// Calls fn(key suffix after prefix, value) for every meta record whose key starts with prefix.
using PrefixedFn = std::function<Status(std::string_view, std::span<const std::byte>)>;
Status for_each_prefixed(const lmdb::Txn& txn, MDB_dbi dbi, std::string_view prefix,
                         const PrefixedFn& fn);
// Checks the 'store' record (magic, layout version); *next_version (optional) from it.
Status check_store_record(const lmdb::Txn& txn, MDB_dbi meta, const std::filesystem::path& dir,
                          uint64_t* next_version);
// Whether s reports LMDB error rc.
bool is_lmdb(const Status& s, int rc);

// ---------------------------------------------------------------------------------------------
// Shared: the environment and its table of named-database handles.
//
// LMDB keeps MDB_dbi handles in the environment, and opening, closing or dropping one must not
// overlap another transaction's begin/commit in the same process. `mu` serializes exactly
// those moments (never a read): transaction begin and end, handle open/close/drop. A handle
// stays open while a snapshot of this process references it (refs).

struct Shared {
  struct Handle {
    MDB_dbi dbi = 0;
    uint32_t refs = 0;
  };

  lmdb::Env env;
  bool writer = false;
  std::mutex mu;
  MDB_dbi meta = 0;
  MDB_dbi series = 0;
  std::unordered_map<std::string, Handle> dbis;  // data databases (guarded by mu)
  size_t live_snapshots = 0;                     // guarded by mu
  std::vector<std::string> latest_names;         // reader: names of the newest snapshot
  // Layouts of the definitions whose compact states snapshots expanded (guarded by mu).
  std::map<std::string, std::unique_ptr<const AggregateLayout>, std::less<>> layouts;

  Result<const AggregateLayout*> layout_for(const ViewInfo& view);

  Result<lmdb::Txn> begin_read_locked();
  Result<ViewSnapshot> snapshot(const std::shared_ptr<Shared>& self);
  void release(ViewSnapshot* snap);
  // Reader: opens `names` in a short read transaction whose commit keeps the handles.
  Status open_handles_locked(const std::vector<std::string>& names);
};

}  // namespace runnel::storage::view_store_internal
