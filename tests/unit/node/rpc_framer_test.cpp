// Unit tests of the gateway's input framing (node/rpc_framer.hpp): the
// messages found never depend on how the stream was cut, limits come from
// the configuration only, and failures say what happened.
#include "support/catch_caf.hpp"

#include <random>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "node/rpc_framer.hpp"
#include "node/rpc_request.hpp"

using namespace pyvisor;

namespace {

using status = rpc_framer::status;

std::string request(uint32_t msgid, const std::string& method, const std::vector<int>& arg) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_array(4);
  pk.pack(0);
  pk.pack(msgid);
  pk.pack(method);
  pk.pack_array(2);
  pk.pack(std::string{"echo"});
  pk.pack(arg);
  return std::string{buf.data(), buf.size()};
}

struct outcome {
  std::vector<std::string> messages;
  status last = status::need_more;
  std::string error;
};

/// Feeds `stream` in chunks of the given sizes (the rest in one piece).
outcome frame(const std::string& stream, const std::vector<size_t>& cuts, size_t max_size) {
  rpc_framer f{max_size};
  outcome out;
  size_t pos = 0;
  auto feed = [&](size_t n) {
    f.append(stream.data() + pos, n);
    pos += n;
    for (;;) {
      auto s = f.next();
      if (s == status::message) {
        out.messages.emplace_back(f.data(), f.size());
        continue;
      }
      out.last = s;
      out.error = f.error();
      return;
    }
  };
  for (auto n : cuts) {
    if (pos + n > stream.size() || out.last == status::too_large || out.last == status::malformed)
      break;
    feed(n);
  }
  if (pos < stream.size() && out.last == status::need_more)
    feed(stream.size() - pos);
  return out;
}

} // namespace

TEST_CASE("a header split after any byte frames the same messages", "[unit][rpc]") {
  auto stream = request(1, "ping", {}) + request(2, "execute", {1, 2, 3}) + request(3, "stats", {});
  auto whole = frame(stream, {}, 1 << 20);
  REQUIRE(whole.messages.size() == 3);
  CHECK(whole.last == status::need_more);
  for (size_t cut = 1; cut < stream.size(); ++cut) {
    INFO("cut after byte " << cut);
    CHECK(frame(stream, {cut}, 1 << 20).messages == whole.messages);
  }
  CHECK(frame(stream, std::vector<size_t>(stream.size(), 1), 1 << 20).messages
        == whole.messages);
}

TEST_CASE("an array whose count exceeds the first read is not refused", "[unit][rpc]") {
  // 200 000 integers, ~900 KB: the first read holds a tiny part of it.
  std::vector<int> big(200000);
  for (size_t i = 0; i < big.size(); ++i)
    big[i] = static_cast<int>(i * 7);
  auto msg = request(5, "execute", big);
  std::mt19937 rng{42};
  std::vector<size_t> cuts{3, 10};
  for (size_t n = 13; n < msg.size(); n += cuts.back())
    cuts.push_back(1 + rng() % 70000);
  auto out = frame(msg, cuts, 64 << 20);
  REQUIRE(out.messages.size() == 1);
  CHECK(out.messages[0] == msg);
  CHECK(out.last == status::need_more);
  auto m = decode_rpc_message(out.messages[0].data(), out.messages[0].size());
  CHECK(m.what == rpc_message::verdict::call);
  CHECK(m.msgid == 5);
}

TEST_CASE("random cuts of a pipelined stream frame the same messages", "[unit][rpc]") {
  std::string stream;
  for (uint32_t i = 0; i < 50; ++i)
    stream += request(i, "execute", std::vector<int>(i * 40, static_cast<int>(i)));
  auto whole = frame(stream, {}, 1 << 20);
  REQUIRE(whole.messages.size() == 50);
  std::mt19937 rng{7};
  for (int round = 0; round < 20; ++round) {
    std::vector<size_t> cuts;
    for (size_t n = 0; n < stream.size(); n += cuts.back())
      cuts.push_back(1 + rng() % 300);
    CHECK(frame(stream, cuts, 1 << 20).messages == whole.messages);
  }
}

TEST_CASE("a message over the limit is too large, however it arrives", "[unit][rpc]") {
  auto msg = request(9, "execute", std::vector<int>(5000, 300)); // ~15 KB
  auto limit = msg.size() - 1;
  auto whole = frame(msg, {}, limit);
  CHECK(whole.last == status::too_large);
  CHECK_THAT(whole.error, Catch::Contains("rpc.max-message-size"));
  auto pieces = frame(msg, std::vector<size_t>(msg.size() / 100, 100), limit);
  CHECK(pieces.last == status::too_large);
  CHECK(pieces.messages.empty());
  // Exactly at the limit is fine.
  CHECK(frame(msg, {}, msg.size()).messages.size() == 1);
  // The msgid of the refused message is still readable from its beginning.
  rpc_framer f{limit};
  f.append(msg.data(), msg.size());
  REQUIRE(f.next() == status::too_large);
  auto id = read_msgid(f.pending_data(), f.buffered());
  REQUIRE(id.has_value());
  CHECK(*id == 9);
}

TEST_CASE("a container declaring more elements than the limit holds is too large at once",
          "[unit][rpc]") {
  // An array32 header claiming 10^9 elements, followed by nothing.
  std::string bytes{"\x94\x00\x01\xa4ping\xdd\x3b\x9a\xca\x00", 13};
  rpc_framer f{1 << 20};
  f.append(bytes.data(), bytes.size());
  CHECK(f.next() == status::too_large);
  CHECK_THAT(f.error(), Catch::Contains("1000000000 elements"));
}

TEST_CASE("bytes that are not msgpack and deep nesting are malformed", "[unit][rpc]") {
  auto ok = request(1, "ping", {});
  auto out = frame(ok + "\xc1", {}, 1 << 20);
  CHECK(out.messages.size() == 1);
  CHECK(out.last == status::malformed);
  CHECK_THAT(out.error, Catch::Contains("not msgpack"));
  std::string deep(100000, '\x91');
  auto nested = frame(deep, {}, 1 << 20);
  CHECK(nested.last == status::malformed);
  CHECK_THAT(nested.error, Catch::Contains("deeper than 512"));
}

TEST_CASE("the framer holds only what is unfinished", "[unit][rpc]") {
  auto a = request(1, "ping", {});
  auto b = request(2, "execute", std::vector<int>(1000, 1));
  rpc_framer f{1 << 20};
  auto both = a + b;
  f.append(both.data(), a.size() + 10);
  REQUIRE(f.next() == status::message);
  CHECK(f.next() == status::need_more);
  CHECK(f.in_message());
  CHECK(f.buffered() == 10);
  f.append(both.data() + a.size() + 10, b.size() - 10);
  REQUIRE(f.next() == status::message);
  CHECK(std::string(f.data(), f.size()) == b);
  CHECK(f.next() == status::need_more);
  CHECK_FALSE(f.in_message());
  CHECK(f.buffered() == 0);
}
