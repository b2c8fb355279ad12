// runnelctl's log commands (see log_commands.h). Output goes through one buffer, flushed in
// large writes, so dumping millions of records is not bound by stdio.
#include "client/log_commands.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "model/record.h"
#include "storage/log_reader.h"

namespace runnel {
namespace {

std::filesystem::path log_dir(const std::string& data_dir) {
  return std::filesystem::path(data_dir) / "log";
}

nlohmann::ordered_json problem_json(const std::optional<storage::LogProblem>& p) {
  if (!p) return nullptr;
  return {{"segment", p->segment.string()},
          {"log_offset", p->log_offset},
          {"file_offset", p->file_offset},
          {"reason", p->reason}};
}

void write_all(const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = write(STDOUT_FILENO, s.data() + done, s.size() - done);
    if (n <= 0) {
      if (errno == EINTR) continue;
      std::exit(errno == EPIPE ? 0 : 2);  // `runnelctl log dump | head` is fine
    }
    done += static_cast<size_t>(n);
  }
}

}  // namespace

int cmd_log_verify(const std::string& data_dir, bool json) {
  auto r = storage::verify_log(log_dir(data_dir));
  if (!r.ok()) {
    std::fprintf(stderr, "runnelctl: log verify: %s\n", r.status().ToString().c_str());
    return 2;
  }
  const storage::VerifyReport& v = r.value();
  if (json) {
    nlohmann::ordered_json j;
    j["ok"] = v.ok();
    j["segments"] = v.segments;
    j["records"] = v.records;
    j["record_bytes"] = v.record_bytes;
    j["corrupt_records"] = v.corrupt_records;
    j["bad_headers"] = v.bad_headers;
    j["gaps"] = v.gaps;
    j["vanished_segments"] = v.vanished;  // deleted by retention while verify ran
    j["first_offset"] = v.first_offset;
    j["end_offset"] = v.end_offset;
    j["first_problem"] = problem_json(v.first_problem);
    auto& segs = j["segment_details"] = nlohmann::ordered_json::array();
    for (const auto& s : v.details) {
      segs.push_back({{"path", s.info.path.string()},
                      {"base_offset", s.info.base_offset},
                      {"sealed", s.info.sealed},
                      {"header_ok", s.header_ok},
                      {"records", s.records},
                      {"corrupt_records", s.corrupt_records},
                      {"unreadable_bytes", s.unreadable_bytes},
                      {"incomplete_tail_bytes", s.incomplete_tail_bytes},
                      {"first_problem", problem_json(s.first_problem)}});
    }
    std::cout << j.dump() << "\n";
  } else {
    for (const auto& s : v.details) {
      std::printf("%s  %s  records %llu  corrupt %llu%s\n", s.info.path.filename().c_str(),
                  s.info.sealed ? "sealed" : "active", static_cast<unsigned long long>(s.records),
                  static_cast<unsigned long long>(s.corrupt_records), s.header_ok ? "" : "  BAD HEADER");
    }
    std::printf("segments %zu  records %llu  corrupt %llu  bad headers %llu  gaps %llu  offsets [%llu, %llu)\n",
                v.segments, static_cast<unsigned long long>(v.records),
                static_cast<unsigned long long>(v.corrupt_records),
                static_cast<unsigned long long>(v.bad_headers), static_cast<unsigned long long>(v.gaps),
                static_cast<unsigned long long>(v.first_offset),
                static_cast<unsigned long long>(v.end_offset));
    if (v.first_problem) {
      std::printf("first problem: %s at log offset %llu (file offset %llu): %s\n",
                  v.first_problem->segment.c_str(),
                  static_cast<unsigned long long>(v.first_problem->log_offset),
                  static_cast<unsigned long long>(v.first_problem->file_offset),
                  v.first_problem->reason.c_str());
    }
    std::printf("%s\n", v.ok() ? "OK" : "CORRUPT");
  }
  return v.ok() ? 0 : 1;
}

int cmd_log_dump(const std::string& data_dir, uint64_t from, uint64_t limit, bool json) {
  auto reader = storage::LogReader::open(log_dir(data_dir));
  if (!reader.ok()) {
    std::fprintf(stderr, "runnelctl: log dump: %s\n", reader.status().ToString().c_str());
    return 2;
  }
  if (from != 0) {
    if (Status s = reader->seek(from); !s.ok()) {
      std::fprintf(stderr, "runnelctl: log dump: %s\n", s.ToString().c_str());
      return 2;
    }
  }
  std::string out, line;
  out.reserve(1 << 20);
  uint64_t n = 0;
  storage::Record rec;
  while (limit == 0 || n < limit) {
    auto more = reader->next(&rec);
    if (!more.ok()) {
      write_all(out);
      std::fprintf(stderr, "runnelctl: log dump: %s\n", more.status().ToString().c_str());
      return 1;
    }
    if (!more.value()) break;
    auto view = RecordView::parse(rec.payload);
    if (!view.ok()) {
      write_all(out);
      std::fprintf(stderr, "runnelctl: log dump: record at log offset %llu: %s\n",
                   static_cast<unsigned long long>(rec.offset), view.status().ToString().c_str());
      return 1;
    }
    if (json) {
      line.clear();
      format_line_protocol(view.value(), &line);
      line.pop_back();  // the '\n'
      nlohmann::ordered_json j{{"offset", rec.offset},
                               {"ring_epoch", rec.ring_epoch},
                               {"ring_pos", rec.ring_pos},
                               {"series_id", view->series_id()},
                               {"ts_ns", view->ts_ns()},
                               {"line", line}};
      out += j.dump();
      out += '\n';
    } else {
      format_line_protocol(view.value(), &out);
    }
    ++n;
    if (out.size() > (1u << 20) - 4096) {
      write_all(out);
      out.clear();
    }
  }
  write_all(out);
  return 0;
}

}  // namespace runnel
