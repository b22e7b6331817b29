// Builds the README's cluster fragment ("Several machines", "From C++"):
// given a configuration and a local pool's settings, the fragment spawns a
// cluster front over two peers (not reachable from here) and a pool of this
// process. Compiled only: its peers are addresses of the README's, not here.
#include <caf/actor_system_config.hpp>
#include <caf/send.hpp>

#include "cluster.includes"

int main() {
  caf::actor_system_config cfg;
  pyvisor::pool_config local;
  local.backend = pyvisor::backend_kind::mock;
  local.size = 1;
  {
#include "cluster.body"
    caf::anon_send_exit(pool, caf::exit_reason::user_shutdown);
  }
  return 0;
}
