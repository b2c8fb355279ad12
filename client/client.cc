// The public C++ client (runnel/client.h): a facade over the internal read side (query.h) that
// maps errors onto client codes and reopens the instance after a daemon restart.
#include "runnel/client.h"

#include <algorithm>
#include <thread>

#include "client/query.h"
#include "ipc/ring.h"
#include "ipc/shm_object.h"
#include "model/record.h"

namespace runnel::client {
namespace {

// `opening`: NotFound means no instance (unavailable), not a missing view.
Status convert(const runnel::Status& s, bool opening = false) {
  using C = runnel::Status::Code;
  switch (s.code()) {
    case C::kOk:
      return {};
    case C::kNotFound:
      return {opening ? Code::kUnavailable : Code::kNotFound, s.message()};
    case C::kInvalid:
      return {Code::kInvalidArgument, s.message()};
    case C::kUnsupported:
      return {Code::kIncompatible, s.message()};
    case C::kCorruption:
      return {Code::kCorruption, s.message()};
    case C::kIoError:
    case C::kBusy:
    case C::kFull:
      return {Code::kUnavailable, s.message()};
  }
  return {Code::kCorruption, s.message()};
}

// How often wait_for_change retries to open a restarting daemon's objects.
constexpr std::chrono::milliseconds kReopenRetry{10};
// How many times a call retries to open a successor caught mid-creation (kReopenRetry apart).
constexpr int kCreationRetries = 20;

}  // namespace

// ---------------------------------------------------------------------------------------------
// Client

struct Client::Impl {
  std::string shm_name;
  std::unique_ptr<internal::Instance> inst;

  // The current instance: after a restart (the mappings are marked retired) opens the new one.
  Status fresh() {
    if (inst != nullptr && !inst->retired()) return {};
    auto r = internal::Instance::open(shm_name);
    // A successor daemon creates its objects one after another: for a moment one may be
    // there but not yet sized or filled in. After a restart, give it a little time.
    for (int attempt = 0; inst != nullptr && !r.ok() && attempt < kCreationRetries; ++attempt) {
      std::this_thread::sleep_for(kReopenRetry);
      r = internal::Instance::open(shm_name);
    }
    if (!r.ok()) {
      Status s = convert(r.status(), /*opening=*/true);
      if (inst == nullptr) return s;
      return {s.code(),
              "runnel instance '" + shm_name +
                  "' was replaced by a daemon restart and cannot be reopened yet: " + s.message()};
    }
    inst = std::move(r).value();
    return {};
  }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

Status Client::open(const std::string& shm_name, std::unique_ptr<Client>* out) {
  auto impl = std::make_unique<Impl>();
  impl->shm_name = shm_name;
  if (Status s = impl->fresh(); !s.ok()) return s;
  out->reset(new Client(std::move(impl)));
  return {};
}

uint64_t Client::instance_id() const { return impl_->inst->instance_id(); }

Status Client::views(std::vector<ViewInfo>* out) {
  if (Status s = impl_->fresh(); !s.ok()) return s;
  out->clear();
  for (const auto& v : impl_->inst->views())
    out->push_back(internal::describe_view(*impl_->inst, v));
  return {};
}

Status Client::view(const std::string& name, ViewInfo* out) {
  if (Status s = impl_->fresh(); !s.ok()) return s;
  auto v = impl_->inst->find_view(name);
  if (!v.ok()) return convert(v.status());
  *out = internal::describe_view(*impl_->inst, *v.value());
  return {};
}

Status Client::find_rows(const std::string& view, const RowFilter& filter, std::vector<Row>* out) {
  if (Status s = impl_->fresh(); !s.ok()) return s;
  const internal::ViewContext* ctx = nullptr;
  if (!view.empty()) {
    auto v = impl_->inst->find_view(view);
    if (!v.ok()) return convert(v.status());
    ctx = v.value();
  }
  out->clear();
  // Rows only the batch views still name (seen before a daemon restart) are rows too.
  std::optional<storage::ViewSnapshot> batch;
  auto reader = impl_->inst->batch();
  if (!reader.ok()) return convert(reader.status());
  if (*reader != nullptr) {
    auto snap = (*reader)->snapshot();
    if (!snap.ok()) return convert(snap.status());
    batch.emplace(std::move(snap).value());
  }
  return convert(internal::for_each_row(
      *impl_->inst, ctx, filter, /*check_presence=*/true,
      [&](uint64_t id, const RowKeyView& key) {
        Row r{id, std::string(key.measurement), {}, std::string(key.field)};
        for (const runnel::Tag& t : key.tags)
          r.tags.push_back({std::string(t.key), std::string(t.value)});
        out->push_back(std::move(r));
      },
      batch ? &*batch : nullptr));
}

Status Client::read_bucket(const std::string& view, uint64_t row_id, int64_t width_ns,
                           int64_t bucket_start_ns, Point* out) {
  if (Status s = impl_->fresh(); !s.ok()) return s;
  return convert(internal::read_bucket(*impl_->inst, view, row_id, width_ns, bucket_start_ns, out));
}

Status Client::query(const Query& query, QueryResult* out) {
  if (Status s = impl_->fresh(); !s.ok()) return s;
  return convert(internal::run_query(*impl_->inst, query, out));
}

Status Client::wait_for_change(const std::string& view, uint32_t* seq,
                               std::chrono::nanoseconds timeout, bool* changed) {
  if (Status s = impl_->fresh(); !s.ok()) return s;
  auto v = impl_->inst->find_view(view);
  if (!v.ok()) return convert(v.status());
  const uint32_t index = v.value()->index;
  switch (impl_->inst->live().wait_for_change(index, *seq, timeout)) {
    case ipc::WaitStatus::kChanged:
      *seq = impl_->inst->live().change_seq(index);
      *changed = true;
      return {};
    case ipc::WaitStatus::kTimeout:
      *changed = false;
      return {};
    case ipc::WaitStatus::kReplaced:
      break;
  }
  // A restart: what the view holds now is the new daemon's; report it as a change. The
  // successor may still be creating its objects: retry within the caller's timeout.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (Status s = impl_->fresh(); !s.ok(); s = impl_->fresh()) {
    if (s.code() != Code::kUnavailable || std::chrono::steady_clock::now() >= deadline) return s;
    std::this_thread::sleep_for(kReopenRetry);
  }
  auto nv = impl_->inst->find_view(view);
  if (!nv.ok()) return convert(nv.status());
  *seq = impl_->inst->live().change_seq(nv.value()->index);
  *changed = true;
  return {};
}

Status Client::counters(std::vector<Counter>* out) {
  if (Status s = impl_->fresh(); !s.ok()) return s;
  const ipc::StatsBlock& b = impl_->inst->stats();
  out->clear();
  out->push_back({"pid", b.pid});
  const int64_t age =
      static_cast<int64_t>(ipc::unix_now_ns()) - b.heartbeat_ns.load(std::memory_order_relaxed);
  out->push_back(
      {"heartbeat_age_ms", static_cast<uint64_t>(std::max<int64_t>(age, 0) / 1'000'000)});
  for (uint32_t i = 0; i < static_cast<uint32_t>(ipc::Counter::kCount); ++i) {
    const auto c = static_cast<ipc::Counter>(i);
    if (const std::string_view name = ipc::counter_name(c); !name.empty())
      out->push_back({std::string(name), b.get(c)});
  }
  const ipc::SeriesDictionaryStats s = impl_->inst->series().stats();
  out->push_back({"series_count", s.series});
  out->push_back({"series_rejected_full", s.rejected_full});
  return {};
}

// ---------------------------------------------------------------------------------------------
// Tail

struct Tail::Impl {
  explicit Impl(ipc::Subscriber s) : sub(std::move(s)) {}
  ipc::Subscriber sub;
};

Tail::Tail(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tail::~Tail() = default;

Status Tail::open(const std::string& shm_name, bool from_oldest, std::unique_ptr<Tail>* out) {
  auto sub =
      ipc::Subscriber::open(shm_name + ".ring", from_oldest ? ipc::Subscriber::StartAt::kOldest
                                                            : ipc::Subscriber::StartAt::kNow);
  if (!sub.ok()) return convert(sub.status(), /*opening=*/true);
  out->reset(new Tail(std::make_unique<Impl>(std::move(sub).value())));
  return {};
}

Status Tail::poll(size_t max_records, std::string* lines, Batch* batch) {
  Status bad;
  RecordView rec;
  const auto b = impl_->sub.poll(
      [&](uint64_t pos, std::span<const std::byte> payload) {
        const char* reason = "";
        if (!RecordView::validate(payload, &rec, &reason)) {
          if (bad.ok()) {
            bad = {Code::kCorruption,
                   "ring record at position " + std::to_string(pos) + ": " + reason};
          }
          return;
        }
        format_line_protocol(rec, lines);
      },
      max_records);
  batch->records = b.records;
  batch->overrun_bytes = b.overrun_bytes;
  return bad;
}

bool Tail::wait(std::chrono::nanoseconds timeout) { return impl_->sub.wait(timeout); }

uint64_t Tail::overrun_bytes_total() const { return impl_->sub.overrun_bytes_total(); }

}  // namespace runnel::client
