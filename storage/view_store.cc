// ViewStore: the daemon's single writer of the batch views in LMDB (layout in view_store.h):
// compaction steps, view versions and bucket retention. Readers: view_reader.cc.
#include "storage/view_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "model/clock.h"
#include "storage/view_store_internal.h"

namespace runnel::storage {

using view_store_internal::Shared;
using namespace view_store_internal;

// ---------------------------------------------------------------------------------------------
// ViewStore

ViewStore::ViewStore(const ViewStoreOptions& options) : options_(options) {}
ViewStore::~ViewStore() = default;

Result<std::unique_ptr<ViewStore>> ViewStore::open(const ViewStoreOptions& options) {
  std::error_code ec;
  std::filesystem::create_directory(options.dir, ec);
  if (ec) {
    return Status::IoError(options.dir.string() + ": cannot create the views directory: " + ec.message());
  }
  ::chmod(options.dir.c_str(), 0750);  // best effort: readers need x on it, group `runnel`
  std::unique_ptr<ViewStore> store(new ViewStore(options));
  lmdb::EnvOptions eo;
  eo.dir = options.dir;
  eo.flags = (options.sync ? 0 : MDB_NOSYNC) | (options.write_map ? MDB_WRITEMAP : 0);
  eo.map_bytes = options.initial_map_bytes;
  eo.max_dbs = options.max_dbs;
  eo.max_readers = options.max_readers;
  eo.mode = options.data_mode;
  auto env = lmdb::Env::open(eo);
  if (!env.ok()) return env.status();
  // A larger map recorded by an earlier run is kept (LMDB adopts the file's size).
  if (env->map_bytes() < options.initial_map_bytes) {
    Status s = env->set_map_bytes(options.initial_map_bytes);
    if (!s.ok()) return s;
  }
  const auto lock_path = options.dir / "lock.mdb";
  if (::chmod(lock_path.c_str(), options.lock_mode) != 0) {
    return Status::Errno(lock_path.string() + ": chmod", errno);
  }
  store->shared_ = std::make_shared<Shared>();
  store->shared_->env = std::move(*env);
  store->shared_->writer = true;

  // Create the core databases and records on first use; open every version's database.
  Status s = store->write(
      [&](lmdb::Txn& txn) {
        Shared& sh = *store->shared_;
        for (auto [name, dbi] : {std::pair{kMetaDb, &sh.meta}, std::pair{kSeriesDb, &sh.series}}) {
          const int rc = mdb_dbi_open(txn.get(), name, MDB_CREATE, dbi);
          if (rc != 0) return txn.error(rc, std::string("mdb_dbi_open(") + name + ")");
        }
        auto rec = txn.get(sh.meta, lmdb::val(kStoreKey));
        if (rec.status().code() == Status::Code::kNotFound) {
          Status ps = txn.put(sh.meta, lmdb::val(kStoreKey), lmdb::val(encode_store(1)));
          if (ps.ok()) ps = txn.put(sh.meta, lmdb::val(kWatermarkKey), lmdb::val(encode_watermark({})));
          if (!ps.ok()) return ps;
        } else if (!rec.ok()) {
          return rec.status();
        }
        Status cs = check_store_record(txn, sh.meta, options.dir, nullptr);
        if (!cs.ok()) return cs;
        return for_each_prefixed(txn, sh.meta, kVersionPrefix,
                                 [&](std::string_view suffix, std::span<const std::byte> b) {
                                   VersionMeta v;
                                   const size_t slash = suffix.rfind('/');
                                   if (slash == std::string_view::npos || !decode_version(b, &v)) {
                                     return Status::Corruption(options.dir.string() + ": malformed meta record 'version/" +
                                                               std::string(suffix) + "'");
                                   }
                                   const std::string name = data_db_name(
                                       suffix.substr(0, slash), std::stoull(std::string(suffix.substr(slash + 1))));
                                   MDB_dbi dbi = 0;
                                   const int rc = mdb_dbi_open(txn.get(), name.c_str(), 0, &dbi);
                                   if (rc == MDB_NOTFOUND && v.state == VersionState::kRetired) return Status::Ok();
                                   if (rc != 0) return txn.error(rc, "mdb_dbi_open(" + name + ")");
                                   sh.dbis.emplace(name, Shared::Handle{dbi, 0});
                                   return Status::Ok();
                                 });
      },
      /*opens_dbis=*/true);
  if (!s.ok()) {
    store->shared_->dbis.clear();
    return s;
  }
  s = store->load_state();
  if (!s.ok()) return s;
  return store;
}

Status ViewStore::load_state() {
  std::lock_guard lock(shared_->mu);
  auto txn = lmdb::Txn::begin(shared_->env, MDB_RDONLY);
  if (!txn.ok()) return txn.status();
  StoreState st;
  const auto& dir = options_.dir;
  auto wm = txn->get(shared_->meta, lmdb::val(kWatermarkKey));
  if (!wm.ok()) return wm.status();
  if (!decode_watermark(*wm, &st.watermark)) {
    return Status::Corruption(dir.string() + ": meta 'watermark' record is malformed");
  }
  Status s = for_each_prefixed(*txn, shared_->meta, kViewPrefix,
                               [&](std::string_view name, std::span<const std::byte> b) {
                                 ViewInfo info;
                                 if (!decode_view(b, &info)) {
                                   return Status::Corruption(dir.string() + ": malformed meta record for view '" +
                                                             std::string(name) + "'");
                                 }
                                 st.views.push_back({std::string(name), info.current_version, info.building_version});
                                 return Status::Ok();
                               });
  if (!s.ok()) return s;
  s = for_each_prefixed(*txn, shared_->meta, kVersionPrefix,
                        [&](std::string_view suffix, std::span<const std::byte> b) {
                          VersionMeta v;
                          const size_t slash = suffix.rfind('/');
                          if (slash == std::string_view::npos || !decode_version(b, &v)) {
                            return Status::Corruption(dir.string() + ": malformed meta record 'version/" +
                                                      std::string(suffix) + "'");
                          }
                          v.view = suffix.substr(0, slash);
                          v.version = std::stoull(std::string(suffix.substr(slash + 1)));
                          // A definition this build cannot read, or whose states it lays out
                          // differently, has no layout: it is never merged into (rebuild it).
                          auto def = parse_view(v.canonical);
                          if (def.ok()) {
                            v.def = std::move(*def);
                            auto layout = AggregateLayout::for_view(v.def);
                            if (layout.ok() && layout->state_format_id() == v.state_format_id &&
                                layout->state_bytes() == v.state_bytes) {
                              v.layout = std::make_shared<const AggregateLayout>(std::move(*layout));
                            }
                          }
                          st.versions.emplace(v.version, std::move(v));
                          return Status::Ok();
                        });
  if (!s.ok()) return s;
  state_ = std::move(st);
  return Status::Ok();
}

uint64_t ViewStore::retention_offset() const {
  uint64_t offset = state_.watermark.log_offset;
  for (const auto& [_, v] : state_.versions) {
    if (v.state == VersionState::kBuilding) offset = std::min(offset, v.covered_offset);
  }
  return offset;
}

uint64_t ViewStore::map_bytes() const { return shared_->env.map_bytes(); }

Result<MDB_dbi> ViewStore::data_dbi(std::string_view view, uint64_t version) const {
  const std::string name = data_db_name(view, version);
  std::lock_guard lock(shared_->mu);
  auto it = shared_->dbis.find(name);
  if (it == shared_->dbis.end()) {
    return Status::Corruption(options_.dir.string() + ": database '" + name + "' is not open");
  }
  return it->second.dbi;
}

Result<ViewSnapshot> ViewStore::snapshot() const { return shared_->snapshot(shared_); }

Status ViewStore::grow_map(CommitError* why) {
  const uint64_t current = shared_->env.map_bytes();
  if (current >= options_.max_map_bytes) {
    counters_.map_full_errors.fetch_add(1, std::memory_order_relaxed);
    if (why) *why = CommitError::kMapFull;
    return Status::Full(options_.dir.string() + ": the batch views' LMDB map is full at " +
                        std::to_string(current) + " bytes (batch.max_map_bytes = " +
                        std::to_string(options_.max_map_bytes) +
                        "); raise batch.max_map_bytes (or shorten bucket retention). The log is "
                        "kept: compaction resumes from the watermark once the step fits");
  }
  std::lock_guard lock(shared_->mu);
  if (shared_->live_snapshots != 0) {
    if (why) *why = CommitError::kOther;
    return Status::Busy(options_.dir.string() + ": the LMDB map must grow but " +
                        std::to_string(shared_->live_snapshots) +
                        " snapshots of this process are open");
  }
  const uint64_t grown = std::min(options_.max_map_bytes, std::max(current * 2, current + (1 << 20)));
  Status s = shared_->env.set_map_bytes(grown);
  if (s.ok()) counters_.map_grows.fetch_add(1, std::memory_order_relaxed);
  return s;
}

Status ViewStore::write(const std::function<Status(lmdb::Txn&)>& fn, bool opens_dbis,
                        CommitError* why) {
  if (why) *why = CommitError::kNone;
  for (;;) {
    std::unique_lock lock(shared_->mu);
    auto txn = lmdb::Txn::begin(shared_->env, 0);
    if (!txn.ok()) {
      if (why) *why = CommitError::kOther;
      return txn.status();
    }
    if (!opens_dbis) lock.unlock();
    Status s = fn(*txn);
    if (!lock.owns_lock()) lock.lock();
    if (s.ok()) {
      s = txn->commit();
    } else {
      txn->abort();
    }
    lock.unlock();
    if (s.ok()) return s;
    if (is_lmdb(s, MDB_MAP_FULL)) {
      Status g = grow_map(why);
      if (!g.ok()) return g;
      continue;  // the whole transaction again, in the larger map
    }
    if (why && *why == CommitError::kNone) {
      *why = is_lmdb(s, MDB_TXN_FULL) ? CommitError::kTxnFull : CommitError::kOther;
    }
    if (is_lmdb(s, MDB_TXN_FULL)) {
      counters_.txn_full_errors.fetch_add(1, std::memory_order_relaxed);
      return Status::Full(s.message() +
                          " (a compaction step touched more pages than one LMDB transaction holds; "
                          "it is split and redone)");
    }
    return s;
  }
}

Status ViewStore::commit_step(const StepWrite& step, CommitError* why) {
  if (auto dead = shared_->env.clear_stale_readers(); dead.ok() && *dead > 0) {
    counters_.stale_readers_cleared.fetch_add(static_cast<uint64_t>(*dead), std::memory_order_relaxed);
  }
  CommitError local = CommitError::kNone;
  CommitError* w = why ? why : &local;
  Status s = write([&](lmdb::Txn& txn) { return apply_step(txn, step, w); }, false, w);
  if (!s.ok()) return s;
  counters_.steps.fetch_add(1, std::memory_order_relaxed);
  counters_.states_written.fetch_add(step_states_, std::memory_order_relaxed);
  for (const auto& [version, delta] : step_bucket_delta_) {
    state_.versions.at(version).bucket_count += static_cast<uint64_t>(delta);
  }
  if (step.rebuild_version != 0) {
    state_.versions.at(step.rebuild_version).covered_offset = step.to.end_offset;
  } else {
    Watermark& wm = state_.watermark;
    wm.log_offset = step.to.end_offset;
    wm.records += step.records;
    if (step.records > 0) {
      wm.last_record_offset = step.to.last_record_offset;
      wm.ring_epoch = step.to.ring_epoch;
      wm.ring_pos = step.to.ring_pos;
    }
    for (auto& [_, v] : state_.versions) {
      if (v.state == VersionState::kCurrent) v.covered_offset = wm.log_offset;
    }
  }
  return s;
}

namespace {

// Rewrites version record `key` in txn: its covered_offset (unless nullopt) and its bucket
// count, by `bucket_delta`.
Status update_version(lmdb::Txn& txn, MDB_dbi meta, const std::string& key,
                      std::optional<uint64_t> covered, int64_t bucket_delta) {
  auto rec = txn.get(meta, lmdb::val(key));
  if (!rec.ok()) return rec.status();
  std::string b(reinterpret_cast<const char*>(rec->data()), rec->size());
  if (b.size() < kVersionRecordHeader) return Status::Corruption("meta record '" + key + "' is malformed");
  if (covered) std::memcpy(b.data(), &*covered, sizeof *covered);
  uint64_t count;
  std::memcpy(&count, b.data() + 48, sizeof count);
  count += static_cast<uint64_t>(bucket_delta);
  std::memcpy(b.data() + 48, &count, sizeof count);
  return txn.put(meta, lmdb::val(key), lmdb::val(b));
}

}  // namespace

Status ViewStore::apply_step(lmdb::Txn& txn, const StepWrite& step, CommitError* why) {
  const std::string& dir = options_.dir.string();
  const MDB_dbi meta = shared_->meta;
  // The coverage this step advances, as committed (not as cached): a step that does not start
  // exactly there would count records twice or miss them.
  uint64_t stored_from = 0;
  const VersionMeta* rebuilt = nullptr;
  if (step.rebuild_version == 0) {
    auto wm = txn.get(meta, lmdb::val(kWatermarkKey));
    if (!wm.ok()) return wm.status();
    Watermark w;
    if (!decode_watermark(*wm, &w)) return Status::Corruption(dir + ": meta 'watermark' record is malformed");
    stored_from = w.log_offset;
  } else {
    rebuilt = state_.find_version(step.rebuild_version);
    if (rebuilt == nullptr || rebuilt->state != VersionState::kBuilding) {
      return Status::Invalid(dir + ": rebuild step for version " + std::to_string(step.rebuild_version) +
                             ", which is not being built");
    }
    auto rec = txn.get(meta, lmdb::val(version_key(rebuilt->view, rebuilt->version)));
    if (!rec.ok()) return rec.status();
    VersionMeta v;
    if (!decode_version(*rec, &v)) return Status::Corruption(dir + ": malformed version record");
    stored_from = v.covered_offset;
  }
  if (step.from_offset != stored_from || step.to.end_offset < step.from_offset) {
    *why = CommitError::kStale;
    return Status::Invalid(dir + ": step [" + std::to_string(step.from_offset) + ", " +
                           std::to_string(step.to.end_offset) + ") does not start at the stored coverage " +
                           std::to_string(stored_from));
  }

  step_bucket_delta_.clear();
  step_states_ = 0;
  for (const StepTarget& target : step.targets) {
    const VersionMeta* v = state_.find_version(target.version);
    const VersionState wanted = step.rebuild_version ? VersionState::kBuilding : VersionState::kCurrent;
    if (v == nullptr || v->state != wanted ||
        (step.rebuild_version != 0 && target.version != step.rebuild_version)) {
      return Status::Invalid(dir + ": step targets version " + std::to_string(target.version) +
                             ", which is not a " + (step.rebuild_version ? "version being built" : "current version"));
    }
    if (!v->layout) {
      return Status::Invalid(dir + ": view '" + v->view + "' version " + std::to_string(v->version) +
                             ": stored definition or state format is not this build's; rebuild the view");
    }
    auto dbi = data_dbi(v->view, v->version);
    if (!dbi.ok()) return dbi.status();
    auto added = merge_blocks(txn, *dbi, *v, target, &step_states_);
    if (!added.ok()) return added.status();
    step_bucket_delta_.emplace_back(v->version, static_cast<int64_t>(*added));
  }

  if (!step.series.empty()) {
    std::vector<uint32_t> order(step.series.size());
    for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](uint32_t a, uint32_t b) { return step.series[a].row_id < step.series[b].row_id; });
    auto cursor = lmdb::Cursor::open(txn, shared_->series);
    if (!cursor.ok()) return cursor.status();
    for (uint32_t i : order) {
      std::byte kb[kSeriesKeyBytes];
      put_be64(kb, step.series[i].row_id);
      MDB_val k{kSeriesKeyBytes, kb};
      MDB_val v = lmdb::val(step.series[i].key);
      const int rc = mdb_cursor_put(cursor->get(), &k, &v, MDB_NOOVERWRITE);
      if (rc != 0 && rc != MDB_KEYEXIST) return txn.error(rc, "mdb_cursor_put(series)");
    }
  }

  auto delta_of = [&](uint64_t version) {
    int64_t delta = 0;
    for (const auto& [v, d] : step_bucket_delta_) delta += v == version ? d : 0;
    return delta;
  };
  if (step.rebuild_version != 0) {
    return update_version(txn, meta, version_key(rebuilt->view, rebuilt->version),
                          step.to.end_offset, delta_of(rebuilt->version));
  }
  Watermark w = state_.watermark;
  w.log_offset = step.to.end_offset;
  w.records += step.records;
  if (step.records > 0) {
    w.last_record_offset = step.to.last_record_offset;
    w.ring_epoch = step.to.ring_epoch;
    w.ring_pos = step.to.ring_pos;
  }
  w.commit_ns = realtime_ns();
  Status s = txn.put(meta, lmdb::val(kWatermarkKey), lmdb::val(encode_watermark(w)));
  for (const auto& [_, v] : state_.versions) {
    if (!s.ok()) break;
    if (v.state == VersionState::kCurrent) {
      s = update_version(txn, meta, version_key(v.view, v.version), w.log_offset,
                         delta_of(v.version));
    }
  }
  return s;
}

// Merges one version's partial states (in the data keys' order) into its blocks: per touched block
// one lookup and one put. A new block is written in place (MDB_RESERVE), appended when every later
// key is past the database's end (the newest blocks of the time-major finest width); an existing
// one is rebuilt in merge_buf_ with the step's states merged. Returns the buckets added (not
// merged).
Result<uint64_t> ViewStore::merge_blocks(lmdb::Txn& txn, MDB_dbi dbi, const VersionMeta& v,
                                         const StepTarget& target, uint64_t* states_seen) {
  const std::string& dir = options_.dir.string();
  const AggregateLayout& layout = *v.layout;
  const size_t n = layout.state_bytes();
  const uint32_t per_block = v.buckets_per_block;
  const std::vector<int64_t>& widths = v.def.widths_ns;
  auto cursor = lmdb::Cursor::open(txn, dbi);
  if (!cursor.ok()) return cursor.status();
  MDB_cursor* c = cursor->get();
  auto invalid = [&](const BucketKey& key, const std::string& why) {
    return Status::Invalid(dir + ": view '" + v.view + "' version " + std::to_string(v.version) +
                           " row " + std::to_string(key.row_id) + " width " +
                           std::to_string(key.width_index) + " bucket " +
                           std::to_string(key.bucket_start_ns) + ": " + why);
  };
  merge_states_.resize(kMaxBucketsPerBlock * n);
  compact_scratch_.resize(n);
  bool past_end = false;  // every later key is beyond the database's last key: append
  uint64_t added = 0, merged = 0;
  constexpr size_t kPrefetch = 16;
  const std::byte* incoming[kMaxBucketsPerBlock];
  // The last block written and its last slot: (key, slot) must grow, also across parts.
  std::byte prev_kb[kBlockKeyBytes];
  uint32_t prev_slot = 0;
  bool any = false;
  std::span<const PartialState> states = target.states;
  *states_seen += states.size();
  for (size_t i = 0, part = 0;;) {
    if (i == states.size()) {  // the next part, if any (StepTarget::more)
      if (!target.more) break;
      states = target.more(part++);
      if (states.empty()) break;
      *states_seen += states.size();
      i = 0;
      past_end = false;  // a block may go on in this part, where it is found stored
      continue;
    }
    // The states of one block: [i, j).
    BlockKey block;
    int64_t block_width = 1;
    Wide block_start_ns = 0, block_span_ns = 0;  // its buckets: [start, start + span)
    bool exact_slots = false;
    uint64_t fresh = 0;         // slots the step brings
    uint64_t fresh_single = 0;  // ... as one event (PartialState::single)
    uint32_t first_slot = 0, last_slot = 0;
    size_t j = i;
    for (; j < states.size(); ++j) {
      // States come in key order, scattered in the caller's memory: fetch ahead of the copies.
      if (j + kPrefetch < states.size()) {
        const std::byte* ahead = states[j + kPrefetch].state.data();
        __builtin_prefetch(ahead);
        __builtin_prefetch(ahead + n - 1);
      }
      const PartialState& ps = states[j];
      const size_t expected = ps.single ? kCompactStateBytes : n;
      if (ps.state.size() != expected)
        return invalid(ps.key, "a step state of " + std::to_string(ps.state.size()) +
                                   " bytes, expected " + std::to_string(expected));
      uint32_t slot;
      if (j > i) {
        if (ps.key.row_id != block.row_id || ps.key.width_index != block.width_index) break;
        // Another bucket of this block's row and width: its slot without a 64-bit division
        // when the block's span is exact in a double (the product check below proves it).
        const Wide delta = Wide{ps.key.bucket_start_ns} - block_start_ns;
        if (delta < 0 || delta >= block_span_ns) break;
        const auto d = static_cast<int64_t>(delta);  // exact when exact_slots
        const auto k =
            exact_slots
                ? static_cast<int64_t>(static_cast<double>(d) / static_cast<double>(block_width))
                : 0;
        if (exact_slots && k * block_width == d) {
          slot = static_cast<uint32_t>(k);
        } else {
          if (delta % block_width != 0) return invalid(ps.key, "not a multiple of the width");
          slot = static_cast<uint32_t>(delta / block_width);
        }
        if (slot <= last_slot)
          return invalid(ps.key, "step states must be in key order and unique");
      } else {
        if (ps.key.width_index >= widths.size()) return invalid(ps.key, "no such width");
        const int64_t width = widths[ps.key.width_index];
        if (ps.key.bucket_start_ns % width != 0)
          return invalid(ps.key, "not a multiple of the width");
        block = block_of(ps.key, widths, per_block, &slot);
        first_slot = slot;
        block_width = width;
        block_start_ns = Wide{block.block} * per_block * width;
        block_span_ns = Wide{per_block} * width;
        exact_slots = block_span_ns < (Wide{1} << 53);
      }
      fresh |= uint64_t{1} << slot;
      if (ps.single) fresh_single |= uint64_t{1} << slot;
      incoming[slot] = ps.state.data();
      last_slot = slot;
    }
    std::byte kb[kBlockKeyBytes];
    encode_block_key(block, kb);
    if (any) {
      const int order = std::memcmp(prev_kb, kb, kBlockKeyBytes);
      if (order > 0 || (order == 0 && prev_slot >= first_slot))
        return invalid(states[i].key, "step states must be in key order and unique");
    }
    std::memcpy(prev_kb, kb, kBlockKeyBytes);
    prev_slot = last_slot;
    any = true;
    MDB_val k{kBlockKeyBytes, kb};
    Block old;  // present == 0: none stored
    if (!past_end) {
      MDB_val fk = k, fv{};
      const int rc = mdb_cursor_get(c, &fk, &fv, MDB_SET_RANGE);
      if (rc == MDB_NOTFOUND) {
        past_end = true;
      } else if (rc != 0) {
        return txn.error(rc, "mdb_cursor_get(" + v.view + ")");
      } else if (fk.mv_size == kBlockKeyBytes && std::memcmp(fk.mv_data, kb, kBlockKeyBytes) == 0 &&
                 !old.parse(fv, per_block, n)) {
        return Status::Corruption(dir + ": view '" + v.view + "' version " +
                                  std::to_string(v.version) + " row " +
                                  std::to_string(block.row_id) + ": a stored block of " +
                                  std::to_string(fv.mv_size) + " bytes is malformed");
      }
    }
    // Each present slot's final state (merged ones in merge_states_), and which are compact.
    const uint64_t present = old.present | fresh;
    uint64_t compact = 0;
    const std::byte* final_state[kMaxBucketsPerBlock];
    const std::byte* was = old.states;  // walks the stored states in slot order
    for (uint64_t bits = present; bits != 0; bits &= bits - 1) {
      const auto slot = static_cast<uint32_t>(std::countr_zero(bits));
      const uint64_t bit = uint64_t{1} << slot;
      const std::byte* stored = was;
      if (old.present & bit) was += old.is_compact(slot) ? kCompactStateBytes : n;
      if ((fresh & bit) == 0) {  // kept as stored
        final_state[slot] = stored;
        compact |= old.compact & bit;
        continue;
      }
      const std::byte* state = incoming[slot];
      if ((fresh_single & bit) && (old.present & bit) == 0) {
        if (n > kCompactStateBytes) {  // it is its compact form
          compact |= bit;
        } else {
          const std::span<std::byte> into(merge_states_.data() + slot * n, n);
          expand_compact(layout, state, into);
          state = into.data();
        }
        final_state[slot] = state;
        continue;
      }
      if (old.present & bit) {
        const std::span<std::byte> into(merge_states_.data() + slot * n, n);
        if (old.is_compact(slot)) {
          expand_compact(layout, stored, into);
        } else if (Status valid = layout.validate({stored, n}); !valid.ok()) {
          return Status::Corruption(
              dir + ": view '" + v.view + "' version " + std::to_string(v.version) + " row " +
              std::to_string(block.row_id) + " block " + std::to_string(block.block) + " slot " +
              std::to_string(slot) + ": " + valid.message());
        } else {
          std::memcpy(into.data(), stored, n);
        }
        if (fresh_single & bit) {
          fold_single(layout, incoming[slot], into);
        } else {
          layout.merge(into, {incoming[slot], n});
        }
        state = into.data();
        ++merged;
      }
      if (compact_form(layout, {state, n}, compact_scratch_, compact_states_[slot])) {
        compact |= bit;
        state = compact_states_[slot];
      }
      final_state[slot] = state;
    }
    MDB_val nv{kBlockHeaderBytes + Block::bytes_of(present, compact, n), nullptr};
    std::byte* out = nullptr;
    if (old.present == 0) {
      const int rc = mdb_cursor_put(c, &k, &nv, MDB_RESERVE | (past_end ? MDB_APPEND : 0));
      if (rc != 0) return txn.error(rc, "mdb_cursor_put(" + v.view + ")");
      out = static_cast<std::byte*>(nv.mv_data);
    } else {
      merge_buf_.resize(nv.mv_size);  // the stored block stays valid until the put below
      out = merge_buf_.data();
    }
    std::memcpy(out, &present, 8);
    std::memcpy(out + 8, &compact, 8);
    std::byte* dst = out + kBlockHeaderBytes;
    for (uint64_t bits = present; bits != 0; bits &= bits - 1) {
      const auto slot = static_cast<uint32_t>(std::countr_zero(bits));
      const size_t bytes = (compact >> slot & 1) ? kCompactStateBytes : n;
      std::memcpy(dst, final_state[slot], bytes);
      dst += bytes;
    }
    if (old.present != 0) {
      nv.mv_data = out;
      const int rc = mdb_cursor_put(c, &k, &nv, MDB_CURRENT);
      if (rc != 0) return txn.error(rc, "mdb_cursor_put(" + v.view + ", merge)");
    }
    added += static_cast<uint64_t>(std::popcount(present) - std::popcount(old.present));
    i = j;
  }
  counters_.states_merged.fetch_add(merged, std::memory_order_relaxed);
  return added;
}

Result<uint64_t> ViewStore::begin_version(const ViewDef& def, uint64_t start_offset) {
  Status s = def.validate();
  if (!s.ok()) return s;
  auto layout = AggregateLayout::for_view(def);
  if (!layout.ok()) return layout.status();
  const MDB_dbi meta = shared_->meta;
  uint64_t version = 0;
  std::string name;
  MDB_dbi dbi = 0;
  s = write(
      [&](lmdb::Txn& txn) {
        uint64_t next = 0;
        Status cs = check_store_record(txn, meta, options_.dir, &next);
        if (!cs.ok()) return cs;
        version = next;
        cs = txn.put(meta, lmdb::val(kStoreKey), lmdb::val(encode_store(next + 1)));
        if (!cs.ok()) return cs;
        ViewMeta view{def.name, 0, 0};
        const VersionMeta* current = nullptr;
        if (const ViewMeta* old = state_.find_view(def.name)) {
          view = *old;
          current = state_.find_version(view.current_version);
          if (const VersionMeta* b = state_.find_version(view.building_version)) {
            VersionMeta retired = *b;
            retired.state = VersionState::kRetired;
            cs = txn.put(meta, lmdb::val(version_key(b->view, b->version)), lmdb::val(encode_version(retired)));
            if (!cs.ok()) return cs;
          }
        }
        view.building_version = version;
        cs = txn.put(meta, lmdb::val(view_key(def.name)), lmdb::val(encode_view(view, current)));
        if (!cs.ok()) return cs;
        VersionMeta v;
        v.state = VersionState::kBuilding;
        v.canonical = def.canonical();
        v.definition_hash = def.definition_hash();
        v.state_format_id = layout->state_format_id();
        v.state_bytes = static_cast<uint32_t>(layout->state_bytes());
        v.buckets_per_block = buckets_per_block(v.state_bytes);
        v.covered_offset = start_offset;
        v.created_ns = realtime_ns();
        cs = txn.put(meta, lmdb::val(version_key(def.name, version)), lmdb::val(encode_version(v)));
        if (!cs.ok()) return cs;
        name = data_db_name(def.name, version);
        const int rc = mdb_dbi_open(txn.get(), name.c_str(), MDB_CREATE, &dbi);
        return rc == 0 ? Status::Ok() : txn.error(rc, "mdb_dbi_open(" + name + ", create)");
      },
      /*opens_dbis=*/true);
  if (!s.ok()) return s;
  {
    std::lock_guard lock(shared_->mu);
    shared_->dbis.emplace(name, Shared::Handle{dbi, 0});
  }
  s = load_state();
  if (!s.ok()) return s;
  return version;
}

Status ViewStore::switch_version(std::string_view view_name) {
  const ViewMeta* view = state_.find_view(view_name);
  const VersionMeta* next = view ? state_.find_version(view->building_version) : nullptr;
  if (next == nullptr) {
    return Status::Invalid(options_.dir.string() + ": view '" + std::string(view_name) + "' has no version being built");
  }
  if (next->covered_offset != state_.watermark.log_offset) {
    return Status::Invalid(options_.dir.string() + ": view '" + std::string(view_name) + "' version " +
                           std::to_string(next->version) + " covers the log up to " +
                           std::to_string(next->covered_offset) + ", not the watermark " +
                           std::to_string(state_.watermark.log_offset));
  }
  const MDB_dbi meta = shared_->meta;
  Status s = write(
      [&](lmdb::Txn& txn) {
        VersionMeta made = *next;
        made.state = VersionState::kCurrent;
        Status ps = txn.put(meta, lmdb::val(version_key(made.view, made.version)), lmdb::val(encode_version(made)));
        if (!ps.ok()) return ps;
        if (const VersionMeta* old = state_.find_version(view->current_version)) {
          VersionMeta retired = *old;
          retired.state = VersionState::kRetired;
          ps = txn.put(meta, lmdb::val(version_key(old->view, old->version)), lmdb::val(encode_version(retired)));
          if (!ps.ok()) return ps;
        }
        ViewMeta updated{view->name, made.version, 0};
        return txn.put(meta, lmdb::val(view_key(view->name)), lmdb::val(encode_view(updated, &made)));
      },
      false);
  if (!s.ok()) return s;
  return load_state();
}

Status ViewStore::update_definition(const ViewDef& def) {
  const ViewMeta* view = state_.find_view(def.name);
  const VersionMeta* current = view ? state_.find_version(view->current_version) : nullptr;
  if (current == nullptr) {
    return Status::Invalid(options_.dir.string() + ": view '" + def.name + "' has no current version");
  }
  auto layout = AggregateLayout::for_view(def);
  if (!layout.ok()) return layout.status();
  if (!same_batch_states(current->def, def) || layout->state_format_id() != current->state_format_id) {
    return Status::Invalid(options_.dir.string() + ": view '" + def.name +
                           "': the new definition changes the batch states; rebuild instead");
  }
  const MDB_dbi meta = shared_->meta;
  Status s = write(
      [&](lmdb::Txn& txn) {
        VersionMeta v = *current;
        v.canonical = def.canonical();
        v.definition_hash = def.definition_hash();
        Status ps = txn.put(meta, lmdb::val(version_key(v.view, v.version)), lmdb::val(encode_version(v)));
        if (!ps.ok()) return ps;
        return txn.put(meta, lmdb::val(view_key(v.view)), lmdb::val(encode_view(*view, &v)));
      },
      false);
  if (!s.ok()) return s;
  return load_state();
}

Status ViewStore::cancel_build(std::string_view view_name) {
  const ViewMeta* view = state_.find_view(view_name);
  const VersionMeta* building = view ? state_.find_version(view->building_version) : nullptr;
  if (building == nullptr) return Status::Ok();
  const MDB_dbi meta = shared_->meta;
  Status s = write(
      [&](lmdb::Txn& txn) {
        VersionMeta retired = *building;
        retired.state = VersionState::kRetired;
        Status ps = txn.put(meta, lmdb::val(version_key(retired.view, retired.version)),
                            lmdb::val(encode_version(retired)));
        if (!ps.ok()) return ps;
        ViewMeta updated = *view;
        updated.building_version = 0;
        return txn.put(meta, lmdb::val(view_key(view->name)),
                       lmdb::val(encode_view(updated, state_.find_version(view->current_version))));
      },
      false);
  if (!s.ok()) return s;
  return load_state();
}

Status ViewStore::remove_view(std::string_view view_name) {
  const MDB_dbi meta = shared_->meta;
  Status s = write(
      [&](lmdb::Txn& txn) {
        for (const auto& [_, v] : state_.versions) {
          if (v.view != view_name || v.state == VersionState::kRetired) continue;
          VersionMeta retired = v;
          retired.state = VersionState::kRetired;
          Status ps = txn.put(meta, lmdb::val(version_key(v.view, v.version)), lmdb::val(encode_version(retired)));
          if (!ps.ok()) return ps;
        }
        Status ds = txn.del(meta, lmdb::val(view_key(view_name)));
        return ds.code() == Status::Code::kNotFound ? Status::Ok() : ds;
      },
      false);
  if (!s.ok()) return s;
  return load_state();
}

Result<size_t> ViewStore::drop_retired() {
  std::vector<const VersionMeta*> retired;
  for (const auto& [_, v] : state_.versions) {
    if (v.state == VersionState::kRetired) retired.push_back(&v);
  }
  if (retired.empty()) return size_t{0};
  size_t dropped = 0;
  const MDB_dbi meta = shared_->meta;
  // Holds mu for the whole transaction (opens_dbis): mdb_drop closes the handle at once.
  Status s = write(
      [&](lmdb::Txn& txn) {
        dropped = 0;
        for (const VersionMeta* v : retired) {
          const std::string name = data_db_name(v->view, v->version);
          auto it = shared_->dbis.find(name);
          if (it != shared_->dbis.end() && it->second.refs > 0) continue;  // a snapshot reads it
          MDB_dbi dbi = 0;
          int rc = 0;
          if (it != shared_->dbis.end()) {
            dbi = it->second.dbi;
            shared_->dbis.erase(it);  // closed by mdb_drop below, even if the txn aborts
          } else {
            rc = mdb_dbi_open(txn.get(), name.c_str(), 0, &dbi);
          }
          if (rc == 0) rc = mdb_drop(txn.get(), dbi, 1);
          if (rc != 0 && rc != MDB_NOTFOUND) return txn.error(rc, "mdb_drop(" + name + ")");
          Status ds = txn.del(meta, lmdb::val(version_key(v->view, v->version)));
          if (!ds.ok()) return ds;
          ++dropped;
        }
        return Status::Ok();
      },
      /*opens_dbis=*/true);
  if (!s.ok()) return s;
  counters_.versions_dropped.fetch_add(dropped, std::memory_order_relaxed);
  s = load_state();
  if (!s.ok()) return s;
  return dropped;
}

Result<uint64_t> ViewStore::apply_retention(const BucketRetention& retention, int64_t now_ns,
                                            uint64_t max_deletes_per_txn) {
  uint64_t total = 0;
  max_deletes_per_txn = std::max<uint64_t>(max_deletes_per_txn, 1);
  const MDB_dbi meta = shared_->meta;
  for (const auto& [_, v] : state_.versions) {
    if (v.state == VersionState::kRetired) continue;
    // Per width, the first bucket number to keep: older buckets start before now - keep.
    std::vector<Wide> keep_from(v.def.widths_ns.size(), std::numeric_limits<int64_t>::min());
    bool any = false;
    for (size_t w = 0; w < keep_from.size(); ++w) {
      const int64_t keep = retention.keep_ns(v.def.widths_ns[w]);
      if (keep > 0 && now_ns > std::numeric_limits<int64_t>::min() + keep) {
        keep_from[w] = first_bucket_at_or_after(now_ns - keep, v.def.widths_ns[w]);
        any = true;
      }
    }
    if (!any) continue;
    auto dbi_found = data_dbi(v.view, v.version);
    if (!dbi_found.ok()) return dbi_found.status();
    const MDB_dbi dbi = *dbi_found;
    const uint32_t per_block = v.buckets_per_block;
    const size_t n = v.state_bytes;
    std::array<std::byte, kBlockKeyBytes> resume{};  // the first key: the row-major ones come first
    for (bool done = false; !done;) {
      uint64_t deleted = 0;
      std::array<std::byte, kBlockKeyBytes> next = resume;
      Status s = write(
          [&](lmdb::Txn& txn) {
            deleted = 0;
            next = resume;
            done = false;
            auto cursor = lmdb::Cursor::open(txn, dbi);
            if (!cursor.ok()) return cursor.status();
            MDB_cursor* c = cursor->get();
            std::byte kb[kBlockKeyBytes];
            // Positions the cursor at the first block at or after `key`.
            auto seek_bytes = [&](std::span<const std::byte, kBlockKeyBytes> key, MDB_val* k,
                                  MDB_val* val) {
              std::memcpy(kb, key.data(), kBlockKeyBytes);
              *k = MDB_val{kBlockKeyBytes, kb};
              return cursor->seek(k, val, MDB_SET_RANGE);
            };
            auto seek = [&](const BlockKey& key, MDB_val* k, MDB_val* val) {
              encode_block_key(key, kb);
              return seek_bytes(kb, k, val);
            };
            auto finish = [&] {
              if (deleted == 0) return Status::Ok();
              return update_version(txn, meta, version_key(v.view, v.version), std::nullopt,
                                    -static_cast<int64_t>(deleted));
            };
            MDB_val k{}, val{};
            auto found = seek_bytes(resume, &k, &val);
            while (true) {
              if (!found.ok()) return found.status();
              if (!*found || k.mv_size != kBlockKeyBytes) {
                done = true;
                return finish();
              }
              const BlockKey key = decode_block_key(lmdb::bytes(k));
              const Wide first_kept = key.width_index < keep_from.size()
                                          ? keep_from[key.width_index]
                                          : Wide{std::numeric_limits<int64_t>::min()};
              const Wide old_slots =
                  first_kept - Wide{key.block} * per_block;  // slots below are old
              bool gone = false;  // the block was deleted whole
              if (old_slots > 0) {
                if (deleted >= max_deletes_per_txn) {
                  encode_block_key(key, next);  // resume here in the next transaction
                  return finish();
                }
                Block b;
                if (!b.parse(val, per_block, n)) {
                  return Status::Corruption(options_.dir.string() + ": view '" + v.view + "' row " +
                                            std::to_string(key.row_id) + ": a stored block of " +
                                            std::to_string(val.mv_size) + " bytes is malformed");
                }
                const uint64_t present = b.present;
                const uint64_t old =
                    present & slots_below(static_cast<uint32_t>(std::min<Wide>(old_slots, 64)));
                deleted += static_cast<uint64_t>(std::popcount(old));
                int rc = 0;
                if (old == present) {
                  rc = mdb_cursor_del(c, 0);
                  gone = true;
                } else if (old != 0) {
                  // Keep the young slots: their states are the last of the block.
                  const uint64_t young = present & ~old;
                  const uint64_t compact = b.compact & young;
                  const size_t keep_bytes = Block::bytes_of(young, compact, n);
                  merge_buf_.resize(kBlockHeaderBytes + keep_bytes);
                  std::memcpy(merge_buf_.data(), &young, 8);
                  std::memcpy(merge_buf_.data() + 8, &compact, 8);
                  std::memcpy(merge_buf_.data() + kBlockHeaderBytes,
                              static_cast<const std::byte*>(val.mv_data) + val.mv_size - keep_bytes,
                              keep_bytes);
                  MDB_val nv{merge_buf_.size(), merge_buf_.data()};
                  // A resized value is deleted and added again: the key must not point into
                  // the page, as k does.
                  encode_block_key(key, kb);
                  MDB_val own{kBlockKeyBytes, kb};
                  rc = mdb_cursor_put(c, &own, &nv, MDB_CURRENT);
                }
                if (rc != 0) return txn.error(rc, "retention of view '" + v.view + "'");
                if (gone && (old_slots >= per_block || time_major(key.width_index))) {
                  // Later blocks of this (row, width), or of other rows, may hold old buckets.
                  found = seek(key, &k, &val);  // k pointed into the page just changed
                  continue;
                }
              }
              BlockKey after = key;  // where to go on from
              if (time_major(key.width_index)) {
                // Keys sort by block: once one is young, so is the rest of the database (the
                // time-major keys come last). Else the next row of this block.
                if (old_slots <= 0) {
                  done = true;
                  return finish();
                }
                if (after.row_id == std::numeric_limits<uint64_t>::max()) {
                  after.row_id = 0;
                  ++after.block;
                } else {
                  ++after.row_id;
                }
                found = seek(after, &k, &val);
                continue;
              }
              // The rest of this (row, width) is young enough: skip to the next width (the
              // row-major keys of a row start at width 1), after the last row to the time-major
              // keys.
              after.block = std::numeric_limits<int64_t>::min();
              if (after.width_index == std::numeric_limits<uint8_t>::max()) {
                if (after.row_id == std::numeric_limits<uint64_t>::max()) {
                  after = BlockKey{0, 0, std::numeric_limits<int64_t>::min()};
                } else {
                  ++after.row_id;
                  after.width_index = 1;
                }
              } else {
                ++after.width_index;
              }
              found = seek(after, &k, &val);
            }
          },
          false);
      if (!s.ok()) return s;
      resume = next;
      total += deleted;
      state_.versions.at(v.version).bucket_count -= deleted;
      counters_.buckets_expired.fetch_add(deleted, std::memory_order_relaxed);
    }
  }
  return total;
}

}  // namespace runnel::storage
