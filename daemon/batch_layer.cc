// The compaction thread (see batch_layer.h): ticks of compaction, rebuild steps, rebuild
// requests, bucket and log retention, and the batch counters.
#include "daemon/batch_layer.h"

#include <spdlog/fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "daemon/thread_name.h"
#include "model/clock.h"

namespace runnel {
namespace {

// Rebuild steps per tick before compaction gets its turn again, so a long rebuild never holds
// the watermark (and the speed layer's expiry) back for long.
constexpr uint64_t kRebuildStepsPerTick = 4;
constexpr int64_t kErrorLogPeriodMs = 60'000;

// Compaction competes with the journal and the speed workers only for spare CPU. nice 10 (per
// thread on Linux) weighs it ~1/10 of a normal thread under contention, yet it keeps moving:
// SCHED_IDLE could starve it indefinitely under sustained ingest, and then the batch lag, the
// live tables' load and the undeletable log would grow without bound. Its I/O runs at the
// lowest best-effort level for the same reason (not the idle class).
void lower_priority() {
  const auto tid = static_cast<id_t>(syscall(SYS_gettid));
  if (setpriority(PRIO_PROCESS, tid, 10) != 0) {
    spdlog::debug("batch: setpriority: {}", std::strerror(errno));
  }
  constexpr int kIoprioWhoProcess = 1, kIoprioClassBe = 2, kIoprioClassShift = 13;
  if (syscall(SYS_ioprio_set, kIoprioWhoProcess, tid, (kIoprioClassBe << kIoprioClassShift) | 7) !=
      0) {
    spdlog::debug("batch: ioprio_set: {}", std::strerror(errno));
  }
}

}  // namespace

BatchLayer::BatchLayer(BatchLayerOptions options, ipc::StatsBlock& stats)
    : options_(std::move(options)), stats_(stats) {}

BatchLayer::~BatchLayer() { stop(); }

Status BatchLayer::open() {
  std::error_code ec;
  if (!std::filesystem::is_directory(options_.data_dir, ec)) {
    return Status::IoError("batch layer: data directory " + options_.data_dir.string() +
                           " is not a directory" + (ec ? ": " + ec.message() : ""));
  }
  const auto control = options_.data_dir / kControlDirName;
  std::filesystem::create_directories(control, ec);
  if (ec || ::chmod(control.c_str(), 0770) != 0) {
    spdlog::warn("batch: cannot prepare {} ({}): `runnelctl rebuild` requests will fail",
                 control.string(), ec ? ec.message() : std::strerror(errno));
  }
  if (Status s = open_store(); !s.ok()) {
    report_error("cannot open the batch views (retrying every tick; ingest and the log go on)", s);
  }
  publish();
  return Status::Ok();
}

Status BatchLayer::open_store() {
  storage::ViewStoreOptions so;
  so.dir = options_.data_dir / "views";
  so.initial_map_bytes = options_.initial_map_bytes;
  so.max_map_bytes = options_.max_map_bytes;
  so.sync = options_.sync;
  stats_.set(ipc::Counter::kBatchUnavailable, 1);
  auto store = storage::ViewStore::open(so);
  if (!store.ok()) return store.status();
  storage::CompactorOptions co;
  co.log_dir = options_.data_dir / "log";
  co.memory_budget_bytes = options_.memory_budget_bytes;
  co.max_step_records = options_.max_step_records;
  co.after_commit = [this](const storage::StepReport& step) { after_commit(step); };
  storage::ReconcileReport report;
  auto compactor = storage::Compactor::open(**store, options_.views, std::move(co), &report);
  if (!compactor.ok()) return compactor.status();
  store_ = std::move(*store);
  compactor_ = std::move(*compactor);
  spdlog::info(
      "batch views {}: watermark at log offset {} ({} records); views kept {}, updated {}, "
      "rebuilding {}, switched {}, removed {}",
      so.dir.string(), store_->watermark().log_offset, store_->watermark().records, report.kept,
      report.updated, report.rebuilding, report.switched, report.removed);
  // Versions current now are the baseline; building ones count as started (new or resumed).
  for (const storage::ViewMeta& vm : store_->state().views) {
    current_versions_[vm.name] = vm.current_version;
    seen_versions_.insert(vm.current_version);
  }
  stats_.add(ipc::Counter::kBatchRebuildsStarted, report.rebuilding.size());
  stats_.add(ipc::Counter::kBatchRebuildsFinished, report.switched.size());
  for (const storage::ViewMeta& vm : store_->state().views)
    seen_versions_.insert(vm.building_version);
  {
    std::lock_guard lock(mu_);
    watermark_ = store_->watermark();
  }
  stats_.set(ipc::Counter::kBatchUnavailable, 0);
  available_.store(true, std::memory_order_release);
  in_error_ = false;
  return Status::Ok();
}

void BatchLayer::start() {
  thread_ = std::thread([this] {
    name_this_thread("runneld-batch");
    run();
  });
}

void BatchLayer::stop() {
  stop_.store(true, std::memory_order_relaxed);
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void BatchLayer::poke() {
  {
    std::lock_guard lock(mu_);
    poked_ = true;
  }
  cv_.notify_all();
}

storage::Watermark BatchLayer::watermark() const {
  std::lock_guard lock(mu_);
  return watermark_;
}

void BatchLayer::set_on_absorbed(AbsorbedFn fn) {
  std::lock_guard lock(mu_);
  on_absorbed_ = std::move(fn);
}

void BatchLayer::run() {
  lower_priority();
  while (!stop_.load(std::memory_order_relaxed)) {
    const bool more = tick();
    // After failed ticks the wait doubles (up to a minute, or the interval if longer), so a
    // full map or a failing disk is not re-read from the watermark every interval.
    const int64_t wait_ms =
        std::min<int64_t>(int64_t{options_.interval_ms} << std::min(failed_ticks_, 10u),
                          std::max<int64_t>(options_.interval_ms, kErrorLogPeriodMs));
    std::unique_lock lock(mu_);
    if (!more) {
      cv_.wait_for(lock, std::chrono::milliseconds(wait_ms),
                   [&] { return poked_ || stop_.load(std::memory_order_relaxed); });
    }
    poked_ = false;
  }
}

bool BatchLayer::tick() {
  if (!store_) {
    if (Status s = open_store(); !s.ok()) {
      report_error("cannot open the batch views", s);
      ++failed_ticks_;
      return false;
    }
    spdlog::info("batch views opened; compaction resumes");
  }
  handle_requests();
  const storage::RunLimits limits{0, &stop_};
  bool more = false;
  bool failed = false;
  auto compacted = compactor_->compact(limits);
  if (!compacted.ok()) {
    report_error("compaction", compacted.status());
    failed = true;
  } else {
    stats_.add(ipc::Counter::kBatchInvalidRecords, compacted->invalid_records);
  }
  if (!failed && !stop_.load(std::memory_order_relaxed) && compactor_->rebuilding()) {
    auto rebuilt = compactor_->rebuild({kRebuildStepsPerTick, &stop_});
    if (!rebuilt.ok()) {
      report_error("rebuild", rebuilt.status());
      failed = true;
    } else {
      stats_.add(ipc::Counter::kBatchInvalidRecords, rebuilt->invalid_records);
      more = !rebuilt->caught_up;
    }
  }
  track_versions();
  if (!stop_.load(std::memory_order_relaxed)) apply_retention();
  failed_ticks_ = failed ? failed_ticks_ + 1 : 0;
  if (!failed && in_error_) {
    spdlog::info("batch: compaction recovered ({} failed ticks not logged)", errors_not_logged_);
    in_error_ = false;
    errors_not_logged_ = 0;
  }
  publish();
  notify_absorbed();
  return more && !failed;
}

void BatchLayer::handle_requests() {
  const auto control = options_.data_dir / kControlDirName;
  std::error_code ec;
  std::vector<std::string> views;
  for (std::filesystem::directory_iterator it(control, ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(kRebuildRequestPrefix, 0) == 0)
      views.push_back(name.substr(sizeof(kRebuildRequestPrefix) - 1));
  }
  std::sort(views.begin(), views.end());
  for (const std::string& view : views) {
    const auto file = control / (kRebuildRequestPrefix + view);
    if (!std::filesystem::remove(file, ec) || ec) {
      report_error("rebuild request", Status::IoError("cannot remove " + file.string() + ": " +
                                                      (ec ? ec.message() : "already gone")));
      continue;
    }
    stats_.add(ipc::Counter::kBatchRebuildRequests, 1);
    auto def = std::find_if(options_.views.begin(), options_.views.end(),
                            [&](const ViewDef& d) { return d.name == view; });
    if (def == options_.views.end()) {
      stats_.add(ipc::Counter::kBatchRebuildRejected, 1);
      spdlog::error("batch: rebuild requested for view '{}', which is not configured", view);
      continue;
    }
    if (Status s = compactor_->start_rebuild(*def); !s.ok()) {
      report_error("rebuild of view '" + view + "'", s);
      continue;
    }
    const storage::ViewMeta* vm = store_->state().find_view(view);
    spdlog::info("batch: rebuild of view '{}' requested: version {} is built from the retained log",
                 view,
                 vm && vm->building_version ? vm->building_version
                 : vm                       ? vm->current_version
                                            : 0);
  }
}

void BatchLayer::track_versions() {
  uint64_t building = 0;
  for (const storage::ViewMeta& vm : store_->state().views) {
    if (vm.building_version != 0) {
      ++building;
      if (seen_versions_.insert(vm.building_version).second) {
        stats_.add(ipc::Counter::kBatchRebuildsStarted, 1);
      }
    }
    uint64_t& known = current_versions_[vm.name];
    if (vm.current_version != known) {
      // Made current: a rebuild that chased the watermark, or one with nothing to read.
      if (seen_versions_.insert(vm.current_version).second) {
        stats_.add(ipc::Counter::kBatchRebuildsStarted, 1);
      }
      stats_.add(ipc::Counter::kBatchRebuildsFinished, 1);
      spdlog::info("batch: view '{}' switched to version {} (rebuild finished)", vm.name,
                   vm.current_version);
      known = vm.current_version;
    }
  }
  stats_.set(ipc::Counter::kBatchViewsBuilding, building);
}

void BatchLayer::apply_retention() {
  const int64_t now_ms = monotonic_ms();
  if (last_bucket_retention_ms_ == INT64_MIN ||
      now_ms - last_bucket_retention_ms_ >= options_.bucket_retention_period_ms) {
    last_bucket_retention_ms_ = now_ms;
    auto expired = store_->apply_retention(options_.bucket_retention, realtime_ns());
    if (!expired.ok()) report_error("bucket retention", expired.status());
  }
  if (auto dropped = store_->drop_retired(); !dropped.ok()) {
    report_error("dropping retired versions", dropped.status());
  }
  const storage::SegmentRetention& r = options_.log_retention;
  if (!options_.remove_log_segments_below || (r.max_age_ns == 0 && r.max_total_bytes == 0)) return;
  // Only below what every view (and every version being built) has absorbed, durably.
  auto plan = storage::plan_segment_retention(options_.data_dir / "log", store_->retention_offset(),
                                              r, realtime_ns());
  if (!plan.ok()) {
    report_error("log retention", plan.status());
    return;
  }
  if (plan->segments > 0) options_.remove_log_segments_below(plan->remove_below_offset);
}

void BatchLayer::after_commit(const storage::StepReport& step) {
  stats_.add(ipc::Counter::kBatchSteps, 1);
  if (step.version != 0) return;  // a rebuild step: the watermark did not move
  publish();
  notify_absorbed();
}

void BatchLayer::notify_absorbed() {
  const storage::Watermark wm = store_->watermark();
  AbsorbedFn fn;
  {
    std::lock_guard lock(mu_);
    watermark_ = wm;
    fn = on_absorbed_;
  }
  if (!fn) return;
  std::vector<bool> serving;
  for (const ViewDef& def : options_.views) {
    const storage::ViewMeta* vm = store_->state().find_view(def.name);
    const storage::VersionMeta* v = vm ? store_->state().find_version(vm->current_version) : nullptr;
    serving.push_back(v != nullptr && v->definition_hash == def.definition_hash());
  }
  fn(wm, serving);
}

void BatchLayer::publish() {
  using ipc::Counter;
  if (!store_) return;
  const storage::Watermark& wm = store_->watermark();
  stats_.set(Counter::kBatchWatermarkOffset, wm.log_offset);
  stats_.set(Counter::kBatchRecordsAbsorbed, wm.records);
  stats_.set(Counter::kBatchLastCommitNs, static_cast<uint64_t>(wm.commit_ns));
  const uint64_t written = stats_.get(Counter::kLogWrittenOffset);
  stats_.set(Counter::kBatchLagBytes, written > wm.log_offset ? written - wm.log_offset : 0);
  const storage::ViewStoreCounters& c = store_->counters();
  stats_.set(Counter::kBatchMapFull, c.map_full_errors.load(std::memory_order_relaxed));
  stats_.set(Counter::kBatchMapGrows, c.map_grows.load(std::memory_order_relaxed));
  stats_.set(Counter::kBatchBucketsExpired, c.buckets_expired.load(std::memory_order_relaxed));
  stats_.set(Counter::kBatchVersionsDropped, c.versions_dropped.load(std::memory_order_relaxed));
  stats_.set(Counter::kBatchMapBytes, store_->map_bytes());
}

void BatchLayer::report_error(const std::string& what, const Status& s) {
  stats_.add(ipc::Counter::kBatchErrors, 1);
  const int64_t now_ms = monotonic_ms();
  if (!in_error_ || now_ms - last_error_log_ms_ >= kErrorLogPeriodMs) {
    spdlog::error("batch: {}: {}{}", what, s.ToString(),
                  errors_not_logged_ ? fmt::format(" ({} similar errors since the last message)",
                                                   errors_not_logged_)
                                     : "");
    last_error_log_ms_ = now_ms;
    errors_not_logged_ = 0;
  } else {
    ++errors_not_logged_;
  }
  in_error_ = true;
}

}  // namespace runnel
