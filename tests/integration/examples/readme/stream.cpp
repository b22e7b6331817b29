// Builds and runs the README's streaming fragment ("Streaming"): against a
// mock pool whose stand-in for "words.each" yields each word, the fragment's
// callback sees the words in order and the result is their count.
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/send.hpp>

#include <pyvisor/pool.hpp>

#include "stream.includes"

int main() {
  caf::actor_system_config cfg;
  pyvisor::add_pool_types(cfg);
  caf::actor_system sys{cfg};
  pyvisor::pool_config pc;
  pc.backend = pyvisor::backend_kind::mock;
  pc.size = 1;
  auto words = [](const pyvisor::payload& args) {
    auto m = pyvisor::unpack<std::map<std::string, std::string>>(args);
    std::vector<std::string> result;
    std::istringstream in{m ? (*m)["text"] : std::string{}};
    for (std::string w; in >> w;)
      result.push_back(w);
    return result;
  };
  pc.mock.commands["words.each"] = pyvisor::mock_command{
    [words](const pyvisor::payload& args, const std::string&) -> caf::expected<pyvisor::payload> {
      return pyvisor::pack(static_cast<int>(words(args).size()));
    },
    {},
    [words](const pyvisor::payload& args, const std::string&) {
      std::vector<pyvisor::payload> chunks;
      for (auto& w : words(args))
        chunks.push_back(pyvisor::pack(w));
      return chunks;
    }};
  auto pool = pyvisor::spawn_pool(sys, pc);
  std::map<std::string, std::string> args{{"text", "hello streaming world"}};
  {
#include "stream.body"
    caf::anon_send_exit(pool, caf::exit_reason::user_shutdown);
    return result && *pyvisor::unpack<int>(*result) == 3 ? 0 : 1;
  }
}
