// Example 1: a supervised pool of Python workers inside your own CAF
// application, calling your own Python commands (examples/python/
// my_commands.py) with a session whose state lives in one worker.
//
//   embedded_pool [path-to-examples/python]
#include <iostream>
#include <map>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/exit_reason.hpp"
#include "caf/scoped_actor.hpp"

#include <pyvisor/pool.hpp>

int main(int argc, char** argv) {
  caf::actor_system_config cfg;
  pyvisor::add_pool_types(cfg);
  pyvisor::use_sharing_scheduler(cfg);
  caf::actor_system sys{cfg};
  pyvisor::pool_config pc;
  pc.size = 2;
  pc.worker.modules = {"my_commands"};
  pc.worker.python_path = {argc > 1 ? argv[1] : EXAMPLES_PYTHON_DIR};
  auto pool = pyvisor::spawn_pool(sys, pc);
  caf::scoped_actor self{sys};
  int rc = 0;
  self->request(pool, std::chrono::seconds(30), pyvisor::ready_atom::value)
    .receive([](pyvisor::pool_stats& st) { std::cout << st.workers.size() << " workers ready\n"; },
             [&](caf::error& err) {
               std::cerr << "pool failed: " << sys.render(err) << "\n";
               rc = 1;
             });
  using text = std::map<std::string, std::string>;
  for (auto line : {"the quick brown fox", "the lazy dog", "the end"}) {
    self->request(pool, std::chrono::seconds(10),
                  pyvisor::make_execute("words.add", text{{"text", line}}, "my-session"))
      .receive(
        [](pyvisor::payload& p) { std::cout << "words so far: " << *pyvisor::unpack<int>(p) << "\n"; },
        [&](caf::error& err) {
          std::cerr << "words.add failed: " << pyvisor::to_string_readable(err) << "\n";
          rc = 1;
        });
  }
  self->request(pool, std::chrono::seconds(10),
                pyvisor::make_execute("words.top", std::map<std::string, int>{{"n", 1}}, "my-session"))
    .receive(
      [&](pyvisor::payload& p) {
        auto top = pyvisor::unpack<std::vector<std::pair<std::string, int>>>(p);
        if (top && !top->empty() && top->front().first == "the" && top->front().second == 3) {
          std::cout << "top word: the (3)\n";
        } else {
          std::cerr << "unexpected top words\n";
          rc = 1;
        }
      },
      [&](caf::error& err) {
        std::cerr << "words.top failed: " << pyvisor::to_string_readable(err) << "\n";
        rc = 1;
      });
  self->send_exit(pool, caf::exit_reason::user_shutdown);
  self->wait_for(pool);
  return rc;
}
