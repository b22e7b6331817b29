// Example 2: a CAF application using the pools of running pyvisor-nodes
// through CAF's middleman (start each node with --publish.port=PORT).
//
//   remote_pool HOST:PORT [HOST:PORT ...]
//
// The only difference from a local pool is the spawn call: spawn_cluster
// instead of spawn_pool. The handle is the same pool_actor, dispatching over
// every node that is up (README, "Several machines"). With TLS, load
// caf::openssl::manager and set openssl.certificate/key/cafile.
#include <iostream>
#include <string>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/io/middleman.hpp"
#include "caf/scoped_actor.hpp"

#include <pyvisor/client_endpoint.hpp>
#include <pyvisor/cluster.hpp>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: remote_pool HOST:PORT [HOST:PORT ...]\n";
    return 2;
  }
  caf::actor_system_config cfg;
  pyvisor::add_cluster_types(cfg); // the same type names as the nodes
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  pyvisor::cluster_config cc;
  for (int i = 1; i < argc; ++i)
    cc.peers.emplace_back(argv[i]);
  auto pool = pyvisor::spawn_cluster(sys, cc);
  caf::scoped_actor self{sys};
  int rc = 0;
  // Answered once every node was tried: an error if none could be reached.
  self->request(pool, caf::infinite, pyvisor::ready_atom::value)
    .receive([](pyvisor::pool_stats& st) { std::cout << st.nodes.size() << " nodes, "; },
             [&](caf::error& err) {
               std::cerr << "cannot reach the nodes: " << pyvisor::to_string_readable(err) << "\n";
               rc = 1;
             });
  if (rc == 0) {
    self->request(pool, caf::infinite, pyvisor::make_execute("echo", std::string{"hi"}))
      .receive(
        [&](pyvisor::payload& p) {
          std::cout << "echo -> " << *pyvisor::unpack<std::string>(p) << "\n";
        },
        [&](caf::error& err) {
          std::cerr << "echo failed: " << pyvisor::to_string_readable(err) << "\n";
          rc = 1;
        });
    self->request(pool, caf::infinite, pyvisor::status_atom::value)
      .receive([](pyvisor::pool_stats& st) { std::cout << st.workers.size() << " remote workers\n"; },
               [&](caf::error& err) {
                 std::cerr << "stats failed: " << sys.render(err) << "\n";
                 rc = 1;
               });
  }
  self->send_exit(pool, caf::exit_reason::user_shutdown);
  return rc;
}
