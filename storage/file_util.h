// Small POSIX file helpers for storage/: an owning fd (UniqueFd) and the few
// full-length read/write/sync calls the log needs, each returning a Status that
// names the file and the errno.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <utility>

#include "model/status.h"

namespace runnel::storage {

// Owns one file descriptor; closes it on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Closes now and reports a close() failure (which can carry a deferred write error).
  Status close(const std::filesystem::path& path);
  void reset();

 private:
  int fd_ = -1;
};

// open(2) with O_CLOEXEC added; the error names `path`.
Result<UniqueFd> open_file(const std::filesystem::path& path, int flags, unsigned mode = 0644);

// pread(2) until `out` is full or EOF; returns the bytes read (short only at EOF).
Result<size_t> pread_full(int fd, const std::filesystem::path& path, std::span<std::byte> out,
                          uint64_t file_offset);

// pwrite(2) until all of `data` is written.
Status pwrite_full(int fd, const std::filesystem::path& path, std::span<const std::byte> data,
                   uint64_t file_offset);

Status fdatasync_file(int fd, const std::filesystem::path& path);
Status truncate_file(int fd, const std::filesystem::path& path, uint64_t size_bytes);
Result<uint64_t> file_size(int fd, const std::filesystem::path& path);

// fsync(2) on a directory so that a create, rename or unlink inside it is durable.
Status fsync_dir(const std::filesystem::path& dir);

}  // namespace runnel::storage
