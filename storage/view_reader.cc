// ViewReader and ViewSnapshot, the read-only side of the batch views (layout in view_store.h),
// and Shared, the environment they and ViewStore hold (view_store_internal.h).
#include "storage/view_store_internal.h"

#include <algorithm>
#include <cerrno>

#include "model/clock.h"

namespace runnel::storage {
namespace view_store_internal {

Result<const AggregateLayout*> Shared::layout_for(const ViewInfo& view) {
  std::lock_guard lock(mu);
  auto it = layouts.find(view.definition);
  if (it == layouts.end()) {
    auto def = parse_view(view.definition);
    if (!def.ok()) {
      return Status::Unsupported(
          env.path().string() + ": view '" + view.name +
          "': this build cannot read its definition: " + def.status().message());
    }
    auto layout = AggregateLayout::for_view(*def);
    if (!layout.ok()) return layout.status();
    if (layout->state_bytes() != view.state_bytes ||
        layout->state_format_id() != view.state_format_id) {
      return Status::Unsupported(env.path().string() + ": view '" + view.name +
                                 "': its states are laid out differently from this build's");
    }
    it = layouts
             .emplace(view.definition, std::make_unique<const AggregateLayout>(std::move(*layout)))
             .first;
  }
  return it->second.get();
}

Result<lmdb::Txn> Shared::begin_read_locked() {
  for (int attempt = 0;; ++attempt) {
    MDB_txn* raw = nullptr;
    const int rc = mdb_txn_begin(env.get(), nullptr, MDB_RDONLY, &raw);
    if (rc == 0) {
      mdb_txn_abort(raw);
      break;
    }
    if (rc != MDB_MAP_RESIZED || attempt > 0) return env.error(rc, "mdb_txn_begin (read)");
    // The writer's file outgrew this process's map. Adopting the new size re-maps, which
    // LMDB allows only with no transaction open in the process.
    if (live_snapshots != 0) {
      return Status::Busy(env.path().string() + ": the views file outgrew this reader's map (" +
                          std::to_string(env.map_bytes()) +
                          " bytes) while snapshots are open; retry after closing them, or "
                          "raise ViewReaderOptions::map_bytes");
    }
    Status s = env.set_map_bytes(0);
    if (!s.ok()) return s;
  }
  return lmdb::Txn::begin(env, MDB_RDONLY);
}

Status Shared::open_handles_locked(const std::vector<std::string>& names) {
  auto txn = lmdb::Txn::begin(env, MDB_RDONLY);
  if (!txn.ok()) return txn.status();
  for (const std::string& name : names) {
    MDB_dbi dbi = 0;
    const int rc = mdb_dbi_open(txn->get(), name.c_str(), 0, &dbi);
    if (rc == MDB_NOTFOUND) continue;  // dropped since: the next attempt reads newer metadata
    if (rc != 0) return env.error(rc, "mdb_dbi_open(" + name + ")");
    dbis.emplace(name, Handle{dbi, 0});
  }
  return txn->commit();  // a read-only commit keeps the handles opened in it
}

Result<ViewSnapshot> Shared::snapshot(const std::shared_ptr<Shared>& self) {
  std::lock_guard lock(mu);
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto txn = begin_read_locked();
    if (!txn.ok()) return txn.status();
    ViewSnapshot snap;
    Status s = check_store_record(*txn, meta, env.path(), nullptr);
    if (!s.ok()) return s;
    auto wm = txn->get(meta, lmdb::val(kWatermarkKey));
    if (!wm.ok()) return wm.status();
    if (!decode_watermark(*wm, &snap.watermark_)) {
      return Status::Corruption(env.path().string() + ": meta 'watermark' record is malformed");
    }
    s = for_each_prefixed(*txn, meta, kViewPrefix,
                          [&](std::string_view name, std::span<const std::byte> b) {
                            ViewInfo v;
                            v.name = name;
                            if (!decode_view(b, &v)) {
                              return Status::Corruption(env.path().string() + ": meta record for view '" +
                                                        v.name + "' is malformed");
                            }
                            v.covered_offset = v.current_version ? snap.watermark_.log_offset : 0;
                            snap.views_.push_back(std::move(v));
                            return Status::Ok();
                          });
    if (!s.ok()) return s;
    std::vector<std::string> missing;
    for (const ViewInfo& v : snap.views_) {
      snap.dbi_names_.push_back(v.current_version ? data_db_name(v.name, v.current_version) : "");
      if (!snap.dbi_names_.back().empty() && !dbis.contains(snap.dbi_names_.back())) {
        missing.push_back(snap.dbi_names_.back());
      }
    }
    if (missing.empty()) {
      for (const std::string& name : snap.dbi_names_) {
        if (name.empty()) {
          snap.dbis_.push_back(0);
          continue;
        }
        Handle& h = dbis[name];
        ++h.refs;
        snap.dbis_.push_back(h.dbi);
      }
      ++live_snapshots;
      latest_names = snap.dbi_names_;
      snap.txn_ = std::move(*txn);
      snap.shared_ = self;
      return snap;
    }
    txn->abort();
    if (writer) {
      return Status::Corruption(env.path().string() + ": database '" + missing[0] +
                                "' is named by a view but was not opened by the writer");
    }
    s = open_handles_locked(missing);
    if (!s.ok()) return s;
  }
  return Status::Busy(env.path().string() + ": view versions kept changing while taking a snapshot");
}

void Shared::release(ViewSnapshot* snap) {
  std::lock_guard lock(mu);
  snap->txn_.abort();
  for (const std::string& name : snap->dbi_names_) {
    if (name.empty()) continue;
    auto it = dbis.find(name);
    if (it != dbis.end() && it->second.refs > 0) --it->second.refs;
  }
  --live_snapshots;
  if (writer) return;  // the writer's handles end in drop_retired()
  // A reader closes handles that no snapshot uses and the newest one does not name (versions
  // switched away), so a long-lived client does not run out of handle slots.
  for (auto it = dbis.begin(); it != dbis.end();) {
    const bool named = std::find(latest_names.begin(), latest_names.end(), it->first) !=
                       latest_names.end();
    if (it->second.refs == 0 && !named) {
      mdb_dbi_close(env.get(), it->second.dbi);
      it = dbis.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace view_store_internal

using namespace view_store_internal;

using view_store_internal::Shared;

// ---------------------------------------------------------------------------------------------
// ViewSnapshot

ViewSnapshot::ViewSnapshot(ViewSnapshot&& other) noexcept
    : shared_(std::move(other.shared_)),
      txn_(std::move(other.txn_)),
      watermark_(other.watermark_),
      views_(std::move(other.views_)),
      dbi_names_(std::move(other.dbi_names_)),
      dbis_(std::move(other.dbis_)),
      expanded_(std::move(other.expanded_)) {}

ViewSnapshot& ViewSnapshot::operator=(ViewSnapshot&& other) noexcept {
  if (this != &other) {
    release();
    shared_ = std::move(other.shared_);
    txn_ = std::move(other.txn_);
    watermark_ = other.watermark_;
    views_ = std::move(other.views_);
    dbi_names_ = std::move(other.dbi_names_);
    dbis_ = std::move(other.dbis_);
    expanded_ = std::move(other.expanded_);
  }
  return *this;
}

ViewSnapshot::~ViewSnapshot() { release(); }

void ViewSnapshot::release() {
  if (shared_) {
    shared_->release(this);
    shared_.reset();
  }
}

const ViewInfo* ViewSnapshot::find_view(std::string_view name) const {
  for (const ViewInfo& v : views_) {
    if (v.name == name) return &v;
  }
  return nullptr;
}

Result<size_t> ViewSnapshot::index_of(const ViewInfo& view) const {
  if (views_.empty() || &view < views_.data() || &view >= views_.data() + views_.size()) {
    return Status::Invalid("view '" + view.name + "' is not one of this snapshot's views");
  }
  return static_cast<size_t>(&view - views_.data());
}

Result<std::optional<std::span<const std::byte>>> ViewSnapshot::get(const ViewInfo& view,
                                                                    const BucketKey& key) const {
  using Found = std::optional<std::span<const std::byte>>;
  auto i = index_of(view);
  if (!i.ok()) return i.status();
  if (view.current_version == 0 || key.width_index >= view.widths_ns.size()) return Found();
  const int64_t width = view.widths_ns[key.width_index];
  if (key.bucket_start_ns % width != 0) return Found();  // not a bucket start of this width
  const uint32_t per_block = view.buckets_per_block;
  uint32_t slot = 0;
  std::byte k[kBlockKeyBytes];
  encode_block_key(block_of(key, view.widths_ns, per_block, &slot), k);
  auto v = txn_.get(dbis_[*i], lmdb::val(std::span<const std::byte>(k)));
  if (v.status().code() == Status::Code::kNotFound) return Found();
  if (!v.ok()) return v.status();
  Block b;
  if (!b.parse(lmdb::val(*v), per_block, view.state_bytes))
    return block_error(view, key.row_id, *v);
  if ((b.present >> slot & 1) == 0) return Found();
  const std::byte* state = b.states + b.offset_of(slot, view.state_bytes);
  if (!b.is_compact(slot)) return Found(std::span<const std::byte>(state, view.state_bytes));
  auto layout = shared_->layout_for(view);
  if (!layout.ok()) return layout.status();
  std::vector<std::byte>& full = expanded_.emplace_back(view.state_bytes);
  expand_compact(**layout, state, full);
  return Found(std::span<const std::byte>(full));
}

Status ViewSnapshot::block_error(const ViewInfo& view, uint64_t row_id,
                                 std::span<const std::byte> value) const {
  return Status::Corruption(shared_->env.path().string() + ": view '" + view.name + "' row " +
                            std::to_string(row_id) + ": a block of " +
                            std::to_string(value.size()) + " bytes is not a bucket set of " +
                            std::to_string(view.buckets_per_block) + " slots of " +
                            std::to_string(view.state_bytes) + "-byte states");
}

Status ViewSnapshot::scan(const ViewInfo& view, uint64_t row_id, uint8_t width_index,
                          int64_t from_ns, int64_t to_ns, const BucketFn& fn) const {
  auto i = index_of(view);
  if (!i.ok()) return i.status();
  if (view.current_version == 0 || from_ns >= to_ns || width_index >= view.widths_ns.size()) {
    return Status::Ok();
  }
  const int64_t width = view.widths_ns[width_index];
  const uint32_t per_block = view.buckets_per_block;
  const size_t n = view.state_bytes;
  const Wide first = first_bucket_at_or_after(from_ns, width);  // bucket numbers [first, end)
  const Wide end = first_bucket_at_or_after(to_ns, width);
  const AggregateLayout* layout = nullptr;  // to expand compact states, once one shows up
  std::vector<std::byte> expanded;
  auto cursor = lmdb::Cursor::open(txn_, dbis_[*i]);
  if (!cursor.ok()) return cursor.status();
  Status error = Status::Ok();
  // The buckets in [first, end) of one stored block; false: the scan is over.
  auto visit = [&](int64_t block, const MDB_val& v) {
    const Wide base = Wide{block} * per_block;
    Block b;
    if (!b.parse(v, per_block, n)) {
      error = block_error(view, row_id, lmdb::bytes(v));
      return false;
    }
    const std::byte* state = b.states;
    for (uint64_t present = b.present; present != 0; present &= present - 1) {
      const auto slot = static_cast<uint32_t>(std::countr_zero(present));
      const std::byte* at = state;
      state += b.is_compact(slot) ? kCompactStateBytes : n;
      const Wide q = base + slot;
      if (q < first) continue;
      if (q >= end) return false;
      std::span<const std::byte> full(at, n);
      if (b.is_compact(slot)) {
        if (layout == nullptr) {
          auto known = shared_->layout_for(view);
          if (!known.ok()) {
            error = known.status();
            return false;
          }
          layout = *known;
          expanded.resize(n);
        }
        expand_compact(*layout, at, expanded);
        full = expanded;
      }
      if (!fn(static_cast<int64_t>(q * width), full)) return false;
    }
    return true;
  };
  std::byte start[kBlockKeyBytes];
  MDB_val k{}, v{};
  if (!time_major(width_index)) {  // one cursor range over the row's blocks of this width
    encode_block_key({row_id, width_index, static_cast<int64_t>(floor_div(first, per_block))},
                     start);
    k = lmdb::val(std::span<const std::byte>(start));
    for (auto found = cursor->seek(&k, &v, MDB_SET_RANGE);;
         found = cursor->seek(&k, &v, MDB_NEXT)) {
      if (!found.ok()) return found.status();
      if (!*found || k.mv_size != kBlockKeyBytes) return Status::Ok();
      const BlockKey key = decode_block_key(lmdb::bytes(k));
      if (key.row_id != row_id || key.width_index != width_index ||
          Wide{key.block} * per_block >= end)
        return Status::Ok();
      if (!visit(key.block, v)) return error;
    }
  }
  // Time-major: block b of the row, or the next block number any row has.
  for (Wide b = floor_div(first, per_block); b * per_block < end;) {
    encode_block_key({row_id, width_index, static_cast<int64_t>(b)}, start);
    k = lmdb::val(std::span<const std::byte>(start));
    auto found = cursor->seek(&k, &v, MDB_SET_RANGE);
    if (!found.ok()) return found.status();
    if (!*found || k.mv_size != kBlockKeyBytes) return Status::Ok();
    const BlockKey key = decode_block_key(lmdb::bytes(k));
    if (key.width_index != width_index) return Status::Ok();
    if (key.block != b) {
      b = key.block;  // no row has a block in between
      continue;
    }
    if (key.row_id == row_id && !visit(key.block, v)) return error;
    ++b;
  }
  return Status::Ok();
}

Status ViewSnapshot::for_each_row(const ViewInfo& view, const std::function<bool(uint64_t)>& fn) const {
  auto i = index_of(view);
  if (!i.ok()) return i.status();
  if (view.current_version == 0) return Status::Ok();
  auto cursor = lmdb::Cursor::open(txn_, dbis_[*i]);
  if (!cursor.ok()) return cursor.status();
  std::vector<uint64_t> rows;
  // Row-major keys first: one seek per row. Then every time-major key.
  std::byte start[kBlockKeyBytes] = {};
  MDB_val k = lmdb::val(std::span<const std::byte>(start)), v{};
  for (auto found = cursor->seek(&k, &v, MDB_SET_RANGE);;) {
    if (!found.ok()) return found.status();
    if (!*found || k.mv_size != kBlockKeyBytes) break;
    const BlockKey key = decode_block_key(lmdb::bytes(k));
    if (time_major(key.width_index)) {
      rows.push_back(key.row_id);
      found = cursor->seek(&k, &v, MDB_NEXT);
      continue;
    }
    rows.push_back(key.row_id);
    if (key.row_id == std::numeric_limits<uint64_t>::max()) {
      encode_block_key({0, 0, std::numeric_limits<int64_t>::min()}, start);
    } else {
      encode_block_key({key.row_id + 1, 1, std::numeric_limits<int64_t>::min()}, start);
    }
    k = lmdb::val(std::span<const std::byte>(start));
    found = cursor->seek(&k, &v, MDB_SET_RANGE);
  }
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  for (uint64_t row : rows) {
    if (!fn(row)) break;
  }
  return Status::Ok();
}

Status ViewSnapshot::for_each_series(
    const std::function<bool(uint64_t, std::span<const std::byte>)>& fn) const {
  auto cursor = lmdb::Cursor::open(txn_, shared_->series);
  if (!cursor.ok()) return cursor.status();
  MDB_val k{}, v{};
  for (auto found = cursor->seek(&k, &v, MDB_FIRST);; found = cursor->seek(&k, &v, MDB_NEXT)) {
    if (!found.ok()) return found.status();
    if (!*found) return Status::Ok();
    if (k.mv_size != kSeriesKeyBytes) continue;
    if (!fn(get_be64(static_cast<const std::byte*>(k.mv_data)), lmdb::bytes(v))) return Status::Ok();
  }
}

Result<std::optional<std::span<const std::byte>>> ViewSnapshot::row_key(uint64_t row_id) const {
  std::byte k[kSeriesKeyBytes];
  put_be64(k, row_id);
  auto v = txn_.get(shared_->series, lmdb::val(std::span<const std::byte>(k)));
  if (v.status().code() == Status::Code::kNotFound) return std::optional<std::span<const std::byte>>();
  if (!v.ok()) return v.status();
  return std::optional<std::span<const std::byte>>(*v);
}

Result<uint64_t> ViewSnapshot::bucket_count(const ViewInfo& view) const {
  auto i = index_of(view);
  if (!i.ok()) return i.status();
  if (view.current_version == 0) return uint64_t{0};
  const std::string key = version_key(view.name, view.current_version);
  auto rec = txn_.get(shared_->meta, lmdb::val(key));
  if (!rec.ok()) return rec.status();
  VersionMeta v;
  if (!decode_version(*rec, &v)) {
    return Status::Corruption(shared_->env.path().string() + ": meta record '" + key +
                              "' is malformed");
  }
  return v.bucket_count;
}

// ---------------------------------------------------------------------------------------------
// ViewReader

ViewReader::ViewReader(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}
ViewReader::~ViewReader() = default;

Result<std::unique_ptr<ViewReader>> ViewReader::open(const std::filesystem::path& dir,
                                                     const ViewReaderOptions& options) {
  std::error_code ec;
  const bool exists = std::filesystem::exists(dir / "data.mdb", ec);
  if (ec) return Status::IoError((dir / "data.mdb").string() + ": " + ec.message());
  if (!exists) return Status::NotFound(dir.string() + ": no batch views yet (data.mdb missing)");
  lmdb::EnvOptions eo;
  eo.dir = dir;
  eo.flags = MDB_RDONLY;
  eo.map_bytes = options.map_bytes;
  eo.max_dbs = options.max_dbs;
  auto env = lmdb::Env::open(eo);
  if (!env.ok()) {
    std::string msg = env.status().message();
    if (msg.ends_with(std::strerror(EACCES))) {
      msg += " (a reader needs read access to data.mdb and read-write access to lock.mdb, which "
             "holds LMDB's reader table: run as a member of the daemon's group)";
      return Status::IoError(std::move(msg));
    }
    return env.status();
  }
  auto shared = std::make_shared<Shared>();
  shared->env = std::move(*env);
  auto txn = lmdb::Txn::begin(shared->env, MDB_RDONLY);
  if (!txn.ok()) return txn.status();
  for (auto [name, dbi] : {std::pair{kMetaDb, &shared->meta}, std::pair{kSeriesDb, &shared->series}}) {
    const int rc = mdb_dbi_open(txn->get(), name, 0, dbi);
    if (rc == MDB_NOTFOUND) return Status::NotFound(dir.string() + ": no batch views yet");
    if (rc != 0) return shared->env.error(rc, std::string("mdb_dbi_open(") + name + ")");
  }
  Status s = check_store_record(*txn, shared->meta, dir, nullptr);
  if (!s.ok()) return s;
  s = txn->commit();
  if (!s.ok()) return s;
  return std::unique_ptr<ViewReader>(new ViewReader(std::move(shared)));
}

Result<ViewSnapshot> ViewReader::snapshot() const { return shared_->snapshot(shared_); }

}  // namespace runnel::storage
