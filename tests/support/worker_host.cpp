// pyvisor-test-worker-host: a minimal host process for "no Python process
// outlives its host" tests. It starts N workers, prints each worker's pid on
// its own line followed by "ready", then waits for a line on stdin:
// "exit" ends the process at once with _exit (no clean-up runs, as in a
// crash); EOF or anything else also ends it that way. Tests SIGKILL it too.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/scoped_actor.hpp"

#include "pyvisor/worker.hpp"
#include "pyvisor/registry.hpp"

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 2;
  caf::actor_system_config cfg;
  pyvisor::add_message_types(cfg);
  cfg.set("scheduler.max-threads", 2);
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  std::vector<pyvisor::worker_actor> workers;
  for (int i = 0; i < n; ++i) {
    pyvisor::worker_config wc;
    wc.id = static_cast<uint32_t>(i + 1);
    workers.push_back(pyvisor::spawn_python_worker(sys, wc));
  }
  for (auto& w : workers) {
    self->request(w, std::chrono::seconds(20), pyvisor::ready_atom::value)
      .receive([](const pyvisor::worker_status& st) { std::cout << st.pid << std::endl; },
               [](const caf::error&) { std::_Exit(2); });
  }
  std::cout << "ready" << std::endl;
  std::string line;
  std::getline(std::cin, line);
  _exit(0);
}
