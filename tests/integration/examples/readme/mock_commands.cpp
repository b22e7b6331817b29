// Builds and runs the README's mock-command fragment: the stand-in it
// registers for a Python command answers through a mock pool, and its
// error path answers bad_request.
#include <iostream>
#include <sstream>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

#include <pyvisor/pool.hpp>

#include "mock_commands.includes"

using namespace std::chrono_literals;

// What the README's fragment leaves to the reader's application.
static int count_words(const std::string& text) {
  std::istringstream in{text};
  int n = 0;
  for (std::string w; in >> w;)
    ++n;
  return n;
}

int main() {
  caf::actor_system_config cfg;
  pyvisor::add_pool_types(cfg);
  caf::actor_system sys{cfg};
#include "mock_commands.body"
  pc.size = 1;
  auto pool = pyvisor::spawn_pool(sys, pc);
  caf::scoped_actor self{sys};
  int rc = 0;
  self->request(pool, caf::infinite, pyvisor::make_execute("wc.feed", std::string{"one two three"}))
    .receive(
      [&](pyvisor::payload& p) {
        auto n = pyvisor::unpack<int>(p);
        std::cout << "mock_commands: wc.feed -> " << (n ? *n : -1) << "\n";
        rc = n && *n == 3 ? 0 : 1;
      },
      [&](caf::error& e) {
        std::cerr << "mock_commands: " << pyvisor::to_string_readable(e) << "\n";
        rc = 1;
      });
  self->request(pool, caf::infinite, pyvisor::make_execute("wc.feed", 42))
    .receive([&](pyvisor::payload&) { rc = 1; },
             [&](caf::error& e) {
               std::cout << "mock_commands: wc.feed(42) -> " << pyvisor::to_string_readable(e) << "\n";
               if (pyvisor::code_of(e) != pyvisor::error_code::bad_request)
                 rc = 1;
             });
  self->send_exit(pool, caf::exit_reason::user_shutdown);
  return rc;
}
