// Shared set-up of integration tests that run real Python workers.
//
// The fixture owns an actor system with a real scheduler and every worker a
// test spawns through it; its destructor kills them (also when an assertion
// failed), so no Python process outlives a test.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/catch_caf.hpp"

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/scoped_actor.hpp"
#include "caf/send.hpp"

#include "actors/process/python_process.hpp"
#include "pyvisor/worker.hpp"
#include "pyvisor/registry.hpp"

namespace pyvisor::test {

/// True while `pid` names a process that is not a zombie.
inline bool process_alive(pid_t pid) {
  auto state = process_state(pid);
  return state != 0 && state != 'Z' && state != 'X';
}

/// Polls until `pid` is gone or `limit` passed; returns whether it is gone.
inline bool wait_gone(pid_t pid, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (process_alive(pid)) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

/// Pids of this process's children whose command line contains `needle`
/// (zombies excluded).
inline std::vector<pid_t> children_matching(const std::string& needle) {
  std::vector<pid_t> result;
  auto self = getpid();
  for (const auto& entry : std::filesystem::directory_iterator{"/proc"}) {
    auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    std::ifstream stat{entry.path() / "stat"};
    std::string line;
    if (!std::getline(stat, line))
      continue;
    auto close = line.rfind(')');
    if (close == std::string::npos)
      continue;
    std::istringstream rest{line.substr(close + 2)};
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid != self || state == 'Z')
      continue;
    std::ifstream cmd{entry.path() / "cmdline"};
    std::string cmdline{std::istreambuf_iterator<char>{cmd}, std::istreambuf_iterator<char>{}};
    if (cmdline.find(needle) != std::string::npos)
      result.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return result;
}

struct system_config : caf::actor_system_config {
  system_config() {
    pyvisor::add_message_types(*this);
    set("scheduler.max-threads", 2);
    set("logger.verbosity", caf::atom("quiet"));
  }
};

struct python_fixture {
  system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  std::vector<worker_actor> spawned;

  /// A worker configuration with the test modules loaded.
  static worker_config test_worker_config(uint32_t id = 1) {
    worker_config wc;
    wc.id = id;
    wc.python_path = {PYVISOR_TEST_PYTHON_DIR};
    wc.modules = {"pyvisor.testing", "sample_commands"};
    wc.startup_timeout = std::chrono::seconds(10);
    return wc;
  }

  worker_actor spawn(worker_config wc) {
    auto w = spawn_python_worker(sys, std::move(wc));
    spawned.push_back(w);
    return w;
  }

  /// Spawns a worker and waits until it is ready.
  std::pair<worker_actor, worker_status> spawn_ready(worker_config wc = test_worker_config()) {
    auto w = spawn(std::move(wc));
    auto st = ready(w);
    REQUIRE(st);
    return {w, *st};
  }

  caf::expected<worker_status> ready(const worker_actor& w) {
    caf::expected<worker_status> result{caf::error{}};
    self->request(w, std::chrono::seconds(20), ready_atom::value)
      .receive([&](worker_status& st) { result = std::move(st); },
               [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  caf::expected<payload> call(const worker_actor& w, execute req,
                              std::chrono::seconds limit = std::chrono::seconds(20)) {
    caf::expected<payload> result{caf::error{}};
    self->request(w, limit, std::move(req))
      .receive([&](payload& p) { result = std::move(p); },
               [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  /// Waits for the worker to terminate and returns its exit reason.
  caf::error exit_reason_of(const worker_actor& w) {
    caf::error reason;
    self->monitor(w);
    self->receive([&](caf::down_msg& dm) { reason = dm.reason; },
                  caf::after(std::chrono::seconds(20)) >> [&] { FAIL("worker did not exit"); });
    return reason;
  }

  ~python_fixture() {
    for (auto& w : spawned)
      caf::anon_send_exit(w, caf::exit_reason::kill);
    spawned.clear();
  }
};

} // namespace pyvisor::test
