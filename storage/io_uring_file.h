// IoUringFile: an io_uring instance that writes and fdatasyncs one file at a time, with
// at most kMaxRequests requests in flight. The log writer's asynchronous I/O queue.
#pragma once

#include <liburing.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>

#include "model/status.h"
#include "storage/file_util.h"

namespace runnel::storage {

// Requests are queued, submitted in one io_uring_enter, and their completions handed back
// in completion order (not submission order) with the caller's tag. A short write is
// resubmitted for its remainder, so a write completes with its whole length or an error.
//
// One thread (the log writer's); REQUIRES external synchronization. Allocates nothing after
// create(). The destructor waits for requests still in flight, because the kernel may be
// reading their buffers.
class IoUringFile {
 public:
  static constexpr unsigned kMaxRequests = 64;

  struct Completion {
    uint64_t tag;
    int32_t result;  // bytes written (the full length) or 0 for a sync; or -errno
  };

  static Result<std::unique_ptr<IoUringFile>> create();
  struct CreateKey {
    explicit CreateKey() = default;
  };
  explicit IoUringFile(CreateKey) {}  // use create()
  ~IoUringFile();
  IoUringFile(const IoUringFile&) = delete;
  IoUringFile& operator=(const IoUringFile&) = delete;

  // Points later requests at `fd`, which this object then owns. REQUIRES: in_flight() == 0.
  void attach(UniqueFd fd, std::filesystem::path path);
  // Closes the attached file, reporting a close() error. REQUIRES: in_flight() == 0.
  Status close_file();
  int fd() const { return fd_.get(); }
  const std::filesystem::path& path() const { return path_; }

  // Queues a write of `data` (which must stay valid until its completion) at `file_offset`.
  // Returns Busy when kMaxRequests are in flight: wait() and take completions first.
  Status queue_write(std::span<const std::byte> data, uint64_t file_offset, uint64_t tag);
  // Queues an fdatasync. With `after_all`, it starts only once every earlier request has
  // completed (IOSQE_IO_DRAIN), so it covers all writes queued before it.
  Status queue_fdatasync(uint64_t tag, bool after_all);
  // Hands queued requests to the kernel without waiting.
  Status submit();
  // Submits, then waits until at least `min_complete` more requests have completed (fewer if
  // fewer are in flight; 0 = only collect what is ready). Completions go to take_completion().
  Status wait(unsigned min_complete);
  // Pops the oldest collected completion; false when none is pending.
  bool take_completion(Completion* out);

  unsigned in_flight() const { return in_flight_; }

 private:
  enum class Op : uint8_t { kFree, kWrite, kSync };
  struct Request {
    Op op = Op::kFree;
    uint64_t tag = 0;
    const std::byte* data = nullptr;
    size_t len = 0;
    size_t done = 0;
    uint64_t file_offset = 0;
  };

  Result<unsigned> claim_slot();
  Status prep_write(unsigned slot);
  // Resubmits the unwritten rest of a write; false if it could not be queued.
  bool resubmit(unsigned slot);
  // Processes one CQE; returns true if its request finished (rather than being resubmitted).
  bool handle_cqe(const io_uring_cqe& cqe);
  void finish(unsigned slot, int32_t result);

  io_uring ring_{};
  bool ring_ready_ = false;
  UniqueFd fd_;
  std::filesystem::path path_;
  std::array<Request, kMaxRequests> requests_{};
  unsigned in_flight_ = 0;
  // FIFO of collected completions, at most one per request.
  std::array<Completion, kMaxRequests> completions_{};
  unsigned completions_head_ = 0;
  unsigned completions_count_ = 0;
};

}  // namespace runnel::storage
