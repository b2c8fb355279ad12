// The C ABI: a C translation unit (c_api_check.c) that includes only runnel/runnel.h opens an
// instance, lists, finds, reads, queries, waits, tails and closes.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "tests/client/fake_instance.h"

extern "C" int runnel_c_api_check(const char* shm_name, int64_t from_ns, int64_t to_ns,
                                  uint64_t total, char* err, size_t err_len);
extern "C" int runnel_c_tail_check(const char* shm_name, const char* expect, char* err,
                                   size_t err_len);

namespace runnel::client::testing {
namespace {

constexpr int64_t kT0 = 1'700'000'040'000'000'000;  // a whole minute

TEST(CApiTest, ACProgramOpensListsFindsReadsQueriesWaitsAndCloses) {
  FakeInstance inst;
  std::string lines;
  for (int i = 0; i < 300; ++i) {
    lines += "cpu,host=" + std::string(i % 3 ? "a" : "b") + " v=" + std::to_string(i) + " " +
             std::to_string(kT0 + i * 1'000'000'000LL) + "\n";
  }
  inst.write(lines);
  char err[512];
  EXPECT_EQ(
      runnel_c_api_check(inst.name().c_str(), kT0, kT0 + 300'000'000'000LL, 200, err, sizeof err),
      0)
      << err;
}

TEST(CApiTest, ACProgramTailsWholeLines) {
  FakeInstance inst;
  const std::string text =
      "cpu,host=a v=1 1700000000000000000\ncpu,host=b v=2 1700000000000000001\n";
  inst.publish(text);  // the tail starts at the oldest record still in the ring
  char err[512];
  EXPECT_EQ(runnel_c_tail_check(inst.name().c_str(), text.c_str(), err, sizeof err), 0) << err;
}

}  // namespace
}  // namespace runnel::client::testing
