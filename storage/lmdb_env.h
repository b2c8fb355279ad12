// RAII owners of LMDB handles (environment, transaction, cursor) and LMDB errors as Status values
// that name the environment's path, the operation and mdb_strerror(). Used by storage/view_store.
#pragma once

#include <lmdb.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "model/status.h"

namespace runnel::storage::lmdb {

// "<path>: <what>: <mdb_strerror(rc)>" as a Status: kFull for MDB_MAP_FULL / MDB_TXN_FULL,
// kNotFound for MDB_NOTFOUND / ENOENT, kCorruption for MDB_CORRUPTED / MDB_PAGE_NOTFOUND /
// MDB_INVALID, kBusy for EAGAIN (the environment is locked), else kIoError.
Status error(int rc, const std::filesystem::path& path, std::string_view what);

inline MDB_val val(std::span<const std::byte> bytes) {
  return MDB_val{bytes.size(), const_cast<std::byte*>(bytes.data())};
}
inline MDB_val val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
inline std::span<const std::byte> bytes(const MDB_val& v) {
  return {static_cast<const std::byte*>(v.mv_data), v.mv_size};
}

struct EnvOptions {
  std::filesystem::path dir;  // the environment is a directory holding data.mdb and lock.mdb
  unsigned flags = 0;         // MDB_RDONLY, MDB_NOSYNC, ...; MDB_NOTLS is always added
  uint64_t map_bytes = 0;     // 0: LMDB's default, or the size the data file records
  unsigned max_dbs = 64;      // named databases open at once
  unsigned max_readers = 126;
  mode_t mode = 0640;  // of created files (data.mdb and lock.mdb)
};

// An open MDB_env. Move-only; closes the environment on destruction (REQUIRES: every
// transaction of it has ended). Only one Env per environment per process: LMDB's locks are
// per process (see view_store.h).
class Env {
 public:
  static Result<Env> open(const EnvOptions& options);
  Env() = default;
  ~Env();
  Env(Env&& other) noexcept
      : env_(std::exchange(other.env_, nullptr)), path_(std::move(other.path_)) {}
  Env& operator=(Env&& other) noexcept;
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;

  MDB_env* get() const { return env_; }
  const std::filesystem::path& path() const { return path_; }
  // Current map size in bytes.
  uint64_t map_bytes() const;
  // REQUIRES: no transaction of this environment is active in this process.
  Status set_map_bytes(uint64_t bytes);
  // Clears reader slots left by dead processes; returns how many.
  Result<int> clear_stale_readers();
  Status error(int rc, std::string_view what) const { return lmdb::error(rc, path_, what); }

 private:
  MDB_env* env_ = nullptr;
  std::filesystem::path path_;
};

// A transaction; aborted on destruction unless committed. Move-only. REQUIRES: its Env stays
// where it is (not moved) until the transaction ends. A read-only transaction
// may move between threads (MDB_NOTLS) but is used by one thread at a time.
// Cursors opened on it must be destroyed before commit() or abort().
class Txn {
 public:
  // flags: 0 for a write transaction, MDB_RDONLY for a read-only snapshot.
  static Result<Txn> begin(const Env& env, unsigned flags);
  Txn() = default;
  ~Txn() { abort(); }
  Txn(Txn&& other) noexcept
      : txn_(std::exchange(other.txn_, nullptr)), env_(std::exchange(other.env_, nullptr)) {}
  Txn& operator=(Txn&& other) noexcept;
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;

  MDB_txn* get() const { return txn_; }
  bool active() const { return txn_ != nullptr; }
  Status commit();
  void abort();

  // get/put/del on one database; errors name the operation and the environment.
  // get: the value (pointing into the map, valid until the transaction ends) or NotFound.
  Result<std::span<const std::byte>> get(MDB_dbi dbi, MDB_val key) const;
  Status put(MDB_dbi dbi, MDB_val key, MDB_val value, unsigned flags = 0);
  Status del(MDB_dbi dbi, MDB_val key);
  Status error(int rc, std::string_view what) const { return env_->error(rc, what); }
  const Env& env() const { return *env_; }

 private:
  MDB_txn* txn_ = nullptr;
  const Env* env_ = nullptr;
};

// A cursor on one database of a transaction; closed on destruction.
class Cursor {
 public:
  static Result<Cursor> open(const Txn& txn, MDB_dbi dbi);
  Cursor() = default;
  ~Cursor() {
    if (cursor_ != nullptr) mdb_cursor_close(cursor_);
  }
  Cursor(Cursor&& other) noexcept
      : cursor_(std::exchange(other.cursor_, nullptr)), env_(other.env_) {}
  Cursor& operator=(Cursor&& other) noexcept {
    std::swap(cursor_, other.cursor_);
    std::swap(env_, other.env_);
    return *this;
  }
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;

  MDB_cursor* get() const { return cursor_; }
  // mdb_cursor_get: true when positioned (key/value filled), false on MDB_NOTFOUND.
  Result<bool> seek(MDB_val* key, MDB_val* value, MDB_cursor_op op);
  Status error(int rc, std::string_view what) const { return env_->error(rc, what); }

 private:
  MDB_cursor* cursor_ = nullptr;
  const Env* env_ = nullptr;
};

}  // namespace runnel::storage::lmdb
