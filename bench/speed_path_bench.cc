// runnel-speed-bench: the speed path alone on workload W1 with the default view. One producer
// thread writes pre-parsed W1 records into a real shared-memory ring while SpeedPath (its
// consumer thread and oneTBB workers) folds them into the live tables; the baseline is the
// same producer and ring with a consumer that only reads and validates each record. CPU time
// is the process's minus the producer's, so the figure is the speed path's own cost.
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench/w1_record.h"
#include "daemon/config.h"
#include "daemon/speed_path.h"
#include "ipc/live_table.h"
#include "ipc/ring.h"
#include "ipc/series_dictionary.h"
#include "ipc/stats.h"
#include "model/generation.h"
#include "model/line_protocol.h"
#include "model/record.h"
#include "model/view.h"

namespace {

using namespace runnel;
using namespace std::chrono_literals;

double cpu_seconds(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// W1 records as runneld's parser builds them, laid end to end.
struct Records {
  std::vector<std::byte> bytes;
  std::vector<size_t> ends;
};

Records build(uint64_t events) {
  Records r;
  LineParser parser;
  std::vector<std::byte> record;
  r.ends.reserve(events);
  for (uint64_t i = 0; i < events; ++i) {
    const char* reason = "";
    if (bench::w1_record(i, parser, &record, &reason) != ParseError::kOk) {
      throw std::runtime_error(std::string("W1 line does not parse: ") + reason);
    }
    r.bytes.insert(r.bytes.end(), record.begin(), record.end());
    r.ends.push_back(r.bytes.size());
  }
  return r;
}

struct Run {
  double wall_s = 0;
  double cpu_s = 0;  // process CPU minus the producer's
};

// Writes every record into `ring`; returns the producer thread's CPU seconds.
double produce(ipc::Ring& ring, const Records& records) {
  const double cpu0 = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
  size_t begin = 0;
  for (size_t end : records.ends) {
    const std::span<const std::byte> rec(records.bytes.data() + begin, end - begin);
    while (ring.try_write(rec) == ipc::WriteStatus::kFull) ring.wait_for_space(rec.size(), 10ms);
    begin = end;
  }
  return cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - cpu0;
}

std::string shm_name(const char* what) {
  return fmt::format("runnel-speed-bench-{}-{}", getpid(), what);
}

void remove_all(const std::string& name) {
  (void)ipc::Ring::remove(name + ".ring");
  (void)ipc::LiveTables::remove(name);
  (void)ipc::SeriesDictionary::remove(name);
  ipc::StatsSegment::remove(name);
}

// The shared-memory objects of one run, removed before and after it, also when it throws.
struct ScopedObjects {
  explicit ScopedObjects(std::string n) : name(std::move(n)) { remove_all(name); }
  ~ScopedObjects() { remove_all(name); }
  ScopedObjects(const ScopedObjects&) = delete;
  ScopedObjects& operator=(const ScopedObjects&) = delete;
  const std::string name;
};

// The ring's epoch carries the generation size, as runneld's does (ring.generation_bytes).
Result<ipc::Ring> make_ring(const std::string& name, uint64_t bytes, unsigned generation_shift) {
  ipc::RingOptions ro;
  ro.mode = 0600;
  ro.epoch = make_ring_epoch(1, generation_shift);
  return ipc::Ring::open_or_create(name + ".ring", bytes, ro);
}

// Baseline: a consumer that reads and checks every record as the speed path does
// (RecordView::validate_structure), nothing more.
Run baseline(const Records& records, uint64_t ring_bytes) {
  const ScopedObjects objects(shm_name("base"));
  const std::string& name = objects.name;
  auto ring = make_ring(name, ring_bytes, kGenerationShift);
  if (!ring.ok()) throw std::runtime_error(ring.status().ToString());
  auto consumer = ring->attach_consumer(ipc::kSpeedPathConsumer, ipc::Ring::StartAt::kNow);
  if (!consumer.ok()) throw std::runtime_error(consumer.status().ToString());
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
  double producer_cpu = 0;
  std::thread producer([&] { producer_cpu = produce(*ring, records); });
  uint64_t seen = 0, valid = 0;
  while (seen < records.ends.size()) {
    const auto b = consumer->poll([&](uint64_t, std::span<const std::byte> payload) {
      RecordView rec;
      const char* reason = "";
      valid += RecordView::validate_structure(payload, &rec, &reason) ? 1 : 0;
    });
    seen += b.records;
    if (b.records == 0) consumer->wait(1ms);
  }
  producer.join();
  Run r;
  r.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.cpu_s = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0 - producer_cpu;
  if (valid != records.ends.size()) throw std::runtime_error("baseline: invalid records");
  return r;
}

struct SpeedRun : Run {
  uint64_t late = 0, overflow = 0, forced = 0;
  ipc::LiveViewStats table;  // the view's counters at the end
};

// What the speed path runs with (workers, capacity, batch_records, widths_ns: 0 or empty for
// runneld's default).
struct SpeedOptions {
  uint64_t ring_bytes = 0;
  uint32_t workers = 0;
  uint64_t capacity = 0;
  uint32_t batch_records = 0;
  std::vector<int64_t> widths_ns;
  // >= 0: as with a batch layer (live entries keyed by generation), and a thread plays the
  // batch layer: it announces as absorbed each generation absorb_lag + 1 behind the one the
  // speed path has reached. -1: no batch layer.
  int64_t absorb_lag = -1;
};

SpeedRun speed(const Records& records, const SpeedOptions& o) {
  const ScopedObjects objects(shm_name("speed"));
  const std::string& name = objects.name;
  ConfigOverrides overrides;
  overrides.shm_name = name;
  Config config = load_config(std::nullopt, overrides);
  if (o.workers != 0) config.speed_workers = o.workers;
  if (o.capacity != 0) config.views.front().capacity = o.capacity;
  if (!o.widths_ns.empty()) config.views.front().widths_ns = o.widths_ns;
  if (o.batch_records != 0) config.speed_batch_records = o.batch_records;
  auto ring = make_ring(name, o.ring_bytes, config.ring_generation_shift);
  if (!ring.ok()) throw std::runtime_error(ring.status().ToString());
  auto stats = ipc::StatsSegment::create(name, 0600, -1);
  if (!stats.ok()) throw std::runtime_error(stats.status().ToString());
  auto path = std::make_unique<SpeedPath>(config, *ring, (*stats)->block());
  if (Status s = path->open(); !s.ok()) throw std::runtime_error(s.ToString());
  if (Status s = path->attach(); !s.ok()) throw std::runtime_error(s.ToString());
  if (o.absorb_lag >= 0) path->enable_absorption();
  const ipc::StatsBlock& block = (*stats)->block();
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
  path->start();
  std::atomic<bool> produced{false};
  std::thread absorber;
  if (o.absorb_lag >= 0) {
    absorber = std::thread([&] {
      const uint64_t epoch = ring->epoch();
      const uint64_t behind = static_cast<uint64_t>(o.absorb_lag) + 1;
      uint64_t announced = kNoGeneration;
      while (!produced.load(std::memory_order_relaxed)) {
        const uint64_t reached = generation_of(epoch, block.get(ipc::Counter::kRingSpeedPos));
        if (reached >= generation_of(epoch, 0) + behind && reached - behind > announced) {
          announced = reached - behind;
          for (uint32_t v = 0; v < config.views.size(); ++v) path->absorbed(v, announced);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  double producer_cpu = produce(*ring, records);
  produced.store(true, std::memory_order_relaxed);
  if (absorber.joinable()) absorber.join();
  if (Status s = path->stop_and_drain(); !s.ok()) throw std::runtime_error(s.ToString());
  SpeedRun r;
  r.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.cpu_s = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0 - producer_cpu;
  if (block.get(ipc::Counter::kSpeedRecords) != records.ends.size())
    throw std::runtime_error("speed path: not every record was folded in");
  r.late = block.get(ipc::Counter::kSpeedLate);
  r.overflow = block.get(ipc::Counter::kSpeedOverflow);
  r.forced = block.get(ipc::Counter::kSpeedForcedEvictions);
  auto reader = ipc::LiveTableReader::open(name);
  if (!reader.ok()) throw std::runtime_error(reader.status().ToString());
  r.table = reader->tables().stats(0);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runnel-speed-bench: the speed path alone on workload W1, default view"};
  uint64_t events = 8'000'000;
  uint64_t ring_mib = 64;
  uint32_t workers = 2;
  uint64_t capacity = 0;
  uint32_t batch_records = 0;
  int64_t absorb_lag = -1;
  app.add_option("-n,--events", events, "W1 events")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--ring-mib", ring_mib, "ring capacity, MiB (power of two)")->capture_default_str();
  app.add_option("--workers", workers, "speed.workers (power of two)")->capture_default_str();
  app.add_option("--capacity", capacity, "the default view's capacity, entries (0: its default)");
  app.add_option("--batch-records", batch_records, "speed.batch_records (0: the default)");
  app.add_option("--absorb-lag", absorb_lag,
                 "as with a batch layer that absorbs each generation this many generations after "
                 "the speed path left it (-1: no batch layer; large: compaction held back)")
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 40))
      ->capture_default_str();
  std::vector<std::string> widths;
  app.add_option("--widths", widths, "the default view's bucket widths instead of 1s,1m,1h (e.g. 1s)")
      ->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  std::vector<int64_t> widths_ns;
  for (const std::string& w : widths) {
    auto ns = parse_duration_ns(w);
    if (!ns.ok() || *ns <= 0) {
      fmt::print(stderr, "runnel-speed-bench: --widths: '{}' is not a positive duration\n", w);
      return 2;
    }
    widths_ns.push_back(*ns);
  }
  try {
    const Records records = build(events);
    const Run base = baseline(records, ring_mib << 20);
    SpeedOptions o;
    o.ring_bytes = ring_mib << 20;
    o.workers = workers;
    o.capacity = capacity;
    o.batch_records = batch_records;
    o.widths_ns = widths_ns;
    o.absorb_lag = absorb_lag;
    const SpeedRun run = speed(records, o);
    const double n = static_cast<double>(events);
    fmt::print("runnel speed path, workload W1, default view{}: {} events, {} workers, "
               "ring {} MiB{}\n",
               widths.empty() ? "" : fmt::format(" (widths {})", fmt::join(widths, ",")), events,
               workers, ring_mib,
               absorb_lag < 0 ? ""
                              : fmt::format(", batch layer absorbing {} generation(s) behind",
                                            absorb_lag + 1));
    fmt::print("baseline: ring read + validate   {:>10.0f} events/s  cpu {:.3f} s per 1M events\n",
               n / base.wall_s, base.cpu_s / (n / 1e6));
    fmt::print("SpeedPath into the live tables   {:>10.0f} events/s  cpu {:.3f} s per 1M events"
               "  ratio {:.3f}\n",
               n / run.wall_s, run.cpu_s / (n / 1e6), base.wall_s / run.wall_s);
    fmt::print("  late {} overflow {} forced evictions {} ({:.2f} per event)\n", run.late,
               run.overflow, run.forced, static_cast<double>(run.forced) / n);
    const ipc::LiveViewStats& t = run.table;
    fmt::print("  table: {} inserts ({:.2f} per event), at the end {} of {} slots used, "
               "{} tombstones\n",
               t.inserts, static_cast<double>(t.inserts) / n, t.entries_used, t.capacity_entries,
               t.tombstones);
  } catch (const std::exception& e) {
    fmt::print(stderr, "runnel-speed-bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
