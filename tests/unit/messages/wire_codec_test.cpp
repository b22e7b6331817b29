// Unit tests of the pipe protocol codec and of payload packing.
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "support/catch_caf.hpp"

#include "pyvisor/payload.hpp"
#include "messages/wire_codec.hpp"

using namespace pyvisor;

namespace {

struct point {
  int64_t x = 0;
  double y = 0;
  std::string label;
  std::vector<char> blob;
  MSGPACK_DEFINE_MAP(x, y, label, blob);
};

bool operator==(const point& a, const point& b) {
  return a.x == b.x && a.y == b.y && a.label == b.label && a.blob == b.blob;
}

// Sends `result` through a reply frame and back out of the decoder.
wire::frame round_trip_reply(const payload& result, uint64_t id = 7) {
  std::vector<char> bytes;
  wire::append_reply(bytes, id, result.bytes);
  wire::frame_reader reader;
  std::vector<wire::frame> frames;
  REQUIRE(reader.feed(bytes.data(), bytes.size(),
                      [&](wire::frame&& f) { frames.push_back(std::move(f)); }));
  REQUIRE(frames.size() == 1);
  return std::move(frames[0]);
}

std::vector<char> frame_with_body(const std::vector<unsigned char>& body) {
  std::vector<char> out;
  auto n = body.size();
  out.push_back(static_cast<char>((n >> 24) & 0xff));
  out.push_back(static_cast<char>((n >> 16) & 0xff));
  out.push_back(static_cast<char>((n >> 8) & 0xff));
  out.push_back(static_cast<char>(n & 0xff));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::string feed_error(const std::vector<char>& bytes, size_t limit = 1024) {
  wire::frame_reader reader{limit};
  size_t frames = 0;
  auto ok = reader.feed(bytes.data(), bytes.size(), [&](wire::frame&&) { ++frames; });
  if (ok)
    return {};
  CHECK(frames == 0);
  return reader.error();
}

} // namespace

TEST_CASE("nested values survive a reply frame byte for byte", "[unit][codec]") {
  point p{-42, 2.5, "h\xc3\xa9llo \xe2\x9c\x93", {'\0', '\x01', '\xff'}};
  auto packed = pack(p);
  auto f = round_trip_reply(packed);
  CHECK(f.type == wire::frame_type::reply);
  CHECK(f.ok);
  CHECK(f.id == 7);
  CHECK(f.result == packed.bytes);
  auto back = unpack<point>(payload{f.result});
  REQUIRE(back);
  CHECK(*back == p);
}

TEST_CASE("scalars at their limits round-trip", "[unit][codec]") {
  SECTION("nil") {
    auto f = round_trip_reply(payload{});
    CHECK(payload{f.result}.is_nil());
  }
  SECTION("booleans") {
    CHECK(*unpack<bool>(payload{round_trip_reply(pack(true)).result}) == true);
    CHECK(*unpack<bool>(payload{round_trip_reply(pack(false)).result}) == false);
  }
  SECTION("64-bit and negative integers") {
    auto big = std::numeric_limits<uint64_t>::max();
    auto small = std::numeric_limits<int64_t>::min();
    CHECK(*unpack<uint64_t>(payload{round_trip_reply(pack(big)).result}) == big);
    CHECK(*unpack<int64_t>(payload{round_trip_reply(pack(small)).result}) == small);
    CHECK(*unpack<int>(payload{round_trip_reply(pack(-1)).result}) == -1);
  }
  SECTION("floats") {
    CHECK(*unpack<double>(payload{round_trip_reply(pack(-0.125)).result}) == -0.125);
  }
  SECTION("nested arrays and maps") {
    std::vector<std::map<std::string, std::vector<int>>> v{{{"a", {1, 2}}, {"b", {}}}, {}};
    auto back = unpack<decltype(v)>(payload{round_trip_reply(pack(v)).result});
    REQUIRE(back);
    CHECK(*back == v);
  }
}

TEST_CASE("request frames splice the argument bytes in unchanged", "[unit][codec]") {
  auto args = pack(std::map<std::string, int>{{"a", 1}});
  std::vector<char> out;
  wire::append_request(out, 99, "add", args.bytes, "s1");
  REQUIRE(out.size() > 4);
  auto handle = msgpack::unpack(out.data() + 4, out.size() - 4);
  auto m = handle.get().as<std::map<std::string, msgpack::object>>();
  CHECK(m.at("id").as<uint64_t>() == 99);
  CHECK(m.at("cmd").as<std::string>() == "add");
  CHECK(m.at("session").as<std::string>() == "s1");
  CHECK((m.at("args").as<std::map<std::string, int>>()) == (std::map<std::string, int>{{"a", 1}}));
  // The raw bytes of args appear verbatim inside the frame.
  auto it = std::search(out.begin(), out.end(), args.bytes.begin(), args.bytes.end());
  CHECK(it != out.end());
}

TEST_CASE("error replies and hello frames decode", "[unit][codec]") {
  std::vector<char> bytes;
  wire::append_error_reply(bytes, 3, {"python_error", "ZeroDivisionError", "division by zero",
                                      "Traceback ..."});
  wire::append_hello(bytes, 1234, "3.11.2", {"ping", "echo"});
  std::vector<wire::frame> frames;
  wire::frame_reader reader;
  // Feed one byte at a time: frames may arrive in any split.
  for (char c : bytes)
    REQUIRE(reader.feed(&c, 1, [&](wire::frame&& f) { frames.push_back(std::move(f)); }));
  REQUIRE(frames.size() == 2);
  CHECK_FALSE(frames[0].ok);
  CHECK(frames[0].id == 3);
  CHECK(frames[0].error.code == "python_error");
  CHECK(frames[0].error.type == "ZeroDivisionError");
  CHECK(frames[0].error.message == "division by zero");
  CHECK(frames[0].error.traceback == "Traceback ...");
  CHECK(frames[1].type == wire::frame_type::hello);
  CHECK(frames[1].ok);
  CHECK(frames[1].pid == 1234);
  CHECK(frames[1].python == "3.11.2");
  CHECK(frames[1].commands == std::vector<std::string>{"ping", "echo"});
  CHECK(reader.buffered() == 0);
}

TEST_CASE("broken input is a protocol error, never a crash or a hang", "[unit][codec]") {
  SECTION("garbage bytes (0xc1 is never valid msgpack)") {
    CHECK_FALSE(feed_error(frame_with_body({0xc1, 0xc1, 0xc1, 0xc1})).empty());
  }
  SECTION("a frame that is not a map") {
    CHECK(feed_error(frame_with_body({0x93, 0x01, 0x02, 0x03})) == "frame is not a msgpack map");
  }
  SECTION("a truncated map inside a complete frame") {
    // fixmap of 2 entries with only one key present
    CHECK(feed_error(frame_with_body({0x82, 0xa2, 'i', 'd'})) == "truncated msgpack in frame");
  }
  SECTION("an oversized frame is refused from its header alone") {
    std::vector<char> header{'\x7f', '\xff', '\xff', '\xff'};
    CHECK(feed_error(header).find("exceeds the limit") != std::string::npos);
  }
  SECTION("a forged element count cannot make the decoder allocate it") {
    // {"ok": true, "result": array32 of 2^32-1 elements} in a 20-byte frame
    auto err = feed_error(frame_with_body({0x82, 0xa2, 'o', 'k', 0xc3, 0xa6, 'r', 'e', 's', 'u',
                                           'l', 't', 0xdd, 0xff, 0xff, 0xff, 0xff}));
    CHECK_FALSE(err.empty());
  }
  SECTION("trailing bytes after the map") {
    CHECK(feed_error(frame_with_body({0x81, 0xa2, 'o', 'k', 0xc3, 0xc0})) ==
          "trailing bytes after the frame's map");
  }
  SECTION("a reply without id") {
    CHECK(feed_error(frame_with_body({0x81, 0xa2, 'o', 'k', 0xc3})) == "reply frame has no 'id'");
  }
  SECTION("an empty frame") {
    CHECK(feed_error(frame_with_body({})) == "empty frame");
  }
  SECTION("a broken reader rejects everything after") {
    wire::frame_reader reader{1024};
    auto bad = frame_with_body({0xc1});
    CHECK_FALSE(reader.feed(bad.data(), bad.size(), [](wire::frame&&) {}));
    std::vector<char> good;
    wire::append_reply(good, 1, payload{}.bytes);
    size_t n = 0;
    CHECK_FALSE(reader.feed(good.data(), good.size(), [&](wire::frame&&) { ++n; }));
    CHECK(n == 0);
  }
  SECTION("a truncated stream simply waits for more bytes") {
    std::vector<char> good;
    wire::append_reply(good, 1, pack(std::string(100, 'x')).bytes);
    wire::frame_reader reader;
    size_t n = 0;
    CHECK(reader.feed(good.data(), good.size() - 1, [&](wire::frame&&) { ++n; }));
    CHECK(n == 0);
    CHECK(reader.feed(good.data() + good.size() - 1, 1, [&](wire::frame&&) { ++n; }));
    CHECK(n == 1);
  }
}

TEST_CASE("payloads unpack into the caller's types or fail with bad_request", "[unit][codec]") {
  auto p = pack(std::vector<int>{1, 2, 3});
  CHECK(is_valid_msgpack(p));
  auto wrong = unpack<std::string>(p);
  REQUIRE_FALSE(wrong);
  CHECK(code_of(wrong.error()) == error_code::bad_request);
  payload garbage{std::vector<char>{'\xc1'}};
  CHECK_FALSE(is_valid_msgpack(garbage));
  payload two_values{std::vector<char>{'\x01', '\x02'}};
  CHECK_FALSE(is_valid_msgpack(two_values));
  CHECK(payload{}.is_nil());
}

TEST_CASE("control messages round-trip: dump text is never a message", "[unit][wire]") {
  std::vector<char> msg;
  wire::append_control(msg, {3, 5}, 3, "timeout");
  REQUIRE(wire::is_control_message(msg.data(), msg.size()));
  auto c = wire::decode_control(msg.data(), msg.size());
  REQUIRE(c);
  CHECK(c->revoke == std::vector<uint64_t>{3, 5});
  CHECK(c->interrupt == 3);
  CHECK(c->reason == "timeout");
  std::vector<char> revoke_only;
  wire::append_control(revoke_only, {7});
  auto r = wire::decode_control(revoke_only.data(), revoke_only.size());
  REQUIRE(r);
  CHECK(r->interrupt == 0);
  // The worker's answer.
  auto answer = pack(std::map<std::string, std::vector<uint64_t>>{{"revoked", {5}}});
  auto ids = wire::decode_revoked(answer.bytes.data(), answer.bytes.size());
  REQUIRE(ids);
  CHECK(*ids == std::vector<uint64_t>{5});
  std::string dump = "Current thread 0x00007f (most recent call first):\n";
  CHECK_FALSE(wire::is_control_message(dump.data(), dump.size()));
  CHECK_FALSE(wire::decode_revoked(dump.data(), dump.size()));
  auto other = pack(std::map<std::string, int>{{"x", 1}});
  CHECK_FALSE(wire::decode_revoked(other.bytes.data(), other.bytes.size()));
}

TEST_CASE("a request frame carries the caller's deadline when given", "[unit][wire]") {
  std::vector<char> with;
  wire::append_request(with, 9, "echo", pack(1).bytes, "", 1234.5);
  auto h = msgpack::unpack(with.data() + 4, with.size() - 4);
  auto fields = h.get().as<std::map<std::string, msgpack::object>>();
  CHECK(fields.at("deadline").as<double>() == 1234.5);
  std::vector<char> without;
  wire::append_request(without, 9, "echo", pack(1).bytes, "");
  auto h2 = msgpack::unpack(without.data() + 4, without.size() - 4);
  CHECK(h2.get().as<std::map<std::string, msgpack::object>>().count("deadline") == 0);
}

TEST_CASE("streams: the window goes with the request, chunks and credit decode",
          "[unit][wire][stream]") {
  std::vector<char> req;
  wire::stream_window window{8, 1024};
  wire::append_request(req, 4, "tokens", pack(1).bytes, "", 0, &window);
  auto h = msgpack::unpack(req.data() + 4, req.size() - 4);
  auto fields = h.get().as<std::map<std::string, msgpack::object>>();
  CHECK(fields.at("stream").as<std::vector<uint64_t>>() == std::vector<uint64_t>{8, 1024});
  std::vector<char> plain;
  wire::append_request(plain, 4, "tokens", pack(1).bytes, "");
  auto h2 = msgpack::unpack(plain.data() + 4, plain.size() - 4);
  CHECK(h2.get().as<std::map<std::string, msgpack::object>>().count("stream") == 0);
  // A chunk: the value's bytes cut out as they are, its id read.
  std::vector<char> bytes;
  auto value = pack(std::vector<std::string>{"a", "b"});
  wire::append_chunk(bytes, 4, value.bytes);
  wire::frame_reader reader;
  std::vector<wire::frame> frames;
  REQUIRE(reader.feed(bytes.data(), bytes.size(),
                      [&](wire::frame&& f) { frames.push_back(std::move(f)); }));
  REQUIRE(frames.size() == 1);
  CHECK(frames[0].type == wire::frame_type::chunk);
  CHECK(frames[0].id == 4);
  CHECK(frames[0].result == value.bytes);
  // A chunk without an id, or with an ok, is no chunk.
  CHECK_FALSE(feed_error(frame_with_body({0x81, 0xa5, 'c', 'h', 'u', 'n', 'k', 0x01})).empty());
  CHECK_FALSE(feed_error(frame_with_body({0x83, 0xa2, 'i', 'd', 0x01, 0xa2, 'o', 'k', 0xc3, 0xa5,
                                          'c', 'h', 'u', 'n', 'k', 0x01}))
                .empty());
  // Credit, as the worker reads it.
  std::vector<char> credit;
  wire::append_credit(credit, 4, 17);
  auto c = wire::decode_control(credit.data(), credit.size());
  REQUIRE(c);
  CHECK(c->credit == 4);
  CHECK(c->taken == 17);
  CHECK(c->interrupt == 0);
}

TEST_CASE("a concurrent worker's started frames and interrupts of several requests",
          "[unit][wire][concurrency]") {
  std::vector<char> bytes;
  wire::append_started(bytes, 12);
  std::vector<wire::frame> frames;
  wire::frame_reader reader;
  REQUIRE(reader.feed(bytes.data(), bytes.size(),
                      [&](wire::frame&& f) { frames.push_back(std::move(f)); }));
  REQUIRE(frames.size() == 1);
  CHECK(frames[0].type == wire::frame_type::started);
  CHECK(frames[0].id == 12);
  std::vector<char> several;
  wire::append_control(several, {4, 5, 6}, std::vector<uint64_t>{4, 5, 6}, "timeout");
  auto c = wire::decode_control(several.data(), several.size());
  REQUIRE(c);
  CHECK(c->interrupts == std::vector<uint64_t>{4, 5, 6});
  CHECK(c->interrupt == 4);
  CHECK(c->reason == "timeout");
  // One id is still a number, as a sequential worker reads it.
  std::vector<char> one;
  wire::append_control(one, {}, std::vector<uint64_t>{7}, "cancelled");
  auto h = msgpack::unpack(one.data(), one.size());
  CHECK(h.get().as<std::map<std::string, msgpack::object>>().at("interrupt").type
        == msgpack::type::POSITIVE_INTEGER);
}
