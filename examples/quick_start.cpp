// The README's C++ example, as written there (CI compiles and runs this
// file and checks that the README shows it unchanged).
#include <iostream>
#include <map>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

#include <pyvisor/pool.hpp>

int main(int argc, char** argv) {
  caf::actor_system_config cfg;
  pyvisor::add_pool_types(cfg);                  // message types, error category
  pyvisor::use_sharing_scheduler(cfg);           // the node's scheduler: lower latency
  caf::actor_system sys{cfg};
  pyvisor::pool_config pc;
  pc.size = 2;
  pc.worker.modules = {"my_commands"};           // examples/python/my_commands.py
  pc.worker.python_path = {argc > 1 ? argv[1] : "examples/python"};
  auto pool = pyvisor::spawn_pool(sys, pc);      // typed: pyvisor::pool_actor; stays
                                                 // valid across pool restarts
  caf::scoped_actor self{sys};
  std::map<std::string, std::string> args{{"text", "hello pyvisor"}};
  int rc = 1;
  // No timeout of the caller's own: the pool answers every request by its
  // deadline (pool_config::request_timeout, or the execute's timeout), and a
  // caller timeout costs CAF's clock thread a wake-up per request.
  self->request(pool, caf::infinite, pyvisor::make_execute("words.add", args, "my-session"))
    .receive(
      [&](pyvisor::payload& p) {
        std::cout << "words: " << *pyvisor::unpack<int>(p) << "\n";
        rc = 0;
      },
      [&](caf::error& e) {
        // pyvisor::code_of(e) is a pyvisor::error_code: python_error,
        // timeout, overloaded, unavailable (the pool restarts: retry later) ...
        std::cerr << pyvisor::to_string_readable(e) << "\n";
      });
  self->send_exit(pool, caf::exit_reason::user_shutdown);
  return rc;
}
