// runnelctl rebuild and the batch views of runnelctl stats (see batch_commands.h).
#include "client/batch_commands.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include "ipc/stats.h"
#include "runnel/client.h"
#include "storage/view_store.h"

namespace runnel {
namespace {

// Must match daemon/batch_layer.h (kControlDirName, kRebuildRequestPrefix): runnelctl does not
// link the daemon.
constexpr char kControlDir[] = "control";
constexpr char kRebuildPrefix[] = "rebuild-";

int fail(int code, const std::string& msg) {
  std::fprintf(stderr, "runnelctl: rebuild: %s\n", msg.c_str());
  return code;
}

// The views the running daemon has configured (its live tables), else those of its batch
// views; empty when neither can be read (the daemon then checks the name itself).
std::vector<std::string> known_views(const RebuildArgs& a, std::string* source) {
  std::vector<std::string> names;
  std::unique_ptr<client::Client> c;
  std::vector<client::ViewInfo> live;
  if (client::Client::open(a.shm_name, &c).ok() && c->views(&live).ok() && !live.empty()) {
    for (const auto& v : live) names.push_back(v.name);
    *source = "the running daemon's views";
    return names;
  }
  auto reader = storage::ViewReader::open(std::filesystem::path(a.data_dir) / "views");
  if (!reader.ok()) return names;
  auto snap = (*reader)->snapshot();
  if (!snap.ok()) return names;
  for (const auto& v : snap->views()) names.push_back(v.name);
  *source = "the batch views in " + a.data_dir + "/views";
  return names;
}

Status write_request(const std::filesystem::path& dir, const std::string& view) {
  const auto tmp =
      dir / ("." + std::string(kRebuildPrefix) + view + "." + std::to_string(getpid()));
  const auto target = dir / (kRebuildPrefix + view);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0660);
  if (fd < 0) return Status::Errno("create " + tmp.string(), errno);
  ::close(fd);
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return Status::Errno("rename " + tmp.string() + " to " + target.string(), e);
  }
  return Status::Ok();
}

}  // namespace

int cmd_rebuild(const RebuildArgs& a) {
  using ipc::Counter;
  auto stats = ipc::StatsSegment::open_read_only(a.shm_name);
  if (!stats.ok()) return fail(2, stats.status().ToString() + " (rebuild needs a running runneld)");
  const ipc::StatsBlock& b = (*stats)->block();
  if (b.get(Counter::kBatchUnavailable) != 0) {
    return fail(2, "the daemon's batch views are unavailable (see its log; batch_unavailable = 1)");
  }
  std::string source;
  const std::vector<std::string> views = known_views(a, &source);
  if (!views.empty() && std::find(views.begin(), views.end(), a.view) == views.end()) {
    std::string list;
    for (const auto& v : views) list += (list.empty() ? "" : ", ") + v;
    return fail(2, "no view '" + a.view + "' among " + source + " (" + list + ")");
  }
  const auto control = std::filesystem::path(a.data_dir) / kControlDir;
  std::error_code ec;
  if (!std::filesystem::is_directory(control, ec)) {
    return fail(2, control.string() +
                       " does not exist: is --data-dir the daemon's data directory, "
                       "with [batch] enabled?");
  }
  const uint64_t pid = b.pid;
  const uint64_t finished = b.get(Counter::kBatchRebuildsFinished);
  const uint64_t rejected = b.get(Counter::kBatchRebuildRejected);
  const uint64_t errors = b.get(Counter::kBatchErrors);
  if (Status s = write_request(control, a.view); !s.ok()) return fail(2, s.ToString());
  nlohmann::ordered_json j{{"view", a.view}, {"requested", true}};
  if (a.wait) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto deadline = t0 + std::chrono::seconds(a.timeout_s);
    const auto request = control / (kRebuildPrefix + a.view);
    for (;;) {
      if (b.pid != pid) return fail(1, "the daemon restarted while waiting");
      if (b.get(Counter::kBatchRebuildRejected) != rejected) {
        return fail(1, "the daemon rejected the request (view '" + a.view + "' is not configured)");
      }
      const bool picked_up = !std::filesystem::exists(request, ec);
      if (picked_up && b.get(Counter::kBatchRebuildsFinished) > finished &&
          b.get(Counter::kBatchViewsBuilding) == 0) {
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        return fail(
            1, std::string("timed out after ") + std::to_string(a.timeout_s) + " s (" +
                   (picked_up ? "the rebuild is still running" : "the request was not picked up") +
                   (b.get(Counter::kBatchErrors) != errors
                        ? "; batch_errors rose: see the daemon's log"
                        : "") +
                   ")");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    j["finished"] = true;
    j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (a.json) {
    std::cout << j.dump() << "\n";
  } else if (a.wait) {
    std::printf("rebuild of view '%s' finished in %.1f s\n", a.view.c_str(),
                j["seconds"].get<double>());
  } else {
    std::printf("rebuild of view '%s' requested\n", a.view.c_str());
  }
  return 0;
}

Result<nlohmann::ordered_json> batch_views_json(const std::string& data_dir) {
  const auto dir = std::filesystem::path(data_dir) / "views";
  auto reader = storage::ViewReader::open(dir);
  if (!reader.ok()) return reader.status();
  auto snap = (*reader)->snapshot();
  if (!snap.ok()) return snap.status();
  const storage::Watermark& w = snap->watermark();
  nlohmann::ordered_json j;
  j["dir"] = dir.string();
  std::error_code ec;
  j["data_bytes"] = std::filesystem::file_size(dir / "data.mdb", ec);
  j["watermark"] = {{"log_offset", w.log_offset},
                    {"records", w.records},
                    {"last_record_offset", w.last_record_offset},
                    {"commit_ns", w.commit_ns}};
  auto& views = j["views"] = nlohmann::ordered_json::array();
  for (const storage::ViewInfo& v : snap->views()) {
    auto buckets = snap->bucket_count(v);
    if (!buckets.ok()) return buckets.status();
    char hash[17];
    std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(v.definition_hash));
    views.push_back({{"name", v.name},
                     {"current_version", v.current_version},
                     {"building_version", v.building_version},
                     {"definition_hash", hash},
                     {"buckets", *buckets},
                     {"covered_offset", v.covered_offset}});
  }
  return j;
}

}  // namespace runnel
