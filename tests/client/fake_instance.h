// Client tests without a daemon: an in-process stand-in that owns an instance's shared memory
// (live tables, series dictionary, stats, ring) under a unique name and folds line protocol
// into the live tables the way runneld's speed path does (ViewRouter + AggregateLayout).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/live_table.h"
#include "ipc/ring.h"
#include "ipc/series_dictionary.h"
#include "ipc/stats.h"
#include "model/aggregate.h"
#include "model/view.h"
#include "model/view_router.h"

namespace runnel::client::testing {

// The default view with a live table sized for a test (1024 entries).
ViewDef small_view();

// REQUIRES: one thread.
class FakeInstance {
 public:
  explicit FakeInstance(std::vector<ViewDef> views = {small_view()}, uint32_t shards = 2,
                        uint64_t ring_capacity_bytes = 1 << 16);
  ~FakeInstance();  // removes every object
  FakeInstance(const FakeInstance&) = delete;
  FakeInstance& operator=(const FakeInstance&) = delete;

  const std::string& name() const { return name_; }
  const std::vector<ViewDef>& views() const { return views_; }

  // Parses '\n'-separated lines (ns timestamps), registers their rows and folds every field into
  // every width of every view that takes it, then ends a batch on each view (waking waiters).
  // Counts the updates that found no room as overflow, as the speed path does.
  void write(std::string_view lines);
  // Appends the lines' records to the ring (for tails); nothing gates it, so producers lap.
  void publish(std::string_view lines);
  // A daemon restart: new, empty objects replace the current ones, which are marked retired.
  void restart();

  // Test access to the writable mapping of "<name>.live" (to corrupt or re-version it).
  std::string live_object() const { return name_ + ".live"; }

 private:
  void create();
  std::vector<std::byte> record(std::string_view line);

  std::string name_;
  std::vector<ViewDef> views_;
  uint32_t shards_;
  uint64_t ring_capacity_;
  std::vector<AggregateLayout> layouts_;
  std::unique_ptr<ViewRouter> router_;
  std::unique_ptr<ipc::LiveTables> live_;
  std::unique_ptr<ipc::SeriesDictionary> series_;
  std::unique_ptr<ipc::StatsSegment> stats_;
  std::unique_ptr<ipc::Ring> ring_;
  std::vector<std::vector<ipc::ShardWriter>> writers_;  // [view][shard]
  uint64_t position_ = 0;                               // stand-in for ring positions
};

}  // namespace runnel::client::testing
