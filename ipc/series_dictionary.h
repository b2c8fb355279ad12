// The series dictionary: series_id -> the series key block (measurement + sorted tags), so that
// clients can name and filter the rows of the live tables. Append-only shared memory; the daemon
// inserts a series when its speed path first sees it, clients read lock-free and zero-copy.
// Layout: series_dictionary_layout.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "ipc/series_dictionary_layout.h"
#include "ipc/shm_object.h"
#include "model/record.h"
#include "model/status.h"

namespace runnel::ipc {

struct SeriesDictionaryOptions {
  uint64_t max_series = 1 << 20;
  uint64_t arena_bytes = 256ull << 20;  // key bytes plus 24 per series; rounded up to 8
  uint64_t max_measurements = 1 << 14;
};

enum class InsertStatus : uint8_t {
  kInserted,
  kExists,   // the id is already present (the first key inserted for an id wins)
  kFull,     // max_series reached or the arena is full: counted in rejected_full
  kInvalid,  // not one series key block (+ field): a length beyond the key, an empty name, ...
};

// One series as stored, checked to be one well-formed series key block, optionally followed by
// a field name (u16 length + bytes: a row key of model/view_router.h). Its views point into
// the mapping: published records are never rewritten, so they stay valid while it lives.
struct SeriesEntry {
  uint64_t series_id = 0;
  std::span<const std::byte> key;  // the exact series key block of the record (model/record.h)
  std::string_view measurement;
  TagRange tags{nullptr, 0};  // in stored (sorted) order
  std::string_view field;     // a row key's field; empty for a plain series key block
};

struct SeriesDictionaryStats {
  uint64_t series = 0;
  uint64_t max_series = 0;
  uint64_t arena_used_bytes = 0;
  uint64_t arena_bytes = 0;
  uint64_t rejected_full = 0;
  uint64_t rejected_invalid = 0;
  uint64_t unchained = 0;  // series beyond max_measurements: found by for_each only
};

using SeriesFn = std::function<void(const SeriesEntry&)>;

// Read access to one mapping (read-only or read-write). Trivially copyable; valid while the
// SeriesDictionary or SeriesDictionaryReader it came from lives. Thread-safe: any number of
// threads in any process, concurrently with insertion. No lock; find() allocates nothing.
// Every offset read from the mapping is bounds-checked before use.
class SeriesDictionaryView {
 public:
  SeriesDictionaryView() = default;  // empty

  std::optional<SeriesEntry> find(uint64_t series_id) const;
  // Published series (acquire: pairs with the release store in insert()).
  uint64_t size() const;
  // Every published series in insertion order.
  void for_each(const SeriesFn& fn) const;
  // The series of one measurement, newest first, following its chain; falls back to filtering
  // for_each() when some series could not be chained (max_measurements reached).
  void for_each_in_measurement(std::string_view measurement, const SeriesFn& fn) const;
  SeriesDictionaryStats stats() const;
  uint64_t instance_id() const;
  // True once a successor daemon replaced this object: reopen by name.
  bool retired() const;

 private:
  friend class SeriesDictionary;
  friend class SeriesDictionaryReader;
  explicit SeriesDictionaryView(std::byte* base);  // a validated mapping
  std::optional<SeriesEntry> record_at(uint64_t ref, uint64_t* prev_ref) const;
  const SeriesSlot* measurement_head(std::string_view measurement, uint64_t hash) const;

  std::byte* base_ = nullptr;
  SeriesHeader* header_ = nullptr;
  SeriesSlot* index_ = nullptr;
  SeriesSlot* measurements_ = nullptr;
  std::byte* arena_ = nullptr;
};

// The daemon's read-write mapping. insert() is thread-safe: a lock-free lookup first, then an
// in-process mutex serializes the (rare) insertion of a new series, so the object has one
// writer at a time and readers never wait for it. A refused insert only loses the series' name
// lookup: its rows are still aggregated in the live tables under the series_id.
class SeriesDictionary {
 public:
  // Start-up only. Replaces any previous instance (retiring it) with an empty dictionary.
  static Result<SeriesDictionary> create(const std::string& shm_name,
                                         const SeriesDictionaryOptions& options = {},
                                         const ShmOptions& shm_options = {});
  static Status remove(const std::string& shm_name);

  SeriesDictionary(SeriesDictionary&&) noexcept;
  SeriesDictionary& operator=(SeriesDictionary&&) noexcept;
  SeriesDictionary(const SeriesDictionary&) = delete;
  SeriesDictionary& operator=(const SeriesDictionary&) = delete;
  ~SeriesDictionary();

  // `key` is a record's series_key() and `series_id` its XXH3 (RecordView::series_id()).
  InsertStatus insert(uint64_t series_id, std::span<const std::byte> key);

  const SeriesDictionaryView& series() const { return view_; }
  const std::string& name() const { return shm_.name(); }

 private:
  SeriesDictionary(ShmObject shm, const SeriesDictionaryView& view);
  ShmObject shm_;
  SeriesDictionaryView view_;
  uint64_t arena_used_ = 0;    // == arena_published between inserts
  uint64_t measurements_ = 0;  // measurement slots in use
  std::unique_ptr<std::mutex> insert_mutex_;
};

// A client's read-only mapping (PROT_READ).
class SeriesDictionaryReader {
 public:
  static Result<SeriesDictionaryReader> open(const std::string& shm_name);

  SeriesDictionaryReader(SeriesDictionaryReader&&) noexcept;
  SeriesDictionaryReader& operator=(SeriesDictionaryReader&&) noexcept;
  SeriesDictionaryReader(const SeriesDictionaryReader&) = delete;
  SeriesDictionaryReader& operator=(const SeriesDictionaryReader&) = delete;
  ~SeriesDictionaryReader();

  const SeriesDictionaryView& series() const { return view_; }
  std::span<const std::byte> mapping() const { return {shm_.data(), shm_.size()}; }

 private:
  SeriesDictionaryReader(ShmObject shm, const SeriesDictionaryView& view);
  ShmObject shm_;
  SeriesDictionaryView view_;
};

}  // namespace runnel::ipc
