// Tests of LineFramer: any split of a stream yields the same lines (and records), CRLF, lines
// over the limit, zero-copy delivery, and exactly-once delivery under backpressure.
#include "model/line_framer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/line_protocol.h"

namespace runnel {
namespace {

const std::string kStream =
    "cpu,host=a usage=1.5 1\n"
    "mem,host=b\\ c free=10i 2\r\n"
    "\n"
    "# comment\n"
    "disk,dev=sda used=3u,ok=t 3\r\n"
    "net s=\"with \\\"quote\\\" and\\nslash\" 4\n"
    "tail v=1 5";  // no final newline: delivered by finish()

struct Collector {
  std::vector<std::string> lines;
  int too_long = 0;
  auto on_line() {
    return [this](std::string_view line) {
      lines.emplace_back(line);
      return true;
    };
  }
  auto on_too_long() {
    return [this] { ++too_long; };
  }
};

// Feeds `stream` cut at the given positions (ascending), then finishes.
Collector feed_pieces(LineFramer& framer, std::string_view stream, std::vector<size_t> cuts) {
  Collector c;
  cuts.push_back(stream.size());
  size_t from = 0;
  for (size_t cut : cuts) {
    std::string piece(stream.substr(from, cut - from));  // own copy: views must not outlive it
    EXPECT_EQ(framer.feed(piece, c.on_line(), c.on_too_long()), piece.size());
    from = cut;
  }
  EXPECT_TRUE(framer.finish(c.on_line()));
  return c;
}

std::vector<std::string> expected_lines() {
  return {"cpu,host=a usage=1.5 1",
          "mem,host=b\\ c free=10i 2",
          "",
          "# comment",
          "disk,dev=sda used=3u,ok=t 3",
          "net s=\"with \\\"quote\\\" and\\nslash\" 4",
          "tail v=1 5"};
}

TEST(LineFramer, WholeBufferYieldsLinesWithoutNewlineOrCarriageReturn) {
  LineFramer framer(1024);
  Collector c = feed_pieces(framer, kStream, {});
  EXPECT_EQ(c.lines, expected_lines());
  EXPECT_EQ(c.too_long, 0);
  EXPECT_EQ(framer.buffered_bytes(), 0u);
}

TEST(LineFramer, SplitAtEveryByteYieldsSameLines) {
  LineFramer framer(1024);
  for (size_t cut = 0; cut <= kStream.size(); ++cut) {
    EXPECT_EQ(feed_pieces(framer, kStream, {cut}).lines, expected_lines()) << "cut " << cut;
  }
}

TEST(LineFramer, SplitIntoThreePiecesYieldsSameLines) {
  LineFramer framer(1024);
  for (size_t a = 0; a <= kStream.size(); ++a) {
    for (size_t b = a; b <= kStream.size(); b += 3) {
      ASSERT_EQ(feed_pieces(framer, kStream, {a, b}).lines, expected_lines())
          << "cuts " << a << "," << b;
    }
  }
}

TEST(LineFramer, SplitStreamParsesToSameRecords) {
  auto records_of = [](const std::vector<std::string>& lines) {
    LineParser parser;
    std::vector<std::vector<std::byte>> out;
    std::vector<std::byte> record;
    const char* reason = nullptr;
    for (const std::string& line : lines) {
      if (parser.parse(line, {}, 0, &record, &reason) == ParseError::kOk) out.push_back(record);
    }
    return out;
  };
  LineFramer framer(1024);
  const auto whole = records_of(feed_pieces(framer, kStream, {}).lines);
  ASSERT_EQ(whole.size(), 5u);
  for (size_t cut = 0; cut <= kStream.size(); ++cut) {
    EXPECT_EQ(records_of(feed_pieces(framer, kStream, {cut}).lines), whole) << "cut " << cut;
  }
}

TEST(LineFramer, LinesInsideTheChunkAreNotCopied) {
  LineFramer framer(64);
  const std::string chunk = "a v=1\nb v=2\nc v=";
  std::vector<const char*> starts;
  framer.feed(
      chunk,
      [&](std::string_view line) {
        starts.push_back(line.data());
        return true;
      },
      [] {});
  ASSERT_EQ(starts.size(), 2u);
  EXPECT_EQ(starts[0], chunk.data());
  EXPECT_EQ(starts[1], chunk.data() + 6);
  EXPECT_EQ(framer.buffered_bytes(), 4u);  // "c v=" waits in the carry buffer
}

TEST(LineFramer, TooLongLineIsSkippedToNextNewline) {
  const std::string stream = "short 1\n" + std::string(40, 'x') + "\nnext 2\n";
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    LineFramer framer(16);
    Collector c = feed_pieces(framer, stream, {cut});
    EXPECT_EQ(c.lines, (std::vector<std::string>{"short 1", "next 2"})) << "cut " << cut;
    EXPECT_EQ(c.too_long, 1) << "cut " << cut;
  }
}

TEST(LineFramer, TooLongLineIsReportedOnceWhileItsBytesKeepComing) {
  LineFramer framer(16);
  Collector c;
  const std::string junk(10, 'x');
  for (int i = 0; i < 10; ++i) framer.feed(junk, c.on_line(), c.on_too_long());
  framer.feed("y\nok\n", c.on_line(), c.on_too_long());
  EXPECT_EQ(c.too_long, 1);
  EXPECT_EQ(c.lines, std::vector<std::string>{"ok"});
}

TEST(LineFramer, LineOfExactlyMaxBytesIsKept) {
  const std::string line(16, 'x');
  for (size_t cut = 0; cut <= line.size() + 1; ++cut) {
    LineFramer framer(16);
    Collector c = feed_pieces(framer, line + "\n" + line + "y\n", {cut});
    EXPECT_EQ(c.lines, std::vector<std::string>{line}) << "cut " << cut;
    EXPECT_EQ(c.too_long, 1);
  }
}

TEST(LineFramer, UnterminatedTooLongTailIsDroppedAtFinish) {
  LineFramer framer(4);
  Collector c;
  framer.feed("ok\nabcdefgh", c.on_line(), c.on_too_long());
  EXPECT_TRUE(framer.finish(c.on_line()));
  EXPECT_EQ(c.lines, std::vector<std::string>{"ok"});
  EXPECT_EQ(c.too_long, 1);
  framer.feed("next\n", c.on_line(), c.on_too_long());  // the skip ended with the stream
  EXPECT_EQ(c.lines.back(), "next");
}

TEST(LineFramer, FinishDeliversLastLineOfDatagram) {
  LineFramer framer(64);
  Collector c;
  framer.feed("a v=1\nb v=2\r", c.on_line(), c.on_too_long());
  EXPECT_TRUE(framer.finish(c.on_line()));
  EXPECT_EQ(c.lines, (std::vector<std::string>{"a v=1", "b v=2"}));
  EXPECT_TRUE(framer.finish(c.on_line()));  // nothing left
  EXPECT_EQ(c.lines.size(), 2u);
}

TEST(LineFramer, ResetDropsPartialLine) {
  LineFramer framer(64);
  Collector c;
  framer.feed("partial", c.on_line(), c.on_too_long());
  framer.reset();
  framer.feed("fresh\n", c.on_line(), c.on_too_long());
  EXPECT_EQ(c.lines, std::vector<std::string>{"fresh"});
}

// A consumer that refuses every line the first time it is offered: each refusal makes the
// caller re-feed the unconsumed rest, as the io_uring loop does when the ring is full.
TEST(LineFramer, BackpressureDeliversEachLineExactlyOnce) {
  for (size_t cut = 0; cut <= kStream.size(); ++cut) {
    LineFramer framer(1024);
    std::vector<std::string> lines;
    bool refuse_next = true;
    auto on_line = [&](std::string_view line) {
      if (refuse_next) {
        refuse_next = false;
        return false;
      }
      refuse_next = true;
      lines.emplace_back(line);
      return true;
    };
    int refusals = 0;
    for (std::string_view piece :
         {std::string_view(kStream).substr(0, cut), std::string_view(kStream).substr(cut)}) {
      while (!piece.empty()) {
        const size_t used = framer.feed(piece, on_line, [] {});
        ASSERT_LE(used, piece.size());
        if (used < piece.size()) ++refusals;
        piece.remove_prefix(used);
      }
    }
    while (!framer.finish(on_line)) ++refusals;
    EXPECT_EQ(lines, expected_lines()) << "cut " << cut;
    EXPECT_EQ(refusals, static_cast<int>(expected_lines().size())) << "cut " << cut;
  }
}

TEST(LineFramer, RefusedLineLeavesFramerUnchanged) {
  LineFramer framer(64);
  Collector c;
  framer.feed("ab", c.on_line(), c.on_too_long());
  EXPECT_EQ(framer.feed(
                "c\nd\n", [](std::string_view) { return false; }, [] {}),
            0u);
  EXPECT_EQ(framer.buffered_bytes(), 2u);
  EXPECT_EQ(framer.feed("c\nd\n", c.on_line(), c.on_too_long()), 4u);
  EXPECT_EQ(c.lines, (std::vector<std::string>{"abc", "d"}));
}

}  // namespace
}  // namespace runnel
