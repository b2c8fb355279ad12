// The speed path (see speed_path.h).
#include "daemon/speed_path.h"

#include <time.h>

#include <algorithm>
#include <cstring>

#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <spdlog/spdlog.h>

#include "daemon/thread_name.h"
#include "model/generation.h"
#include "model/known_rows.h"
#include "model/clock.h"
#include "model/record.h"
#include "model/view_router.h"
#include "storage/log_reader.h"

namespace runnel {
namespace {

constexpr int64_t kFutureSkewNs = 5 * 60 * 1'000'000'000LL;
// Evictions look at the oldest entries of a shard (ShardWriter::evict_oldest), in proportion to
// the inserts they make room for: kLooksPerInsert per insert, at least kMinLooks per batch.
// Without inserts, once per kEvictEveryNs (wall time).
constexpr uint64_t kLooksPerInsert = 2;
constexpr uint64_t kMinLooks = 256;
constexpr int64_t kEvictEveryNs = 1'000'000'000;
// Updates whose slot index bytes (kIndexAhead) and entries (kPrefetchAhead) are prefetched
// ahead of the one being applied (powers of two).
constexpr size_t kPrefetchAhead = 4;
constexpr size_t kIndexAhead = 8;
// A shard is under pressure from this load (tenths of its slots occupied or tombstones) on:
// linear probing slows down sharply as the load grows. Evictions for room bring it back to
// kRoomTenths.
constexpr uint64_t kPressureTenths = 4;
constexpr uint64_t kRoomTenths = 3;

}  // namespace

// One routed row update of the current batch.
struct SpeedPath::Pending {
  uint64_t row_id;
  int64_t ts_ns;
  double value;
  uint64_t distinct_hash;
  uint64_t pos;
  uint64_t generation;
  uint32_t view;
  bool has_distinct;
};

struct SpeedPath::Worker {
  ViewRouter router;
  // Apply round: this worker's shard of every view.
  std::vector<ipc::ShardWriter> writers;  // per view
  std::vector<uint64_t> overflow_in_batch;  // per view
  std::vector<uint64_t> inserts_seen;       // per view: the shard's inserts() at the last eviction
  // Per view: the absorbed generation whose entries are all gone from this shard (a look
  // stopped at a younger entry, or went once through the whole queue).
  std::vector<uint64_t> absorbed_done;
  bool evict_more = false;  // absorbed entries may be left: an idle round should look again
  std::vector<bool> view_changed;
  uint64_t events_late = 0;
  uint64_t events_overflow = 0;
  uint64_t forced_evictions = 0;  // entries evicted before their live window ran out
  int64_t last_evict_ns = 0;
  // A private copy of the entry state being updated (the largest state of any view).
  std::vector<std::byte> scratch;
  // Route round: this worker's slice of the batch.
  // Rows this worker registered in the series dictionary: allocated once, forgotten past 65,536.
  KnownRows known_rows{size_t{1} << 17, size_t{1} << 17};
  std::vector<std::vector<Pending>> outbox;  // per destination shard; reserved once
  std::vector<uint64_t> late;                // per destination shard and view: late updates
  int64_t max_ts = INT64_MIN;
  // The batch whose route (apply) round this worker finished last: stored with release at the
  // end of the round, loaded with acquire by whoever reads the results (the other workers'
  // apply round; fold_batch()).
  std::atomic<uint64_t> routed_batch{0};
  std::atomic<uint64_t> done_batch{0};
  explicit Worker(std::vector<ViewDef> views) : router(std::move(views)) {}
};

SpeedPath::SpeedPath(const Config& config, ipc::Ring& ring, ipc::StatsBlock& stats)
    : config_(config), ring_(ring), stats_(stats) {}

SpeedPath::~SpeedPath() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

Status SpeedPath::open(std::string_view batch_dir) {
  const uint32_t shards = config_.speed_workers;
  std::vector<ipc::LiveViewSpec> specs;
  for (uint32_t v = 0; v < config_.views.size(); ++v) {
    const ViewDef& def = config_.views[v];
    auto layout = AggregateLayout::for_view(def);
    if (!layout.ok()) return layout.status();  // names the view
    layouts_.push_back(std::move(layout.value()));
    ipc::LiveViewSpec s;
    s.name = def.name;
    s.view_id = v;
    s.definition_hash = def.definition_hash();
    s.definition = def.canonical();
    s.state_bytes = static_cast<uint32_t>(layouts_.back().state_bytes());
    s.widths_ns = def.widths_ns;
    s.capacity_entries = def.capacity;
    s.shard_count = shards;
    // Every unabsorbed generation of a bucket has its own entry on the bucket's probe chain:
    // room for dozens while the batch layer catches up (more is counted as overflow).
    s.max_probe = 64;
    s.initial_state.resize(s.state_bytes);
    layouts_.back().init(s.initial_state);
    specs.push_back(std::move(s));
  }
  ipc::ShmOptions shm;
  shm.mode = config_.ring_mode;
  auto live = ipc::LiveTables::create(config_.shm_name, specs, shm, batch_dir);
  if (!live.ok()) return live.status();
  live_.emplace(std::move(live.value()));
  ipc::SeriesDictionaryOptions so;
  auto series = ipc::SeriesDictionary::create(config_.shm_name, so, shm);
  if (!series.ok()) return series.status();
  series_.emplace(std::move(series.value()));

  const size_t views = config_.views.size();
  for (uint32_t s = 0; s < shards; ++s) {
    auto w = std::make_unique<Worker>(config_.views);
    for (uint32_t v = 0; v < views; ++v) {
      auto writer = live_->attach_writer(v, s);
      if (!writer.ok()) return writer.status();
      w->writers.push_back(std::move(writer.value()));
    }
    w->overflow_in_batch.assign(views, 0);
    w->inserts_seen.assign(views, 0);
    w->absorbed_done.assign(views, 0);
    for (ipc::ShardWriter& writer : w->writers) writer.track_inserts();
    w->view_changed.assign(views, false);
    for (const AggregateLayout& l : layouts_) w->scratch.resize(std::max(w->scratch.size(), l.state_bytes()));
    // A slice's updates may all go to one shard, and every record could feed every view with
    // several fields: an outbox grows past this only for wide records, once.
    w->outbox.resize(shards);
    for (auto& o : w->outbox) o.reserve(size_t{config_.speed_batch_records} * 4 / shards + 64);
    w->late.assign(size_t{shards} * views, 0);
    workers_.push_back(std::move(w));
  }
  batch_.reserve(config_.speed_batch_records);
  absorbed_generation_ = std::make_unique<std::atomic<uint64_t>[]>(config_.views.size());
  evicted_generation_.assign(config_.views.size(), 0);
  return Status::Ok();
}

Status SpeedPath::replay(const std::filesystem::path& log_dir, uint64_t from_offset) {
  auto reader = storage::LogReader::open(log_dir);
  if (!reader.ok()) {
    return reader.status().code() == Status::Code::kNotFound ? Status::Ok() : reader.status();
  }
  Status seeked = reader->seek(from_offset);
  if (seeked.code() == Status::Code::kNotFound) {
    // Before the oldest retained segment: only when the batch views could not be read (their
    // watermark counts as 0), since retention deletes nothing unabsorbed. Take what is there.
    auto segments = storage::list_segments(log_dir);
    if (segments.ok() && !segments->empty() && segments->front().base_offset > from_offset) {
      spdlog::warn("speed path: the log starts at offset {}, after the batch watermark {}; replaying from there",
                   segments->front().base_offset, from_offset);
      from_offset = segments->front().base_offset;
      seeked = reader->seek(from_offset);
    }
  }
  if (Status s = seeked; !s.ok()) {
    return Status::Corruption("speed path replay from log offset " + std::to_string(from_offset) +
                              " (the batch watermark): " + s.message());
  }
  // Records are copied out of the reader (its buffer moves on) into one arena per batch.
  std::vector<std::byte> arena;
  std::vector<size_t> offsets;
  tbb::task_arena tasks(static_cast<int>(config_.speed_workers));
  uint64_t records = 0;
  for (bool more = true; more;) {
    arena.clear();
    offsets.clear();
    batch_.clear();
    storage::Record rec;
    while (batch_.size() < config_.speed_batch_records) {
      auto got = reader->next(&rec);
      if (!got.ok()) return got.status();
      if (!*got) {
        more = false;
        break;
      }
      offsets.push_back(arena.size());
      arena.insert(arena.end(), rec.payload.begin(), rec.payload.end());
      batch_.push_back({rec.ring_pos, generation_of(rec.ring_epoch, rec.ring_pos), nullptr,
                        static_cast<uint32_t>(rec.payload.size())});
    }
    for (size_t i = 0; i < batch_.size(); ++i) batch_[i].data = arena.data() + offsets[i];
    if (!batch_.empty()) fold_batch(tasks);
    records += batch_.size();
  }
  spdlog::info("speed path: replayed {} log records from offset {} (beyond the batch views) into the live tables",
               records, from_offset);
  return Status::Ok();
}

Status SpeedPath::attach(std::optional<uint64_t> position) {
  if (position) {
    if (Status s = ring_.set_consumer_position(ipc::kSpeedPathConsumer, *position); !s.ok()) return s;
  }
  // Without a position: records of an earlier run that are still in the ring are folded in
  // from the slot's persisted position; older ones are the batch layer's.
  auto c = ring_.attach_consumer(ipc::kSpeedPathConsumer, ipc::Ring::StartAt::kResume);
  if (!c.ok()) return c.status();
  consumer_.emplace(std::move(c.value()));
  return Status::Ok();
}

void SpeedPath::absorbed(uint32_t view, uint64_t generation) {
  if (!absorbed_generation_ || view >= config_.views.size()) return;
  std::atomic<uint64_t>& a = absorbed_generation_[view];
  uint64_t cur = a.load(std::memory_order_relaxed);
  while (generation > cur && !a.compare_exchange_weak(cur, generation, std::memory_order_relaxed)) {
  }
}

bool SpeedPath::announce_absorbed() {
  bool any = false;
  for (uint32_t v = 0; v < evicted_generation_.size(); ++v) {
    const uint64_t g = absorbed_generation_[v].load(std::memory_order_relaxed);
    if (g > evicted_generation_[v]) {
      live_->publish_evicted_generation(v, g);
      evicted_generation_[v] = g;
      any = true;
    }
  }
  return any;
}

void SpeedPath::start() {
  thread_ = std::thread([this] {
    name_this_thread("runneld-speed");  // its oneTBB workers too
    run();
  });
}

void SpeedPath::route(Worker& w, uint32_t slice) {
  // Acquire: pairs with the release increment in fold_batch(), so batch_ and what the consumer
  // thread set for this batch are visible (also without relying on oneTBB's own ordering).
  const uint64_t batch = batch_seq_.load(std::memory_order_acquire);
  const uint32_t shards = config_.speed_workers;
  const size_t begin = batch_.size() * slice / shards;
  const size_t end = batch_.size() * (slice + 1) / shards;
  const uint64_t shard_mask = shards - 1;
  const size_t views = config_.views.size();
  const int64_t watermark = batch_watermark_ns_;
  for (auto& o : w.outbox) o.clear();
  std::fill(w.late.begin(), w.late.end(), 0);
  for (size_t i = begin; i < end; ++i) {
    const RecordRef& ref = batch_[i];
    RecordView rec;
    const char* reason = "";
    // The ring holds only records runneld's parser built; a failure here means memory
    // corruption, which the journal reports too. Skip the record.
    const std::span<const std::byte> payload(ref.data, ref.size);
    if (!RecordView::validate_structure(payload, &rec, &reason)) continue;
    const int64_t ts = rec.ts_ns();
    if (ts > w.max_ts) w.max_ts = ts;
    w.router.route(
        rec, [](uint64_t) { return true; },
        [&](const RowUpdate& u) {
          const uint64_t dest = u.group_hash & shard_mask;
          const ViewDef& def = w.router.views()[u.view];
          if (watermark != INT64_MIN && ts < watermark - def.live_window_ns) {
            ++w.late[dest * views + u.view];
            return;
          }
          if (w.known_rows.insert(u.row_id)) {
            series_->insert(u.row_id, w.router.row_key(rec, u.view, u.field));
          }
          w.outbox[dest].push_back({u.row_id, ts, u.value, u.distinct_hash, ref.pos, ref.generation,
                                    u.view, u.has_distinct});
        });
  }
  w.routed_batch.store(batch, std::memory_order_release);  // pairs with apply()'s acquire
}

void SpeedPath::apply(Worker& w, uint32_t shard) {
  const uint64_t batch = batch_seq_.load(std::memory_order_acquire);
  const size_t views = config_.views.size();
  // Slices in batch order, so each entry sees its events in ring order.
  for (const auto& from : workers_) {
    // Acquire: pairs with the release store at the end of route(); the outbox is complete.
    if (from->routed_batch.load(std::memory_order_acquire) != batch) {
      spdlog::critical("speed path: a worker did not route batch {}", batch);
      continue;
    }
    apply_updates(w, from->outbox[shard]);
    for (uint32_t v = 0; v < views; ++v) {
      const uint64_t late = from->late[shard * views + v];
      if (late == 0) continue;
      w.writers[v].add_late(late);
      w.events_late += late;
    }
  }
  for (uint32_t v = 0; v < views; ++v) {
    if (w.view_changed[v]) live_->end_batch(v);
    w.view_changed[v] = false;
  }
  evict(w, batch_.empty());
  w.done_batch.store(batch, std::memory_order_release);  // pairs with fold_batch()'s acquire
}

void SpeedPath::apply_updates(Worker& w, std::span<const Pending> updates) {
  // The table is far larger than the caches, so the memory latencies of several updates
  // overlap: kIndexAhead updates early the slot index bytes at each key's home slot are
  // prefetched (a few hundred KiB per shard, mostly cached), and kPrefetchAhead updates early
  // the entry they point at: the slot whose tag matches, which with a batch layer often lies
  // past the home slot (every unabsorbed generation of a bucket has an entry on its chain, the
  // newest last), or else the free slot an insert will take. Keys and home slots are computed
  // once, at the first prefetch, into a ring of kIndexAhead.
  struct Prepared {
    ipc::EntryKey keys[ViewDef::kMaxWidths];
    ipc::ShardWriter::Home homes[ViewDef::kMaxWidths];
    uint32_t count;
    uint32_t view;
  };
  Prepared ahead[kIndexAhead];
  // The bucket starts of the last update prepared: the fields of one record follow each other
  // and share them (a division per width saved).
  const Pending* last = nullptr;
  int64_t starts[ViewDef::kMaxWidths];
  auto prepare = [&](const Pending& p, Prepared& out) {
    const auto& widths = config_.views[p.view].widths_ns;
    const ipc::ShardWriter& writer = w.writers[p.view];
    out.count = static_cast<uint32_t>(widths.size());
    out.view = p.view;
    if (last == nullptr || last->ts_ns != p.ts_ns || last->view != p.view) {
      for (uint32_t wi = 0; wi < out.count; ++wi) starts[wi] = bucket_start(p.ts_ns, widths[wi]);
    }
    last = &p;
    for (uint32_t wi = 0; wi < out.count; ++wi) {
      out.keys[wi] = {p.row_id, wi, starts[wi], p.generation};
      out.homes[wi] = writer.home(out.keys[wi]);
      writer.prefetch_index(out.homes[wi]);
    }
  };
  auto prefetch_tagged = [&](const Prepared& at) {
    const ipc::ShardWriter& writer = w.writers[at.view];
    for (uint32_t wi = 0; wi < at.count; ++wi) writer.prefetch_tagged(at.homes[wi]);
  };
  const size_t n = updates.size();
  for (size_t i = 0; i < std::min(n, kIndexAhead); ++i) prepare(updates[i], ahead[i]);
  for (size_t i = 0; i < std::min(n, kPrefetchAhead); ++i) prefetch_tagged(ahead[i]);
  for (size_t i = 0; i < n; ++i) {
    const Pending& p = updates[i];
    Prepared& cur = ahead[i & (kIndexAhead - 1)];
    ipc::ShardWriter& writer = w.writers[p.view];
    const AggregateLayout& layout = layouts_[p.view];
    const std::span<std::byte> scratch(w.scratch.data(), layout.state_bytes());
    for (uint32_t wi = 0; wi < cur.count; ++wi) {
      ipc::LiveEntry* e = writer.find_or_insert(cur.keys[wi], cur.homes[wi]);
      if (e == nullptr) {
        writer.add_overflow();
        ++w.events_overflow;
        ++w.overflow_in_batch[p.view];
        continue;
      }
      writer.begin_write(e);
      // Readers in other threads copy the state while it changes (the seqlock discards such a
      // copy); the live layout has every state word written atomically so that this is no data
      // race: update a private copy, then store it word by word.
      writer.copy_state(e, scratch);
      layout.update(scratch, p.value, p.ts_ns, p.distinct_hash, p.has_distinct);
      writer.store_state(e, scratch);
      writer.note_position(e, p.pos);
      writer.end_write(e);
    }
    w.view_changed[p.view] = true;
    if (i + kIndexAhead < n) prepare(updates[i + kIndexAhead], cur);
    if (i + kPrefetchAhead < n) prefetch_tagged(ahead[(i + kPrefetchAhead) & (kIndexAhead - 1)]);
  }
}

void SpeedPath::evict(Worker& w, bool idle) {
  // The rules, applied to the oldest entries of the shard (in insertion order) after every
  // batch:
  // - absorbed generations leave: the batch views hold them (announced by the consumer thread
  //   before this round, see fold_batch());
  // - without a batch layer, a bucket whose end lies more than the view's live_window before
  //   the event-time watermark leaves;
  // - under pressure (an update found no room, or kPressureTenths of the shard's slots hold
  //   entries or tombstones), the oldest closed buckets leave, however recent, until the shard
  //   is back at kRoomTenths: the live tables keep as much of the newest history as fits. A
  //   bucket still open at the watermark never leaves, unless its entry belongs to a
  //   generation older than the batch's (with a batch layer: no event can reach that entry any
  //   more, and while compaction trails, such entries of wide buckets would fill the shard);
  //   nor does one updated since it was last looked at (a second chance: a stream far behind
  //   the others still updates buckets that are closed at the watermark). These count as
  //   forced evictions; with a batch layer the batch views serve them once absorbed.
  // The oldest entry that stays is queued again if entries behind it may still leave: under
  // pressure (the oldest entries may come from a stream far behind the others), or when it is
  // a wide bucket still open that started before the age cutoff; otherwise the look ends.
  const int64_t watermark = batch_watermark_ns_;
  const uint64_t generation = batch_generation_;
  const int64_t now = realtime_ns();
  const bool periodic = now - w.last_evict_ns >= kEvictEveryNs;
  if (periodic) w.last_evict_ns = now;
  w.evict_more = false;
  for (uint32_t v = 0; v < w.writers.size(); ++v) {
    const ViewDef& def = config_.views[v];
    ipc::ShardWriter& writer = w.writers[v];
    // Linear probing slows down sharply as the load grows (tombstones count: probes pass them).
    const uint64_t load = writer.used() + writer.tombstones();
    const bool pressure =
        w.overflow_in_batch[v] > 0 || load * 10 >= writer.capacity() * kPressureTenths;
    w.overflow_in_batch[v] = 0;
    const uint64_t absorbed = evicted_generation_[v];
    const bool by_age = watermark != INT64_MIN && !absorbing_;
    const int64_t cutoff = by_age ? watermark - def.live_window_ns : INT64_MIN;
    // Entries to evict for room: down to kRoomTenths of the slots (counting every eviction).
    const uint64_t room = writer.capacity() * kRoomTenths / 10;
    uint64_t for_room = pressure && load > room ? load - room : 0;
    if (absorbed == kNoGeneration && !by_age && for_room == 0) continue;

    const uint64_t inserts = writer.inserts();
    const uint64_t inserted = inserts - w.inserts_seen[v];
    w.inserts_seen[v] = inserts;
    // Not more for room: looking through the queue faster than the inserts fill it would look
    // at each entry too soon after its last look for the second chance to mean anything.
    uint64_t looks = inserted * kLooksPerInsert + kMinLooks;
    if (idle || (periodic && !pressure)) looks = writer.queued();
    uint64_t forced = 0;
    bool stopped = true;
    writer.evict_oldest(
        looks,
        [&](const ipc::EntryMeta& m, bool updated) {
          const int64_t end = m.key.bucket_start_ns + def.widths_ns[m.key.width_index];
          const bool gone = (absorbed != kNoGeneration && m.key.generation <= absorbed) ||
                            (by_age && end <= cutoff);
          const bool open = end > watermark && m.key.generation >= generation;
          if (gone || for_room == 0 || open || updated) {
            if (gone && for_room > 0) --for_room;
            return gone;
          }
          --for_room;
          ++forced;
          return true;
        },
        [&](const ipc::EntryMeta& m) {
          return for_room > 0 || (by_age && m.key.bucket_start_ns <= cutoff);
        },
        &stopped);
    w.forced_evictions += forced;
    // An idle round looks through the whole queue once, so at most one follows an absorption
    // (under pressure a look may go on past entries it keeps, and never stop).
    if (stopped || idle) w.absorbed_done[v] = absorbed;
    w.evict_more = w.evict_more || w.absorbed_done[v] < absorbed;
  }
}

void SpeedPath::run() {
  tbb::task_arena arena(static_cast<int>(config_.speed_workers));
  const uint64_t epoch = ring_.epoch();
  while (true) {
    batch_.clear();
    const auto b = consumer_->peek(
        [&](uint64_t pos, std::span<const std::byte> payload) {
          // Without a batch layer nothing is ever absorbed: one entry per bucket, generation 0.
          batch_.push_back({pos, absorbing_ ? generation_of(epoch, pos) : kNoGeneration, payload.data(),
                            static_cast<uint32_t>(payload.size())});
        },
        config_.speed_batch_records);
    if (b.corrupt) {
      final_status_ = Status::Corruption("speed path: corrupt ring record at " + std::to_string(b.end_position));
      spdlog::critical("{}; live updates stopped", final_status_.ToString());
      return;
    }
    if (b.end_position != consumer_->position()) {
      if (!batch_.empty()) fold_batch(arena);
      consumer_->advance(b.end_position);
      stats_.set(ipc::Counter::kRingSpeedPos, consumer_->position());
      continue;
    }
    if (announce_absorbed() || evict_pending_) {
      batch_.clear();
      fold_batch(arena);  // evicts what the batch layer absorbed meanwhile
    }
    live_->wake_waiters();
    if (stop_.load(std::memory_order_acquire) && consumer_->position() >= ring_.claim_position()) break;
    consumer_->wait(std::chrono::milliseconds(5));
  }
  live_->wake_waiters();
}

void SpeedPath::fold_batch(tbb::task_arena& arena) {
  const uint32_t shards = config_.speed_workers;
  // Clients that read the batch views below an announced generation retry once they see it
  // (the announcement precedes every eviction it covers).
  announce_absorbed();
  batch_watermark_ns_ = watermark_ns_.load(std::memory_order_relaxed);
  // Batches follow the log (and the ring), whose generations never decrease.
  if (!batch_.empty()) batch_generation_ = std::max(batch_generation_, batch_.back().generation);
  // Release: publishes the batch to the workers (route() and apply() acquire it). oneTBB
  // orders task bodies with the caller too, but inside its library, where ThreadSanitizer cannot
  // see it; this pair (and done_batch) states the hand-off in code that TSan checks.
  const uint64_t batch = batch_seq_.fetch_add(1, std::memory_order_release) + 1;
  arena.execute([&] {
    // The bodies capture only `this`: everything else they read is published by batch_seq_.
    tbb::parallel_for(uint32_t{0}, shards, [this](uint32_t r) { route(*workers_[r], r); });
    tbb::parallel_for(uint32_t{0}, shards, [this](uint32_t s) { apply(*workers_[s], s); });
  });
  evict_pending_ = false;
  int64_t max_ts = INT64_MIN;
  uint64_t late = 0, overflow = 0, forced = 0;
  for (auto& w : workers_) {
    // Acquire: pairs with the release store at the end of apply(); every shard ran.
    if (w->done_batch.load(std::memory_order_acquire) != batch) {
      spdlog::critical("speed path: a worker did not finish batch {}", batch);
    }
    max_ts = std::max(max_ts, w->max_ts);
    late += w->events_late;
    overflow += w->events_overflow;
    forced += w->forced_evictions;
    evict_pending_ = evict_pending_ || w->evict_more;
    w->events_late = w->events_overflow = w->forced_evictions = 0;
  }
  const int64_t capped = std::min(max_ts, realtime_ns() + kFutureSkewNs);
  if (capped > watermark_ns_.load(std::memory_order_relaxed)) {
    watermark_ns_.store(capped, std::memory_order_relaxed);
  }
  stats_.add(ipc::Counter::kSpeedRecords, batch_.size());
  stats_.add(ipc::Counter::kSpeedLate, late);
  stats_.add(ipc::Counter::kSpeedOverflow, overflow);
  stats_.add(ipc::Counter::kSpeedForcedEvictions, forced);
  if (!batch_.empty()) stats_.add(ipc::Counter::kSpeedBatches, 1);
  stats_.set(ipc::Counter::kSpeedWatermarkNs, static_cast<uint64_t>(watermark_ns_.load()));
}

Status SpeedPath::stop_and_drain() {
  stop_.store(true, std::memory_order_release);
  if (thread_.joinable()) thread_.join();
  return final_status_;
}

}  // namespace runnel
