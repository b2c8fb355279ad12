// The in-process stand-in for runneld (see fake_instance.h).
#include "tests/client/fake_instance.h"

#include <unistd.h>

#include <atomic>
#include <stdexcept>

#include "ipc/live_table_layout.h"
#include "model/line_protocol.h"
#include "model/record.h"

namespace runnel::client::testing {
namespace {

template <typename T>
T take(Result<T> r, const char* what) {
  if (!r.ok()) throw std::runtime_error(std::string(what) + ": " + r.status().ToString());
  return std::move(r).value();
}

// fn(line) for each non-empty '\n'-separated line.
template <typename Fn>
void for_each_line(std::string_view text, Fn&& fn) {
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (!line.empty()) fn(line);
  }
}

}  // namespace

ViewDef small_view() {
  ViewDef v = default_view();
  v.capacity = 1024;
  return v;
}

FakeInstance::FakeInstance(std::vector<ViewDef> views, uint32_t shards,
                           uint64_t ring_capacity_bytes)
    : views_(std::move(views)), shards_(shards), ring_capacity_(ring_capacity_bytes) {
  static std::atomic<int> counter{0};
  name_ = "runnel-client-test-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
  for (const ViewDef& v : views_) layouts_.push_back(take(AggregateLayout::for_view(v), "layout"));
  create();
}

FakeInstance::~FakeInstance() {
  writers_.clear();
  live_.reset();
  series_.reset();
  stats_.reset();
  ring_.reset();
  (void)ipc::LiveTables::remove(name_);
  (void)ipc::SeriesDictionary::remove(name_);
  ipc::StatsSegment::remove(name_);
  (void)ipc::Ring::remove(name_ + ".ring");
}

void FakeInstance::create() {
  writers_.clear();
  std::vector<ipc::LiveViewSpec> specs;
  for (uint32_t v = 0; v < views_.size(); ++v) {
    ipc::LiveViewSpec s;
    s.name = views_[v].name;
    s.view_id = v;
    s.definition_hash = views_[v].definition_hash();
    s.definition = views_[v].canonical();
    s.state_bytes = static_cast<uint32_t>(layouts_[v].state_bytes());
    s.widths_ns = views_[v].widths_ns;
    s.capacity_entries = views_[v].capacity;
    s.shard_count = shards_;
    s.initial_state.resize(s.state_bytes);
    layouts_[v].init(s.initial_state);
    specs.push_back(std::move(s));
  }
  live_ = std::make_unique<ipc::LiveTables>(take(ipc::LiveTables::create(name_, specs), "live"));
  ipc::SeriesDictionaryOptions so;
  so.max_series = 1 << 12;
  so.arena_bytes = 1 << 20;
  so.max_measurements = 64;
  series_ = std::make_unique<ipc::SeriesDictionary>(
      take(ipc::SeriesDictionary::create(name_, so), "series"));
  stats_ = take(ipc::StatsSegment::create(name_, 0640, -1), "stats");
  if (ring_ == nullptr) {
    ring_ = std::make_unique<ipc::Ring>(
        take(ipc::Ring::open_or_create(name_ + ".ring", ring_capacity_), "ring"));
  }
  for (uint32_t v = 0; v < views_.size(); ++v) {
    writers_.emplace_back();
    for (uint32_t s = 0; s < shards_; ++s)
      writers_.back().push_back(take(live_->attach_writer(v, s), "writer"));
  }
  router_ = std::make_unique<ViewRouter>(views_);
}

void FakeInstance::restart() {
  writers_.clear();
  // Created over the old objects (which stay mapped here until replaced), as runneld does.
  auto keep_live = std::move(live_);
  auto keep_series = std::move(series_);
  create();
}

std::vector<std::byte> FakeInstance::record(std::string_view line) {
  LineParser parser;
  std::vector<std::byte> rec;
  const char* reason = "";
  if (parser.parse(line, ParseOptions{}, 0, &rec, &reason) != ParseError::kOk) {
    throw std::runtime_error("bad test line '" + std::string(line) + "': " + reason);
  }
  return rec;
}

void FakeInstance::write(std::string_view lines) {
  for_each_line(lines, [&](std::string_view line) {
    const std::vector<std::byte> bytes = record(line);
    const RecordView rec = take(RecordView::parse(bytes), "record");
    const uint64_t pos = position_++;
    router_->route(
        rec, [](uint64_t) { return true; },
        [&](const RowUpdate& u) {
          series_->insert(u.row_id, router_->row_key(rec, u.view, u.field));
          const ViewDef& def = views_[u.view];
          ipc::ShardWriter& w = writers_[u.view][live_->tables().shard_of(u.view, u.row_id)];
          for (uint32_t wi = 0; wi < def.widths_ns.size(); ++wi) {
            const ipc::EntryKey key{u.row_id, wi, ipc::bucket_start(u.ts_ns, def.widths_ns[wi])};
            ipc::LiveEntry* e = w.find_or_insert(key);
            if (e == nullptr) {
              w.add_overflow();
              continue;
            }
            w.begin_write(e);
            layouts_[u.view].update(w.state(e), u.value, u.ts_ns, u.distinct_hash, u.has_distinct);
            w.note_position(e, pos);
            w.end_write(e);
          }
        });
  });
  for (uint32_t v = 0; v < views_.size(); ++v) live_->end_batch(v);
  live_->wake_waiters();
}

void FakeInstance::publish(std::string_view lines) {
  for_each_line(lines, [&](std::string_view line) {
    if (ring_->try_write(record(line)) != ipc::WriteStatus::kOk) {
      throw std::runtime_error("ring refused a record");
    }
  });
}

}  // namespace runnel::client::testing
