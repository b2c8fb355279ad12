// LineFramer's out-of-line parts; feed() and finish() are templates in the header so that the
// per-line callbacks inline into the connection's receive loop.
#include "model/line_framer.h"

namespace runnel {

LineFramer::LineFramer(size_t max_line_bytes)
    : max_line_bytes_(max_line_bytes), carry_(max_line_bytes) {}

void LineFramer::reset() {
  carry_len_ = 0;
  skipping_ = false;
}

}  // namespace runnel
