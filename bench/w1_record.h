// Workload W1 (bench/w1.h) as records: event i parsed the way runneld's parser builds it, for
// the benchmarks that feed the speed path or the log without sockets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "bench/w1.h"
#include "model/line_protocol.h"

namespace runnel::bench {

// Replaces *record with W1 event i; on a parse error returns it with *reason set.
inline ParseError w1_record(uint64_t i, LineParser& parser, std::vector<std::byte>* record,
                            const char** reason) {
  char line[kMaxLineBytes];
  const char* end = write_w1_line(i, kDefaultStartTsNs, line);
  // Without the newline: the parser takes one line.
  return parser.parse(std::string_view(line, static_cast<size_t>(end - line - 1)), {}, 0, record,
                      reason);
}

}  // namespace runnel::bench
