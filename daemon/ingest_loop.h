// The ingest event loop: io_uring multishot accept/recv over TCP, Unix and UDP sockets with a
// provided buffer ring; every line is parsed and its record appended to the shared-memory ring.
#pragma once

#include <liburing.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "daemon/config.h"
#include "daemon/rate_limited_log.h"
#include "ipc/ring.h"
#include "ipc/stats.h"
#include "model/line_framer.h"
#include "model/line_protocol.h"
#include "model/status.h"

namespace runnel {

// One instance runs on one thread (run()); request_stop() may be called from any thread.
// Backpressure: when the ring is full a stream connection stops being read (its multishot recv
// is cancelled and the unparsed rest of its buffer kept), so the kernel's socket buffers fill
// and TCP flow control slows the sender: stream data is never dropped. A UDP datagram that
// cannot be placed is dropped and counted.
class IngestLoop {
 public:
  IngestLoop(const Config& config, ipc::Ring& ring, ipc::StatsBlock& stats);
  ~IngestLoop();
  IngestLoop(const IngestLoop&) = delete;
  IngestLoop& operator=(const IngestLoop&) = delete;

  // Sets up io_uring and the buffer ring and binds every listener. Call before run().
  Status open();
  // Serves until request_stop(); then closes the listeners and connections, finishing every
  // complete line already received (a paused connection's backlog is placed first).
  Status run();
  void request_stop();
  // Incremented on every loop iteration; the watchdog pings only while it moves.
  uint64_t heartbeat() const { return heartbeat_.load(std::memory_order_relaxed); }

 private:
  struct Listener;
  struct Conn;
  struct LocalCounters;
  struct Peer;

  Status open_listener(const ListenSpec& spec);
  Status setup_buffer_ring();
  io_uring_sqe* get_sqe();
  void arm_accept(uint32_t listener);
  void arm_recv(uint32_t conn);
  void arm_udp(uint32_t listener);
  void arm_stop_read();
  void cancel_recv(uint32_t conn);
  void handle_cqe(const io_uring_cqe& cqe);
  void on_accept(uint32_t listener, const io_uring_cqe& cqe);
  void on_recv(uint32_t conn, const io_uring_cqe& cqe);
  void on_udp(uint32_t listener, const io_uring_cqe& cqe);
  void recycle_buffer(uint16_t bid);
  // Parses lines from `data` into the ring; returns the bytes consumed (less than data.size()
  // only when the ring is full).
  size_t feed(Conn& c, std::string_view data);
  bool place_line(std::string_view line, const Peer& peer, Precision precision);
  void resume_paused();
  void finish_and_close(uint32_t conn);
  void close_conn(uint32_t conn);
  void flush_counters();

  const Config& config_;
  ipc::Ring& ring_;
  ipc::StatsBlock& stats_;
  io_uring uring_{};
  bool uring_ready_ = false;
  int stop_fd_ = -1;
  uint64_t stop_buf_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> heartbeat_{0};

  // Provided buffers: one group shared by all sockets.
  void* br_mem_ = nullptr;
  size_t br_mem_bytes_ = 0;
  io_uring_buf_ring* br_ = nullptr;
  std::unique_ptr<char[]> buffers_;
  uint32_t buf_count_ = 0;
  uint32_t buf_bytes_ = 0;

  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Conn>> conns_;
  std::vector<uint32_t> free_conns_;
  std::vector<uint32_t> paused_;

  LineParser parser_;
  std::vector<std::byte> scratch_;  // one record, reused for every line
  int64_t arrival_ns_ = 0;
  bool ring_full_ = false;
  RateLimitedLog reject_log_;
  std::unique_ptr<LocalCounters> local_;
};

}  // namespace runnel
