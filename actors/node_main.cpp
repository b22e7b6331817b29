// pyvisor-node: the node binary.
//
// For now (issue 2) this is the minimal demo the README announces: it reads
// the configuration, starts `pool.size` Python workers concurrently, waits
// until each has said hello, pings each, logs the result, and then keeps the
// workers until SIGINT or SIGTERM, when it stops them and exits 0.

#include <signal.h>

#include <chrono>
#include <iostream>

#include <spdlog/spdlog.h>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/exec_main.hpp"
#include "caf/scoped_actor.hpp"
#include "caf/io/middleman.hpp"

#include "actors/worker.hpp"
#include "messages/log.hpp"
#include "messages/registry.hpp"

namespace {

struct node_config : caf::actor_system_config {
  size_t pool_size = 2;
  std::string python = "/usr/bin/python3";
  std::vector<std::string> modules;
  std::vector<std::string> python_path;
  caf::timespan startup_timeout = std::chrono::seconds(10);
  caf::timespan request_timeout = std::chrono::seconds(30);
  std::string log_level = "info";

  node_config() {
    pyvisor::add_message_types(*this);
    opt_group{custom_options_, "pool"}
      .add(pool_size, "size", "number of Python workers")
      .add(python, "python", "Python interpreter (needs the msgpack module)")
      .add(modules, "modules", "user modules every worker imports")
      .add(python_path, "python-path", "extra import paths for the workers")
      .add(startup_timeout, "startup-timeout", "time a worker may take to say hello")
      .add(request_timeout, "request-timeout", "default deadline of a request");
    opt_group{custom_options_, "log"}.add(log_level, "level",
                                          "trace, debug, info, warn, error or off");
  }
};

int wait_for_signal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

void caf_main(caf::actor_system& sys, const node_config& cfg) {
  pyvisor::log().set_level(spdlog::level::from_str(cfg.log_level));
  pyvisor::log().info("pyvisor-node (demo): starting {} workers with {}", cfg.pool_size, cfg.python);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<pyvisor::worker_actor> workers;
  for (size_t i = 0; i < cfg.pool_size; ++i) {
    pyvisor::worker_config wc;
    wc.id = static_cast<uint32_t>(i + 1);
    wc.python = cfg.python;
    wc.modules = cfg.modules;
    wc.python_path = cfg.python_path;
    wc.startup_timeout = cfg.startup_timeout;
    wc.request_timeout = cfg.request_timeout;
    workers.push_back(pyvisor::spawn_python_worker(sys, wc));
  }
  caf::scoped_actor self{sys};
  bool all_ok = true;
  for (auto& w : workers) {
    self->request(w, caf::infinite, pyvisor::ready_atom::value)
      .receive([&](const pyvisor::worker_status&) {},
               [&](const caf::error& err) {
                 all_ok = false;
                 pyvisor::log().error("worker failed to start: {}", sys.render(err));
               });
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
              std::chrono::steady_clock::now() - t0)
              .count();
  if (all_ok)
    pyvisor::log().info("all {} workers ready in {} ms", workers.size(), ms);
  for (auto& w : workers) {
    self->request(w, caf::infinite, pyvisor::make_execute("ping"))
      .receive(
        [&](const pyvisor::payload& reply) {
          auto pong = pyvisor::unpack<std::string>(reply);
          pyvisor::log().info("ping -> {}", pong ? *pong : "?");
        },
        [&](const caf::error& err) { pyvisor::log().error("ping failed: {}", sys.render(err)); });
  }
  pyvisor::log().info("pyvisor-node (demo) running; stop with Ctrl-C or SIGTERM");
  auto sig = wait_for_signal();
  pyvisor::log().info("received signal {}, stopping workers", sig);
  for (auto& w : workers)
    self->send_exit(w, caf::exit_reason::user_shutdown);
  for (auto& w : workers)
    self->wait_for(w);
  pyvisor::log().info("stopped");
}

} // namespace

int main(int argc, char** argv) {
  // Block the stop signals before CAF starts its threads so that only
  // sigwait in caf_main sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return caf::exec_main<caf::io::middleman>(caf_main, argc, argv);
}
