// Unit tests of fork_channel (actors/fork_server/fork_server.hpp): what a
// worker's fork gets while no template is attached, after a template failed,
// once the pool stops, or when the worker gives up waiting. No Python: the
// channel decides these without a template.
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <thread>

#include "support/catch_caf.hpp"

#include "actors/fork_server/fork_server.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

std::optional<launched_child> fork_from(fork_channel& ch, std::chrono::milliseconds wait,
                                        wire::remote_error& error,
                                        std::function<bool()> cancelled = {}) {
  std::shared_ptr<fork_server> from;
  return ch.fork(child_fds{}, std::chrono::steady_clock::now() + wait, cancelled, from, error);
}

} // namespace

TEST_CASE("a fork fails with the error the template could not start with",
          "[unit][fork_server]") {
  fork_channel ch;
  wire::remote_error why{"", "ImportError", "importing user module 'x' failed", "Traceback..."};
  ch.fail(why);
  wire::remote_error error;
  auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(fork_from(ch, 10s, error));
  CHECK(std::chrono::steady_clock::now() - t0 < 5s); // at once, not at the deadline
  CHECK(error.type == "ImportError");
  CHECK(error.message == why.message);
  CHECK(error.traceback == why.traceback);
}

TEST_CASE("a fork waits for a template until its deadline", "[unit][fork_server]") {
  fork_channel ch;
  wire::remote_error error;
  CHECK_FALSE(fork_from(ch, 30ms, error));
  CHECK(error.code == "timeout");
}

TEST_CASE("a waiting fork ends when the pool stops or the worker gives up",
          "[unit][fork_server]") {
  fork_channel ch;
  wire::remote_error error;
  std::thread stopper{[&] {
    std::this_thread::sleep_for(20ms);
    ch.close();
  }};
  CHECK_FALSE(fork_from(ch, 60s, error));
  stopper.join();
  CHECK(error.code == "shutting_down");
  fork_channel other;
  wire::remote_error cancelled;
  CHECK_FALSE(fork_from(other, 60s, cancelled, [] { return true; }));
  CHECK(cancelled.code == "worker_crashed");
}

TEST_CASE("a detached template's workers are reported killed with it", "[unit][fork_server]") {
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  ::close(sv[1]);
  fork_server server{sv[0]};
  CHECK_FALSE(server.exit_of(4242)); // not known yet
  server.exited(4242, exit_status{7, 0});
  auto st = server.exit_of(4242);
  REQUIRE(st);
  CHECK(st->code == 7);
  CHECK_FALSE(server.exit_of(4242)); // handed out once
  server.gone();
  auto killed = server.exit_of(4343);
  REQUIRE(killed);
  CHECK(killed->signal == SIGKILL);
  // And a fork on a template that is gone fails instead of hanging.
  std::string why;
  CHECK_FALSE(server.fork(child_fds{0, 0, 0, 0}, 1s, why));
  CHECK_FALSE(why.empty());
}
