// KnownRows: which row ids a dictionary was already given.
#include "model/known_rows.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace runnel {
namespace {

TEST(KnownRowsTest, EachRowIsNewOnceAlsoRowZero) {
  KnownRows rows;
  EXPECT_TRUE(rows.insert(42));
  EXPECT_FALSE(rows.insert(42));
  EXPECT_TRUE(rows.insert(0));
  EXPECT_FALSE(rows.insert(0));
  EXPECT_TRUE(rows.insert(43));
}

TEST(KnownRowsTest, GrowingKeepsEveryRowUpToTheBound) {
  KnownRows rows(8, 1 << 12);
  for (uint64_t r = 1; r <= 2048; ++r) ASSERT_TRUE(rows.insert(r * 0x1000193)) << r;
  for (uint64_t r = 1; r <= 2048; ++r) ASSERT_FALSE(rows.insert(r * 0x1000193)) << r;
}

TEST(KnownRowsTest, HalfFullAtTheBoundItStartsOver) {
  KnownRows rows(16, 16);
  for (uint64_t r = 1; r <= 8; ++r) ASSERT_TRUE(rows.insert(r));
  EXPECT_FALSE(rows.insert(1));
  EXPECT_TRUE(rows.insert(9));  // no room for a ninth: forgets the eight first
  EXPECT_FALSE(rows.insert(9));
  EXPECT_TRUE(rows.insert(1));
}

TEST(KnownRowsTest, ClearForgetsEveryRow) {
  KnownRows rows;
  rows.insert(7);
  rows.insert(0);
  rows.clear();
  EXPECT_TRUE(rows.insert(7));
  EXPECT_TRUE(rows.insert(0));
}

}  // namespace
}  // namespace runnel
