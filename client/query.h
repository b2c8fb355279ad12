// The client's read side (internal): the read-only mappings of one instance, the sources of
// aggregate states (the live tables today; the LMDB batch views next) and the one place where
// states merge: bucket ⊕ bucket into steps, row ⊕ row into series, source ⊕ source.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/live_table.h"
#include "ipc/series_dictionary.h"
#include "ipc/stats.h"
#include "model/aggregate.h"
#include "model/status.h"
#include "model/view.h"
#include "model/view_router.h"
#include "runnel/client.h"
#include "storage/view_store.h"

namespace runnel::client::internal {

// Inside the library errors are model Statuses (client.cc maps them onto client::Status), and a
// Tag is the model's view of one in shared memory.
using Status = ::runnel::Status;
using Tag = ::runnel::Tag;

// One view of an instance: its definition read back from the descriptor's canonical text, and
// the aggregate layout every state of the view has.
struct ViewContext {
  uint32_t index = 0;  // in the live tables
  ViewDef def;
  AggregateLayout layout;
};

// The read-only (PROT_READ) mappings of one daemon instance: live tables, series dictionary and
// stats. Immutable once opened; thread-safe. After a daemon restart retired() turns true and
// the owner opens a new Instance by name.
class Instance {
 public:
  // Errors: NotFound (no such instance), Unsupported (a layout version or view state format
  // this build does not read), Corruption, Busy (being replaced right now).
  static Result<std::unique_ptr<Instance>> open(const std::string& shm_name);
  ~Instance();

  const std::string& shm_name() const { return shm_name_; }
  bool retired() const;
  uint64_t instance_id() const { return live().instance_id(); }
  const ipc::LiveTablesView& live() const;
  const ipc::SeriesDictionaryView& series() const;
  const ipc::StatsBlock& stats() const;
  const std::vector<ViewContext>& views() const { return views_; }
  // NotFound names the view and lists those there are.
  Result<const ViewContext*> find_view(std::string_view name) const;
  // Every mapping this instance holds (for the test that they are read-only).
  std::vector<std::span<const std::byte>> mappings() const;
  // The batch views the daemon announced, opened read-only on first use (one environment per
  // directory and process, shared); nullptr when there is no batch layer or it has not
  // created its views yet. Errors name the directory (e.g. no write access to lock.mdb).
  Result<std::shared_ptr<storage::ViewReader>> batch() const;

 private:
  struct Mappings;
  Instance(std::string shm_name, std::unique_ptr<Mappings> m, std::vector<ViewContext> views);
  std::string shm_name_;
  std::unique_ptr<Mappings> m_;
  std::vector<ViewContext> views_;
  mutable std::mutex batch_mu_;
  mutable std::shared_ptr<storage::ViewReader> batch_;
};

// ---------------------------------------------------------------------------------------------
// State sources

// One bucket's state as a source hands it out, valid during the callback. first_pos/last_pos
// are the ring/log positions of the events folded in (0 where a source does not know them):
// what batch ⊕ live will use to take each event from exactly one source.
struct SourceEntry {
  uint64_t row_id = 0;
  int64_t bucket_start_ns = 0;
  uint64_t first_pos = 0;
  uint64_t last_pos = 0;
  std::span<const std::byte> state;  // the view's AggregateLayout
};
using SourceEntryFn = std::function<void(const SourceEntry&)>;

struct SourceScan {
  uint64_t entries = 0;
  uint64_t busy = 0;  // skipped: mid-write through every retry
};

// Where aggregate states of one view come from. Thread-compatible.
class StateSource {
 public:
  virtual ~StateSource() = default;
  // Calls fn, in no particular order, for every bucket of width `width_ns` of the rows in
  // `rows` (sorted, unique) whose start lies in [from_ns, to_ns).
  virtual SourceScan for_each_bucket(std::span<const uint64_t> rows, int64_t width_ns,
                                     int64_t from_ns, int64_t to_ns,
                                     const SourceEntryFn& fn) const = 0;
};

// The speed layer's live tables: entries of generations after `after_generation` (those the
// batch views do not hold). Probes each row's buckets, or scans the whole view once when that
// touches fewer slots.
class LiveSource final : public StateSource {
 public:
  LiveSource(const ipc::LiveTablesView& live, uint32_t view, uint64_t after_generation = 0)
      : live_(live), view_(view), after_generation_(after_generation) {}
  SourceScan for_each_bucket(std::span<const uint64_t> rows, int64_t width_ns, int64_t from_ns,
                             int64_t to_ns, const SourceEntryFn& fn) const override;

 private:
  const ipc::LiveTablesView& live_;
  uint32_t view_;
  uint64_t after_generation_;
};

// One consistent read of a view's batch states: a snapshot of the LMDB views, the view's
// serving version when its definition is the live one, and the generation the watermark
// closes (model/generation.h): live entries up to it are in the batch views.
struct BatchRead {
  std::optional<storage::ViewSnapshot> snapshot;
  const storage::ViewInfo* version = nullptr;  // null: no batch states to merge for the view
  uint64_t generation = 0;
  uint64_t watermark_offset = 0;
  bool rebuilding = false;  // the store holds the view, but not (yet) under this definition
};
Result<BatchRead> read_batch(const Instance& inst, const ViewContext& view);

// The batch views' states of one view version.
class BatchSource final : public StateSource {
 public:
  BatchSource(const BatchRead& batch, const ViewContext& view) : batch_(batch), view_(view) {}
  SourceScan for_each_bucket(std::span<const uint64_t> rows, int64_t width_ns, int64_t from_ns,
                             int64_t to_ns, const SourceEntryFn& fn) const override;
  // The first error a scan met (a scan cannot return one).
  const Status& status() const { return status_; }

 private:
  const BatchRead& batch_;
  const ViewContext& view_;
  mutable Status status_;
};

// ---------------------------------------------------------------------------------------------
// Merging

// Which buckets answer a query: the largest width dividing the step, the steps aligned to the
// step (from rounded down, to rounded up to whole steps).
struct StepPlan {
  int64_t width_ns = 0;
  int64_t step_ns = 0;
  int64_t from_ns = 0;  // first step start
  int64_t to_ns = 0;    // end of the last step
};
// Invalid names the view, the step and the widths there are.
Result<StepPlan> plan_steps(const ViewDef& view, int64_t from_ns, int64_t to_ns, int64_t step_ns);

struct MergeSpec {
  const AggregateLayout* layout = nullptr;
  std::span<const uint64_t> rows;          // sorted, unique
  std::span<const uint32_t> group_of_row;  // parallel to rows: the series each row joins
  size_t group_count = 0;
  StepPlan steps;
};

// The merged states of one group (series), one per step that any bucket fell in. Dense (one
// flat array over every step of the plan) when the plan is small enough, else sparse.
class StepStates {
 public:
  StepStates(const StepPlan& plan, size_t state_bytes, bool dense);
  // The state of the step holding `bucket_start_ns`, initialized by `layout` on first use.
  std::span<std::byte> at(int64_t bucket_start_ns, const AggregateLayout& layout);
  bool empty() const { return count_ == 0; }
  // fn(step start, state) for every step with a state, ascending.
  void for_each(const std::function<void(int64_t, std::span<const std::byte>)>& fn) const;

 private:
  StepPlan plan_;
  size_t state_bytes_;
  bool dense_;
  size_t count_ = 0;
  std::vector<std::byte> flat_;  // dense: step k at k * state_bytes
  std::vector<uint8_t> has_;     // dense: step k has a state
  std::map<int64_t, std::vector<std::byte>> sparse_;
};

struct Merged {
  std::vector<StepStates> groups;
  std::vector<bool> row_has_data;  // parallel to MergeSpec::rows
  uint64_t busy = 0;
  uint64_t corrupt = 0;  // bucket states that failed AggregateLayout::validate and were left out
};

// The one merge of the client: every bucket of every source folds (AggregateLayout::merge) into
// the state of its (group, step). The monoid makes the order irrelevant.
Merged merge_states(const MergeSpec& spec, std::span<const StateSource* const> sources);

// ---------------------------------------------------------------------------------------------
// Rows and the operations behind Client

// Calls fn(row_id, key) for every registered row that passes `filter` and belongs to `view`
// (nullptr: any view): its measurement and field are the view's and its tags are group tags of
// the view. The dictionary is shared by all views, so another view may register the very same
// key shape; with `check_presence` such a row is only passed if the view's live table holds a
// bucket of it (one scan of the view, made only when some row is ambiguous). Without it the row
// passes, which changes no query answer (it has no buckets in this view). Invalid when the
// filter names a tag the view does not group by.
// Rows the batch views named (`batch`, may be null) are visited too, once each: after a
// restart the live dictionary only knows rows seen since.
Status for_each_row(const Instance& inst, const ViewContext* view, const RowFilter& filter,
                    bool check_presence,
                    const std::function<void(uint64_t, const RowKeyView&)>& fn,
                    const storage::ViewSnapshot* batch = nullptr);

ViewInfo describe_view(const Instance& inst, const ViewContext& view);
Status read_bucket(const Instance& inst, std::string_view view, uint64_t row_id, int64_t width_ns,
                   int64_t bucket_start_ns, Point* out);
Status run_query(const Instance& inst, const Query& query, QueryResult* out);

}  // namespace runnel::client::internal
