// LMDB RAII owners and error mapping (see lmdb_env.h).
#include "storage/lmdb_env.h"

#include <cerrno>

namespace runnel::storage::lmdb {

Status error(int rc, const std::filesystem::path& path, std::string_view what) {
  std::string msg = path.string() + ": " + std::string(what) + ": " + mdb_strerror(rc);
  switch (rc) {
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
      return Status::Full(std::move(msg));
    case MDB_NOTFOUND:
    case ENOENT:
      return Status::NotFound(std::move(msg));
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
      return Status::Corruption(std::move(msg));
    case EAGAIN:
      return Status::Busy(std::move(msg));
    default:
      return Status::IoError(std::move(msg));
  }
}

Result<Env> Env::open(const EnvOptions& options) {
  Env env;
  env.path_ = options.dir;
  int rc = mdb_env_create(&env.env_);
  if (rc != 0) return env.error(rc, "mdb_env_create");
  if (options.map_bytes != 0 && (rc = mdb_env_set_mapsize(env.env_, options.map_bytes)) != 0) {
    return env.error(rc, "mdb_env_set_mapsize");
  }
  if ((rc = mdb_env_set_maxdbs(env.env_, options.max_dbs)) != 0) {
    return env.error(rc, "mdb_env_set_maxdbs");
  }
  if ((rc = mdb_env_set_maxreaders(env.env_, options.max_readers)) != 0) {
    return env.error(rc, "mdb_env_set_maxreaders");
  }
  rc = mdb_env_open(env.env_, options.dir.c_str(), options.flags | MDB_NOTLS, options.mode);
  if (rc != 0) {
    const bool readonly = (options.flags & MDB_RDONLY) != 0;
    return env.error(rc, readonly ? "mdb_env_open (read-only)" : "mdb_env_open");
  }
  return env;
}

Env::~Env() {
  if (env_ != nullptr) mdb_env_close(env_);
}

Env& Env::operator=(Env&& other) noexcept {
  if (this != &other) {
    if (env_ != nullptr) mdb_env_close(env_);
    env_ = std::exchange(other.env_, nullptr);
    path_ = std::move(other.path_);
  }
  return *this;
}

uint64_t Env::map_bytes() const {
  MDB_envinfo info{};
  mdb_env_info(env_, &info);
  return info.me_mapsize;
}

Status Env::set_map_bytes(uint64_t bytes) {
  const int rc = mdb_env_set_mapsize(env_, bytes);
  return rc == 0 ? Status::Ok() : error(rc, "mdb_env_set_mapsize(" + std::to_string(bytes) + ")");
}

Result<int> Env::clear_stale_readers() {
  int dead = 0;
  const int rc = mdb_reader_check(env_, &dead);
  if (rc != 0) return error(rc, "mdb_reader_check");
  return dead;
}

Result<Txn> Txn::begin(const Env& env, unsigned flags) {
  Txn txn;
  txn.env_ = &env;
  const int rc = mdb_txn_begin(env.get(), nullptr, flags, &txn.txn_);
  if (rc != 0) {
    txn.txn_ = nullptr;
    return env.error(rc, (flags & MDB_RDONLY) ? "mdb_txn_begin (read)" : "mdb_txn_begin (write)");
  }
  return txn;
}

Txn& Txn::operator=(Txn&& other) noexcept {
  if (this != &other) {
    abort();
    txn_ = std::exchange(other.txn_, nullptr);
    env_ = std::exchange(other.env_, nullptr);
  }
  return *this;
}

Status Txn::commit() {
  if (txn_ == nullptr) return Status::Invalid(env_->path().string() + ": commit of an ended transaction");
  const int rc = mdb_txn_commit(std::exchange(txn_, nullptr));  // frees the txn either way
  return rc == 0 ? Status::Ok() : error(rc, "mdb_txn_commit");
}

void Txn::abort() {
  if (txn_ != nullptr) mdb_txn_abort(std::exchange(txn_, nullptr));
}

Result<std::span<const std::byte>> Txn::get(MDB_dbi dbi, MDB_val key) const {
  MDB_val value{};
  const int rc = mdb_get(txn_, dbi, &key, &value);
  if (rc != 0) return error(rc, "mdb_get");
  return bytes(value);
}

Status Txn::put(MDB_dbi dbi, MDB_val key, MDB_val value, unsigned flags) {
  const int rc = mdb_put(txn_, dbi, &key, &value, flags);
  return rc == 0 ? Status::Ok() : error(rc, "mdb_put");
}

Status Txn::del(MDB_dbi dbi, MDB_val key) {
  const int rc = mdb_del(txn_, dbi, &key, nullptr);
  return rc == 0 ? Status::Ok() : error(rc, "mdb_del");
}

Result<Cursor> Cursor::open(const Txn& txn, MDB_dbi dbi) {
  Cursor c;
  c.env_ = &txn.env();
  const int rc = mdb_cursor_open(txn.get(), dbi, &c.cursor_);
  if (rc != 0) {
    c.cursor_ = nullptr;
    return txn.error(rc, "mdb_cursor_open");
  }
  return c;
}

Result<bool> Cursor::seek(MDB_val* key, MDB_val* value, MDB_cursor_op op) {
  const int rc = mdb_cursor_get(cursor_, key, value, op);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) return error(rc, "mdb_cursor_get");
  return true;
}

}  // namespace runnel::storage::lmdb
