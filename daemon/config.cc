// Loads runneld's TOML configuration: the embedded defaults are the schema, so every key has a
// default, an unknown key or a value of the wrong type stops start-up, and messages name the key.
#include "daemon/config.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstdlib>
#include <stdexcept>
#include <toml++/toml.h>

namespace runnel {
namespace {

constexpr std::string_view kDefaultConfig = R"toml(# runneld configuration. Every key is optional; shown are the defaults.

[daemon]
# Where the durable log (log/), the batch views (views/) and rebuild requests (control/)
# live. Under systemd the default is $STATE_DIRECTORY; otherwise ./runnel-data.
data_dir = ""
# Name of the POSIX shared-memory objects (/dev/shm/<shm_name>.ring, <shm_name>.stats).
shm_name = "runnel"
# trace, debug, info, warn, error, critical, off
log_level = "info"
# Most rejected-line messages logged per second (the counters count all of them).
log_rate_limit_per_s = 10
# CPU scheduling policy of every runneld thread: "batch" (SCHED_BATCH: a woken thread does not
# preempt a running one; fewer context switches between the ingest, journal and speed threads,
# which hand work to each other through rings) or "other" (the default time sharing).
cpu_scheduling = "batch"

[ingest]
# Line-protocol listeners: tcp://HOST:PORT, udp://HOST:PORT, unix:///PATH; "@runtime" is the
# runtime directory ($RUNTIME_DIRECTORY under systemd). Append ?precision=ns|us|ms|s to set the
# timestamp precision of a listener (default ns).
listen = ["tcp://127.0.0.1:8094", "udp://127.0.0.1:8089", "unix://@runtime/runnel.sock"]
# A longer line is rejected (counted as too_long) and skipped up to its newline.
max_line_bytes = 65536
# Provided receive buffers shared by all connections (io_uring buffer ring).
recv_buffer_bytes = 65536
recv_buffer_count = 256
# SO_RCVBUF for UDP sockets, bytes.
udp_rcvbuf_bytes = 8388608

[ring]
# Shared-memory ring between ingest, the journal and the speed path. Power of two, bytes.
capacity_bytes = 67108864
# Ring bytes per generation, a power of two (4096 .. 2^40): the unit in which the batch layer
# takes over from the live tables (a compaction step ends only between generations). Applies
# to a newly created ring (a ring left by a crash keeps its own).
generation_bytes = 33554432
# Permissions and group of the shared-memory objects ("" = the daemon's own group).
mode = "0640"
group = ""

[log]
# Segments roll at this size and are then sealed (never modified again); the batch layer
# absorbs sealed segments, so this also bounds how far it trails the log.
segment_bytes = 67108864
# always: group commit, a batch is durable after its fdatasync; interval: fdatasync every
# fsync_interval_ms; never: leave it to the kernel.
fsync = "interval"
fsync_interval_ms = 1000
# Log retention. Only segments the batch views have absorbed (and no rebuild still needs) are
# ever deleted, oldest first. Delete absorbed segments last written longer ago than this
# ("7d", "12h"; "0" = off)...
retention_max_age = "0"
# ... and while the log is larger than this many bytes (0 = off).
retention_max_bytes = 0

[speed]
# false: ingest and the durable log only, no live tables.
enabled = true
# Speed-path workers (oneTBB); each owns one shard of every live table. A power of two.
workers = 2
# Ring records handed to the workers per step, at most (a step takes what the ring holds). Under
# full load a larger step costs less per event but shows in the live tables later: at 1.5 M
# events/s, 32768 records are ~22 ms.
batch_records = 32768

[batch]
# false: no batch views (the log is then never deleted by retention).
enabled = true
# How often compaction looks for newly sealed log segments when idle, milliseconds.
interval_ms = 1000
# Partial states held in memory per compaction step; a larger budget merges more per commit.
memory_budget_bytes = 134217728
# The LMDB map (DATA_DIR/views/data.mdb) starts at initial_map_bytes and doubles as needed up
# to max_map_bytes. At the ceiling compaction stops with a "map full" error (counter
# batch_map_full) and resumes once this is raised or retention frees room; no data is lost.
initial_map_bytes = 67108864
max_map_bytes = 68719476736
# Bucket retention, "WIDTH:KEEP": buckets of widths up to WIDTH are deleted once their start
# is older than KEEP ("0" = forever). Wider buckets than every rule are kept forever.
retention = ["1s:1d", "1m:30d", "1h:0"]

# Views: declare any number of [[view]] tables (keys below). With none, one view named
# "default" covers every measurement and numeric field per series at 1s, 1m and 1h with
# count, sum, min, max, mean and last.
#
# [[view]]
# name = "cpu_by_host"
# measurements = ["cpu", "disk_*"]   # exact names or globs
# fields = ["usage_user"]            # [] = every numeric field
# group_by = ["host"]                # ["*"] = every tag (one row per series); [] = none
# buckets = ["1s", "1m", "1h"]
# aggregates = ["count", "mean", "stddev", "p50", "p99", "distinct(host)"]
# live_window = "2h"                 # older events are late: only the batch layer places them
# capacity = 1048576                 # live entries (all buckets of all rows)
# hll_precision = 12                 # distinct: 2^p registers, error ~1.04/sqrt(2^p)
# quantile_accuracy = 0.01           # relative error of quantiles
# quantile_max_bins = 2048
)toml";

// The keys of one [[view]] table and their defaults.
constexpr std::string_view kViewSchema = R"toml(
name = ""
measurements = ["*"]
fields = []
group_by = ["*"]
buckets = ["1s", "1m", "1h"]
aggregates = ["count", "sum", "min", "max", "mean", "last"]
live_window = "2h"
capacity = 1048576
hll_precision = 12
quantile_accuracy = 0.01
quantile_max_bins = 2048
)toml";

[[noreturn]] void fail(const std::string& where, const std::string& msg) {
  throw std::runtime_error("config: " + where + ": " + msg);
}

// Every key of `user` must exist in `schema` with the same type; tables recurse.
void check_keys(const toml::table& user, const toml::table& schema, const std::string& prefix,
                const std::string& file) {
  for (const auto& [k, v] : user) {
    std::string key = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (prefix.empty() && k.str() == "view") {
      const toml::array* views = v.as_array();
      if (views == nullptr || !views->is_array_of_tables()) {
        fail(file, "key 'view' must be an array of tables ([[view]])");
      }
      static const toml::table view_schema = toml::parse(kViewSchema, std::string_view("<view>"));
      for (size_t i = 0; i < views->size(); ++i) {
        check_keys(*views->get(i)->as_table(), view_schema, "view[" + std::to_string(i) + "]", file);
      }
      continue;
    }
    const toml::node* s = schema.get(k.str());
    if (s == nullptr) fail(file, "unknown key '" + key + "'");
    // An empty array in the schema accepts any array (its element type is checked on use).
    if (s->type() != v.type()) {
      fail(file, "key '" + key + "' has the wrong type (expected " +
                     std::string(toml::impl::node_type_friendly_names[static_cast<int>(s->type())]) +
                     ")");
    }
    if (v.is_table()) check_keys(*v.as_table(), *s->as_table(), key, file);
  }
}

void merge(toml::table& into, const toml::table& from) {
  for (const auto& [k, v] : from) {
    if (v.is_table() && into.get(k.str()) && into.get(k.str())->is_table()) {
      merge(*into.get(k.str())->as_table(), *v.as_table());
    } else {
      into.insert_or_assign(k.str(), v);
    }
  }
}

template <typename T>
T get(const toml::table& t, std::string_view path) {
  auto v = t.at_path(path).value<T>();
  if (!v) fail("config", "key '" + std::string(path) + "' is missing or of the wrong type");
  return *v;
}

uint64_t get_positive(const toml::table& t, std::string_view path, uint64_t min, uint64_t max) {
  int64_t v = get<int64_t>(t, path);
  if (v < 0 || static_cast<uint64_t>(v) < min || static_cast<uint64_t>(v) > max) {
    fail("config", "key '" + std::string(path) + "' = " + std::to_string(v) + " is out of range [" +
                       std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return static_cast<uint64_t>(v);
}

std::optional<Precision> parse_precision(std::string_view s) {
  if (s == "ns" || s == "n") return Precision::kNs;
  if (s == "us" || s == "u") return Precision::kUs;
  if (s == "ms") return Precision::kMs;
  if (s == "s") return Precision::kS;
  return std::nullopt;
}

std::vector<std::string> string_list(const toml::table& t, std::string_view key, const std::string& where) {
  std::vector<std::string> out;
  const toml::array* arr = t.at_path(key).as_array();
  if (arr == nullptr) fail("config", where + ": '" + std::string(key) + "' must be an array of strings");
  for (const auto& n : *arr) {
    auto s = n.value<std::string>();
    if (!s) fail("config", where + ": '" + std::string(key) + "' must be an array of strings");
    out.push_back(*s);
  }
  return out;
}

// A duration string, or "0" for off (returns 0).
int64_t get_duration_or_off(const toml::table& t, std::string_view path) {
  const std::string text = get<std::string>(t, path);
  if (text == "0") return 0;
  auto d = parse_duration_ns(text);
  if (!d.ok()) fail("config", "key '" + std::string(path) + "': " + d.status().message() + " (\"0\" = off)");
  return d.value();
}

// batch.retention: ["WIDTH:KEEP", ...], sorted by width, each width once.
storage::BucketRetention load_bucket_retention(const toml::table& t) {
  storage::BucketRetention r;
  r.rules.clear();
  for (const auto& rule : string_list(t, "batch.retention", "[batch]")) {
    const auto colon = rule.find(':');
    const auto bad = [&](const std::string& why) {
      fail("config", "key 'batch.retention': '" + rule + "': " + why +
                         " (expected \"WIDTH:KEEP\", e.g. \"1m:30d\"; KEEP \"0\" = forever)");
    };
    if (colon == std::string::npos) bad("no ':'");
    auto width = parse_duration_ns(rule.substr(0, colon));
    if (!width.ok()) bad(width.status().message());
    int64_t keep = 0;
    if (const std::string k = rule.substr(colon + 1); k != "0") {
      auto d = parse_duration_ns(k);
      if (!d.ok()) bad(d.status().message());
      keep = d.value();
    }
    for (const auto& other : r.rules) {
      if (other.max_width_ns == width.value()) bad("width given twice");
    }
    r.rules.push_back({width.value(), keep});
  }
  std::sort(r.rules.begin(), r.rules.end(),
            [](const auto& a, const auto& b) { return a.max_width_ns < b.max_width_ns; });
  return r;
}

std::vector<ViewDef> load_views(const toml::table& t) {
  const toml::array* arr = t.at_path("view").as_array();
  if (arr == nullptr || arr->empty()) return {default_view()};
  const toml::table schema = toml::parse(kViewSchema, std::string_view("<view>"));
  std::vector<ViewDef> views;
  for (size_t i = 0; i < arr->size(); ++i) {
    toml::table vt = schema;
    merge(vt, *arr->get(i)->as_table());
    const std::string where = "view[" + std::to_string(i) + "]";
    ViewDef v;
    v.name = get<std::string>(vt, "name");
    const std::string named = v.name.empty() ? where : "view '" + v.name + "'";
    if (v.name.empty()) fail("config", where + ": 'name' is required");
    v.measurements = string_list(vt, "measurements", named);
    v.fields = string_list(vt, "fields", named);
    auto group = string_list(vt, "group_by", named);
    v.group_all_tags = group.size() == 1 && group[0] == "*";
    if (!v.group_all_tags) {
      std::sort(group.begin(), group.end());
      v.group_by = group;
    }
    v.widths_ns.clear();
    for (const auto& b : string_list(vt, "buckets", named)) {
      auto d = parse_duration_ns(b);
      if (!d.ok()) fail("config", named + ": buckets: " + d.status().message());
      v.widths_ns.push_back(d.value());
    }
    std::sort(v.widths_ns.begin(), v.widths_ns.end());
    v.aggregates = string_list(vt, "aggregates", named);
    auto w = parse_duration_ns(get<std::string>(vt, "live_window"));
    if (!w.ok()) fail("config", named + ": live_window: " + w.status().message());
    v.live_window_ns = w.value();
    v.capacity = get_positive(vt, "capacity", 0, UINT64_MAX >> 1);
    v.hll_precision = static_cast<uint32_t>(get_positive(vt, "hll_precision", 0, 64));
    auto acc = vt.at_path("quantile_accuracy").value<double>();
    if (!acc) fail("config", named + ": 'quantile_accuracy' must be a number");
    v.quantile_accuracy = *acc;
    v.quantile_max_bins = static_cast<uint32_t>(get_positive(vt, "quantile_max_bins", 0, 1u << 30));
    if (Status s = v.validate(); !s.ok()) fail("config", s.message());
    for (const auto& other : views) {
      if (other.name == v.name) fail("config", "view '" + v.name + "' is declared twice");
    }
    views.push_back(std::move(v));
  }
  return views;
}

}  // namespace

std::string_view default_config_toml() { return kDefaultConfig; }

std::string runtime_dir() {
  if (const char* d = std::getenv("RUNTIME_DIRECTORY"); d && *d) {
    std::string s(d);
    return s.substr(0, s.find(':'));  // systemd lists several directories separated by ':'
  }
  if (const char* d = std::getenv("XDG_RUNTIME_DIR"); d && *d) return std::string(d) + "/runnel";
  if (geteuid() == 0) return "/run/runnel";
  return "/tmp/runnel-" + std::to_string(geteuid());
}

std::optional<ListenSpec> ListenSpec::parse(std::string_view url, const std::string& rt_dir,
                                            std::string* error) {
  ListenSpec spec;
  spec.url = std::string(url);
  std::string_view rest;
  auto starts = [&](std::string_view p) {
    if (url.substr(0, p.size()) != p) return false;
    rest = url.substr(p.size());
    return true;
  };
  if (starts("tcp://")) {
    spec.kind = Kind::kTcp;
  } else if (starts("udp://")) {
    spec.kind = Kind::kUdp;
  } else if (starts("unix://")) {
    spec.kind = Kind::kUnix;
  } else {
    *error = "unknown scheme (use tcp://, udp:// or unix://)";
    return std::nullopt;
  }
  if (auto q = rest.find('?'); q != std::string_view::npos) {
    std::string_view query = rest.substr(q + 1);
    rest = rest.substr(0, q);
    if (query.substr(0, 10) != "precision=") {
      *error = "unknown option '" + std::string(query) + "' (only precision= is known)";
      return std::nullopt;
    }
    auto p = parse_precision(query.substr(10));
    if (!p) {
      *error = "bad precision '" + std::string(query.substr(10)) + "' (ns, us, ms or s)";
      return std::nullopt;
    }
    spec.precision = *p;
  }
  if (spec.kind == Kind::kUnix) {
    std::string path(rest);
    if (path.rfind("@runtime", 0) == 0) path = rt_dir + path.substr(8);
    if (path.empty() || path[0] != '/') {
      *error = "unix socket path must be absolute";
      return std::nullopt;
    }
    if (path.size() >= 108) {
      *error = "unix socket path is longer than 107 bytes";
      return std::nullopt;
    }
    spec.path = std::move(path);
    return spec;
  }
  auto colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    *error = "expected HOST:PORT";
    return std::nullopt;
  }
  std::string_view host = rest.substr(0, colon), port = rest.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned p = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || ptr != port.data() + port.size() || p > 65535) {
    *error = "bad port '" + std::string(port) + "'";
    return std::nullopt;
  }
  spec.host = std::string(host);
  spec.port = static_cast<uint16_t>(p);
  return spec;
}

Config load_config(const std::optional<std::filesystem::path>& path, const ConfigOverrides& o) {
  toml::table t;
  try {
    t = toml::parse(kDefaultConfig, std::string_view("<defaults>"));
  } catch (const toml::parse_error& e) {
    fail("<defaults>", e.what());  // a bug: the embedded defaults must parse
  }
  if (path) {
    toml::table user;
    try {
      user = toml::parse_file(path->string());
    } catch (const toml::parse_error& e) {
      const auto& b = e.source().begin;
      fail(path->string() + ":" + std::to_string(b.line) + ":" + std::to_string(b.column),
           std::string(e.description()));
    }
    check_keys(user, t, "", path->string());
    merge(t, user);
  }

  Config c;
  std::string data_dir = o.data_dir ? *o.data_dir : get<std::string>(t, "daemon.data_dir");
  if (data_dir.empty()) {
    const char* state = std::getenv("STATE_DIRECTORY");
    data_dir = (state && *state) ? std::string(state).substr(0, std::string(state).find(':'))
                                 : std::string("./runnel-data");
  }
  c.data_dir = data_dir;
  c.shm_name = o.shm_name ? *o.shm_name : get<std::string>(t, "daemon.shm_name");
  if (c.shm_name.empty() || c.shm_name.size() > 200 ||
      c.shm_name.find('/') != std::string::npos) {
    fail("config", "key 'daemon.shm_name' = '" + c.shm_name +
                       "' must be 1-200 characters without '/'");
  }
  c.log_level = o.log_level ? *o.log_level : get<std::string>(t, "daemon.log_level");
  static constexpr std::string_view kLevels[] = {"trace", "debug", "info",    "warn",
                                                  "error", "critical", "off"};
  if (std::find(std::begin(kLevels), std::end(kLevels), c.log_level) == std::end(kLevels)) {
    fail("config", "key 'daemon.log_level' = '" + c.log_level + "' is not a known level");
  }
  c.log_rate_limit_per_s =
      static_cast<uint32_t>(get_positive(t, "daemon.log_rate_limit_per_s", 0, 1000000));
  const auto scheduling = get<std::string>(t, "daemon.cpu_scheduling");
  if (scheduling != "batch" && scheduling != "other") {
    fail("config", "key 'daemon.cpu_scheduling' = '" + scheduling + "' must be batch or other");
  }
  c.cpu_scheduling_batch = scheduling == "batch";

  std::vector<std::string> urls = o.listen;
  if (urls.empty()) {
    const toml::array* arr = t.at_path("ingest.listen").as_array();
    for (const auto& n : *arr) {
      auto s = n.value<std::string>();
      if (!s) fail("config", "key 'ingest.listen' must be an array of strings");
      urls.push_back(*s);
    }
  }
  const std::string rt = runtime_dir();
  for (const auto& u : urls) {
    std::string err;
    auto spec = ListenSpec::parse(u, rt, &err);
    if (!spec) fail("config", "key 'ingest.listen': '" + u + "': " + err);
    c.listen.push_back(std::move(*spec));
  }
  c.max_line_bytes =
      static_cast<uint32_t>(get_positive(t, "ingest.max_line_bytes", 64, 16u << 20));
  c.recv_buffer_bytes =
      static_cast<uint32_t>(get_positive(t, "ingest.recv_buffer_bytes", 512, 16u << 20));
  c.recv_buffer_count =
      static_cast<uint32_t>(get_positive(t, "ingest.recv_buffer_count", 2, 32768));
  if ((c.recv_buffer_count & (c.recv_buffer_count - 1)) != 0) {
    fail("config", "key 'ingest.recv_buffer_count' = " + std::to_string(c.recv_buffer_count) +
                       " must be a power of two");
  }
  c.udp_rcvbuf_bytes =
      static_cast<uint32_t>(get_positive(t, "ingest.udp_rcvbuf_bytes", 4096, 1u << 30));

  c.ring_capacity_bytes = get_positive(t, "ring.capacity_bytes", 1u << 16, 1ull << 36);
  if ((c.ring_capacity_bytes & (c.ring_capacity_bytes - 1)) != 0) {
    fail("config", "key 'ring.capacity_bytes' = " + std::to_string(c.ring_capacity_bytes) +
                       " must be a power of two");
  }
  if (c.ring_capacity_bytes < 4ull * c.max_line_bytes * 4) {
    fail("config", "key 'ring.capacity_bytes' must be at least 16 x ingest.max_line_bytes");
  }
  const uint64_t generation_bytes = get_positive(t, "ring.generation_bytes", 4096, 1ull << 40);
  if ((generation_bytes & (generation_bytes - 1)) != 0) {
    fail("config", "key 'ring.generation_bytes' = " + std::to_string(generation_bytes) +
                       " must be a power of two");
  }
  c.ring_generation_shift = static_cast<uint32_t>(std::countr_zero(generation_bytes));
  std::string mode = get<std::string>(t, "ring.mode");
  unsigned m = 0;
  auto [p, ec] = std::from_chars(mode.data(), mode.data() + mode.size(), m, 8);
  if (ec != std::errc() || p != mode.data() + mode.size() || m > 0777 || (m & 0600) != 0600) {
    fail("config", "key 'ring.mode' = '" + mode + "' must be an octal mode that includes 0600");
  }
  c.ring_mode = m;
  c.ring_group = get<std::string>(t, "ring.group");

  c.segment_bytes = get_positive(t, "log.segment_bytes", 1u << 16, 1ull << 40);
  std::string fsync = get<std::string>(t, "log.fsync");
  if (fsync == "always") {
    c.fsync = FsyncPolicyKind::kAlways;
  } else if (fsync == "interval") {
    c.fsync = FsyncPolicyKind::kInterval;
  } else if (fsync == "never") {
    c.fsync = FsyncPolicyKind::kNever;
  } else {
    fail("config", "key 'log.fsync' = '" + fsync + "' must be always, interval or never");
  }
  c.fsync_interval_ms =
      static_cast<uint32_t>(get_positive(t, "log.fsync_interval_ms", 1, 3600u * 1000));
  c.speed_enabled = get<bool>(t, "speed.enabled");
  c.speed_workers = static_cast<uint32_t>(get_positive(t, "speed.workers", 1, 64));
  if ((c.speed_workers & (c.speed_workers - 1)) != 0) {
    fail("config", "key 'speed.workers' = " + std::to_string(c.speed_workers) + " must be a power of two");
  }
  c.speed_batch_records =
      static_cast<uint32_t>(get_positive(t, "speed.batch_records", 1, 1u << 20));
  c.log_retention.max_age_ns = get_duration_or_off(t, "log.retention_max_age");
  c.log_retention.max_total_bytes = get_positive(t, "log.retention_max_bytes", 0, UINT64_MAX >> 1);
  c.batch_enabled = get<bool>(t, "batch.enabled");
  c.batch_interval_ms = static_cast<uint32_t>(get_positive(t, "batch.interval_ms", 1, 3600u * 1000));
  c.batch_memory_budget_bytes = get_positive(t, "batch.memory_budget_bytes", 1u << 20, 1ull << 40);
  c.batch_initial_map_bytes = get_positive(t, "batch.initial_map_bytes", 1u << 16, 1ull << 44);
  c.batch_max_map_bytes = get_positive(t, "batch.max_map_bytes", 1u << 16, 1ull << 44);
  if (c.batch_initial_map_bytes > c.batch_max_map_bytes) {
    fail("config", "key 'batch.initial_map_bytes' = " + std::to_string(c.batch_initial_map_bytes) +
                       " exceeds batch.max_map_bytes = " + std::to_string(c.batch_max_map_bytes));
  }
  c.batch_retention = load_bucket_retention(t);
  c.views = load_views(t);
  c.debug_journal_hold_ms = o.debug_journal_hold_ms;
  return c;
}

}  // namespace runnel
