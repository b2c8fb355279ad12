// View definitions: validation, canonical text form and its parser.
#include "model/view.h"

#include <fnmatch.h>
#include <xxhash.h>

#include <algorithm>
#include <charconv>
#include <cmath>

namespace runnel {
namespace {

constexpr struct {
  std::string_view suffix;
  int64_t ns;
} kUnits[] = {{"ns", 1}, {"us", 1'000}, {"ms", 1'000'000}, {"s", 1'000'000'000},
              {"m", 60'000'000'000}, {"h", 3'600'000'000'000}, {"d", 86'400'000'000'000}};

// canonical(): key=value pairs separated by ';', list items by ','. Names may not contain
// ';', ',' or '=' (validate() refuses them), so no escaping is needed.
void join(std::string* out, const std::vector<std::string>& items) {
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) *out += ',';
    *out += items[i];
  }
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t start = 0;
  while (true) {
    size_t p = s.find(sep, start);
    out.emplace_back(s.substr(start, p == std::string_view::npos ? std::string_view::npos : p - start));
    if (p == std::string_view::npos) break;
    start = p + 1;
  }
  return out;
}

bool plain_name(std::string_view s) {
  return !s.empty() && s.find_first_of(";,=\n") == std::string_view::npos;
}

}  // namespace

Result<int64_t> parse_duration_ns(std::string_view text) {
  for (const auto& u : kUnits) {
    if (text.size() <= u.suffix.size() || !text.ends_with(u.suffix)) continue;
    std::string_view num = text.substr(0, text.size() - u.suffix.size());
    // "1ms" also ends with "s": only accept a suffix whose remainder is all digits.
    int64_t v = 0;
    auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
    if (ec != std::errc() || p != num.data() + num.size()) continue;
    if (v <= 0 || v > INT64_MAX / u.ns) {
      return Status::Invalid("duration '" + std::string(text) + "' out of range");
    }
    return v * u.ns;
  }
  return Status::Invalid("bad duration '" + std::string(text) + "' (e.g. 500ms, 1s, 1m, 1h, 1d)");
}

std::string format_duration_ns(int64_t ns) {
  for (auto it = std::rbegin(kUnits); it != std::rend(kUnits); ++it) {
    if (ns % it->ns == 0) return std::to_string(ns / it->ns) + std::string(it->suffix);
  }
  return std::to_string(ns) + "ns";
}

bool ViewDef::matches_measurement(std::string_view measurement) const {
  std::string m(measurement);  // fnmatch needs a terminated string; only on a cache miss
  for (const auto& pattern : measurements) {
    if (pattern == measurement || fnmatch(pattern.c_str(), m.c_str(), 0) == 0) return true;
  }
  return false;
}

bool ViewDef::takes_field(std::string_view field) const {
  return fields.empty() || std::find(fields.begin(), fields.end(), field) != fields.end();
}

Status ViewDef::validate() const {
  auto bad = [&](const std::string& why) { return Status::Invalid("view '" + name + "': " + why); };
  if (!plain_name(name) || name.size() > kMaxNameBytes || name.find_first_of(" /*?") != std::string::npos) {
    return Status::Invalid("view name '" + name + "' must be 1-63 bytes without space, '/', '*', '?', ';', ',' or '='");
  }
  if (measurements.empty()) return bad("measurements is empty (use [\"*\"] for all)");
  for (const auto& m : measurements) {
    if (!plain_name(m)) return bad("bad measurement pattern '" + m + "'");
  }
  for (const auto& f : fields) {
    if (!plain_name(f)) return bad("bad field name '" + f + "'");
  }
  for (const auto& t : group_by) {
    if (!plain_name(t) || t == "*") return bad("bad group_by tag '" + t + "'");
  }
  if (widths_ns.empty() || widths_ns.size() > kMaxWidths) return bad("buckets must list 1 to 8 widths");
  for (size_t i = 0; i < widths_ns.size(); ++i) {
    if (widths_ns[i] <= 0) return bad("bucket widths must be positive");
    if (i > 0 && widths_ns[i] <= widths_ns[i - 1]) return bad("bucket widths must be distinct and ascending");
  }
  if (aggregates.empty()) return bad("aggregates is empty");
  for (const auto& a : aggregates) {
    if (a.empty() || a.find_first_of(";=\n") != std::string::npos) return bad("bad aggregate '" + a + "'");
    if (a == "distinct") return bad("aggregate 'distinct' must name what it counts: distinct(TAG_OR_FIELD)");
  }
  if (live_window_ns <= 0) return bad("live_window must be positive");
  if (capacity < 64 || capacity > (uint64_t{1} << 32)) return bad("capacity must be in [64, 2^32]");
  if (hll_precision < 4 || hll_precision > 18) return bad("hll_precision must be in [4, 18]");
  if (!(quantile_accuracy > 0 && quantile_accuracy < 1)) return bad("quantile_accuracy must be in (0, 1)");
  if (quantile_max_bins < 16 || quantile_max_bins > 65536) return bad("quantile_max_bins must be in [16, 65536]");
  return Status::Ok();
}

std::string ViewDef::canonical() const {
  std::string s = "v1;name=" + name + ";measurements=";
  join(&s, measurements);
  s += ";fields=";
  join(&s, fields);
  s += ";group_by=";
  if (group_all_tags) {
    s += '*';
  } else {
    join(&s, group_by);
  }
  s += ";buckets=";
  for (size_t i = 0; i < widths_ns.size(); ++i) {
    if (i) s += ',';
    s += format_duration_ns(widths_ns[i]);
  }
  s += ";aggregates=";
  join(&s, aggregates);
  s += ";live_window=" + format_duration_ns(live_window_ns);
  s += ";capacity=" + std::to_string(capacity);
  s += ";hll_precision=" + std::to_string(hll_precision);
  char acc[32];
  auto r = std::to_chars(acc, acc + sizeof acc, quantile_accuracy);
  s += ";quantile_accuracy=" + std::string(acc, r.ptr);
  s += ";quantile_max_bins=" + std::to_string(quantile_max_bins);
  return s;
}

uint64_t ViewDef::definition_hash() const {
  const std::string c = canonical();
  return XXH3_64bits(c.data(), c.size());
}

ViewDef default_view() {
  ViewDef v;
  v.name = "default";
  return v;
}

Result<ViewDef> parse_view(std::string_view text) {
  auto parts = split(text, ';');
  if (parts.empty() || parts[0] != "v1") return Status::Invalid("view text: unknown format");
  ViewDef v;
  auto num = [](const std::string& s, auto* out) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && p == s.data() + s.size();
  };
  for (size_t i = 1; i < parts.size(); ++i) {
    const auto eq = parts[i].find('=');
    if (eq == std::string::npos) return Status::Invalid("view text: bad item '" + parts[i] + "'");
    const std::string key = parts[i].substr(0, eq), val = parts[i].substr(eq + 1);
    bool ok = true;
    if (key == "name") {
      v.name = val;
    } else if (key == "measurements") {
      v.measurements = split(val, ',');
    } else if (key == "fields") {
      v.fields = split(val, ',');
    } else if (key == "group_by") {
      v.group_all_tags = val == "*";
      v.group_by = v.group_all_tags ? std::vector<std::string>{} : split(val, ',');
    } else if (key == "buckets") {
      v.widths_ns.clear();
      for (const auto& w : split(val, ',')) {
        auto d = parse_duration_ns(w);
        if (!d.ok()) return d.status();
        v.widths_ns.push_back(d.value());
      }
    } else if (key == "aggregates") {
      v.aggregates = split(val, ',');
    } else if (key == "live_window") {
      auto d = parse_duration_ns(val);
      if (!d.ok()) return d.status();
      v.live_window_ns = d.value();
    } else if (key == "capacity") {
      ok = num(val, &v.capacity);
    } else if (key == "hll_precision") {
      ok = num(val, &v.hll_precision);
    } else if (key == "quantile_accuracy") {
      ok = num(val, &v.quantile_accuracy);
    } else if (key == "quantile_max_bins") {
      ok = num(val, &v.quantile_max_bins);
    } else {
      return Status::Invalid("view text: unknown key '" + key + "'");
    }
    if (!ok) return Status::Invalid("view text: bad value for '" + key + "'");
  }
  if (Status s = v.validate(); !s.ok()) return s;
  return v;
}

}  // namespace runnel
