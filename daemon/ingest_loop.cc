// io_uring ingest loop (see ingest_loop.h). Hot path per line: frame, parse into a reused
// scratch record, copy into the ring. No lock, no allocation per line.
#include "daemon/ingest_loop.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <spdlog/spdlog.h>

#include "model/clock.h"

namespace runnel {
namespace {

// user_data: [op:8][generation:24][index:32]. The generation makes completions for a slot
// that was closed and reused harmless.
enum class Op : uint8_t { kAccept = 1, kRecv, kUdp, kStop, kCancel };

uint64_t pack(Op op, uint32_t gen, uint32_t index) {
  return (uint64_t{static_cast<uint8_t>(op)} << 56) | (uint64_t{gen & 0xffffff} << 32) | index;
}
Op op_of(uint64_t ud) { return static_cast<Op>(ud >> 56); }
uint32_t gen_of(uint64_t ud) { return static_cast<uint32_t>(ud >> 32) & 0xffffff; }
uint32_t index_of(uint64_t ud) { return static_cast<uint32_t>(ud); }

}  // namespace

// Who sent a line, formatted only when a message about it is logged.
struct IngestLoop::Peer {
  const std::string* name = nullptr;
  const sockaddr* addr = nullptr;
  socklen_t addr_len = 0;
  std::string str() const;
};

namespace {

std::string describe(const sockaddr* sa, socklen_t len) {
  if (sa == nullptr || len == 0) return "?";
  if (sa->sa_family == AF_UNIX) return "unix";
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(sa, len, host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  return sa->sa_family == AF_INET6 ? "[" + std::string(host) + "]:" + port
                                   : std::string(host) + ":" + port;
}

constexpr ipc::Counter kParseCounters[] = {
    ipc::Counter::kPointsAccepted,  // kOk (unused)
    ipc::Counter::kLinesSkipped,    // kSkip
    ipc::Counter::kParseMeasurement, ipc::Counter::kParseTag,     ipc::Counter::kParseFieldKey,
    ipc::Counter::kParseFieldValue,  ipc::Counter::kParseNoFields, ipc::Counter::kParseTimestamp,
    ipc::Counter::kParseTooLong,
};
static_assert(std::size(kParseCounters) == static_cast<size_t>(ParseError::kCount));

}  // namespace

std::string IngestLoop::Peer::str() const {
  return name != nullptr ? *name : "udp://" + describe(addr, addr_len);
}

struct IngestLoop::Listener {
  ListenSpec spec;
  int fd = -1;
  uint32_t index = 0;
  bool armed = false;
  // UDP only: multishot recvmsg needs a template header alive while armed.
  msghdr msg{};
  LineFramer framer;
  explicit Listener(const ListenSpec& s, uint32_t max_line) : spec(s), framer(max_line) {}
  ~Listener() {
    if (fd >= 0) close(fd);
  }
};

struct IngestLoop::Conn {
  int fd = -1;
  uint32_t gen = 0;
  Precision precision = Precision::kNs;
  std::string peer;
  LineFramer framer;
  std::string pending;  // received but not yet placed (ring was full); reserved once
  bool in_use = false;
  bool recv_armed = false;
  bool paused = false;
  bool eof = false;
  bool closing = false;
  explicit Conn(uint32_t max_line) : framer(max_line) {}
};

// Counted locally on the loop thread and published to shared memory once per batch of
// completions, so the hot path touches no shared cache line per line.
struct IngestLoop::LocalCounters {
  uint64_t v[static_cast<size_t>(ipc::Counter::kIngestGroupEnd)] = {};
  void add(ipc::Counter c, uint64_t n = 1) { v[static_cast<size_t>(c)] += n; }
};

IngestLoop::IngestLoop(const Config& config, ipc::Ring& ring, ipc::StatsBlock& stats)
    : config_(config),
      ring_(ring),
      stats_(stats),
      reject_log_(config.log_rate_limit_per_s),
      local_(std::make_unique<LocalCounters>()) {
  scratch_.reserve(size_t{config.max_line_bytes} * 4 + 256);
}

IngestLoop::~IngestLoop() {
  for (auto& c : conns_) {
    if (c && c->fd >= 0) close(c->fd);
  }
  listeners_.clear();
  if (uring_ready_) io_uring_queue_exit(&uring_);
  if (br_mem_) munmap(br_mem_, br_mem_bytes_);
  if (stop_fd_ >= 0) close(stop_fd_);
}

Status IngestLoop::open() {
  io_uring_params params{};
  // Not SINGLE_ISSUER: open() runs on the main thread and run() on the ingest thread.
  params.flags = IORING_SETUP_COOP_TASKRUN;
  int r = io_uring_queue_init_params(4096, &uring_, &params);
  if (r == -EINVAL) {  // kernels before 5.19: no COOP_TASKRUN
    params = {};
    r = io_uring_queue_init_params(4096, &uring_, &params);
  }
  if (r < 0) return Status::Errno("io_uring_queue_init", -r);
  uring_ready_ = true;
  if (Status s = setup_buffer_ring(); !s.ok()) return s;
  stop_fd_ = eventfd(0, EFD_CLOEXEC);
  if (stop_fd_ < 0) return Status::Errno("eventfd", errno);
  for (const auto& spec : config_.listen) {
    if (Status s = open_listener(spec); !s.ok()) return s;
  }
  return Status::Ok();
}

Status IngestLoop::setup_buffer_ring() {
  buf_count_ = config_.recv_buffer_count;
  buf_bytes_ = config_.recv_buffer_bytes;
  br_mem_bytes_ = (sizeof(io_uring_buf) * buf_count_ + 4095) & ~size_t{4095};
  br_mem_ = mmap(nullptr, br_mem_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (br_mem_ == MAP_FAILED) {
    br_mem_ = nullptr;
    return Status::Errno("mmap buffer ring", errno);
  }
  br_ = static_cast<io_uring_buf_ring*>(br_mem_);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(br_);
  reg.ring_entries = buf_count_;
  reg.bgid = 0;
  if (int r = io_uring_register_buf_ring(&uring_, &reg, 0); r < 0) {
    return Status::Errno("io_uring_register_buf_ring (kernel 5.19+ needed)", -r);
  }
  io_uring_buf_ring_init(br_);
  buffers_ = std::make_unique<char[]>(size_t{buf_count_} * buf_bytes_);
  const int mask = io_uring_buf_ring_mask(buf_count_);
  for (uint32_t i = 0; i < buf_count_; ++i) {
    io_uring_buf_ring_add(br_, buffers_.get() + size_t{i} * buf_bytes_, buf_bytes_,
                          static_cast<unsigned short>(i), mask, static_cast<int>(i));
  }
  io_uring_buf_ring_advance(br_, static_cast<int>(buf_count_));
  return Status::Ok();
}

Status IngestLoop::open_listener(const ListenSpec& spec) {
  auto l = std::make_unique<Listener>(spec, config_.max_line_bytes);
  l->index = static_cast<uint32_t>(listeners_.size());
  const bool udp = spec.kind == ListenSpec::Kind::kUdp;
  if (spec.kind == ListenSpec::Kind::kUnix) {
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(spec.path).parent_path(), ec);
    struct stat st;
    if (lstat(spec.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return Status::Invalid("listen " + spec.url + ": " + spec.path + " exists and is not a socket");
      }
      unlink(spec.path.c_str());  // stale socket of an earlier run
    }
    l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l->fd < 0) return Status::Errno("socket " + spec.url, errno);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, spec.path.c_str(), spec.path.size() + 1);
    if (bind(l->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return Status::Errno("bind " + spec.url, errno);
    }
    chmod(spec.path.c_str(), 0660);
  } else {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = udp ? SOCK_DGRAM : SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    addrinfo* res = nullptr;
    const std::string port = std::to_string(spec.port);
    if (int r = getaddrinfo(spec.host.c_str(), port.c_str(), &hints, &res); r != 0) {
      return Status::Invalid("listen " + spec.url + ": cannot resolve '" + spec.host + "': " + gai_strerror(r));
    }
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
    l->fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
    if (l->fd < 0) return Status::Errno("socket " + spec.url, errno);
    int one = 1;
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (udp) {
      int rcvbuf = static_cast<int>(config_.udp_rcvbuf_bytes);
      setsockopt(l->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    }
    if (bind(l->fd, res->ai_addr, res->ai_addrlen) != 0) return Status::Errno("bind " + spec.url, errno);
  }
  if (!udp && listen(l->fd, 1024) != 0) return Status::Errno("listen " + spec.url, errno);
  if (udp) l->msg.msg_namelen = sizeof(sockaddr_storage);
  spdlog::info("listening on {}", spec.url);
  listeners_.push_back(std::move(l));
  return Status::Ok();
}

io_uring_sqe* IngestLoop::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&uring_);
  if (sqe == nullptr) {  // submission queue full: hand what we have to the kernel and retry
    io_uring_submit(&uring_);
    sqe = io_uring_get_sqe(&uring_);
  }
  return sqe;
}

void IngestLoop::arm_accept(uint32_t li) {
  Listener& l = *listeners_[li];
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_multishot_accept(sqe, l.fd, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, pack(Op::kAccept, 0, li));
  l.armed = true;
}

void IngestLoop::arm_udp(uint32_t li) {
  Listener& l = *listeners_[li];
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_recvmsg_multishot(sqe, l.fd, &l.msg, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = 0;
  io_uring_sqe_set_data64(sqe, pack(Op::kUdp, 0, li));
  l.armed = true;
}

void IngestLoop::arm_recv(uint32_t ci) {
  Conn& c = *conns_[ci];
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_recv_multishot(sqe, c.fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = 0;
  io_uring_sqe_set_data64(sqe, pack(Op::kRecv, c.gen, ci));
  c.recv_armed = true;
}

void IngestLoop::cancel_recv(uint32_t ci) {
  Conn& c = *conns_[ci];
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_cancel64(sqe, pack(Op::kRecv, c.gen, ci), 0);
  io_uring_sqe_set_data64(sqe, pack(Op::kCancel, 0, 0));
}

void IngestLoop::arm_stop_read() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, stop_fd_, &stop_buf_, sizeof stop_buf_, 0);
  io_uring_sqe_set_data64(sqe, pack(Op::kStop, 0, 0));
}

void IngestLoop::request_stop() {
  stopping_.store(true, std::memory_order_relaxed);
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(stop_fd_, &one, sizeof one);
}

void IngestLoop::recycle_buffer(uint16_t bid) {
  io_uring_buf_ring_add(br_, buffers_.get() + size_t{bid} * buf_bytes_, buf_bytes_, bid,
                        io_uring_buf_ring_mask(buf_count_), 0);
  io_uring_buf_ring_advance(br_, 1);
}

bool IngestLoop::place_line(std::string_view line, const Peer& peer, Precision precision) {
  const char* reason = "";
  ParseOptions opts;
  opts.precision = precision;
  ParseError e = parser_.parse(line, opts, arrival_ns_, &scratch_, &reason);
  if (e == ParseError::kOk) {
    switch (ring_.try_write(std::span<const std::byte>(scratch_.data(), scratch_.size()))) {
      case ipc::WriteStatus::kOk:
        local_->add(ipc::Counter::kPointsAccepted);
        return true;
      case ipc::WriteStatus::kFull:
        ring_full_ = true;
        return false;
      case ipc::WriteStatus::kTooLarge:  // only with a ring smaller than 4 records of max length
        e = ParseError::kTooLong;
        reason = "record larger than the ring's largest payload";
        break;
    }
  }
  local_->add(kParseCounters[static_cast<size_t>(e)]);
  if (e != ParseError::kSkip && reject_log_.allow()) {
    constexpr size_t kShown = 120;
    spdlog::warn("rejected line from {}: {} ({}): '{}{}'", peer.str(), parse_error_name(e), reason,
                 line.substr(0, kShown), line.size() > kShown ? "..." : "");
  }
  return true;
}

size_t IngestLoop::feed(Conn& c, std::string_view data) {
  const Peer peer{&c.peer};
  return c.framer.feed(
      data, [&](std::string_view line) { return place_line(line, peer, c.precision); },
      [&] {
        local_->add(ipc::Counter::kParseTooLong);
        if (reject_log_.allow()) {
          spdlog::warn("rejected line from {}: too_long (over {} bytes), skipped to its newline",
                       c.peer, config_.max_line_bytes);
        }
      });
}

Status IngestLoop::run() {
  for (uint32_t i = 0; i < listeners_.size(); ++i) {
    if (listeners_[i]->spec.kind == ListenSpec::Kind::kUdp) {
      arm_udp(i);
    } else {
      arm_accept(i);
    }
  }
  arm_stop_read();
  bool stop_seen = false;
  while (true) {
    heartbeat_.fetch_add(1, std::memory_order_relaxed);
    if (stopping_.load(std::memory_order_relaxed) && !stop_seen) {
      stop_seen = true;
      // Stop accepting; drain what was received on open connections.
      for (uint32_t li = 0; li < listeners_.size(); ++li) {
        if (!listeners_[li]->armed) continue;
        const Op op = listeners_[li]->spec.kind == ListenSpec::Kind::kUdp ? Op::kUdp : Op::kAccept;
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_cancel64(sqe, pack(op, 0, li), 0);
        io_uring_sqe_set_data64(sqe, pack(Op::kCancel, 0, 0));
      }
      for (uint32_t ci = 0; ci < conns_.size(); ++ci) {
        Conn& c = *conns_[ci];
        if (c.in_use && !c.closing) {
          if (c.recv_armed) cancel_recv(ci);
          c.eof = true;
        }
      }
    }
    if (stop_seen) {
      bool busy = false;
      for (auto& c : conns_) busy |= c->in_use && (c->recv_armed || c->paused);
      for (auto& l : listeners_) busy |= l->armed;
      if (!busy) break;
    }
    if (!paused_.empty()) resume_paused();
    flush_counters();
    io_uring_cqe* cqe = nullptr;
    // Wake at least every 200 ms so the watchdog sees the loop alive; paused connections wait
    // for ring space and poll it every millisecond.
    __kernel_timespec ts{.tv_sec = 0, .tv_nsec = paused_.empty() ? 200'000'000 : 1'000'000};
    int r = io_uring_submit_and_wait_timeout(&uring_, &cqe, 1, &ts, nullptr);
    if (r == -ETIME) continue;
    if (r < 0 && r != -EINTR && r != -ETIME) return Status::Errno("io_uring_submit_and_wait", -r);
    arrival_ns_ = realtime_ns();
    unsigned head, n = 0;
    io_uring_for_each_cqe(&uring_, head, cqe) {
      handle_cqe(*cqe);
      ++n;
    }
    io_uring_cq_advance(&uring_, n);
  }
  flush_counters();
  for (uint32_t ci = 0; ci < conns_.size(); ++ci) {
    if (conns_[ci]->in_use) close_conn(ci);
  }
  for (auto& l : listeners_) {
    if (l->spec.kind == ListenSpec::Kind::kUnix) unlink(l->spec.path.c_str());
  }
  return Status::Ok();
}

void IngestLoop::handle_cqe(const io_uring_cqe& cqe) {
  const uint64_t ud = io_uring_cqe_get_data64(&cqe);
  switch (op_of(ud)) {
    case Op::kAccept: on_accept(index_of(ud), cqe); break;
    case Op::kUdp: on_udp(index_of(ud), cqe); break;
    case Op::kRecv: {
      const uint32_t ci = index_of(ud);
      if (ci < conns_.size() && conns_[ci]->in_use && (conns_[ci]->gen & 0xffffff) == gen_of(ud)) {
        on_recv(ci, cqe);
      } else if (cqe.flags & IORING_CQE_F_BUFFER) {
        recycle_buffer(static_cast<uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT));
      }
      break;
    }
    case Op::kStop: break;  // stopping_ is already set by request_stop()
    case Op::kCancel: break;
  }
}

void IngestLoop::on_accept(uint32_t li, const io_uring_cqe& cqe) {
  Listener& l = *listeners_[li];
  if (!(cqe.flags & IORING_CQE_F_MORE)) l.armed = false;
  if (cqe.res < 0) {
    if (!stopping_ && cqe.res != -ECANCELED && cqe.res != -EINVAL) {
      local_->add(ipc::Counter::kConnectionErrors);
      if (reject_log_.allow()) spdlog::warn("accept on {}: {}", l.spec.url, std::strerror(-cqe.res));
    }
    if (!l.armed && !stopping_) arm_accept(li);
    return;
  }
  const int fd = cqe.res;
  if (stopping_) {
    close(fd);
    return;
  }
  uint32_t ci;
  if (!free_conns_.empty()) {
    ci = free_conns_.back();
    free_conns_.pop_back();
  } else {
    ci = static_cast<uint32_t>(conns_.size());
    conns_.push_back(std::make_unique<Conn>(config_.max_line_bytes));
    conns_.back()->pending.reserve(buf_bytes_);
  }
  Conn& c = *conns_[ci];
  c.fd = fd;
  c.gen++;
  c.in_use = true;
  c.recv_armed = c.paused = c.eof = c.closing = false;
  c.pending.clear();
  c.framer.reset();
  c.precision = l.spec.precision;
  if (l.spec.kind == ListenSpec::Kind::kUnix) {
    c.peer = l.spec.url;
  } else {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    c.peer = "tcp://" + describe(reinterpret_cast<sockaddr*>(&ss), len);
  }
  local_->add(ipc::Counter::kConnectionsAccepted);
  stats_.add(ipc::Counter::kConnectionsOpen, 1);
  spdlog::debug("connection from {}", c.peer);
  arm_recv(ci);
  if (!l.armed) arm_accept(li);
}

void IngestLoop::on_recv(uint32_t ci, const io_uring_cqe& cqe) {
  Conn& c = *conns_[ci];
  const bool more = cqe.flags & IORING_CQE_F_MORE;
  if (!more) c.recv_armed = false;
  if (cqe.res > 0) {
    const auto bid = static_cast<uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
    std::string_view data(buffers_.get() + size_t{bid} * buf_bytes_, static_cast<size_t>(cqe.res));
    local_->add(ipc::Counter::kBytesReceived, data.size());
    if (c.paused) {
      c.pending.append(data);  // arrived before the cancellation took effect
    } else {
      ring_full_ = false;
      const size_t used = feed(c, data);
      if (used < data.size()) {
        c.pending.assign(data.substr(used));
        c.paused = true;
        local_->add(ipc::Counter::kRingFullStalls);
        paused_.push_back(ci);
        if (c.recv_armed) cancel_recv(ci);
      }
    }
    recycle_buffer(bid);
  } else if (cqe.res == 0) {
    c.eof = true;
  } else if (cqe.res == -ENOBUFS) {
    local_->add(ipc::Counter::kRecvBuffersExhausted);  // re-armed below; buffers were recycled
  } else if (cqe.res != -ECANCELED) {
    local_->add(ipc::Counter::kConnectionErrors);
    if (reject_log_.allow()) spdlog::warn("recv from {}: {}", c.peer, std::strerror(-cqe.res));
    c.eof = true;
  }
  if (c.recv_armed) return;
  if (c.paused) return;  // resume_paused() re-arms or closes
  if (c.eof || stopping_) {
    finish_and_close(ci);
  } else {
    arm_recv(ci);
  }
}

void IngestLoop::resume_paused() {
  size_t keep = 0;
  for (size_t i = 0; i < paused_.size(); ++i) {
    const uint32_t ci = paused_[i];
    Conn& c = *conns_[ci];
    ring_full_ = false;
    const size_t used = feed(c, c.pending);
    c.pending.erase(0, used);
    if (!c.pending.empty()) {
      paused_[keep++] = ci;
      continue;
    }
    c.paused = false;
    if (c.recv_armed) continue;  // the cancellation is still on its way; on_recv re-arms
    if (c.eof || stopping_) {
      finish_and_close(ci);
    } else {
      arm_recv(ci);
    }
  }
  paused_.resize(keep);
}

void IngestLoop::finish_and_close(uint32_t ci) {
  Conn& c = *conns_[ci];
  // A last line without a newline at end of stream is still a line. The ring may be full:
  // wait for it rather than lose an accepted byte.
  const Peer peer{&c.peer};
  while (!c.framer.finish([&](std::string_view line) { return place_line(line, peer, c.precision); })) {
    ring_.wait_for_space(scratch_.size(), std::chrono::milliseconds(10));
  }
  close_conn(ci);
}

void IngestLoop::close_conn(uint32_t ci) {
  Conn& c = *conns_[ci];
  if (c.fd >= 0) close(c.fd);
  c.fd = -1;
  c.in_use = false;
  c.pending.clear();
  stats_.set(ipc::Counter::kConnectionsOpen, stats_.get(ipc::Counter::kConnectionsOpen) - 1);
  free_conns_.push_back(ci);
}

void IngestLoop::on_udp(uint32_t li, const io_uring_cqe& cqe) {
  Listener& l = *listeners_[li];
  if (!(cqe.flags & IORING_CQE_F_MORE)) l.armed = false;
  if (cqe.res > 0 && (cqe.flags & IORING_CQE_F_BUFFER)) {
    const auto bid = static_cast<uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
    void* buf = buffers_.get() + size_t{bid} * buf_bytes_;
    io_uring_recvmsg_out* out = io_uring_recvmsg_validate(buf, cqe.res, &l.msg);
    if (out != nullptr) {
      const char* payload = static_cast<const char*>(io_uring_recvmsg_payload(out, &l.msg));
      const auto len = io_uring_recvmsg_payload_length(out, cqe.res, &l.msg);
      local_->add(ipc::Counter::kUdpDatagrams);
      local_->add(ipc::Counter::kBytesReceived, len);
      const Peer peer{nullptr, static_cast<const sockaddr*>(io_uring_recvmsg_name(out)), out->namelen};
      bool dropped = false;
      auto on_line = [&](std::string_view line) {
        if (place_line(line, peer, l.spec.precision)) return true;
        dropped = true;
        return false;
      };
      const std::string_view data(payload, len);
      const size_t used = l.framer.feed(data, on_line, [&] { local_->add(ipc::Counter::kParseTooLong); });
      if (used == data.size() && !dropped) l.framer.finish(on_line);
      if (dropped) {
        local_->add(ipc::Counter::kUdpDropped);
        local_->add(ipc::Counter::kUdpLinesDropped,
                    static_cast<uint64_t>(std::count(data.begin() + static_cast<ptrdiff_t>(used), data.end(), '\n')) + 1);
      }
      l.framer.reset();  // datagrams never continue each other
    }
    recycle_buffer(bid);
  } else if (cqe.res < 0 && cqe.res != -ENOBUFS && cqe.res != -ECANCELED && !stopping_) {
    local_->add(ipc::Counter::kConnectionErrors);
    if (reject_log_.allow()) spdlog::warn("recvmsg on {}: {}", l.spec.url, std::strerror(-cqe.res));
  } else if (cqe.res == -ENOBUFS) {
    local_->add(ipc::Counter::kRecvBuffersExhausted);
  }
  if (!l.armed && !stopping_) arm_udp(li);
}

void IngestLoop::flush_counters() {
  for (size_t i = 0; i < std::size(local_->v); ++i) {
    if (local_->v[i] != 0) {
      stats_.add(static_cast<ipc::Counter>(i), local_->v[i]);
      local_->v[i] = 0;
    }
  }
}

}  // namespace runnel
