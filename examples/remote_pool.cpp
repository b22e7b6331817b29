// Example 2: a CAF application using the pool of a running pyvisor-node
// through CAF's middleman (start the node with --publish.port=PORT).
//
//   remote_pool HOST PORT
#include <iostream>
#include <string>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/io/middleman.hpp"
#include "caf/scoped_actor.hpp"

#include <pyvisor/pool.hpp>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: remote_pool HOST PORT\n";
    return 2;
  }
  caf::actor_system_config cfg;
  pyvisor::add_pool_types(cfg); // the same type names as the node
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto pool = sys.middleman().remote_actor<pyvisor::pool_actor>(
    argv[1], static_cast<uint16_t>(std::stoi(argv[2])));
  if (!pool) {
    std::cerr << "cannot reach the node: " << sys.render(pool.error()) << "\n";
    return 1;
  }
  caf::scoped_actor self{sys};
  int rc = 0;
  self->request(*pool, std::chrono::seconds(10), pyvisor::make_execute("echo", std::string{"hi"}))
    .receive(
      [&](pyvisor::payload& p) { std::cout << "echo -> " << *pyvisor::unpack<std::string>(p) << "\n"; },
      [&](caf::error& err) {
        std::cerr << "echo failed: " << pyvisor::to_string_readable(err) << "\n";
        rc = 1;
      });
  self->request(*pool, std::chrono::seconds(10), pyvisor::status_atom::value)
    .receive([](pyvisor::pool_stats& st) { std::cout << st.workers.size() << " remote workers\n"; },
             [&](caf::error& err) {
               std::cerr << "stats failed: " << sys.render(err) << "\n";
               rc = 1;
             });
  return rc;
}
