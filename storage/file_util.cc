// POSIX file helpers: retry on EINTR, loop on short transfers, name the file in every error.
#include "storage/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace runnel::storage {

namespace {

Status errno_status(std::string_view op, const std::filesystem::path& path, int err) {
  return Status::Errno(std::string(op) + " " + path.string(), err);
}

}  // namespace

void UniqueFd::reset() {
  if (fd_ >= 0) {
    ::close(fd_);  // Linux closes the fd even when close() fails; nothing to retry.
    fd_ = -1;
  }
}

Status UniqueFd::close(const std::filesystem::path& path) {
  if (fd_ < 0) return Status::Ok();
  const int rc = ::close(std::exchange(fd_, -1));
  if (rc != 0 && errno != EINTR) return errno_status("close", path, errno);
  return Status::Ok();
}

Result<UniqueFd> open_file(const std::filesystem::path& path, int flags, unsigned mode) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return errno_status("open", path, errno);
  return UniqueFd(fd);
}

Result<size_t> pread_full(int fd, const std::filesystem::path& path, std::span<std::byte> out,
                          uint64_t file_offset) {
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n =
        ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(file_offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("read", path, errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

Status pwrite_full(int fd, const std::filesystem::path& path, std::span<const std::byte> data,
                   uint64_t file_offset) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done,
                               static_cast<off_t>(file_offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("write", path, errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status fdatasync_file(int fd, const std::filesystem::path& path) {
  int rc;
  do {
    rc = ::fdatasync(fd);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return errno_status("fdatasync", path, errno);
  return Status::Ok();
}

Status truncate_file(int fd, const std::filesystem::path& path, uint64_t size_bytes) {
  int rc;
  do {
    rc = ::ftruncate(fd, static_cast<off_t>(size_bytes));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return errno_status("ftruncate", path, errno);
  return Status::Ok();
}

Result<uint64_t> file_size(int fd, const std::filesystem::path& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_status("fstat", path, errno);
  return static_cast<uint64_t>(st.st_size);
}

Status fsync_dir(const std::filesystem::path& dir) {
  auto fd = open_file(dir, O_RDONLY | O_DIRECTORY);
  if (!fd.ok()) return fd.status();
  int rc;
  do {
    rc = ::fsync(fd->get());
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return errno_status("fsync directory", dir, errno);
  return Status::Ok();
}

}  // namespace runnel::storage
