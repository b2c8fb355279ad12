// The C ABI (runnel/runnel.h) over the C++ client: errors become int codes plus a thread-local
// text, exceptions stop here, and results the library allocates are one malloc block each.
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <string_view>

#include "runnel/client.h"
#include "runnel/runnel.h"

using runnel::client::Client;
using runnel::client::Code;
using runnel::client::Status;

struct runnel_client {
  std::unique_ptr<Client> client;
};

struct runnel_tail {
  std::unique_ptr<runnel::client::Tail> tail;
  std::string pending;  // polled lines not yet handed out, from pending_at
  size_t pending_at = 0;
  uint64_t overrun = 0;  // not yet reported
};

namespace {

thread_local std::string g_error;

int fail(int code, std::string text) {
  g_error = std::move(text);
  return code;
}

int done(const Status& s) {
  if (s.ok()) {
    g_error.clear();
    return RUNNEL_OK;
  }
  return fail(static_cast<int>(s.code()), s.message());
}

// Runs fn, turning any exception (bad_alloc above all) into RUNNEL_ERR_INTERNAL.
template <typename Fn>
int guarded(const char* what, Fn&& fn) noexcept {
  try {
    return fn();
  } catch (const std::exception& e) {
    return fail(RUNNEL_ERR_INTERNAL, std::string(what) + ": " + e.what());
  } catch (...) {
    return fail(RUNNEL_ERR_INTERNAL, std::string(what) + ": unknown exception");
  }
}

std::string str(const char* s) { return s != nullptr ? s : ""; }

runnel::client::RowFilter to_filter(const runnel_filter* f) {
  runnel::client::RowFilter r;
  if (f == nullptr) return r;
  r.measurement = str(f->measurement);
  r.field = str(f->field);
  for (size_t i = 0; i < f->where_count; ++i)
    r.where.push_back({str(f->where[i].key), str(f->where[i].value)});
  return r;
}

// Lays out one malloc block. A fill function runs twice with the same calls: first on a
// measuring Block (no memory, every pointer null), then on the real one.
class Block {
 public:
  explicit Block(std::byte* base) : base_(base) {}
  bool writing() const { return base_ != nullptr; }
  size_t size() const { return at_; }
  template <typename T>
  T* array(size_t n) {
    at_ = (at_ + alignof(T) - 1) / alignof(T) * alignof(T);
    T* p = writing() ? reinterpret_cast<T*>(base_ + at_) : nullptr;
    at_ += n * sizeof(T);
    return p;
  }
  const char* text(std::string_view s) {
    char* p = array<char>(s.size() + 1);
    if (p != nullptr) {
      std::memcpy(p, s.data(), s.size());
      p[s.size()] = '\0';
    }
    return p;
  }

 private:
  std::byte* base_;
  size_t at_ = 0;
};

// Returns the block (runnel_free), or nullptr when out of memory. fill(Block&) returns the
// block's head pointer, which must be its first array.
template <typename Fill>
void* pack(Fill&& fill) {
  Block measure(nullptr);
  fill(measure);
  void* p = std::malloc(measure.size() == 0 ? 1 : measure.size());
  if (p == nullptr) return nullptr;
  Block real(static_cast<std::byte*>(p));
  fill(real);
  return p;
}

const char* const* text_array(Block& b, const std::vector<std::string>& items) {
  const char** out = b.array<const char*>(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const char* s = b.text(items[i]);
    if (out != nullptr) out[i] = s;
  }
  return out;
}

template <typename T>
T* copy_array(Block& b, const std::vector<T>& items) {
  T* out = b.array<T>(items.size());
  if (out != nullptr && !items.empty()) std::memcpy(out, items.data(), items.size() * sizeof(T));
  return out;
}

runnel::client::Query to_query(const runnel_query* q) {
  runnel::client::Query r;
  r.view = str(q->view);
  r.rows = to_filter(&q->rows);
  if (q->has_row_id) r.row_id = q->row_id;
  r.group_by = str(q->group_by);
  r.from_ns = q->from_ns;
  r.to_ns = q->to_ns;
  r.step_ns = q->step_ns;
  for (size_t i = 0; i < q->output_count; ++i) r.outputs.push_back(str(q->outputs[i]));
  r.fill_empty = q->fill_empty != 0;
  r.sources = q->sources == RUNNEL_SOURCES_BATCH_ONLY  ? runnel::client::Query::Sources::kBatchOnly
              : q->sources == RUNNEL_SOURCES_LIVE_ONLY ? runnel::client::Query::Sources::kLiveOnly
                                                       : runnel::client::Query::Sources::kMerged;
  return r;
}

int out_of_memory() { return fail(RUNNEL_ERR_INTERNAL, "out of memory"); }

}  // namespace

extern "C" {

const char* runnel_last_error(void) { return g_error.c_str(); }

void runnel_free(void* p) { std::free(p); }

int runnel_open(const char* shm_name, runnel_client** out) {
  return guarded("runnel_open", [&] {
    if (shm_name == nullptr || out == nullptr)
      return fail(RUNNEL_ERR_INVALID, "runnel_open: NULL argument");
    auto c = std::make_unique<runnel_client>();
    if (Status s = Client::open(shm_name, &c->client); !s.ok()) return done(s);
    *out = c.release();
    return done({});
  });
}

void runnel_close(runnel_client* c) { delete c; }

int runnel_list_views(runnel_client* c, runnel_view** views, size_t* count) {
  return guarded("runnel_list_views", [&] {
    std::vector<runnel::client::ViewInfo> vs;
    if (Status s = c->client->views(&vs); !s.ok()) return done(s);
    void* p = pack([&](Block& b) {
      runnel_view* out = b.array<runnel_view>(vs.size());
      for (size_t i = 0; i < vs.size(); ++i) {
        const auto& v = vs[i];
        runnel_view r{};
        r.name = b.text(v.name);
        r.width_count = v.widths_ns.size();
        r.widths_ns = copy_array(b, v.widths_ns);
        r.output_count = v.outputs.size();
        r.outputs = text_array(b, v.outputs);
        r.definition = b.text(v.definition);
        r.change_seq = v.change_seq;
        r.capacity_entries = v.stats.capacity_entries;
        r.entries_used = v.stats.entries_used;
        r.overflow_updates = v.stats.overflow_updates;
        r.late_updates = v.stats.late_updates;
        if (out != nullptr) out[i] = r;
      }
      return out;
    });
    if (p == nullptr) return out_of_memory();
    *views = static_cast<runnel_view*>(p);
    *count = vs.size();
    return done({});
  });
}

int runnel_find_rows(runnel_client* c, const char* view, const runnel_filter* filter,
                     runnel_row** rows, size_t* count) {
  return guarded("runnel_find_rows", [&] {
    std::vector<runnel::client::Row> rs;
    if (Status s = c->client->find_rows(str(view), to_filter(filter), &rs); !s.ok()) return done(s);
    void* p = pack([&](Block& b) {
      runnel_row* out = b.array<runnel_row>(rs.size());
      for (size_t i = 0; i < rs.size(); ++i) {
        const auto& r = rs[i];
        runnel_row o{};
        o.row_id = r.id;
        o.measurement = b.text(r.measurement);
        o.field = b.text(r.field);
        o.tag_count = r.tags.size();
        runnel_tag* tags = b.array<runnel_tag>(r.tags.size());
        for (size_t k = 0; k < r.tags.size(); ++k) {
          const runnel_tag t{b.text(r.tags[k].key), b.text(r.tags[k].value)};
          if (tags != nullptr) tags[k] = t;
        }
        o.tags = tags;
        if (out != nullptr) out[i] = o;
      }
      return out;
    });
    if (p == nullptr) return out_of_memory();
    *rows = static_cast<runnel_row*>(p);
    *count = rs.size();
    return done({});
  });
}

int runnel_read_bucket(runnel_client* c, const char* view, uint64_t row_id, int64_t width_ns,
                       int64_t bucket_start_ns, double* values, size_t values_cap,
                       uint64_t* count) {
  return guarded("runnel_read_bucket", [&] {
    runnel::client::Point p;
    if (Status s = c->client->read_bucket(str(view), row_id, width_ns, bucket_start_ns, &p);
        !s.ok())
      return done(s);
    if (values_cap < p.values.size()) {
      return fail(RUNNEL_ERR_TOO_SMALL, "runnel_read_bucket: view '" + str(view) + "' has " +
                                            std::to_string(p.values.size()) +
                                            " outputs, values_cap is " +
                                            std::to_string(values_cap));
    }
    std::copy(p.values.begin(), p.values.end(), values);
    *count = p.count;
    return done({});
  });
}

int runnel_query_range(runnel_client* c, const runnel_query* q, runnel_result** out) {
  return guarded("runnel_query_range", [&] {
    runnel::client::QueryResult r;
    if (Status s = c->client->query(to_query(q), &r); !s.ok()) return done(s);
    const size_t n_out = r.outputs.size();
    void* p = pack([&](Block& b) {
      runnel_result* head = b.array<runnel_result>(1);
      runnel_result res{};
      res.output_count = n_out;
      res.outputs = text_array(b, r.outputs);
      res.step_ns = r.step_ns;
      res.width_ns = r.width_ns;
      res.busy_entries = r.busy_entries;
      res.series_count = r.series.size();
      runnel_series* series = b.array<runnel_series>(r.series.size());
      for (size_t i = 0; i < r.series.size(); ++i) {
        const auto& s = r.series[i];
        runnel_series o{};
        o.field = b.text(s.field);
        o.group_value = s.group_value ? b.text(*s.group_value) : nullptr;
        o.rows = s.rows;
        o.point_count = s.points.size();
        int64_t* ts = b.array<int64_t>(s.points.size());
        uint64_t* counts = b.array<uint64_t>(s.points.size());
        double* values = b.array<double>(s.points.size() * n_out);
        for (size_t k = 0; b.writing() && k < s.points.size(); ++k) {
          ts[k] = s.points[k].ts_ns;
          counts[k] = s.points[k].count;
          std::copy(s.points[k].values.begin(), s.points[k].values.end(), values + k * n_out);
        }
        o.ts_ns = ts;
        o.counts = counts;
        o.values = values;
        if (series != nullptr) series[i] = o;
      }
      res.series = series;
      if (head != nullptr) *head = res;
      return head;
    });
    if (p == nullptr) return out_of_memory();
    *out = static_cast<runnel_result*>(p);
    return done({});
  });
}

int runnel_query_into(runnel_client* c, const runnel_query* q, int64_t* ts_ns, uint64_t* counts,
                      double* values, size_t cap, size_t* points) {
  return guarded("runnel_query_into", [&] {
    runnel::client::QueryResult r;
    if (Status s = c->client->query(to_query(q), &r); !s.ok()) return done(s);
    if (r.series.size() > 1) {
      return fail(RUNNEL_ERR_INVALID,
                  "runnel_query_into: the query yields " + std::to_string(r.series.size()) +
                      " series (fields or group values); name a field and no group_by, or use "
                      "runnel_query_range");
    }
    const auto* pts = r.series.empty() ? nullptr : &r.series[0].points;
    *points = pts != nullptr ? pts->size() : 0;
    if (*points > cap) {
      return fail(RUNNEL_ERR_TOO_SMALL, "runnel_query_into: " + std::to_string(*points) +
                                            " points, cap is " + std::to_string(cap));
    }
    const size_t n_out = r.outputs.size();
    for (size_t k = 0; k < *points; ++k) {
      const auto& p = (*pts)[k];
      if (ts_ns != nullptr) ts_ns[k] = p.ts_ns;
      if (counts != nullptr) counts[k] = p.count;
      if (values != nullptr) std::copy(p.values.begin(), p.values.end(), values + k * n_out);
    }
    return done({});
  });
}

int runnel_wait_for_change(runnel_client* c, const char* view, uint32_t* seq, int64_t timeout_ms,
                           int* changed) {
  return guarded("runnel_wait_for_change", [&] {
    bool ch = false;
    Status s =
        c->client->wait_for_change(str(view), seq, std::chrono::milliseconds(timeout_ms), &ch);
    *changed = ch ? 1 : 0;
    return done(s);
  });
}

int runnel_counter(runnel_client* c, const char* name, uint64_t* value) {
  return guarded("runnel_counter", [&] {
    std::vector<runnel::client::Counter> all;
    if (Status s = c->client->counters(&all); !s.ok()) return done(s);
    for (const auto& k : all) {
      if (k.name == str(name)) {
        *value = k.value;
        return done({});
      }
    }
    return fail(RUNNEL_ERR_NOT_FOUND, "runnel_counter: no counter '" + str(name) + "'");
  });
}

int runnel_tail_open(const char* shm_name, int from_oldest, runnel_tail** out) {
  return guarded("runnel_tail_open", [&] {
    if (shm_name == nullptr || out == nullptr)
      return fail(RUNNEL_ERR_INVALID, "runnel_tail_open: NULL argument");
    auto t = std::make_unique<runnel_tail>();
    if (Status s = runnel::client::Tail::open(shm_name, from_oldest != 0, &t->tail); !s.ok())
      return done(s);
    *out = t.release();
    return done({});
  });
}

void runnel_tail_close(runnel_tail* t) { delete t; }

int runnel_tail_poll(runnel_tail* t, char* buf, size_t buf_size, size_t* used, size_t* lines,
                     uint64_t* overrun_bytes) {
  return guarded("runnel_tail_poll", [&] {
    *used = 0;
    *lines = 0;
    Status bad;
    // A few refills at most, so a producer that never pauses cannot keep the call going.
    for (int polls = 0; polls < 4;) {
      if (t->pending_at == t->pending.size()) {
        ++polls;
        t->pending.clear();
        t->pending_at = 0;
        runnel::client::Tail::Batch b;
        Status s = t->tail->poll(1024, &t->pending, &b);
        if (!s.ok() && bad.ok()) bad = s;
        t->overrun += b.overrun_bytes;
        if (t->pending.empty() && b.records == 0 && b.overrun_bytes == 0) break;
      }
      // Whole lines only.
      const size_t end = t->pending.find('\n', t->pending_at);
      if (end == std::string::npos) {
        t->pending_at = t->pending.size();
        continue;
      }
      const size_t n = end + 1 - t->pending_at;
      if (n > buf_size - *used) break;
      std::memcpy(buf + *used, t->pending.data() + t->pending_at, n);
      *used += n;
      ++*lines;
      t->pending_at += n;
    }
    *overrun_bytes = t->overrun;
    t->overrun = 0;
    if (!bad.ok()) return done(bad);
    if (*lines == 0 && t->pending_at < t->pending.size()) {
      return fail(RUNNEL_ERR_TOO_SMALL,
                  "runnel_tail_poll: the next line needs " +
                      std::to_string(t->pending.find('\n', t->pending_at) + 1 - t->pending_at) +
                      " bytes, buf_size is " + std::to_string(buf_size));
    }
    return done({});
  });
}

int runnel_tail_wait(runnel_tail* t, int64_t timeout_ms, int* ready) {
  return guarded("runnel_tail_wait", [&] {
    *ready =
        t->pending_at < t->pending.size() || t->tail->wait(std::chrono::milliseconds(timeout_ms))
            ? 1
            : 0;
    return done({});
  });
}

}  // extern "C"
