// Unit tests of the named enums (messages/names.hpp): each name parses back,
// and records that hold them travel over msgpack with the names, which is
// what the RPC `stats` reply is.
#include "support/catch_caf.hpp"

#include "pyvisor/pool.hpp"
#include "pyvisor/supervisor.hpp"

using namespace pyvisor;

namespace {

template <class E>
void check_round_trip(size_t count, const std::vector<std::string>& names) {
  REQUIRE(names.size() == count);
  for (size_t i = 0; i < count; ++i) {
    auto x = static_cast<E>(i);
    CHECK(name_of(x) == names[i]);
    E parsed = static_cast<E>(count - 1 - i);
    CHECK(from_string(names[i], parsed));
    CHECK(parsed == x);
  }
  E untouched = static_cast<E>(0);
  CHECK_FALSE(from_string("no_such_name", untouched));
  CHECK(name_of(static_cast<E>(count)) == "invalid");
}

} // namespace

TEST_CASE("every state enum has names that parse back", "[unit][names]") {
  check_round_trip<worker_phase>(worker_phase_count,
                                 {"down", "starting", "ready", "draining", "stopping"});
  check_round_trip<pool_state>(pool_state_count, {"starting", "serving", "restarting", "stopping"});
  check_round_trip<child_state>(child_state_count,
                                {"running", "restarting", "stopping", "stopped"});
  check_round_trip<node_state>(node_state_count, {"connecting", "up", "unavailable", "lost"});
}

TEST_CASE("pool stats travel as a map of names, enums as their names", "[unit][names]") {
  pool_stats s;
  s.state = pool_state::serving;
  s.workers.push_back(worker_stats{1, 4242, worker_phase::draining, 2, 10, 1, 1700000000000});
  s.replies["ok"] = 10;
  s.latency_us = {50.5, 90.5, 99.5};
  s.capacity = 4;
  s.nodes.push_back(node_stats{"10.0.0.2:7410", node_state::lost, 0, 0, 7, 1});
  auto bytes = pack(s);
  auto handle = msgpack::unpack(bytes.bytes.data(), bytes.bytes.size());
  auto top = handle.get().as<std::map<std::string, msgpack::object>>();
  CHECK(top.size() == 17);
  CHECK(top.at("streams_open").as<uint64_t>() == 0);
  CHECK(top.at("capacity").as<uint64_t>() == 4);
  auto nodes = top.at("nodes").as<std::vector<std::map<std::string, msgpack::object>>>();
  REQUIRE(nodes.size() == 1);
  CHECK(nodes[0].at("peer").as<std::string>() == "10.0.0.2:7410");
  CHECK(nodes[0].at("state").as<std::string>() == "lost");
  CHECK(nodes[0].at("served").as<uint64_t>() == 7);
  CHECK(top.at("state").as<std::string>() == "serving");
  auto workers = top.at("workers").as<std::vector<std::map<std::string, msgpack::object>>>();
  REQUIRE(workers.size() == 1);
  CHECK(workers[0].at("state").as<std::string>() == "draining");
  CHECK(workers[0].at("pid").as<int64_t>() == 4242);
  CHECK(workers[0].at("started_at").as<int64_t>() == 1700000000000);
  auto latency = top.at("latency_us").as<std::map<std::string, double>>();
  CHECK(latency.at("p99") == 99.5);
  // And back, as a C++ client of the RPC reads it.
  auto back = unpack<pool_stats>(bytes);
  REQUIRE(back);
  CHECK(back->state == pool_state::serving);
  CHECK(back->workers.at(0).state == worker_phase::draining);
  CHECK(back->replies.at("ok") == 10);
  // A state name the reader does not know is an error, not a wrong value.
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_map(1);
  pk.pack(std::string{"state"});
  pk.pack(std::string{"exploded"});
  CHECK_FALSE(unpack<pool_stats>(payload{std::vector<char>(buf.data(), buf.data() + buf.size())}));
}
