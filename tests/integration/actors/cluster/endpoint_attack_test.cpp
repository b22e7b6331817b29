// The attacks of issue #16, replayed against a real pyvisor-node that
// publishes its pool (--publish.port): a CAF program connects through the
// middleman, as anyone who reaches the port can, and tries to
// 1. set the session timeout to 1 ns (configure_atom),
// 2. register itself as a worker (child_up_atom) to receive other clients'
//    requests, and forge results by answering the node's own requests with
//    guessed response ids,
// 3. stop the pool with exit messages (kill, user_shutdown, anonymous).
// Each must be refused while a well-behaved client keeps getting correct
// results, sessions that do not expire, and a node that keeps serving.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "support/catch_caf.hpp"

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/event_based_actor.hpp"
#include "caf/io/middleman.hpp"
#include "caf/io/middleman_actor.hpp"
#include "caf/scoped_actor.hpp"
#include "caf/send.hpp"

#include "pyvisor/client_endpoint.hpp"

extern char** environ;

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

uint16_t free_port() {
  // Let the OS pick one: bind to port 0, read it back, close.
  auto fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// pyvisor-node with a mock pool publishing on a free port; killed (and
/// reaped) however the test ends.
struct node_process {
  pid_t pid = -1;
  uint16_t publish_port = free_port();
  std::string log_path = "/tmp/pyvisor-attack-" + std::to_string(::getpid()) + ".log";

  node_process() {
    std::vector<std::string> args{PYVISOR_NODE_PATH,
                                  "--config-file=/dev/null",
                                  "--pool.backend=mock",
                                  "--pool.size=2",
                                  "--rpc.port=0",
                                  "--publish.port=" + std::to_string(publish_port),
                                  "--log.file=" + log_path};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    REQUIRE(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&actions);
  }

  ~node_process() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    std::remove(log_path.c_str());
  }

  std::string log() const {
    std::ifstream in{log_path};
    std::stringstream out;
    out << in.rdbuf();
    return out.str();
  }

  bool running() {
    return ::waitpid(pid, nullptr, WNOHANG) == 0;
  }
};

struct attacker_config : caf::actor_system_config {
  attacker_config() {
    add_cluster_types(*this);
    load<caf::io::middleman>();
    set("logger.verbosity", caf::atom("quiet"));
  }
};

/// Connects to `port` the way any CAF program can, without type checks.
caf::actor connect(caf::actor_system& sys, uint16_t port) {
  caf::scoped_actor self{sys};
  caf::actor result;
  for (int attempt = 0; attempt < 100 && !result; ++attempt) {
    self->request(sys.middleman().actor_handle(), 5s, caf::connect_atom::value,
                  std::string{"127.0.0.1"}, port)
      .receive([&](caf::node_id&, caf::strong_actor_ptr& ptr,
                   std::set<std::string>&) { result = caf::actor_cast<caf::actor>(ptr); },
               [&](caf::error&) { std::this_thread::sleep_for(100ms); });
  }
  return result;
}

struct kv {
  std::string key;
  int value;
  MSGPACK_DEFINE_MAP(key, value);
};

caf::expected<payload> call(caf::scoped_actor& self, const caf::actor& node, execute x) {
  caf::expected<payload> result{caf::error{}};
  self->request(node, 5s, std::move(x))
    .receive([&](payload& p) { result = std::move(p); },
             [&](caf::error& err) { result = std::move(err); });
  return result;
}

} // namespace

TEST_CASE("a published node refuses the three attacks", "[integration][cluster][security]") {
  node_process node;
  attacker_config cfg;
  caf::actor_system sys{cfg};
  auto target = connect(sys, node.publish_port);
  REQUIRE(target);
  caf::scoped_actor client{sys};
  auto echo = [&](int i) {
    auto r = call(client, target, make_execute("echo", i));
    return r && unpack<int>(*r) == i;
  };
  REQUIRE(echo(0));
  auto put = make_execute("session.put", kv{"k", 1}, "victim");
  REQUIRE(call(client, target, put));

  SECTION("1. the session timeout cannot be set from outside") {
    caf::scoped_actor attacker{sys};
    bool refused = false;
    attacker->request(target, 10s, configure_atom::value, caf::timespan{1})
      .receive([](caf::timespan) {}, [&](caf::error& err) {
        refused = err == caf::sec::unexpected_message;
      });
    CHECK(refused);
    std::this_thread::sleep_for(50ms);
    // The session lives on (with a 1 ns timeout it would have expired).
    auto r = call(client, target, make_execute("session.keys", 0, "victim"));
    CHECK(r);
  }

  SECTION("2. nobody registers as a worker or forges a result") {
    std::atomic<int> stolen{0};
    auto thief = sys.spawn([&](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler([&](caf::scheduled_actor*, caf::message_view&) {
        ++stolen;
        return caf::result<caf::message>{caf::make_message(pack(std::string{"forged"}))};
      });
      return {[&](execute&) -> payload {
        ++stolen;
        return pack(std::string{"forged"});
      }};
    });
    caf::scoped_actor attacker{sys};
    for (auto id : {"1", "2", "3"})
      attacker->send(target, child_up_atom::value, std::string{id}, thief);
    // Answers to the requests the endpoint has in flight, by guessed ids:
    // its ids count from 1, and each request below stays in flight 50 ms
    // while every id up to 100 is answered every 10 ms.
    std::atomic<bool> forging{true};
    std::thread forger{[&] {
      auto dst = caf::actor_cast<caf::strong_actor_ptr>(target);
      while (forging) {
        for (uint64_t n = 1; forging && n <= 100; ++n)
          dst->enqueue(caf::make_mailbox_element(nullptr, caf::make_message_id(n).response_id(),
                                                 {}, pack(std::string{"forged"})),
                       nullptr);
        std::this_thread::sleep_for(10ms);
      }
    }};
    int genuine = 0;
    for (int i = 1; i <= 30; ++i) {
      auto r = call(client, target, make_execute("sleep", std::map<std::string, int>{{"ms", 50}}));
      // The mock's sleep answers nil; a forged answer is a string.
      genuine += r && !unpack<std::string>(*r) ? 1 : 0;
      genuine += echo(i) ? 1 : 0;
    }
    forging = false;
    forger.join();
    CHECK(genuine == 60);
    CHECK(stolen == 0);
    caf::anon_send_exit(thief, caf::exit_reason::kill);
  }

  SECTION("3. exit messages do not stop the pool, nor its endpoint") {
    caf::scoped_actor attacker{sys};
    attacker->send_exit(target, caf::exit_reason::kill);
    attacker->send_exit(target, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(target, caf::exit_reason::kill);
    // And an exit through a link: the attacker links and dies.
    auto linker = sys.spawn([=](caf::event_based_actor* self) {
      self->link_to(target);
      self->quit(caf::exit_reason::kill);
    });
    std::this_thread::sleep_for(300ms);
    CHECK(echo(1));
    CHECK(node.running());
    // Connecting again is served too.
    auto again = connect(sys, node.publish_port);
    REQUIRE(again);
    CHECK(call(client, again, make_execute("echo", 2)));
    CHECK(node.log().find("client endpoint: ignored an exit message") != std::string::npos);
  }
  CHECK(node.running());
  CHECK(echo(99));
}
