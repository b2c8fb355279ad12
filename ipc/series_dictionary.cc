// The series dictionary: creation and validation, the serialized append-only insert, and
// lock-free zero-copy lookups and iteration. Layout: series_dictionary_layout.h.
#include "ipc/series_dictionary.h"

#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <new>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace runnel::ipc {

namespace {

constexpr std::string_view kKind = "series dictionary";
constexpr size_t kMaxKeyBytes = 65535;  // the record's u16 series_key_len

std::string object_name(const std::string& shm_name) { return shm_name + ".series"; }

// Slots for `n` keys at a load factor of at most 3/4.
uint64_t slots_for(uint64_t n) { return std::bit_ceil(n + n / 3 + 1); }

// Checks that `key` is exactly one series key block (every length within it, names non-empty)
// and points e->measurement and e->tags into it.
bool parse_key(std::span<const std::byte> key, SeriesEntry* e) {
  const char* p = reinterpret_cast<const char*>(key.data());
  const char* const end = p + key.size();
  // A u16 length and that many bytes, at least one.
  auto name = [&](std::string_view* out) {
    uint16_t n = 0;
    if (end - p < 2) return false;
    std::memcpy(&n, p, 2);
    p += 2;
    if (n == 0 || end - p < n) return false;
    *out = std::string_view(p, n);
    p += n;
    return true;
  };
  uint16_t tag_count = 0;
  if (!name(&e->measurement) || end - p < 2) return false;
  std::memcpy(&tag_count, p, 2);
  p += 2;
  const char* const first_tag = p;
  std::string_view ignored;
  for (uint32_t i = 0; i < tag_count; ++i)
    if (!name(&ignored) || !name(&ignored)) return false;
  // A row key (model/view_router.h) carries its field after the block.
  e->field = {};
  if (p != end && !name(&e->field)) return false;
  if (p != end) return false;
  e->key = key;
  e->tags = TagRange(first_tag, tag_count);
  return true;
}

uint64_t measurement_hash(std::string_view m) { return XXH3_64bits(m.data(), m.size()); }

Status validate(const ShmObject& shm) {
  if (Status st = shm.validate_prefix(kSeriesMagic, kSeriesLayoutVersion, kSeriesHeaderBytes);
      !st.ok())
    return st;
  const auto* h = reinterpret_cast<const SeriesHeader*>(shm.data());
  const uint64_t measurement_offset = kSeriesHeaderBytes + h->index_slots * kSeriesSlotBytes;
  const uint64_t arena_offset = measurement_offset + h->measurement_slots * kSeriesSlotBytes;
  const bool ok =
      std::has_single_bit(h->index_slots) && h->index_slots <= kMaxSeriesIndexSlots &&
      std::has_single_bit(h->measurement_slots) && h->measurement_slots <= kMaxSeriesIndexSlots &&
      h->max_series < h->index_slots && h->max_measurements < h->measurement_slots &&
      h->index_offset == kSeriesHeaderBytes && h->measurement_offset == measurement_offset &&
      h->arena_offset == arena_offset && h->arena_bytes % 8 == 0 && h->arena_bytes <= shm.size() &&
      arena_offset + h->arena_bytes == shm.size();
  if (!ok) {
    return Status::Corruption(fmt::format(
        "{}: index of {} slots, {} measurement slots and arena of {} bytes do not fit the "
        "object's {} bytes",
        shm.where(), h->index_slots, h->measurement_slots, h->arena_bytes, shm.size()));
  }
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SeriesDictionaryView

SeriesDictionaryView::SeriesDictionaryView(std::byte* base)
    : base_(base), header_(std::launder(reinterpret_cast<SeriesHeader*>(base))) {
  index_ = std::launder(reinterpret_cast<SeriesSlot*>(base + header_->index_offset));
  measurements_ = std::launder(reinterpret_cast<SeriesSlot*>(base + header_->measurement_offset));
  arena_ = base + header_->arena_offset;
}

// The record behind `ref` (an arena offset + 1), bounds-checked; *prev_ref gets its chain link.
std::optional<SeriesEntry> SeriesDictionaryView::record_at(uint64_t ref, uint64_t* prev_ref) const {
  const uint64_t off = ref - 1;
  const uint64_t arena_bytes = header_->arena_bytes;
  if (ref == 0 || off % 8 != 0 || off > arena_bytes - kSeriesRecordHeaderBytes ||
      arena_bytes < kSeriesRecordHeaderBytes)
    return std::nullopt;
  // Plain reads: a record is complete before any reference to it is published (release) and is
  // never written again; the caller loaded that reference with acquire.
  SeriesRecordHeader r;
  std::memcpy(&r, arena_ + off, sizeof r);
  if (r.key_len > arena_bytes - off - kSeriesRecordHeaderBytes) return std::nullopt;
  SeriesEntry e;
  e.series_id = r.series_id;
  if (!parse_key(std::span<const std::byte>(arena_ + off + kSeriesRecordHeaderBytes, r.key_len),
                 &e))
    return std::nullopt;
  if (prev_ref != nullptr) *prev_ref = r.prev_ref;
  return e;
}

std::optional<SeriesEntry> SeriesDictionaryView::find(uint64_t series_id) const {
  if (header_ == nullptr) return std::nullopt;
  const uint64_t mask = header_->index_slots - 1;
  uint64_t i = series_id & mask;
  for (uint64_t n = 0; n <= mask; ++n, i = (i + 1) & mask) {
    // Acquire: pairs with the release store of ref in insert(); the record and key are visible.
    const uint64_t ref = index_[i].ref.load(std::memory_order_acquire);
    if (ref == 0) return std::nullopt;
    if (index_[i].key.load(std::memory_order_relaxed) != series_id) continue;
    auto e = record_at(ref, nullptr);
    if (e && e->series_id == series_id) return e;
    return std::nullopt;
  }
  return std::nullopt;
}

uint64_t SeriesDictionaryView::size() const {
  return header_ == nullptr ? 0 : header_->series_count.load(std::memory_order_acquire);
}

void SeriesDictionaryView::for_each(const SeriesFn& fn) const {
  if (header_ == nullptr) return;
  // Acquire: pairs with the release store of arena_published in insert().
  const uint64_t published = header_->arena_published.load(std::memory_order_acquire);
  uint64_t off = 0;
  while (off < published) {
    const auto e = record_at(off + 1, nullptr);
    if (!e) return;  // a damaged arena: stop rather than guess
    fn(*e);
    off += series_record_bytes(e->key.size());
  }
}

// The measurement slot whose chain holds `measurement`, or nullptr.
const SeriesSlot* SeriesDictionaryView::measurement_head(std::string_view measurement,
                                                         uint64_t hash) const {
  const uint64_t mask = header_->measurement_slots - 1;
  uint64_t i = hash & mask;
  for (uint64_t n = 0; n <= mask; ++n, i = (i + 1) & mask) {
    // Acquire: pairs with the release store of head ref in insert().
    const uint64_t ref = measurements_[i].ref.load(std::memory_order_acquire);
    if (ref == 0) return nullptr;
    if (measurements_[i].key.load(std::memory_order_relaxed) != hash) continue;
    const auto head = record_at(ref, nullptr);
    if (head && head->measurement == measurement) return &measurements_[i];
  }
  return nullptr;
}

void SeriesDictionaryView::for_each_in_measurement(std::string_view measurement,
                                                   const SeriesFn& fn) const {
  if (header_ == nullptr) return;
  // Relaxed: a series counted here after this load was inserted concurrently with the call.
  if (header_->unchained.load(std::memory_order_relaxed) != 0) {
    for_each([&](const SeriesEntry& e) {
      if (e.measurement == measurement) fn(e);
    });
    return;
  }
  const SeriesSlot* slot = measurement_head(measurement, measurement_hash(measurement));
  if (slot == nullptr) return;
  uint64_t ref = slot->ref.load(std::memory_order_acquire);  // as in measurement_head()
  while (ref != 0) {
    uint64_t prev = 0;
    const auto e = record_at(ref, &prev);
    if (!e) return;
    fn(*e);
    if (prev >= ref) return;  // links only point back: a damaged chain must not loop
    ref = prev;
  }
}

SeriesDictionaryStats SeriesDictionaryView::stats() const {
  SeriesDictionaryStats s;
  if (header_ == nullptr) return s;
  // Relaxed: statistics.
  s.series = header_->series_count.load(std::memory_order_relaxed);
  s.max_series = header_->max_series;
  s.arena_used_bytes = header_->arena_published.load(std::memory_order_relaxed);
  s.arena_bytes = header_->arena_bytes;
  s.rejected_full = header_->rejected_full.load(std::memory_order_relaxed);
  s.rejected_invalid = header_->rejected_invalid.load(std::memory_order_relaxed);
  s.unchained = header_->unchained.load(std::memory_order_relaxed);
  return s;
}

uint64_t SeriesDictionaryView::instance_id() const {
  return header_ == nullptr ? 0 : header_->prefix.instance_id;
}

bool SeriesDictionaryView::retired() const {
  // Acquire: pairs with the successor's release store in ShmObject::replace.
  return header_ != nullptr && header_->prefix.retired.load(std::memory_order_acquire) != 0;
}

// ---------------------------------------------------------------------------------------------
// SeriesDictionary

SeriesDictionary::SeriesDictionary(ShmObject shm, const SeriesDictionaryView& view)
    : shm_(std::move(shm)), view_(view), insert_mutex_(std::make_unique<std::mutex>()) {}
SeriesDictionary::SeriesDictionary(SeriesDictionary&&) noexcept = default;
SeriesDictionary& SeriesDictionary::operator=(SeriesDictionary&&) noexcept = default;
SeriesDictionary::~SeriesDictionary() = default;

Result<SeriesDictionary> SeriesDictionary::create(const std::string& shm_name,
                                                  const SeriesDictionaryOptions& options,
                                                  const ShmOptions& shm_options) {
  const std::string name = object_name(shm_name);
  if (options.max_series == 0 || options.max_series >= kMaxSeriesIndexSlots / 2 ||
      options.max_measurements == 0 || options.max_measurements >= kMaxSeriesIndexSlots / 2 ||
      options.arena_bytes < kSeriesRecordHeaderBytes || options.arena_bytes > (uint64_t{1} << 40)) {
    return Status::Invalid(fmt::format(
        "{}: max_series {} and max_measurements {} must be in [1, 2^31), arena_bytes {} in "
        "[{}, 2^40]",
        ShmObject::describe(kKind, name), options.max_series, options.max_measurements,
        options.arena_bytes, kSeriesRecordHeaderBytes));
  }
  const uint64_t index_slots = slots_for(options.max_series);
  const uint64_t measurement_slots = slots_for(options.max_measurements);
  const uint64_t measurement_offset = kSeriesHeaderBytes + index_slots * kSeriesSlotBytes;
  const uint64_t arena_offset = measurement_offset + measurement_slots * kSeriesSlotBytes;
  const uint64_t arena_bytes = (options.arena_bytes + 7) / 8 * 8;

  ShmOptions reserved = shm_options;
  reserved.reserve = true;  // a full /dev/shm fails here, not with SIGBUS on insert
  auto shm = ShmObject::replace(kKind, name, arena_offset + arena_bytes, reserved, kSeriesMagic,
                                nullptr);  // readers do not sleep on the dictionary
  if (!shm.ok()) return shm.status();
  // Zero-filled: every slot is empty. Construct the header in place and fill it.
  auto* h = std::construct_at(reinterpret_cast<SeriesHeader*>(shm->data()));
  shm->init_prefix(kSeriesLayoutVersion, kSeriesHeaderBytes);
  h->index_slots = index_slots;
  h->max_series = options.max_series;
  h->measurement_slots = measurement_slots;
  h->max_measurements = options.max_measurements;
  h->index_offset = kSeriesHeaderBytes;
  h->measurement_offset = measurement_offset;
  h->arena_offset = arena_offset;
  h->arena_bytes = arena_bytes;
  // Release: pairs with the acquire load of the magic in ShmObject::open / validate_prefix.
  h->prefix.magic.store(kSeriesMagic, std::memory_order_release);
  const SeriesDictionaryView view(shm->data());
  return SeriesDictionary(std::move(shm).value(), view);
}

Status SeriesDictionary::remove(const std::string& shm_name) {
  return ShmObject::remove(kKind, object_name(shm_name));
}

InsertStatus SeriesDictionary::insert(uint64_t series_id, std::span<const std::byte> key) {
  SeriesHeader* h = view_.header_;
  SeriesEntry parsed;
  if (key.size() > kMaxKeyBytes || !parse_key(key, &parsed)) {
    h->rejected_invalid.fetch_add(1, std::memory_order_relaxed);  // a statistic
    return InsertStatus::kInvalid;
  }
  if (view_.find(series_id)) return InsertStatus::kExists;  // lock-free: the common case
  std::lock_guard lock(*insert_mutex_);
  if (view_.find(series_id)) return InsertStatus::kExists;
  // Relaxed: this thread (under the mutex) is the only writer of series_count.
  const uint64_t count = h->series_count.load(std::memory_order_relaxed);
  const uint64_t record_bytes = series_record_bytes(key.size());
  if (count >= h->max_series || record_bytes > h->arena_bytes - arena_used_) {
    h->rejected_full.fetch_add(1, std::memory_order_relaxed);  // a statistic
    return InsertStatus::kFull;
  }

  // The measurement's slot: an existing chain, or a new one while room is left.
  const uint64_t hash = measurement_hash(parsed.measurement);
  const uint64_t mmask = h->measurement_slots - 1;
  SeriesSlot* chain = nullptr;
  bool new_chain = false;
  for (uint64_t i = hash & mmask;; i = (i + 1) & mmask) {
    SeriesSlot& s = view_.measurements_[i];
    // Relaxed: the writer reads its own stores.
    const uint64_t ref = s.ref.load(std::memory_order_relaxed);
    if (ref == 0) {
      if (measurements_ < h->max_measurements) {
        chain = &s;
        new_chain = true;
      }
      break;
    }
    if (s.key.load(std::memory_order_relaxed) == hash) {
      const auto head = view_.record_at(ref, nullptr);
      if (head && head->measurement == parsed.measurement) {
        chain = &s;
        break;
      }
    }
  }

  const uint64_t off = arena_used_;
  const SeriesRecordHeader r{series_id, static_cast<uint32_t>(key.size()), 0,
                             chain ? chain->ref.load(std::memory_order_relaxed) : 0};
  std::memcpy(view_.arena_ + off, &r, sizeof r);
  std::memcpy(view_.arena_ + off + kSeriesRecordHeaderBytes, key.data(), key.size());

  const uint64_t imask = h->index_slots - 1;
  uint64_t i = series_id & imask;
  while (view_.index_[i].ref.load(std::memory_order_relaxed) != 0) i = (i + 1) & imask;
  view_.index_[i].key.store(series_id, std::memory_order_relaxed);  // published by ref below
  // Release: pairs with the acquire load of ref in find(); publishes the record and the key.
  view_.index_[i].ref.store(off + 1, std::memory_order_release);
  if (chain != nullptr) {
    if (new_chain) {
      chain->key.store(hash, std::memory_order_relaxed);  // published by ref below
      ++measurements_;
    }
    // Release: pairs with the acquire loads of ref in measurement_head / for_each_in_measurement.
    chain->ref.store(off + 1, std::memory_order_release);
  } else {
    h->unchained.fetch_add(1, std::memory_order_relaxed);  // a statistic and a hint to readers
  }
  arena_used_ = off + record_bytes;
  // Release: pair with the acquire loads in for_each() and size().
  h->arena_published.store(arena_used_, std::memory_order_release);
  h->series_count.store(count + 1, std::memory_order_release);
  return InsertStatus::kInserted;
}

// ---------------------------------------------------------------------------------------------
// SeriesDictionaryReader

SeriesDictionaryReader::SeriesDictionaryReader(ShmObject shm, const SeriesDictionaryView& view)
    : shm_(std::move(shm)), view_(view) {}
SeriesDictionaryReader::SeriesDictionaryReader(SeriesDictionaryReader&&) noexcept = default;
SeriesDictionaryReader& SeriesDictionaryReader::operator=(SeriesDictionaryReader&&) noexcept =
    default;
SeriesDictionaryReader::~SeriesDictionaryReader() = default;

Result<SeriesDictionaryReader> SeriesDictionaryReader::open(const std::string& shm_name) {
  auto shm =
      ShmObject::open(kKind, object_name(shm_name), ShmAccess::kReadOnly, kSeriesHeaderBytes);
  if (!shm.ok()) return shm.status();
  if (Status st = validate(*shm); !st.ok()) return st;
  const SeriesDictionaryView view(shm->data());
  return SeriesDictionaryReader(std::move(shm).value(), view);
}

}  // namespace runnel::ipc
