// Builds and runs the README's logging fragment ("Logs" under "Using pyvisor
// from your CAF application"): the application's own "pyvisor" logger,
// registered before the pool is spawned, is the one pyvisor writes to.
#include <cstdio>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/send.hpp>

#include <pyvisor/pool.hpp>

#include "logs.includes"

int main() {
  caf::actor_system_config cfg;
  pyvisor::add_pool_types(cfg);
  caf::actor_system sys{cfg};
  pyvisor::pool_config pc;
  pc.backend = pyvisor::backend_kind::mock;
  pc.size = 1;
  std::shared_ptr<spdlog::logger> mine;
  {
#include "logs.body"
    mine = logger;
    caf::anon_send_exit(pool, caf::exit_reason::user_shutdown);
  }
  if (spdlog::get("pyvisor") != mine || mine->level() != spdlog::level::warn) {
    std::fprintf(stderr, "logs: pyvisor's logger is not the application's\n");
    return 1;
  }
  if (std::FILE* f = std::fopen("logs/pyvisor.log", "r")) {
    std::fclose(f);
    std::puts("logs: pyvisor logs to the application's logs/pyvisor.log");
    return 0;
  }
  std::fprintf(stderr, "logs: logs/pyvisor.log was not created\n");
  return 1;
}
