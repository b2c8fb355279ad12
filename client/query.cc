// The client's read side (see query.h): instance mappings, the live state source, the merge,
// and the operations the public Client is made of.
#include "client/query.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "ipc/live_table_layout.h"
#include "model/generation.h"

namespace runnel::client::internal {
namespace {

// A fill_empty answer holds at most this many steps per series.
constexpr uint64_t kMaxFilledSteps = 1'000'000;
// A merged query that raced with the daemon evicting what a newer watermark absorbed reads
// again, at most this often.
constexpr int kMergeAttempts = 16;

// LMDB allows one environment per directory and process: every Instance of the process that
// reads the same batch views shares one reader.
Result<std::shared_ptr<storage::ViewReader>> shared_view_reader(const std::string& dir) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<storage::ViewReader>> readers;
  std::lock_guard lock(mu);
  if (auto r = readers[dir].lock()) return r;
  auto opened = storage::ViewReader::open(dir);
  if (!opened.ok()) return opened.status();
  std::shared_ptr<storage::ViewReader> r(std::move(opened).value());
  readers[dir] = r;
  return r;
}

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& i : items) s += (s.empty() ? "" : ", ") + i;
  return s;
}

std::string join_widths(std::span<const int64_t> widths) {
  std::vector<std::string> names;
  for (int64_t w : widths) names.push_back(format_duration_ns(w));
  return join(names);
}

bool contains(const std::vector<std::string>& items, std::string_view s) {
  return std::find(items.begin(), items.end(), s) != items.end();
}

const Tag* find_tag(const RowKeyView& key, std::string_view tag_key) {
  for (const Tag& t : key.tags)
    if (t.key == tag_key) return &t;
  return nullptr;
}

// Invalid unless `tag` can distinguish rows of `view`.
Status check_group_tag(const ViewContext& view, std::string_view tag, std::string_view what) {
  if (view.def.group_all_tags || contains(view.def.group_by, tag)) return Status::Ok();
  return Status::Invalid("view '" + view.def.name + "' groups rows by tags [" +
                         join(view.def.group_by) + "] only, so " + std::string(what) + " tag '" +
                         std::string(tag) + "' cannot select among them");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Instance

struct Instance::Mappings {
  ipc::LiveTableReader live;
  ipc::SeriesDictionaryReader series;
  std::unique_ptr<ipc::StatsSegment> stats;
};

Instance::Instance(std::string shm_name, std::unique_ptr<Mappings> m,
                   std::vector<ViewContext> views)
    : shm_name_(std::move(shm_name)), m_(std::move(m)), views_(std::move(views)) {}
Instance::~Instance() = default;

Result<std::unique_ptr<Instance>> Instance::open(const std::string& shm_name) {
  auto live = ipc::LiveTableReader::open(shm_name);
  if (!live.ok()) return live.status();
  auto series = ipc::SeriesDictionaryReader::open(shm_name);
  if (!series.ok()) return series.status();
  auto stats = ipc::StatsSegment::open_read_only(shm_name);
  if (!stats.ok()) return stats.status();
  if (live->tables().retired() || series->series().retired()) {
    return Status::Busy("runnel instance '" + shm_name +
                        "' is being replaced by a restarting daemon; try again");
  }
  const ipc::LiveTablesView& tables = live->tables();
  std::vector<ViewContext> views;
  for (uint32_t v = 0; v < tables.view_count(); ++v) {
    const ipc::LiveViewInfo info = tables.info(v);
    const std::string where =
        "runnel instance '" + shm_name + "': view '" + std::string(info.name) + "'";
    auto def = parse_view(info.definition);
    if (!def.ok()) {
      return Status::Unsupported(where + ": this build cannot read its definition '" +
                                 std::string(info.definition) + "': " + def.status().message());
    }
    auto layout = AggregateLayout::for_view(def.value());
    if (!layout.ok()) return Status::Unsupported(where + ": " + layout.status().message());
    if (def->definition_hash() != info.definition_hash ||
        layout->state_bytes() != info.state_bytes) {
      return Status::Unsupported(where + ": its states are " + std::to_string(info.state_bytes) +
                                 " bytes but this build lays them out in " +
                                 std::to_string(layout->state_bytes()) +
                                 " (daemon and client of different versions?)");
    }
    views.push_back(ViewContext{v, std::move(def).value(), std::move(layout).value()});
  }
  auto m = std::make_unique<Mappings>(
      Mappings{std::move(live).value(), std::move(series).value(), std::move(stats).value()});
  return std::unique_ptr<Instance>(new Instance(shm_name, std::move(m), std::move(views)));
}

bool Instance::retired() const { return live().retired() || series().retired(); }
const ipc::LiveTablesView& Instance::live() const { return m_->live.tables(); }
const ipc::SeriesDictionaryView& Instance::series() const { return m_->series.series(); }
const ipc::StatsBlock& Instance::stats() const { return m_->stats->block(); }

Result<const ViewContext*> Instance::find_view(std::string_view name) const {
  std::vector<std::string> names;
  for (const ViewContext& v : views_) {
    if (v.def.name == name) return &v;
    names.push_back(v.def.name);
  }
  return Status::NotFound("runnel instance '" + shm_name_ + "' has no view '" + std::string(name) +
                          "' (views: " + join(names) + ")");
}

Result<std::shared_ptr<storage::ViewReader>> Instance::batch() const {
  const std::string dir(live().batch_dir());
  if (dir.empty()) return std::shared_ptr<storage::ViewReader>();
  std::lock_guard lock(batch_mu_);
  if (batch_) return batch_;
  auto r = shared_view_reader(dir);
  if (!r.ok()) {
    // The daemon creates its views at start-up; until then there is nothing absorbed.
    if (r.status().code() == Status::Code::kNotFound) return std::shared_ptr<storage::ViewReader>();
    return r.status();
  }
  batch_ = *r;
  return batch_;
}

std::vector<std::span<const std::byte>> Instance::mappings() const {
  return {m_->live.mapping(),
          m_->series.mapping(),
          {reinterpret_cast<const std::byte*>(&stats()), sizeof(ipc::StatsBlock)}};
}

// ---------------------------------------------------------------------------------------------
// LiveSource

SourceScan LiveSource::for_each_bucket(std::span<const uint64_t> rows, int64_t width_ns,
                                       int64_t from_ns, int64_t to_ns,
                                       const SourceEntryFn& fn) const {
  SourceScan r;
  const ipc::LiveViewInfo info = live_.info(view_);
  const auto w = std::find(info.widths_ns.begin(), info.widths_ns.end(), width_ns);
  if (w == info.widths_ns.end() || rows.empty() || to_ns <= from_ns) return r;
  const auto wi = static_cast<uint32_t>(w - info.widths_ns.begin());
  const auto deliver = [&](const ipc::EntryMeta& m, std::span<const std::byte> state) {
    // The batch views hold it (generation 0: entries written without one, never absorbed).
    if (after_generation_ != kNoGeneration && m.key.generation <= after_generation_) return;
    fn(SourceEntry{m.key.series_id, m.key.bucket_start_ns, m.first_pos, m.last_pos, state});
    ++r.entries;
  };
  // Slots touched: per row, read_range probes each bucket start or scans the row's shard,
  // whichever is fewer; one scan of the view touches every slot once.
  const uint64_t buckets = (static_cast<uint64_t>(to_ns) - static_cast<uint64_t>(from_ns) +
                            static_cast<uint64_t>(width_ns) - 1) /
                           static_cast<uint64_t>(width_ns);
  const uint64_t per_row = std::min(buckets, info.shard_capacity);
  const uint64_t all_slots = info.shard_capacity * info.shard_count;
  if (per_row > all_slots / rows.size()) {
    r.busy = live_
                 .scan(view_, std::nullopt,
                       [&](const ipc::EntryMeta& m, std::span<const std::byte> state) {
                         if (m.key.width_index == wi && m.key.bucket_start_ns >= from_ns &&
                             m.key.bucket_start_ns < to_ns &&
                             std::binary_search(rows.begin(), rows.end(), m.key.series_id))
                           deliver(m, state);
                       })
                 .busy;
    return r;
  }
  for (uint64_t row : rows)
    r.busy += live_.read_range(view_, row, wi, from_ns, to_ns, deliver).busy;
  return r;
}

// ---------------------------------------------------------------------------------------------
// BatchSource

Result<BatchRead> read_batch(const Instance& inst, const ViewContext& view) {
  BatchRead b;
  auto reader = inst.batch();
  if (!reader.ok()) return reader.status();
  if (*reader == nullptr) return b;
  auto snap = (*reader)->snapshot();
  if (!snap.ok()) return snap.status();
  b.snapshot.emplace(std::move(snap).value());
  const storage::Watermark& wm = b.snapshot->watermark();
  const storage::ViewInfo* v = b.snapshot->find_view(view.def.name);
  if (v == nullptr) return b;
  // The daemon evicts a view's live entries only while this same rule holds (daemon.cc).
  if (v->current_version == 0 || v->definition_hash != view.def.definition_hash()) {
    b.rebuilding = true;
    return b;
  }
  b.version = v;
  b.watermark_offset = wm.log_offset;
  b.generation = wm.records > 0 ? generation_of(wm.ring_epoch, wm.ring_pos) : kNoGeneration;
  return b;
}

SourceScan BatchSource::for_each_bucket(std::span<const uint64_t> rows, int64_t width_ns,
                                        int64_t from_ns, int64_t to_ns,
                                        const SourceEntryFn& fn) const {
  SourceScan r;
  if (batch_.version == nullptr || !status_.ok()) return r;
  const auto& widths = view_.def.widths_ns;  // the version's: same definition hash
  const auto w = std::find(widths.begin(), widths.end(), width_ns);
  if (w == widths.end()) return r;
  const auto wi = static_cast<uint8_t>(w - widths.begin());
  for (uint64_t row : rows) {
    Status s = batch_.snapshot->scan(*batch_.version, row, wi, from_ns, to_ns,
                                     [&](int64_t bucket, std::span<const std::byte> state) {
                                       fn(SourceEntry{row, bucket, 0, 0, state});
                                       ++r.entries;
                                       return true;
                                     });
    if (!s.ok()) {
      status_ = s;
      break;
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Merging

Result<StepPlan> plan_steps(const ViewDef& view, int64_t from_ns, int64_t to_ns, int64_t step_ns) {
  // Half the i64 range either way: aligning and summing steps below cannot overflow.
  constexpr int64_t kLimit = std::numeric_limits<int64_t>::max() / 2;
  if (from_ns >= to_ns) {
    return Status::Invalid("empty time range: from " + std::to_string(from_ns) +
                           " ns is not before to " + std::to_string(to_ns) + " ns");
  }
  if (from_ns < -kLimit || to_ns > kLimit) return Status::Invalid("time range out of bounds");
  StepPlan p;
  p.step_ns =
      step_ns != 0 ? step_ns : *std::min_element(view.widths_ns.begin(), view.widths_ns.end());
  if (p.step_ns < 0 || p.step_ns > kLimit) {
    return Status::Invalid("step " + std::to_string(step_ns) + " ns is out of range");
  }
  for (int64_t w : view.widths_ns) {
    if (p.step_ns % w == 0 && w > p.width_ns) p.width_ns = w;
  }
  if (p.width_ns == 0) {
    return Status::Invalid("step " + format_duration_ns(p.step_ns) + " is not a multiple of any " +
                           "bucket width of view '" + view.name + "' (" +
                           join_widths(view.widths_ns) + ")");
  }
  p.from_ns = ipc::bucket_start(from_ns, p.step_ns);
  p.to_ns = ipc::bucket_start(to_ns - 1, p.step_ns) + p.step_ns;
  return p;
}

StepStates::StepStates(const StepPlan& plan, size_t state_bytes, bool dense)
    : plan_(plan), state_bytes_(state_bytes), dense_(dense) {}

std::span<std::byte> StepStates::at(int64_t bucket_start_ns, const AggregateLayout& layout) {
  const int64_t step = ipc::bucket_start(bucket_start_ns, plan_.step_ns);
  std::span<std::byte> state;
  bool fresh = false;
  if (dense_) {
    const auto k = static_cast<size_t>((static_cast<uint64_t>(step) - static_cast<uint64_t>(plan_.from_ns)) /
                                       static_cast<uint64_t>(plan_.step_ns));
    if (flat_.empty()) {
      const size_t steps = static_cast<size_t>((static_cast<uint64_t>(plan_.to_ns) - static_cast<uint64_t>(plan_.from_ns)) /
                                               static_cast<uint64_t>(plan_.step_ns));
      flat_.resize(steps * state_bytes_);
      has_.assign(steps, 0);
    }
    state = std::span<std::byte>(flat_.data() + k * state_bytes_, state_bytes_);
    fresh = has_[k] == 0;
    has_[k] = 1;
  } else {
    auto [it, inserted] = sparse_.try_emplace(step);
    if (inserted) it->second.resize(state_bytes_);
    state = it->second;
    fresh = inserted;
  }
  if (fresh) {
    layout.init(state);
    ++count_;
  }
  return state;
}

void StepStates::for_each(const std::function<void(int64_t, std::span<const std::byte>)>& fn) const {
  if (!dense_) {
    for (const auto& [ts, state] : sparse_) fn(ts, state);
    return;
  }
  for (size_t k = 0; k < has_.size(); ++k) {
    if (has_[k] != 0) {
      fn(plan_.from_ns + static_cast<int64_t>(k) * plan_.step_ns,
         std::span<const std::byte>(flat_.data() + k * state_bytes_, state_bytes_));
    }
  }
}

Merged merge_states(const MergeSpec& spec, std::span<const StateSource* const> sources) {
  const AggregateLayout& layout = *spec.layout;
  // One flat array per group while every group's steps together stay small (a few MiB).
  constexpr uint64_t kDenseBytes = uint64_t{8} << 20;
  const uint64_t steps = (static_cast<uint64_t>(spec.steps.to_ns) - static_cast<uint64_t>(spec.steps.from_ns)) /
                         static_cast<uint64_t>(spec.steps.step_ns);
  const bool dense = steps <= kDenseBytes && spec.group_count <= kDenseBytes &&
                     steps * std::max<uint64_t>(spec.group_count, 1) * layout.state_bytes() <= kDenseBytes;
  Merged out;
  out.groups.assign(spec.group_count, StepStates(spec.steps, layout.state_bytes(), dense));
  out.row_has_data.assign(spec.rows.size(), false);
  const SourceEntryFn fold = [&](const SourceEntry& e) {
    const auto it = std::lower_bound(spec.rows.begin(), spec.rows.end(), e.row_id);
    if (it == spec.rows.end() || *it != e.row_id) return;
    // Another process wrote these bytes: check them before a sketch trusts its own lengths.
    if (e.state.size() != layout.state_bytes() || !layout.validate(e.state).ok()) {
      ++out.corrupt;
      return;
    }
    const auto row = static_cast<size_t>(it - spec.rows.begin());
    out.row_has_data[row] = true;
    layout.merge(out.groups[spec.group_of_row[row]].at(e.bucket_start_ns, layout), e.state);
  };
  for (const StateSource* source : sources) {
    out.busy += source
                    ->for_each_bucket(spec.rows, spec.steps.width_ns, spec.steps.from_ns,
                                      spec.steps.to_ns, fold)
                    .busy;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Operations

Status for_each_row(const Instance& inst, const ViewContext* view, const RowFilter& filter,
                    bool check_presence,
                    const std::function<void(uint64_t, const RowKeyView&)>& fn,
                    const storage::ViewSnapshot* batch) {
  if (view != nullptr) {
    for (const client::Tag& t : filter.where) {
      if (Status s = check_group_tag(*view, t.key, "a filter on"); !s.ok()) return s;
    }
  }
  // Whether a view can hold a row of this key; fnmatch once per (view, measurement).
  std::unordered_map<std::string, std::vector<bool>> measurement_in;
  const auto may_hold = [&](const ViewContext& v, const RowKeyView& key) {
    auto [in, fresh] = measurement_in.try_emplace(std::string(key.measurement));
    if (fresh) {
      for (const ViewContext& w : inst.views())
        in->second.push_back(w.def.matches_measurement(key.measurement));
    }
    if (!in->second[v.index] || !v.def.takes_field(key.field)) return false;
    if (v.def.group_all_tags) return true;
    return std::all_of(key.tags.begin(), key.tags.end(),
                       [&](const Tag& t) { return contains(v.def.group_by, t.key); });
  };
  std::optional<std::unordered_set<uint64_t>> present;  // rows with a bucket in `view`
  const auto in_view = [&](uint64_t row_id, const RowKeyView& key) {
    if (!may_hold(*view, key)) return false;
    if (!check_presence) return true;
    const bool ambiguous = std::any_of(
        inst.views().begin(), inst.views().end(),
        [&](const ViewContext& w) { return w.index != view->index && may_hold(w, key); });
    if (!ambiguous) return true;
    if (!present) {
      present.emplace();
      inst.live().scan(view->index, std::nullopt,
                       [&](const ipc::EntryMeta& m, std::span<const std::byte>) {
                         present->insert(m.key.series_id);
                       });
    }
    return present->contains(row_id);
  };
  RowKeyView key;
  std::unordered_set<uint64_t> seen;
  const auto visit_key = [&](uint64_t id, std::span<const std::byte> bytes, bool live) {
    if (!decode_row_key(bytes, &key)) return;  // not a row key: no row of any view
    if (!filter.measurement.empty() && key.measurement != filter.measurement) return;
    if (!filter.field.empty() && key.field != filter.field) return;
    for (const client::Tag& want : filter.where) {
      const Tag* t = find_tag(key, want.key);
      if (t == nullptr || t->value != want.value) return;
    }
    if (view != nullptr && !(live ? in_view(id, key) : may_hold(*view, key))) return;
    if (batch != nullptr && !seen.insert(id).second) return;
    fn(id, key);
  };
  const ipc::SeriesFn visit = [&](const ipc::SeriesEntry& e) { visit_key(e.series_id, e.key, true); };
  if (filter.measurement.empty()) {
    inst.series().for_each(visit);
  } else {
    inst.series().for_each_in_measurement(filter.measurement, visit);
  }
  if (batch != nullptr) {
    Status s = batch->for_each_series([&](uint64_t id, std::span<const std::byte> bytes) {
      visit_key(id, bytes, false);
      return true;
    });
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

ViewInfo describe_view(const Instance& inst, const ViewContext& view) {
  ViewInfo v;
  const ipc::LiveViewInfo info = inst.live().info(view.index);
  v.name = view.def.name;
  v.widths_ns.assign(info.widths_ns.begin(), info.widths_ns.end());
  for (const AggOutput& o : view.layout.spec().outputs) v.outputs.push_back(agg_output_name(o));
  v.definition = std::string(info.definition);
  v.measurements = view.def.measurements;
  v.fields = view.def.fields;
  v.group_all_tags = view.def.group_all_tags;
  v.group_by = view.def.group_by;
  v.live_window_ns = view.def.live_window_ns;
  v.change_seq = inst.live().change_seq(view.index);
  const ipc::LiveViewStats s = inst.live().stats(view.index);
  v.stats = ViewStats{s.capacity_entries, s.entries_used, s.inserts,
                      s.overflow,         s.evictions,    s.late_events};
  return v;
}

Status read_bucket(const Instance& inst, std::string_view view_name, uint64_t row_id,
                   int64_t width_ns, int64_t bucket_start_ns, Point* out) {
  auto view = inst.find_view(view_name);
  if (!view.ok()) return view.status();
  const ViewContext& v = *view.value();
  const auto& widths = v.def.widths_ns;
  const auto w = std::find(widths.begin(), widths.end(), width_ns);
  if (w == widths.end()) {
    return Status::Invalid("view '" + v.def.name + "' has no bucket width " +
                           std::to_string(width_ns) + " ns (widths: " + join_widths(widths) + ")");
  }
  if (width_ns <= 0 || bucket_start_ns < std::numeric_limits<int64_t>::min() + width_ns ||
      ipc::bucket_start(bucket_start_ns, width_ns) != bucket_start_ns) {
    return Status::Invalid("bucket start " + std::to_string(bucket_start_ns) +
                           " ns is not a multiple of the width " + format_duration_ns(width_ns));
  }
  // One step of one bucket of one row: the same merge of batch and live as any query.
  Query q;
  q.view = std::string(view_name);
  q.row_id = row_id;
  q.from_ns = bucket_start_ns;
  q.to_ns = bucket_start_ns + width_ns;
  q.step_ns = width_ns;
  QueryResult r;
  if (Status s = run_query(inst, q, &r); !s.ok()) return s;
  if (r.busy_entries != 0) {
    return Status::Busy("view '" + v.def.name + "', row " + std::to_string(row_id) +
                        ": the bucket kept being rewritten; try again");
  }
  if (!r.series.empty() && !r.series.front().points.empty()) {
    *out = r.series.front().points.front();
    return Status::Ok();
  }
  std::vector<std::byte> state(v.layout.state_bytes());
  v.layout.init(state);  // no event: the empty state
  out->ts_ns = bucket_start_ns;
  out->count = 0;
  out->values.resize(v.layout.output_count());
  v.layout.finalize_all(state, out->values);
  return Status::Ok();
}

Status run_query(const Instance& inst, const Query& q, QueryResult* out) {
  auto view_r = inst.find_view(q.view);
  if (!view_r.ok()) return view_r.status();
  const ViewContext& view = *view_r.value();
  const AggregateLayout& layout = view.layout;
  auto plan = plan_steps(view.def, q.from_ns, q.to_ns, q.step_ns);
  if (!plan.ok()) return plan.status();
  const StepPlan& steps = plan.value();
  const uint64_t step_count =
      (static_cast<uint64_t>(steps.to_ns) - static_cast<uint64_t>(steps.from_ns)) /
      static_cast<uint64_t>(steps.step_ns);
  if (q.fill_empty && step_count > kMaxFilledSteps) {
    return Status::Invalid("fill_empty: " + std::to_string(step_count) + " steps of " +
                           format_duration_ns(steps.step_ns) + ", at most " +
                           std::to_string(kMaxFilledSteps) + "; use a larger step");
  }

  // Outputs: names as the view's canonical ones (so "p99.0" finds "p99").
  std::vector<std::string> names;
  for (const AggOutput& o : layout.spec().outputs) names.push_back(agg_output_name(o));
  std::vector<size_t> pick;
  for (const std::string& want : q.outputs) {
    auto parsed = parse_agg_output(want);
    const auto it =
        parsed.ok() ? std::find(names.begin(), names.end(), agg_output_name(*parsed)) : names.end();
    if (it == names.end()) {
      return Status::Invalid("view '" + view.def.name + "' has no output '" + want +
                             "' (outputs: " + join(names) + ")");
    }
    pick.push_back(static_cast<size_t>(it - names.begin()));
  }
  if (pick.empty()) {
    for (size_t i = 0; i < names.size(); ++i) pick.push_back(i);
  }
  if (!q.group_by.empty()) {
    if (Status s = check_group_tag(view, q.group_by, "grouping by"); !s.ok()) return s;
  }

  // Rows, and the series (field, group value) each one joins.
  using GroupKey = std::pair<std::string, std::optional<std::string>>;
  std::map<GroupKey, uint32_t> group_index;
  std::vector<std::pair<uint64_t, uint32_t>> rows;  // (row id, group)
  const auto add_row = [&](uint64_t id, const RowKeyView* key) {
    GroupKey g{key != nullptr ? std::string(key->field) : std::string(), std::nullopt};
    if (!q.group_by.empty()) {
      const Tag* t = key != nullptr ? find_tag(*key, q.group_by) : nullptr;
      g.second = t != nullptr ? std::string(t->value) : std::string();
    }
    const auto [it, fresh] = group_index.try_emplace(std::move(g), 0);
    if (fresh) it->second = static_cast<uint32_t>(group_index.size() - 1);
    rows.emplace_back(id, it->second);
  };
  // The batch views, read in one snapshot paired with the live entries beyond its watermark.
  const bool want_batch = q.sources != Query::Sources::kLiveOnly;
  const bool want_live = q.sources != Query::Sources::kBatchOnly;
  BatchRead batch;
  if (want_batch) {
    auto b = read_batch(inst, view);
    if (!b.ok()) return b.status();
    batch = std::move(b).value();
  }
  if (q.row_id) {
    // A row the dictionary could not register (it was full) is still read, by id alone.
    RowKeyView key;
    const auto e = inst.series().find(*q.row_id);
    add_row(*q.row_id, e && decode_row_key(e->key, &key) ? &key : nullptr);
  } else {
    Status s = for_each_row(inst, &view, q.rows, /*check_presence=*/false,
                            [&](uint64_t id, const RowKeyView& key) { add_row(id, &key); },
                            batch.snapshot ? &*batch.snapshot : nullptr);
    if (!s.ok()) return s;
  }
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end(),
                         [](const auto& a, const auto& b) { return a.first == b.first; }),
             rows.end());
  std::vector<uint64_t> row_ids;
  std::vector<uint32_t> group_of_row;
  for (const auto& [id, g] : rows) {
    row_ids.push_back(id);
    group_of_row.push_back(g);
  }

  Merged merged;
  for (int attempt = 1;; ++attempt) {
    const LiveSource live(inst.live(), view.index, want_batch ? batch.generation : kNoGeneration);
    const BatchSource batch_source(batch, view);
    std::vector<const StateSource*> sources;
    if (want_batch) sources.push_back(&batch_source);
    if (want_live) sources.push_back(&live);
    merged = merge_states(MergeSpec{&layout, row_ids, group_of_row, group_index.size(), steps}, sources);
    if (!batch_source.status().ok()) return batch_source.status();
    // Live entries the snapshot does not cover may have left meanwhile (a newer watermark took
    // them): then read both again, at that newer watermark.
    if (!want_live || !want_batch || inst.live().evicted_generation(view.index) <= batch.generation) break;
    if (attempt == kMergeAttempts) {
      return Status::Busy("view '" + view.def.name + "': the batch layer kept absorbing what the "
                          "query was reading through " + std::to_string(kMergeAttempts) + " attempts; try again");
    }
    batch = BatchRead{};  // ends the old snapshot first
    auto b = read_batch(inst, view);
    if (!b.ok()) return b.status();
    batch = std::move(b).value();
  }
  std::vector<uint64_t> rows_in_group(group_index.size(), 0);
  for (size_t i = 0; i < row_ids.size(); ++i)
    rows_in_group[group_of_row[i]] += merged.row_has_data[i];
  if (merged.corrupt != 0) {
    return Status::Corruption("view '" + view.def.name + "': " + std::to_string(merged.corrupt) +
                              " bucket states fail validation");
  }

  out->outputs.clear();
  for (size_t i : pick) out->outputs.push_back(names[i]);
  out->step_ns = steps.step_ns;
  out->width_ns = steps.width_ns;
  out->from_ns = steps.from_ns;
  out->to_ns = steps.to_ns;
  out->busy_entries = merged.busy;
  out->batch_watermark_offset = batch.watermark_offset;
  out->batch_rebuilding = batch.rebuilding;
  // A caller that asks again with the same QueryResult gets its series, points and value
  // arrays reused in place: a repeated query allocates nothing for its answer.
  std::vector<std::byte> empty(layout.state_bytes());
  layout.init(empty);
  std::vector<double> all(layout.output_count());
  size_t n_series = 0;
  for (const auto& [key, g] : group_index) {  // map order: by field, then group value
    const StepStates& states = merged.groups[g];
    if (states.empty()) continue;  // no row of the series has data in the range
    if (n_series == out->series.size()) out->series.emplace_back();
    Series& s = out->series[n_series++];
    s.field = key.first;
    s.group_value = key.second;
    s.rows = rows_in_group[g];
    size_t n_points = 0;
    const auto emit = [&](int64_t ts, std::span<const std::byte> state) {
      if (n_points == s.points.size()) s.points.emplace_back();
      Point& p = s.points[n_points++];
      layout.finalize_all(state, all);
      p.ts_ns = ts;
      p.count = layout.count(state);
      p.values.resize(pick.size());
      for (size_t i = 0; i < pick.size(); ++i) p.values[i] = all[pick[i]];
    };
    if (q.fill_empty) {
      s.points.reserve(step_count);
      int64_t next = steps.from_ns;  // the first step not yet emitted
      const auto fill_to = [&](int64_t end) {
        for (; next < end; next += steps.step_ns) emit(next, empty);
      };
      states.for_each([&](int64_t ts, std::span<const std::byte> state) {
        fill_to(ts);
        emit(ts, state);
        next = ts + steps.step_ns;
      });
      fill_to(steps.to_ns);
    } else {
      states.for_each(emit);
    }
    s.points.resize(n_points);
  }
  out->series.resize(n_series);
  return Status::Ok();
}

}  // namespace runnel::client::internal
