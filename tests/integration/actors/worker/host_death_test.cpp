// No Python process outlives its host: the host exits abruptly or is
// SIGKILLed, and every worker pid it announced disappears.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "support/python_fixture.hpp"

extern char** environ;

namespace {

struct host_process {
  pid_t pid = -1;
  FILE* out = nullptr;
  int in_fd = -1;
  std::vector<pid_t> workers;

  explicit host_process(int n) {
    int to_host[2];
    int from_host[2];
    REQUIRE(pipe(to_host) == 0);
    REQUIRE(pipe(from_host) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to_host[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from_host[1], 1);
    posix_spawn_file_actions_addclose(&fa, to_host[1]);
    posix_spawn_file_actions_addclose(&fa, from_host[0]);
    auto count = std::to_string(n);
    char* argv[] = {const_cast<char*>(PYVISOR_TEST_WORKER_HOST), count.data(), nullptr};
    REQUIRE(posix_spawn(&pid, argv[0], &fa, nullptr, argv, environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    close(to_host[0]);
    close(from_host[1]);
    in_fd = to_host[1];
    out = fdopen(from_host[0], "r");
    char line[64];
    while (fgets(line, sizeof(line), out) != nullptr) {
      std::string s{line};
      if (s.rfind("ready", 0) == 0)
        break;
      workers.push_back(static_cast<pid_t>(std::stol(s)));
    }
  }

  void wait() {
    int st;
    waitpid(pid, &st, 0);
    pid = -1;
  }

  ~host_process() {
    // Clean up even when an assertion failed midway.
    if (pid > 0) {
      kill(pid, SIGKILL);
      wait();
    }
    for (auto w : workers)
      if (pyvisor::test::process_alive(w))
        kill(w, SIGKILL);
    if (out)
      fclose(out);
    if (in_fd >= 0)
      close(in_fd);
  }
};

} // namespace

TEST_CASE("no worker survives a SIGKILLed host", "[integration][host]") {
  host_process host{3};
  REQUIRE(host.workers.size() == 3);
  for (auto w : host.workers)
    REQUIRE(pyvisor::test::process_alive(w));
  kill(host.pid, SIGKILL);
  host.wait();
  for (auto w : host.workers)
    CHECK(pyvisor::test::wait_gone(w));
}

TEST_CASE("no worker survives a host that exits without cleaning up", "[integration][host]") {
  host_process host{2};
  REQUIRE(host.workers.size() == 2);
  REQUIRE(write(host.in_fd, "exit\n", 5) == 5);
  host.wait();
  for (auto w : host.workers)
    CHECK(pyvisor::test::wait_gone(w));
}
