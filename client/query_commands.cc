// runnelctl views | series | query | tail | watch (see query_commands.h).
#include "client/query_commands.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "ipc/shm_object.h"
#include "model/clock.h"
#include "model/view.h"
#include "runnel/client.h"

namespace runnel {
namespace {

using client::Client;
using Json = nlohmann::ordered_json;

constexpr int64_t kSecondNs = 1'000'000'000;

volatile std::sig_atomic_t g_stop = 0;

void on_stop_signal(int) { g_stop = 1; }

// Ctrl-C ends tail and watch cleanly. No SA_RESTART: a sleeping wait returns early.
void install_stop_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}


int error(std::string_view command, const std::string& message) {
  std::fprintf(stderr, "runnelctl: %.*s: %s\n", static_cast<int>(command.size()), command.data(),
               message.c_str());
  return 1;
}

void out(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

bool all_digits(std::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
}

template <typename T>
bool read_int(std::string_view s, T* v) {
  if (!all_digits(s)) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

// YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)
Result<int64_t> parse_rfc3339(std::string_view s) {
  const auto bad = [&](const char* why) {
    return Status::Invalid("time '" + std::string(s) + "': " + why +
                           " (expected now, -1h, ns since the epoch or RFC 3339 like "
                           "2023-11-14T22:13:20Z)");
  };
  int y = 0;
  unsigned mo = 0, d = 0, h = 0, mi = 0, sec = 0;
  if (s.size() < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
      s[13] != ':' || s[16] != ':' || !read_int(s.substr(0, 4), &y) ||
      !read_int(s.substr(5, 2), &mo) || !read_int(s.substr(8, 2), &d) ||
      !read_int(s.substr(11, 2), &h) || !read_int(s.substr(14, 2), &mi) ||
      !read_int(s.substr(17, 2), &sec)) {
    return bad("not a time");
  }
  const std::chrono::year_month_day date{std::chrono::year{y}, std::chrono::month{mo},
                                         std::chrono::day{d}};
  if (!date.ok() || h > 23 || mi > 59 || sec > 60) return bad("no such date or time of day");
  size_t at = 19;
  int64_t frac_ns = 0;
  if (s[at] == '.') {
    const size_t start = ++at;
    while (at < s.size() && s[at] >= '0' && s[at] <= '9') ++at;
    if (at == start || at - start > 9) return bad("the fraction of a second takes 1 to 9 digits");
    read_int(s.substr(start, at - start), &frac_ns);
    for (size_t k = at - start; k < 9; ++k) frac_ns *= 10;
  }
  int64_t offset_s = 0;
  const std::string_view zone = s.substr(at);
  if (zone == "Z" || zone == "z") {
  } else if (zone.size() == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':') {
    unsigned zh = 0, zm = 0;
    if (!read_int(zone.substr(1, 2), &zh) || !read_int(zone.substr(4, 2), &zm) || zh > 23 ||
        zm > 59)
      return bad("bad UTC offset");
    offset_s = (zone[0] == '-' ? -1 : 1) * int64_t{zh * 3600 + zm * 60};
  } else {
    return bad("needs a zone: Z or +HH:MM");
  }
  const int64_t days = std::chrono::sys_days(date).time_since_epoch().count();
  return ((days * 86400 + h * 3600 + mi * 60 + sec) - offset_s) * 1'000'000'000 + frac_ns;
}

std::string format_time(int64_t ns) {
  const int64_t s = ns >= 0 ? ns / 1'000'000'000 : -((-ns + 999'999'999) / 1'000'000'000);
  const int64_t frac = ns - s * 1'000'000'000;
  const std::chrono::sys_days day{std::chrono::days{s >= 0 ? s / 86400 : -((-s + 86399) / 86400)}};
  const int64_t in_day = s - day.time_since_epoch().count() * 86400;
  const std::chrono::year_month_day date{day};
  std::string t =
      fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", static_cast<int>(date.year()),
                  static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()),
                  in_day / 3600, in_day / 60 % 60, in_day % 60);
  if (frac != 0) {
    std::string f = fmt::format("{:09}", frac);
    f.erase(f.find_last_not_of('0') + 1);
    t += "." + f;
  }
  return t + "Z";
}

std::string format_value(double v, bool table) {
  if (std::isnan(v)) return table ? "-" : "";
  return table ? fmt::format("{:.6g}", v) : fmt::format("{}", v);
}

// Columns padded to their widest cell, two spaces apart.
std::string table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    width.resize(std::max(width.size(), r.size()));
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::string s;
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) {
      s += r[i];
      if (i + 1 < r.size()) s.append(width[i] - r[i].size() + 2, ' ');
    }
    s += '\n';
  }
  return s;
}

std::string join(const std::vector<std::string>& items, std::string_view sep = ",") {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? std::string(sep) : "") + items[i];
  return s;
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> items;
  while (!s.empty()) {
    const size_t p = s.find(sep);
    if (p != 0) items.emplace_back(s.substr(0, p));
    if (p == std::string_view::npos) break;
    s.remove_prefix(p + 1);
  }
  return items;
}

Result<std::vector<client::Tag>> parse_where(const std::vector<std::string>& where) {
  std::vector<client::Tag> tags;
  for (const auto& w : where) {
    const size_t eq = w.find('=');
    if (eq == 0 || eq == std::string::npos || eq + 1 == w.size()) {
      return Status::Invalid("--where '" + w + "': expected TAG=VALUE");
    }
    tags.push_back({w.substr(0, eq), w.substr(eq + 1)});
  }
  return tags;
}

Status open_client(const std::string& shm_name, std::unique_ptr<Client>* c) {
  client::Status s = Client::open(shm_name, c);
  return s.ok() ? Status::Ok() : Status::IoError(s.message());
}

Json row_json(const client::Row& r) {
  Json tags = Json::object();
  for (const auto& t : r.tags) tags[t.key] = t.value;
  return {{"row_id", r.id}, {"measurement", r.measurement}, {"tags", tags}, {"field", r.field}};
}

Json view_json(const client::ViewInfo& v) {
  const client::ViewStats& s = v.stats;
  return {{"name", v.name},
          {"widths_ns", v.widths_ns},
          {"widths",
           [&] {
             std::vector<std::string> w;
             for (int64_t x : v.widths_ns) w.push_back(format_duration_ns(x));
             return w;
           }()},
          {"outputs", v.outputs},
          {"measurements", v.measurements},
          {"fields", v.fields},
          {"group_by", v.group_all_tags ? std::vector<std::string>{"*"} : v.group_by},
          {"live_window_ns", v.live_window_ns},
          {"definition", v.definition},
          {"change_seq", v.change_seq},
          {"stats",
           {{"capacity_entries", s.capacity_entries},
            {"entries_used", s.entries_used},
            {"inserts", s.inserts},
            {"overflow_updates", s.overflow_updates},
            {"evictions", s.evictions},
            {"late_updates", s.late_updates}}}};
}

enum class Format { kTable, kCsv, kJson };

// The output named "count" is the point's count: shown once, as the count column.
std::string render_query(const client::Query& q, const client::QueryResult& r, Format f) {
  if (f == Format::kJson) {
    Json j{{"view", q.view},
           {"from_ns", r.from_ns},
           {"to_ns", r.to_ns},
           {"step_ns", r.step_ns},
           {"width_ns", r.width_ns},
           {"group_by", q.group_by.empty() ? Json(nullptr) : Json(q.group_by)},
           {"outputs", r.outputs},
           {"busy_entries", r.busy_entries},
           {"sources", q.sources == client::Query::Sources::kMerged      ? "merged"
                       : q.sources == client::Query::Sources::kBatchOnly ? "batch"
                                                                          : "live"},
           {"batch_watermark_offset", r.batch_watermark_offset},
           {"batch_rebuilding", r.batch_rebuilding}};
    Json& series = j["series"] = Json::array();
    for (const auto& s : r.series) {
      Json points = Json::array();
      for (const auto& p : s.points) {
        Json values = Json::object();
        for (size_t i = 0; i < r.outputs.size(); ++i)
          values[r.outputs[i]] = p.values[i];  // NaN: null
        points.push_back({{"ts_ns", p.ts_ns}, {"count", p.count}, {"values", values}});
      }
      series.push_back({{"field", s.field},
                        {"group_value", s.group_value ? Json(*s.group_value) : Json(nullptr)},
                        {"rows", s.rows},
                        {"points", points}});
    }
    return j.dump() + "\n";
  }
  const bool tbl = f == Format::kTable;
  std::vector<size_t> shown;
  for (size_t i = 0; i < r.outputs.size(); ++i)
    if (r.outputs[i] != "count") shown.push_back(i);
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> head{tbl ? "time" : "time_ns", "field"};
  if (!q.group_by.empty()) head.push_back(q.group_by);
  head.push_back("count");
  for (size_t i : shown) head.push_back(r.outputs[i]);
  rows.push_back(head);
  for (const auto& s : r.series) {
    for (const auto& p : s.points) {
      std::vector<std::string> row{tbl ? format_time(p.ts_ns) : std::to_string(p.ts_ns), s.field};
      if (!q.group_by.empty()) row.push_back(s.group_value.value_or(""));
      row.push_back(std::to_string(p.count));
      for (size_t i : shown) row.push_back(format_value(p.values[i], tbl));
      rows.push_back(std::move(row));
    }
  }
  if (!tbl) {
    std::string csv;
    for (const auto& row : rows) csv += join(row) + "\n";
    return csv;
  }
  std::string t = table(rows);
  if (r.busy_entries != 0)
    t += fmt::format("({} buckets were busy and are missing)\n", r.busy_entries);
  return t;
}

}  // namespace

Result<int64_t> parse_time_ns(std::string_view text, int64_t now_ns) {
  std::string_view t = text;
  if (t == "now") return now_ns;
  if (t.starts_with("now-")) t.remove_prefix(3);
  if (t.size() > 1 && t[0] == '-' && !all_digits(t.substr(1))) {
    auto d = parse_duration_ns(t.substr(1));
    if (!d.ok())
      return Status::Invalid("time '" + std::string(text) + "': " + d.status().message());
    return now_ns - d.value();
  }
  if (all_digits(t) || (t.size() > 1 && t[0] == '-' && all_digits(t.substr(1)))) {
    int64_t ns = 0;
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), ns);
    if (ec != std::errc() || p != t.data() + t.size())
      return Status::Invalid("time '" + std::string(text) + "' is out of range");
    return ns;
  }
  return parse_rfc3339(t);
}

QueryCommands::QueryCommands(CLI::App& app, const std::string& shm_name, bool& json)
    : shm_name_(shm_name), json_(json) {
  views_ =
      app.add_subcommand("views", "Views of the running daemon: widths, outputs, live-table use");
  views_->add_flag("--json", json, "Machine-readable output");

  series_ = app.add_subcommand("series", "Rows (series x field) registered by the speed layer");
  series_->add_option("--view", series_args_.view, "Only rows of this view");
  series_->add_option("--measurement", series_args_.measurement, "Exact measurement");
  series_->add_option("--field", series_args_.field, "Exact field");
  series_->add_option("--where", series_args_.where, "TAG=VALUE, exact (repeatable)");
  series_->add_flag("--json", json, "Machine-readable output");

  query_ = app.add_subcommand("query", "Aggregates of a view over a time range");
  add_query_options(query_, &query_args_);
  query_->add_flag("--json", json, "Machine-readable output");
  query_->add_flag("--csv", csv_, "CSV output");

  tail_ = app.add_subcommand("tail", "Follow the raw event stream as line protocol");
  tail_->add_option("--limit", tail_limit_, "Stop after N records (0: until Ctrl-C)");
  tail_->add_flag("--from-oldest", tail_from_oldest_,
                  "Start with the oldest record still in the ring");
  tail_->add_flag("--json", json, "One JSON object per record");

  watch_ = app.add_subcommand("watch", "A query redrawn on every change of the view (Ctrl-C ends)");
  add_query_options(watch_, &watch_args_);
  watch_->add_option("--iterations", watch_iterations_, "Stop after N draws (0: until Ctrl-C)");
  watch_->add_flag("--json", json, "One JSON document per draw");
}

void QueryCommands::add_query_options(CLI::App* cmd, QueryArgs* a) {
  cmd->add_option("view", a->view, "View name")->required();
  cmd->add_option("--measurement", a->measurement, "Exact measurement");
  cmd->add_option("--field", a->field, "Exact field (else one series per field)");
  cmd->add_option("--where", a->where, "TAG=VALUE, exact (repeatable)");
  cmd->add_option("--group-by", a->group_by, "One series per value of this tag");
  cmd->add_option("--row", a->row, "Exactly this row id (decimal or 0x hex), see `series`");
  cmd->add_option("--from", a->from, "Start: now, -1h, ns since the epoch or RFC 3339")
      ->capture_default_str();
  cmd->add_option("--to", a->to, "End (exclusive)")->capture_default_str();
  cmd->add_option("--step", a->step, "Step, a multiple of a bucket width (default: the finest)");
  cmd->add_option("--agg", a->agg, "Outputs to show, e.g. count,mean,p99 (default: all)");
  cmd->add_flag("--fill", a->fill, "Also show steps without data");
  auto* batch = cmd->add_flag("--batch-only", a->batch_only,
                              "Diagnosis: only the batch views, up to their watermark");
  cmd->add_flag("--live-only", a->live_only, "Diagnosis: only the live tables (every generation)")
      ->excludes(batch);
}

namespace {

Result<client::Query> build_query(const QueryArgs& a) {
  client::Query q;
  const int64_t now = realtime_ns();
  q.view = a.view;
  q.rows.measurement = a.measurement;
  q.rows.field = a.field;
  auto tags = parse_where(a.where);
  if (!tags.ok()) return tags.status();
  q.rows.where = std::move(tags).value();
  q.group_by = a.group_by;
  if (const std::string& row = a.row; !row.empty()) {
    uint64_t id = 0;
    const bool hex = row.starts_with("0x") || row.starts_with("0X");
    const std::string_view digits = hex ? std::string_view(row).substr(2) : std::string_view(row);
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id, hex ? 16 : 10);
    if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size())
      return Status::Invalid("--row '" + row + "': expected a row id, decimal or 0x hex");
    q.row_id = id;
  }
  auto f = parse_time_ns(a.from, now);
  if (!f.ok()) return f.status();
  auto t = parse_time_ns(a.to, now);
  if (!t.ok()) return t.status();
  q.from_ns = f.value();
  q.to_ns = t.value();
  if (!a.step.empty()) {
    auto s = parse_duration_ns(a.step);
    if (!s.ok()) return Status::Invalid("--step: " + s.status().message());
    q.step_ns = s.value();
  }
  q.outputs = split(a.agg, ',');
  q.fill_empty = a.fill;
  q.sources = a.batch_only  ? client::Query::Sources::kBatchOnly
              : a.live_only ? client::Query::Sources::kLiveOnly
                            : client::Query::Sources::kMerged;
  return q;
}

}  // namespace

std::optional<int> QueryCommands::run() {
  const Format format = json_ ? Format::kJson : csv_ ? Format::kCsv : Format::kTable;

  if (views_->parsed()) {
    std::unique_ptr<Client> c;
    if (Status s = open_client(shm_name_, &c); !s.ok()) return error("views", s.message());
    std::vector<client::ViewInfo> views;
    if (auto s = c->views(&views); !s.ok()) return error("views", s.message());
    if (json_) {
      Json j = Json::array();
      for (const auto& v : views) j.push_back(view_json(v));
      out(j.dump() + "\n");
      return 0;
    }
    std::vector<std::vector<std::string>> rows{
        {"view", "widths", "outputs", "entries", "capacity", "overflow", "late", "evicted"}};
    for (const auto& v : views) {
      std::vector<std::string> widths;
      for (int64_t w : v.widths_ns) widths.push_back(format_duration_ns(w));
      rows.push_back({v.name, join(widths), join(v.outputs), std::to_string(v.stats.entries_used),
                      std::to_string(v.stats.capacity_entries),
                      std::to_string(v.stats.overflow_updates),
                      std::to_string(v.stats.late_updates), std::to_string(v.stats.evictions)});
    }
    out(table(rows));
    return 0;
  }

  if (series_->parsed()) {
    auto where = parse_where(series_args_.where);
    if (!where.ok()) return error("series", where.status().message());
    std::unique_ptr<Client> c;
    if (Status s = open_client(shm_name_, &c); !s.ok()) return error("series", s.message());
    client::RowFilter filter{series_args_.measurement, series_args_.field, where.value()};
    std::vector<client::Row> rows;
    if (auto s = c->find_rows(series_args_.view, filter, &rows); !s.ok())
      return error("series", s.message());
    if (json_) {
      Json j = Json::array();
      for (const auto& r : rows) j.push_back(row_json(r));
      out(j.dump() + "\n");
      return 0;
    }
    std::vector<std::vector<std::string>> t{{"row_id", "measurement", "tags", "field"}};
    for (const auto& r : rows) {
      std::vector<std::string> tags;
      for (const auto& tag : r.tags) tags.push_back(tag.key + "=" + tag.value);
      t.push_back({fmt::format("{:#018x}", r.id), r.measurement, join(tags), r.field});
    }
    out(table(t));
    return 0;
  }

  if (query_->parsed()) {
    if (json_ && csv_) return error("query", "--json and --csv exclude each other");
    auto q = build_query(query_args_);
    if (!q.ok()) return error("query", q.status().message());
    std::unique_ptr<Client> c;
    if (Status s = open_client(shm_name_, &c); !s.ok()) return error("query", s.message());
    client::QueryResult r;
    if (auto s = c->query(q.value(), &r); !s.ok()) return error("query", s.message());
    out(render_query(q.value(), r, format));
    return 0;
  }

  if (tail_->parsed()) {
    install_stop_handler();
    std::unique_ptr<client::Tail> tail;
    if (auto s = client::Tail::open(shm_name_, tail_from_oldest_, &tail); !s.ok())
      return error("tail", s.message());
    std::fprintf(stderr, "runnelctl: tail: following ring '%s.ring'\n", shm_name_.c_str());
    uint64_t printed = 0;
    std::string lines;
    while (g_stop == 0 && (tail_limit_ == 0 || printed < tail_limit_)) {
      lines.clear();
      client::Tail::Batch b;
      const size_t room = tail_limit_ == 0 ? 4096 : std::min<uint64_t>(4096, tail_limit_ - printed);
      if (auto s = tail->poll(room, &lines, &b); !s.ok())
        std::fprintf(stderr, "runnelctl: tail: %s\n", s.message().c_str());
      if (b.overrun_bytes != 0) {
        std::fprintf(stderr,
                     "runnelctl: tail: overrun: %llu bytes lost (producers lapped this reader)\n",
                     static_cast<unsigned long long>(b.overrun_bytes));
      }
      printed += b.records;
      if (json_) {
        std::string js;
        for (const auto& l : split(lines, '\n')) js += Json{{"line", l}}.dump() + "\n";
        lines = std::move(js);
      }
      if (!lines.empty()) out(lines);
      if (b.records == 0 && b.overrun_bytes == 0) tail->wait(std::chrono::milliseconds(50));
    }
    return 0;
  }

  if (watch_->parsed()) {
    install_stop_handler();
    // Validate the arguments once; each draw re-reads the clock for relative times.
    if (auto q = build_query(watch_args_); !q.ok()) return error("watch", q.status().message());
    std::unique_ptr<Client> c;
    if (Status s = open_client(shm_name_, &c); !s.ok()) return error("watch", s.message());
    client::ViewInfo info;
    if (auto s = c->view(watch_args_.view, &info); !s.ok()) return error("watch", s.message());
    uint32_t seq = info.change_seq;
    const bool tty = isatty(STDOUT_FILENO) != 0 && !json_;
    for (uint64_t draw = 0; g_stop == 0; ++draw) {
      auto q = build_query(watch_args_);
      client::QueryResult r;
      if (auto s = c->query(q.value(), &r); !s.ok()) return error("watch", s.message());
      std::string screen = tty ? "\x1b[H\x1b[2J" : "";
      if (!json_) {
        screen +=
            fmt::format("runnelctl watch {}  {}  change {}  (Ctrl-C ends)\n\n", watch_args_.view,
                        format_time(realtime_ns() / kSecondNs * kSecondNs), seq);
      }
      out(screen + render_query(q.value(), r, json_ ? Format::kJson : Format::kTable));
      if (watch_iterations_ != 0 && draw + 1 >= watch_iterations_) break;
      bool changed = false;
      while (g_stop == 0 && !changed) {
        // Bounded waits only so that Ctrl-C is noticed; every wake-up is a futex wake.
        if (auto s = c->wait_for_change(watch_args_.view, &seq, std::chrono::milliseconds(250),
                                        &changed);
            !s.ok())
          return error("watch", s.message());
      }
    }
    return 0;
  }
  return std::nullopt;
}

}  // namespace runnel
