// IoUringFile: request slots, short-write resubmission and completion collection over liburing.
#include "storage/io_uring_file.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <string>

namespace runnel::storage {

namespace {

// The SQ needs one entry per request in flight; the CQ (twice as large) can never overflow.
constexpr unsigned kQueueDepth = IoUringFile::kMaxRequests;

Status uring_error(std::string_view what, const std::filesystem::path& path, int err) {
  return Status::Errno(std::string(what) + " " + path.string(), err);
}

}  // namespace

Result<std::unique_ptr<IoUringFile>> IoUringFile::create() {
  auto file = std::make_unique<IoUringFile>(CreateKey());
  const int rc = io_uring_queue_init(kQueueDepth, &file->ring_, 0);
  if (rc < 0) return Status::Errno("io_uring_queue_init (is io_uring disabled?)", -rc);
  file->ring_ready_ = true;
  return file;
}

IoUringFile::~IoUringFile() {
  if (!ring_ready_) return;
  // Each wait makes progress unless io_uring_enter itself fails; bound the retries so a
  // broken ring cannot hang the destructor.
  for (int attempt = 0; in_flight_ > 0 && attempt < 1000; ++attempt) {
    if (Status st = wait(in_flight_); !st.ok()) {
      spdlog::error("io_uring drain at shutdown: {}", st.message());
    }
    completions_count_ = 0;
  }
  io_uring_queue_exit(&ring_);
}

void IoUringFile::attach(UniqueFd fd, std::filesystem::path path) {
  fd_ = std::move(fd);
  path_ = std::move(path);
}

Status IoUringFile::close_file() { return fd_.close(path_); }

Result<unsigned> IoUringFile::claim_slot() {
  for (unsigned i = 0; i < kMaxRequests; ++i) {
    if (requests_[i].op == Op::kFree) return i;
  }
  return Status::Busy("io_uring queue full for " + path_.string());
}

Status IoUringFile::prep_write(unsigned slot) {
  Request& r = requests_[slot];
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) return Status::Busy("io_uring submission queue full for " + path_.string());
  io_uring_prep_write(sqe, fd_.get(), r.data + r.done, static_cast<unsigned>(r.len - r.done),
                      r.file_offset + r.done);
  io_uring_sqe_set_data64(sqe, slot);
  return Status::Ok();
}

Status IoUringFile::queue_write(std::span<const std::byte> data, uint64_t file_offset,
                                uint64_t tag) {
  auto slot = claim_slot();
  if (!slot.ok()) return slot.status();
  requests_[*slot] = Request{Op::kWrite, tag, data.data(), data.size(), 0, file_offset};
  if (Status st = prep_write(*slot); !st.ok()) {
    requests_[*slot].op = Op::kFree;
    return st;
  }
  ++in_flight_;
  return Status::Ok();
}

Status IoUringFile::queue_fdatasync(uint64_t tag, bool after_all) {
  auto slot = claim_slot();
  if (!slot.ok()) return slot.status();
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) return Status::Busy("io_uring submission queue full for " + path_.string());
  requests_[*slot] = Request{Op::kSync, tag, nullptr, 0, 0, 0};
  io_uring_prep_fsync(sqe, fd_.get(), IORING_FSYNC_DATASYNC);
  if (after_all) io_uring_sqe_set_flags(sqe, IOSQE_IO_DRAIN);
  io_uring_sqe_set_data64(sqe, *slot);
  ++in_flight_;
  return Status::Ok();
}

Status IoUringFile::submit() {
  int rc;
  do {
    rc = io_uring_submit(&ring_);
  } while (rc == -EINTR);
  if (rc < 0) return uring_error("io_uring_submit for", path_, -rc);
  return Status::Ok();
}

void IoUringFile::finish(unsigned slot, int32_t result) {
  completions_[(completions_head_ + completions_count_) % kMaxRequests] =
      Completion{requests_[slot].tag, result};
  ++completions_count_;
  requests_[slot].op = Op::kFree;
  --in_flight_;
}

bool IoUringFile::resubmit(unsigned slot) { return prep_write(slot).ok(); }

bool IoUringFile::handle_cqe(const io_uring_cqe& cqe) {
  const auto slot = static_cast<unsigned>(io_uring_cqe_get_data64(&cqe));
  Request& r = requests_[slot];
  const int32_t res = cqe.res;
  if (r.op == Op::kWrite && res != static_cast<int32_t>(r.len - r.done)) {
    if (res > 0) {
      r.done += static_cast<size_t>(res);  // short write: the rest goes out again
      if (resubmit(slot)) return false;
      finish(slot, -EIO);  // unreachable in practice: this request's own SQE was just freed
      return true;
    }
    if ((res == -EINTR || res == -EAGAIN) && resubmit(slot)) return false;
    // A regular-file write that returns 0 would make no progress on retry either.
    finish(slot, res == 0 ? -EIO : res);
    return true;
  }
  finish(slot, r.op == Op::kWrite ? static_cast<int32_t>(r.len) : res);
  return true;
}

Status IoUringFile::wait(unsigned min_complete) {
  if (min_complete > in_flight_) min_complete = in_flight_;
  unsigned finished = 0;
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
      if (handle_cqe(*cqe)) ++finished;
      io_uring_cqe_seen(&ring_, cqe);
    }
    if (finished >= min_complete) return submit();  // pushes out any resubmitted remainder
    const int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR) return uring_error("io_uring_submit_and_wait for", path_, -rc);
  }
}

bool IoUringFile::take_completion(Completion* out) {
  if (completions_count_ == 0) return false;
  *out = completions_[completions_head_];
  completions_head_ = (completions_head_ + 1) % kMaxRequests;
  --completions_count_;
  return true;
}

}  // namespace runnel::storage
