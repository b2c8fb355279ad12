// `runnelctl log verify` and `runnelctl log dump`: read the durable log of a data directory.
#pragma once

#include <cstdint>
#include <string>

namespace runnel {

// Exit codes: 0 every record checks out, 1 corruption found, 2 the log could not be read.
int cmd_log_verify(const std::string& data_dir, bool json);
// Prints records from `from` (a log offset) as line protocol, or JSON objects with --json;
// `limit` 0 prints all. Exit 1 at a corrupt record (after printing what preceded it).
int cmd_log_dump(const std::string& data_dir, uint64_t from, uint64_t limit, bool json);

}  // namespace runnel
