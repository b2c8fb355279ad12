// A view definition: which points it takes, how rows are grouped, bucket widths, aggregates.
// Shared by the speed path, the batch layer and clients (through its canonical text form).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/status.h"

namespace runnel {

struct ViewDef {
  static constexpr size_t kMaxWidths = 8;
  static constexpr size_t kMaxNameBytes = 63;

  std::string name;
  std::vector<std::string> measurements = {"*"};  // exact names or fnmatch(3) globs
  std::vector<std::string> fields;                // empty: every numeric field
  bool group_all_tags = true;                     // one row per series
  std::vector<std::string> group_by;              // else these tag keys, sorted
  std::vector<int64_t> widths_ns = {1'000'000'000, 60'000'000'000, 3'600'000'000'000};
  std::vector<std::string> aggregates = {"count", "sum", "min", "max", "mean", "last"};
  int64_t live_window_ns = 2 * 3'600'000'000'000;
  uint64_t capacity = 1 << 20;  // live entries
  uint32_t hll_precision = 12;
  double quantile_accuracy = 0.01;
  uint32_t quantile_max_bins = 2048;

  bool matches_measurement(std::string_view measurement) const;
  bool takes_field(std::string_view field) const;
  // One line, stable across versions of this build for equal definitions; parse_view() reads it.
  std::string canonical() const;
  // xxh3 of canonical(): a changed definition has a different hash.
  uint64_t definition_hash() const;
  // Checks names, widths, window and sizes; the message names the view and the problem.
  Status validate() const;
};

// The view used when the configuration declares none.
ViewDef default_view();

// Reads canonical() text back.
Result<ViewDef> parse_view(std::string_view canonical);

// "500ms", "1s", "1m", "1h", "1d", "250us", "10ns" -> ns.
Result<int64_t> parse_duration_ns(std::string_view text);
std::string format_duration_ns(int64_t ns);

}  // namespace runnel
