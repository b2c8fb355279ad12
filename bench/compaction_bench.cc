// runnel-compaction-bench: batch-layer throughput. Logs workload W1 with storage::LogWriter,
// then times storage::Compactor::compact() of the sealed log into a fresh ViewStore (sync on,
// as runneld runs it) against a baseline of the same run: one thread reading the same records
// with LogReader and validating each (what any consumer of the log pays before aggregating).
// Rates are per core: records / CPU seconds of the thread doing the work.

#include <time.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "bench/w1_record.h"
#include "ipc/ring_layout.h"
#include "model/generation.h"
#include "model/line_protocol.h"
#include "model/record.h"
#include "model/view.h"
#include "storage/compactor.h"
#include "storage/log_reader.h"
#include "storage/log_writer.h"
#include "storage/view_store.h"

namespace {

namespace fs = std::filesystem;
using runnel::Status;

double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double wall_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void die(const std::string& what, const Status& s) {
  fmt::print(stderr, "runnel-compaction-bench: {}: {}\n", what, s.ToString());
  std::exit(1);
}

// Logs W1 events [0, events) the way the journal does: each record under ring epoch
// (1, kGenerationShift) at a ring position that advances by the record's ring span, so
// generations split the log as they would in runneld.
uint64_t write_log(const fs::path& dir, uint64_t events, uint64_t segment_bytes) {
  runnel::storage::LogOptions options;
  options.dir = dir;
  options.segment_bytes = segment_bytes;
  options.fsync = runnel::storage::LogOptions::FsyncPolicy::kNever;
  auto writer = runnel::storage::LogWriter::open(options);
  if (!writer.ok()) die("open log " + dir.string(), writer.status());
  const uint64_t epoch = runnel::make_ring_epoch(1, runnel::kGenerationShift);
  runnel::LineParser parser;
  std::vector<std::byte> record;
  uint64_t pos = 0;
  for (uint64_t i = 0; i < events; ++i) {
    const char* reason = "";
    if (runnel::bench::w1_record(i, parser, &record, &reason) != runnel::ParseError::kOk) {
      die("parse W1 line " + std::to_string(i), Status::Invalid(reason));
    }
    Status s = (*writer)->append(epoch, pos, record);
    if (!s.ok()) die("append", s);
    pos += runnel::ipc::record_span(record.size());
    if (i % 8192 == 8191) {
      s = (*writer)->commit();
      if (!s.ok()) die("commit", s);
    }
  }
  Status s = (*writer)->close();
  if (!s.ok()) die("close log", s);
  return pos;
}

struct Pass {
  uint64_t records = 0;
  double cpu_s = 0;
  double wall_s = 0;
  double per_core() const { return cpu_s > 0 ? static_cast<double>(records) / cpu_s : 0; }
};

// Baseline: LogReader from the start of the log up to `end_offset`, each record checked as
// compaction checks it (RecordView::validate_structure: its CRC matched).
Pass read_and_validate(const fs::path& dir, uint64_t end_offset) {
  Pass pass;
  const double c0 = thread_cpu_s(), w0 = wall_s();
  auto reader = runnel::storage::LogReader::open(dir);
  if (!reader.ok()) die("open log reader", reader.status());
  runnel::storage::Record rec;
  uint64_t invalid = 0;
  while (reader->position() < end_offset) {
    auto got = reader->next(&rec);
    if (!got.ok()) die("read log", got.status());
    if (!*got) break;
    runnel::RecordView view;
    const char* reason = "";
    if (!runnel::RecordView::validate_structure(rec.payload, &view, &reason)) ++invalid;
    ++pass.records;
  }
  pass.cpu_s = thread_cpu_s() - c0;
  pass.wall_s = wall_s() - w0;
  if (invalid != 0) die("validate", Status::Corruption(std::to_string(invalid) + " invalid records"));
  return pass;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runnel-compaction-bench: Compactor::compact() throughput on workload W1"};
  uint64_t events = 8'000'000;
  uint64_t segment_mib = 64;
  uint64_t budget_mib = 128;
  std::string dir_text;
  bool sync = true;
  bool keep = false;
  bool write_map = false;
  app.add_option("-n,--events", events, "W1 events to log")->capture_default_str();
  app.add_option("--segment-mib", segment_mib, "log segment size, MiB")->capture_default_str();
  app.add_option("--budget-mib", budget_mib, "compactor memory budget per step, MiB (batch.memory_budget_bytes)")
      ->capture_default_str();
  app.add_option("--dir", dir_text, "work directory (default: a new one under $TMPDIR or /tmp)");
  app.add_flag("!--no-sync", sync, "ViewStore without fdatasync per commit (runneld syncs)");
  app.add_flag("--write-map", write_map, "ViewStore with MDB_WRITEMAP (experimental in runneld)");
  app.add_flag("--keep", keep, "keep the work directory");
  CLI11_PARSE(app, argc, argv);

  fs::path dir;
  if (dir_text.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp ? tmp : "/tmp") + "/runnel-compaction.XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) die("mkdtemp " + templ, Status::Errno("mkdtemp", errno));
    dir = templ;
  } else {
    dir = dir_text;
    fs::create_directories(dir);
  }
  const fs::path log_dir = dir / "log";
  const fs::path views_dir = dir / "views";
  fs::remove_all(log_dir);
  fs::remove_all(views_dir);

  double w0 = wall_s();
  const uint64_t ring_bytes = write_log(log_dir, events, segment_mib << 20);
  const double log_s = wall_s() - w0;
  auto segments = runnel::storage::list_segments(log_dir);
  if (!segments.ok()) die("list segments", segments.status());
  uint64_t sealed = 0, log_bytes = 0;
  for (const auto& seg : *segments) {
    sealed += seg.sealed ? 1 : 0;
    log_bytes += seg.file_bytes;
  }

  // Compaction: the daemon's default view, its default budget, a store that syncs.
  runnel::storage::ViewStoreOptions store_options;
  store_options.dir = views_dir;
  store_options.sync = sync;
  store_options.write_map = write_map;
  auto store = runnel::storage::ViewStore::open(store_options);
  if (!store.ok()) die("open view store", store.status());
  runnel::storage::CompactorOptions options;
  options.log_dir = log_dir;
  options.memory_budget_bytes = static_cast<size_t>(budget_mib) << 20;
  // Commit phase (the store takes the states, rolled-up widths made as it goes: LMDB merge +
  // write + fdatasync), timed between the two hooks.
  double commit_cpu_s = 0, commit_wall_s = 0, hook_cpu = 0, hook_wall = 0;
  options.before_commit = [&](const runnel::storage::StepReport&) {
    hook_cpu = thread_cpu_s();
    hook_wall = wall_s();
  };
  options.after_commit = [&](const runnel::storage::StepReport&) {
    commit_cpu_s += thread_cpu_s() - hook_cpu;
    commit_wall_s += wall_s() - hook_wall;
  };
  auto compactor = runnel::storage::Compactor::open(**store, {runnel::default_view()}, options);
  if (!compactor.ok()) die("open compactor", compactor.status());

  // The log is in the page cache for compaction: it was just written.
  Pass compaction;
  const double c0 = thread_cpu_s();
  w0 = wall_s();
  auto stats = (*compactor)->compact();
  compaction.cpu_s = thread_cpu_s() - c0;
  compaction.wall_s = wall_s() - w0;
  if (!stats.ok()) die("compact", stats.status());
  compaction.records = stats->records;
  // Baseline: the same records, those below the watermark compaction reached. Read twice:
  // compaction dropped what it absorbed from the page cache (storage::drop_log_pages), and
  // the timed pass reads from the cache as compaction did.
  const uint64_t watermark = (*store)->watermark().log_offset;
  (void)read_and_validate(log_dir, watermark);
  const Pass baseline = read_and_validate(log_dir, watermark);
  if (baseline.records != compaction.records) {
    die("baseline", Status::Corruption(fmt::format("read {} records below the watermark {}, compaction absorbed {}",
                                                   baseline.records, watermark, compaction.records)));
  }

  fmt::print("runnel compaction, workload W1: {} events logged ({:.0f} MiB in {} segments, {} sealed, "
             "{:.0f} MiB of ring positions, generation {} MiB) in {:.1f} s\n",
             events, static_cast<double>(log_bytes) / (1 << 20), segments->size(), sealed,
             static_cast<double>(ring_bytes) / (1 << 20), (uint64_t{1} << runnel::kGenerationShift) >> 20,
             log_s);
  fmt::print("compacted {} records (the newest sealed generation waits) in {} steps: {} updates, {} states "
             "merged; view 'default', budget {} MiB, sync {}{}\n",
             stats->records, stats->steps, stats->updates, stats->states, budget_mib, sync ? "on" : "off",
             write_map ? ", MDB_WRITEMAP" : "");
  auto row = [](const char* what, const Pass& p, double base) {
    fmt::print("{:<46} {:>12.0f} events/s per core  (cpu {:6.2f} s, wall {:6.2f} s)  ratio {:.3f}\n", what,
               p.per_core(), p.cpu_s, p.wall_s, p.per_core() / base);
  };
  row("baseline: LogReader + validate_structure", baseline, baseline.per_core());
  row("Compactor::compact() into LMDB", compaction, baseline.per_core());
  fmt::print(
      "  of which commit (roll-up, LMDB merge/put + fdatasync): cpu {:.2f} s, wall {:.2f} s; "
      "before commit (read, route, aggregate, sort): cpu {:.2f} s\n",
      commit_cpu_s, commit_wall_s, compaction.cpu_s - commit_cpu_s);
  fmt::print("  LMDB: {} states written ({} merged into existing), map {} MiB\n",
             (*store)->counters().states_written.load(), (*store)->counters().states_merged.load(),
             (*store)->map_bytes() >> 20);
  const double target = 3'000'000;
  fmt::print("target >= {:.0f} events/s per core: {}\n", target, compaction.per_core() >= target ? "met" : "missed");

  compactor->reset();
  store->reset();
  if (!keep) fs::remove_all(dir);
  return 0;
}
