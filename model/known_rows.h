// KnownRows: the row ids already named in a series dictionary (the live tables' one, the batch
// views' "series" database), so that a row's key is written once rather than per event.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace runnel {

// An exact open-addressing set of row ids. It starts with `initial_slots` and doubles up to
// `max_slots` (powers of two); half full at max_slots, it starts over rather than grow: a row it
// forgot is only named again, which every dictionary ignores. Allocates only when it grows
// (never with initial_slots == max_slots). REQUIRES: one thread at a time.
class KnownRows {
 public:
  explicit KnownRows(size_t initial_slots = size_t{1} << 12, size_t max_slots = size_t{1} << 21);
  // True when `row` was not in the set (it is now).
  bool insert(uint64_t row);
  // Forgets every row, back to initial_slots (keeping the allocation).
  void clear();

 private:
  size_t slot_of(uint64_t row) const;
  void grow();

  const size_t initial_slots_;
  const size_t max_slots_;
  std::vector<uint64_t> slots_;  // 0: empty
  size_t count_ = 0;
  bool has_zero_ = false;
};

}  // namespace runnel
