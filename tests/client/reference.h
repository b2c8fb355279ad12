// A reference for client queries: the answer computed straight from the events (no buckets, no
// merging), and a comparison with what the client returned. Shared by the unit and e2e tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "ipc/live_table_layout.h"
#include "runnel/client.h"

namespace runnel::client::testing {

// One field of one point.
struct Event {
  std::string measurement;
  std::map<std::string, std::string> tags;
  std::string field;
  double value = 0;
  int64_t ts_ns = 0;
};

// A point with integer ("n") and float fields, as a line and as its events.
struct TestPoint {
  std::string measurement;
  std::map<std::string, std::string> tags;
  std::vector<std::pair<std::string, double>> floats;
  std::vector<std::pair<std::string, int64_t>> integers;
  int64_t ts_ns = 0;

  std::string line() const {
    std::ostringstream s;
    s.precision(17);
    s << measurement;
    for (const auto& [k, v] : tags) s << ',' << k << '=' << v;
    char sep = ' ';
    for (const auto& [k, v] : floats) {
      s << sep << k << '=' << v;
      sep = ',';
    }
    for (const auto& [k, v] : integers) {
      s << sep << k << '=' << v << 'i';
      sep = ',';
    }
    s << ' ' << ts_ns << '\n';
    return s.str();
  }
  void events(std::vector<Event>* out) const {
    for (const auto& [k, v] : floats) out->push_back({measurement, tags, k, v, ts_ns});
    for (const auto& [k, v] : integers)
      out->push_back({measurement, tags, k, static_cast<double>(v), ts_ns});
  }
};

// count, sum, min, max, mean and last of some events, computed directly.
struct RefAgg {
  uint64_t count = 0;
  double sum = 0;
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  int64_t last_ts = 0;
  double last = 0;

  void add(double v, int64_t ts) {
    uint64_t vb, lb;
    std::memcpy(&vb, &v, 8);
    std::memcpy(&lb, &last, 8);
    // last: the greatest (ts, value bits), as the aggregate defines it.
    if (count == 0 || ts > last_ts || (ts == last_ts && vb > lb)) {
      last_ts = ts;
      last = v;
    }
    ++count;
    sum += v;
    min = std::min(min, v);
    max = std::max(max, v);
  }
  double value(const std::string& output) const {
    if (output == "count") return static_cast<double>(count);
    if (output == "sum") return sum;
    if (output == "min") return count ? min : NAN;
    if (output == "max") return count ? max : NAN;
    if (output == "mean") return count ? sum / static_cast<double>(count) : NAN;
    if (output == "last") return count ? last : NAN;
    return NAN;
  }
};

using RefKey = std::pair<std::string, std::optional<std::string>>;  // (field, group value)
using RefResult = std::map<RefKey, std::map<int64_t, RefAgg>>;      // -> step start -> agg

// The reference answer: events that `select` takes, with a step start in [from_ns, to_ns)
// (both aligned to the step), grouped by field and by the value of tag `group_by` if set.
inline RefResult reference(const std::vector<Event>& events,
                           const std::function<bool(const Event&)>& select,
                           const std::string& group_by, int64_t step_ns, int64_t from_ns,
                           int64_t to_ns) {
  RefResult r;
  for (const Event& e : events) {
    if (!select(e)) continue;
    const int64_t step = ipc::bucket_start(e.ts_ns, step_ns);
    if (step < from_ns || step >= to_ns) continue;
    RefKey key{e.field, std::nullopt};
    if (!group_by.empty()) {
      const auto t = e.tags.find(group_by);
      key.second = t != e.tags.end() ? t->second : std::string();
    }
    r[key][step].add(e.value, e.ts_ns);
  }
  return r;
}

// "" when `got` equals `want`: count, sum, min and max exactly, mean and last within 1e-9
// relative; else the first difference.
inline std::string compare(const RefResult& want, const QueryResult& got) {
  std::ostringstream d;
  d.precision(17);
  if (got.series.size() != want.size()) {
    d << got.series.size() << " series, want " << want.size();
    return d.str();
  }
  size_t i = 0;
  for (const auto& [key, steps] : want) {
    const Series& s = got.series[i++];
    const std::string name = key.first + "/" + key.second.value_or("-");
    if (s.field != key.first || s.group_value != key.second) {
      d << "series " << i - 1 << " is " << s.field << "/" << s.group_value.value_or("-")
        << ", want " << name;
      return d.str();
    }
    if (s.points.size() != steps.size()) {
      d << name << ": " << s.points.size() << " points, want " << steps.size();
      return d.str();
    }
    size_t k = 0;
    for (const auto& [ts, agg] : steps) {
      const Point& p = s.points[k++];
      if (p.ts_ns != ts || p.count != agg.count) {
        d << name << ": point at " << p.ts_ns << " count " << p.count << ", want " << ts
          << " count " << agg.count;
        return d.str();
      }
      for (size_t o = 0; o < got.outputs.size(); ++o) {
        const std::string& out = got.outputs[o];
        const double w = agg.value(out), g = p.values[o];
        const bool exact = out != "mean" && out != "last";
        const bool same = exact ? (g == w || (std::isnan(g) && std::isnan(w)))
                                : std::fabs(g - w) <= 1e-9 * std::max(1.0, std::fabs(w));
        if (!same) {
          d << name << " @" << ts << " " << out << " = " << g << ", want " << w;
          return d.str();
        }
      }
    }
  }
  return "";
}

}  // namespace runnel::client::testing
