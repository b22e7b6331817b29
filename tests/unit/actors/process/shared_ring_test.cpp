// Unit tests of the shared ring (actors/process/shared_ring.hpp) and of the
// frames that name its bytes: one process plays both sides, the consumer's
// tail written through the mapping as a worker writes it.
#include <cstring>
#include <string>
#include <vector>

#include "support/catch_caf.hpp"

#include "actors/process/shared_ring.hpp"
#include "messages/wire_codec.hpp"

using namespace pyvisor;

namespace {

std::unique_ptr<shared_ring> make_ring(size_t capacity) {
  std::string error;
  auto ring = shared_ring::create(capacity, "pyvisor-test", error);
  REQUIRE(ring != nullptr);
  return ring;
}

std::vector<char> bytes(size_t n, char seed) {
  std::vector<char> out(n);
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<char>(seed + i * 7);
  return out;
}

// Producer and consumer of the same ring: what goes in comes out.
void put(shared_ring& ring, int64_t pos, const std::vector<char>& x) {
  REQUIRE(pos >= 0);
  std::memcpy(ring.data(static_cast<uint64_t>(pos)), x.data(), x.size());
}

} // namespace

TEST_CASE("a ring hands values over in order and is freed as they are read",
          "[unit][shared]") {
  auto ring = make_ring(64 << 10);
  REQUIRE(ring->capacity() == (64 << 10));
  auto a = bytes(40 << 10, 1);
  auto b = bytes(20 << 10, 2);
  auto pa = ring->reserve(a.size());
  put(*ring, pa, a);
  auto pb = ring->reserve(b.size());
  put(*ring, pb, b);
  // Full: 60 KiB held of 64.
  CHECK(ring->reserve(8 << 10) == -1);
  CHECK(ring->held() == (60 << 10));
  std::vector<char> out;
  REQUIRE(ring->take(static_cast<uint64_t>(pa), a.size(), out));
  CHECK(out == a);
  // A value never wraps: 30 KiB does not fit before the end, so it starts at
  // the front, which reading `a` freed.
  auto c = bytes(30 << 10, 3);
  auto pc = ring->reserve(c.size());
  REQUIRE(pc >= 0);
  CHECK(static_cast<uint64_t>(pc) % ring->capacity() == 0);
  put(*ring, pc, c);
  REQUIRE(ring->take(static_cast<uint64_t>(pb), b.size(), out));
  CHECK(out == b);
  REQUIRE(ring->take(static_cast<uint64_t>(pc), c.size(), out));
  CHECK(out == c);
  CHECK(ring->held() == 0);
  // Empty, it takes a value as large as itself wherever its position is.
  auto whole = bytes(64 << 10, 4);
  auto pw = ring->reserve(whole.size());
  put(*ring, pw, whole);
  REQUIRE(ring->take(static_cast<uint64_t>(pw), whole.size(), out));
  CHECK(out == whole);
  CHECK(ring->reserve((64 << 10) + 1) == -1);
  CHECK(ring->reserve(0) == -1);
}

TEST_CASE("a consumer that names bytes it cannot have been given gets nothing",
          "[unit][shared]") {
  auto ring = make_ring(64 << 10);
  std::vector<char> out{'k'};
  auto cap = ring->capacity();
  CHECK_FALSE(ring->take(cap - 8, 64, out));           // wraps the end
  CHECK_FALSE(ring->take(0, cap + 1, out));            // larger than the ring
  CHECK_FALSE(ring->take(uint64_t{1} << 63, 8, out));  // absurd position
  REQUIRE(ring->take(4096, 16, out));
  CHECK_FALSE(ring->take(0, 16, out)); // before what it read already
  CHECK(out.size() == 16);
}

TEST_CASE("a tail that moves back or past what was reserved ends the ring's use",
          "[unit][shared]") {
  auto ring = make_ring(64 << 10);
  REQUIRE(ring->reserve(1024) == 0);
  // What a hostile worker could write into the header: a tail beyond the
  // producer's head. The ring is never used again (values go by pipe).
  auto tail = reinterpret_cast<uint64_t*>(ring->data(0) - shared_ring::header_size);
  *tail = 1 << 20;
  CHECK(ring->reserve(16) == -1);
  *tail = 1024;
  CHECK(ring->reserve(16) == -1);
}

TEST_CASE("frames name shared values instead of carrying them", "[unit][shared][codec]") {
  std::vector<char> args{'\x93', 1, 2, 3};
  wire::shared_ref ref{123456, 4};
  std::vector<char> frame;
  wire::append_request(frame, 9, "echo", args, "", 0, nullptr, &ref);
  // The args' bytes are not in the frame; its "shm" names them.
  std::string body(frame.begin() + 4, frame.end());
  CHECK(body.find(std::string{args.begin(), args.end()}) == std::string::npos);
  auto h = msgpack::unpack(body.data(), body.size());
  auto m = h.get().as<std::map<std::string, msgpack::object>>();
  CHECK(m.at("shm").as<std::vector<uint64_t>>() == std::vector<uint64_t>{123456, 4});
  CHECK(m.at("args").is_nil());
  // A worker's reply and chunk that point into its ring.
  for (auto kind : {"result", "chunk"}) {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk{buf};
    bool reply = std::string{kind} == "result";
    pk.pack_map(reply ? 4 : 3);
    pk.pack("id");
    pk.pack(5);
    if (reply) {
      pk.pack("ok");
      pk.pack(true);
    }
    pk.pack(kind);
    pk.pack_nil();
    pk.pack("shm");
    pk.pack(std::vector<uint64_t>{4096, 70000});
    wire::frame f;
    REQUIRE(wire::decode(buf.data(), buf.size(), f).empty());
    CHECK(f.shared);
    CHECK(f.shared_pos == 4096);
    CHECK(f.shared_len == 70000);
    CHECK(f.type == (reply ? wire::frame_type::reply : wire::frame_type::chunk));
  }
  // Only a value may be shared: an error reply that names shared bytes is
  // a protocol error.
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_map(3);
  pk.pack("id");
  pk.pack(5);
  pk.pack("ok");
  pk.pack(false);
  pk.pack("shm");
  pk.pack(std::vector<uint64_t>{0, 8});
  wire::frame f;
  CHECK_FALSE(wire::decode(buf.data(), buf.size(), f).empty());
  // The hello says whether the worker mapped its rings.
  msgpack::sbuffer hello;
  msgpack::packer<msgpack::sbuffer> hp{hello};
  hp.pack_map(2);
  hp.pack("hello");
  hp.pack(true);
  hp.pack("shm");
  hp.pack(true);
  wire::frame hf;
  REQUIRE(wire::decode(hello.data(), hello.size(), hf).empty());
  CHECK(hf.shared_memory);
}
