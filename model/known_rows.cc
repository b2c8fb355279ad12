// KnownRows (see known_rows.h).
#include "model/known_rows.h"

#include <algorithm>
#include <bit>
#include <utility>

namespace runnel {

KnownRows::KnownRows(size_t initial_slots, size_t max_slots)
    : initial_slots_(std::bit_ceil(std::max<size_t>(initial_slots, 2))),
      max_slots_(std::max(initial_slots_, std::bit_ceil(max_slots))) {
  clear();
}

size_t KnownRows::slot_of(uint64_t row) const {
  // Fibonacci hashing: the product's high bits, as many as the table has.
  return static_cast<size_t>((row * 0x9E3779B97F4A7C15ULL) >> (64 - std::countr_zero(slots_.size())));
}

bool KnownRows::insert(uint64_t row) {
  if (row == 0) return !std::exchange(has_zero_, true);
  for (;;) {
    const size_t mask = slots_.size() - 1;
    size_t i = slot_of(row);
    for (; slots_[i] != 0; i = (i + 1) & mask) {
      if (slots_[i] == row) return false;
    }
    if ((count_ + 1) * 2 <= slots_.size()) {
      slots_[i] = row;
      ++count_;
      return true;
    }
    if (slots_.size() >= max_slots_) {
      clear();
    } else {
      grow();
    }
  }
}

void KnownRows::clear() {
  slots_.assign(initial_slots_, 0);
  count_ = 0;
  has_zero_ = false;
}

void KnownRows::grow() {
  std::vector<uint64_t> old(slots_.size() * 2, 0);
  old.swap(slots_);
  const size_t mask = slots_.size() - 1;
  for (uint64_t row : old) {
    if (row == 0) continue;
    size_t i = slot_of(row);
    while (slots_[i] != 0) i = (i + 1) & mask;
    slots_[i] = row;
  }
}

}  // namespace runnel
