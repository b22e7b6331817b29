// Unit tests of the RPC message decoder the gateway runs on every message
// (node/rpc_request.hpp): verdicts, raw args, options and their limits.
#include "support/catch_caf.hpp"

#include <msgpack.hpp>

#include "node/rpc_request.hpp"

using namespace pyvisor;

namespace {

template <class... Ts>
std::string packed(const Ts&... xs) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_array(sizeof...(Ts));
  (pk.pack(xs), ...);
  return std::string{buf.data(), buf.size()};
}

rpc_message decode(const std::string& bytes) {
  return decode_rpc_message(bytes.data(), bytes.size());
}

using verdict = rpc_message::verdict;

} // namespace

TEST_CASE("well-formed requests decode into calls", "[unit][rpc]") {
  auto m = decode(packed(0, 7, std::string{"ping"}, std::vector<int>{}));
  CHECK(m.what == verdict::call);
  CHECK(m.msgid == 7);
  CHECK(m.method == "ping");
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_array(4);
  pk.pack(0);
  pk.pack(9);
  pk.pack(std::string{"execute"});
  pk.pack_array(3);
  pk.pack(std::string{"echo"});
  pk.pack(std::vector<int>{1, 2, 3});
  pk.pack_map(3);
  pk.pack(std::string{"session"});
  pk.pack(std::string{"s1"});
  pk.pack(std::string{"timeout_ms"});
  pk.pack(250);
  pk.pack(std::string{"idempotent"});
  pk.pack(true);
  auto e = decode_rpc_message(buf.data(), buf.size());
  REQUIRE(e.what == verdict::call);
  CHECK(e.request.command == "echo");
  CHECK(e.request.session == "s1");
  CHECK(e.request.timeout == std::chrono::milliseconds(250));
  CHECK(e.request.idempotent);
  // The args are the caller's bytes, untouched.
  auto args = packed(1, 2, 3);
  CHECK(std::string(e.request.args.bytes.begin(), e.request.args.bytes.end()) == args);
}

TEST_CASE("malformed messages get the right verdict", "[unit][rpc]") {
  CHECK(decode(packed(0)).what == verdict::close);
  CHECK(decode(std::string{"\xc1", 1}).what == verdict::close);
  CHECK(decode(packed(std::string{"x"}, 1, 2, 3)).what == verdict::close);
  auto r = decode(packed(1, 5, std::string{"ping"}, std::vector<int>{}));
  CHECK(r.what == verdict::reject);
  CHECK(r.msgid == 5);
  CHECK(decode(packed(0, 5, 42, std::vector<int>{})).what == verdict::reject);
  CHECK(decode(packed(0, 5, std::string{"execute"}, 3)).what == verdict::reject);
  CHECK(decode(packed(2, std::string{"execute"}, 3)).what == verdict::ignore);
  CHECK(decode(packed(2, 1)).what == verdict::ignore);
  // Truncated after a readable msgid: answered, not dropped.
  auto full = packed(0, 6, std::string{"execute"}, std::vector<std::string>{"echo", "abc"});
  auto t = decode(full.substr(0, full.size() - 2));
  CHECK(t.what == verdict::reject);
  CHECK(t.msgid == 6);
  CHECK(t.error.find("malformed") != std::string::npos);
}

TEST_CASE("execute options are checked, timeouts bounded", "[unit][rpc]") {
  auto with_opts = [](auto&& fill) {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk{buf};
    pk.pack_array(4);
    pk.pack(0);
    pk.pack(1);
    pk.pack(std::string{"execute"});
    pk.pack_array(3);
    pk.pack(std::string{"echo"});
    pk.pack_nil();
    fill(pk);
    return decode_rpc_message(buf.data(), buf.size());
  };
  auto timeout = [&](uint64_t ms) {
    return with_opts([ms](auto& pk) {
      pk.pack_map(1);
      pk.pack(std::string{"timeout_ms"});
      pk.pack(ms);
    });
  };
  CHECK(timeout(1).what == verdict::call);
  CHECK(timeout(30ull * 86400 * 1000).what == verdict::call);
  for (uint64_t ms : {0ull, 30ull * 86400 * 1000 + 1, (1ull << 63) / 1000000, ~0ull}) {
    auto m = timeout(ms);
    CAPTURE(ms);
    CHECK(m.what == verdict::reject);
  }
  CHECK(with_opts([](auto& pk) {
          pk.pack_map(1);
          pk.pack(std::string{"nonsense"});
          pk.pack(1);
        }).what
        == verdict::reject);
  CHECK(with_opts([](auto& pk) { pk.pack(3); }).what == verdict::reject);
}
