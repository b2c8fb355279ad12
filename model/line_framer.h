// LineFramer: splits one connection's byte stream into '\n'-terminated lines for LineParser,
// without copying lines that arrive whole and with backpressure from the line consumer.
#pragma once

#include <cstddef>
#include <cstring>
#include <string_view>
#include <vector>

namespace runnel {

// One per connection (REQUIRES: external synchronization). Only a line split across chunks is
// copied, into a carry buffer reserved once at construction; steady state allocates nothing.
//
// Line length counts the bytes before '\n', a trailing '\r' included. A line longer than
// max_line_bytes is never buffered whole: it is reported once through on_too_long() and its
// bytes are dropped up to and including the next '\n'.
class LineFramer {
 public:
  explicit LineFramer(size_t max_line_bytes);

  LineFramer(const LineFramer&) = delete;
  LineFramer& operator=(const LineFramer&) = delete;

  // Calls on_line(std::string_view line) -> bool for each complete line in carry + chunk, with
  // '\n' and a trailing '\r' removed. A view is valid only during the call; it points into
  // `chunk` whenever the line lies wholly inside it.
  // on_line returning false means "cannot take this line now": feed() stops, the line is not
  // consumed, the framer is as it was before that line, and feed() returns how many bytes of
  // `chunk` it consumed; the caller feeds the rest of `chunk` again later. Returns chunk.size()
  // when every byte was taken (complete lines delivered, a partial one carried).
  template <typename OnLine, typename OnTooLong>
  size_t feed(std::string_view chunk, OnLine&& on_line, OnTooLong&& on_too_long);

  // End of stream, or end of a datagram: delivers a final line that lacks its '\n', if any.
  // Returns false if on_line refused it (it stays buffered for another finish()).
  template <typename OnLine>
  bool finish(OnLine&& on_line);

  // Forgets any partial line, e.g. when the connection is reused.
  void reset();

  size_t max_line_bytes() const { return max_line_bytes_; }
  size_t buffered_bytes() const { return carry_len_; }

 private:
  static std::string_view strip_cr(const char* p, size_t n) {
    return {p, (n != 0 && p[n - 1] == '\r') ? n - 1 : n};
  }

  const size_t max_line_bytes_;
  std::vector<char> carry_;  // max_line_bytes_ long; holds the start of a split line
  size_t carry_len_ = 0;
  bool skipping_ = false;  // inside a too-long line: drop bytes through the next '\n'
};

template <typename OnLine, typename OnTooLong>
size_t LineFramer::feed(std::string_view chunk, OnLine&& on_line, OnTooLong&& on_too_long) {
  const char* const base = chunk.data();
  const size_t size = chunk.size();
  size_t pos = 0;  // bytes of chunk consumed
  while (pos < size) {
    const char* nl = static_cast<const char*>(std::memchr(base + pos, '\n', size - pos));
    const size_t piece = (nl ? static_cast<size_t>(nl - base) : size) - pos;
    if (skipping_) {
      if (!nl) return size;
      skipping_ = false;
      pos += piece + 1;
      continue;
    }
    if (carry_len_ + piece > max_line_bytes_) {
      on_too_long();
      carry_len_ = 0;
      if (!nl) {
        skipping_ = true;
        return size;
      }
      pos += piece + 1;
      continue;
    }
    if (carry_len_ == 0) {
      if (!nl) {
        std::memcpy(carry_.data(), base + pos, piece);
        carry_len_ = piece;
        return size;
      }
      if (!on_line(strip_cr(base + pos, piece))) return pos;
      pos += piece + 1;
      continue;
    }
    // The line began in an earlier chunk: complete it in the carry buffer. carry_len_ is only
    // committed once the line is taken, so a refusal leaves the framer as it was.
    std::memcpy(carry_.data() + carry_len_, base + pos, piece);
    if (!nl) {
      carry_len_ += piece;
      return size;
    }
    if (!on_line(strip_cr(carry_.data(), carry_len_ + piece))) return pos;
    carry_len_ = 0;
    pos += piece + 1;
  }
  return size;
}

template <typename OnLine>
bool LineFramer::finish(OnLine&& on_line) {
  if (skipping_) {
    skipping_ = false;  // the too-long line was reported when it crossed the limit
    return true;
  }
  if (carry_len_ == 0) return true;
  if (!on_line(strip_cr(carry_.data(), carry_len_))) return false;
  carry_len_ = 0;
  return true;
}

}  // namespace runnel
