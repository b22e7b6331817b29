// Integration tests of the worker actor against real Python processes.
#include <signal.h>

#include <map>

#include "support/python_fixture.hpp"

#include "actors/fork_server/template_actor.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;
using test::python_fixture;

namespace {

struct sample {
  msgpack::type::nil_t nothing;
  bool yes = true;
  bool no = false;
  int64_t negative = -123456789012345;
  uint64_t big = 18446744073709551615ull;
  double pi = 3.14159;
  std::string unicode = "gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x90\x8d";
  std::vector<char> binary{'\0', '\x7f', '\x80', '\xff'};
  std::map<std::string, std::vector<int>> nested{{"a", {1, -2, 3}}, {"b", {}}};
  MSGPACK_DEFINE_MAP(nothing, yes, no, negative, big, pi, unicode, binary, nested);
};

} // namespace

TEST_CASE_METHOD(python_fixture, "a worker says hello and answers ping",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  CHECK(st.pid > 0);
  CHECK(st.phase == worker_phase::ready);
  CHECK(st.python.rfind("3.", 0) == 0);
  CHECK(std::find(st.commands.begin(), st.commands.end(), "ping") != st.commands.end());
  auto reply = call(w, make_execute("ping"));
  REQUIRE(reply);
  CHECK(*unpack<std::string>(*reply) == "pong");
}

TEST_CASE_METHOD(python_fixture, "echo returns nested values unchanged",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  sample s;
  auto args = pack(s);
  auto reply = call(w, make_execute("echo", s));
  REQUIRE(reply);
  CHECK(reply->bytes == args.bytes);
  auto back = unpack<sample>(*reply);
  REQUIRE(back);
  CHECK(back->negative == s.negative);
  CHECK(back->big == s.big);
  CHECK(back->unicode == s.unicode);
  CHECK(back->binary == s.binary);
  CHECK(back->nested == s.nested);
  CHECK(back->pi == s.pi);
  SECTION("a 1 MiB binary passes through") {
    std::vector<char> big(1 << 20, 'x');
    auto r = call(w, make_execute("echo", big));
    REQUIRE(r);
    CHECK(*unpack<std::vector<char>>(*r) == big);
  }
}

TEST_CASE_METHOD(python_fixture, "a Python exception is a python_error and the worker serves on",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  auto r = call(w, make_execute("divide", std::map<std::string, int>{{"a", 1}, {"b", 0}}));
  REQUIRE_FALSE(r);
  auto info = info_of(r.error());
  CHECK(info.code == error_code::python_error);
  CHECK(info.python_type == "ZeroDivisionError");
  CHECK(info.message.find("division by zero") != std::string::npos);
  CHECK(info.traceback.find("sample_commands.py") != std::string::npos);
  auto ok = call(w, make_execute("divide", std::map<std::string, int>{{"a", 6}, {"b", 3}}));
  REQUIRE(ok);
  CHECK(*unpack<double>(*ok) == 2.0);
}

TEST_CASE_METHOD(python_fixture, "an unknown command and bad arguments get typed errors",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  auto r = call(w, make_execute("no.such.command"));
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::unknown_command);
  CHECK(info_of(r.error()).message.find("no.such.command") != std::string::npos);
  auto bad = call(w, make_execute("session.get", std::map<std::string, int>{{"key", 1}}));
  REQUIRE_FALSE(bad);
  CHECK(code_of(bad.error()) == error_code::bad_request); // no session given
  execute garbage_args;
  garbage_args.command = "echo";
  garbage_args.args = payload{std::vector<char>{'\xc1'}};
  auto g = call(w, garbage_args);
  REQUIRE_FALSE(g);
  CHECK(code_of(g.error()) == error_code::bad_request);
  CHECK(call(w, make_execute("ping"))); // still serving
}

TEST_CASE_METHOD(python_fixture, "session state lives in the worker, per session",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  using kv = std::map<std::string, std::string>;
  REQUIRE(call(w, make_execute("session.put", kv{{"key", "k"}, {"value", "v1"}}, "s1")));
  REQUIRE(call(w, make_execute("session.put", kv{{"key", "k"}, {"value", "v2"}}, "s2")));
  CHECK(*unpack<std::string>(*call(w, make_execute("session.get", kv{{"key", "k"}}, "s1"))) == "v1");
  CHECK(*unpack<std::string>(*call(w, make_execute("session.get", kv{{"key", "k"}}, "s2"))) == "v2");
  CHECK((*unpack<std::vector<std::string>>(*call(w, make_execute("session.keys", msgpack::type::nil_t{}, "s1"))))
        == std::vector<std::string>{"k"});
  auto info = *unpack<std::map<std::string, msgpack::object>>(
    *call(w, make_execute("worker.info")));
  // The map's objects point into the reply; re-unpack each field while alive.
  auto reply = *call(w, make_execute("worker.info"));
  auto handle = msgpack::unpack(reply.bytes.data(), reply.bytes.size());
  auto fields = handle.get().as<std::map<std::string, msgpack::object>>();
  CHECK(fields.at("sessions").as<int>() == 2);
  CHECK(fields.at("pid").as<int64_t>() == st.pid);
  CHECK(fields.at("rss").as<int64_t>() > 1000000);
  caf::anon_send(w, drop_session_atom::value, std::string{"s1"});
  auto after = call(w, make_execute("session.get", kv{{"key", "k"}}, "s1"));
  REQUIRE(after);
  CHECK(after->is_nil());
  (void) info;
}

TEST_CASE_METHOD(python_fixture, "SIGKILL fails every in-flight request with worker_crashed fast",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  std::vector<caf::error> errors;
  auto req = make_execute("sleep", std::map<std::string, int>{{"ms", 5000}});
  // Plain sends: a blocking actor cannot hold several requests open, and the
  // replies come back as ordinary messages.
  for (int i = 0; i < 3; ++i)
    self->send(w, req);
  // Make sure the first request reached Python before the kill.
  std::this_thread::sleep_for(100ms);
  auto t0 = std::chrono::steady_clock::now();
  ::kill(static_cast<pid_t>(st.pid), SIGKILL);
  for (int i = 0; i < 3; ++i)
    self->receive([](payload&) { FAIL("sleep must not complete"); },
                  [&](caf::error& err) { errors.push_back(err); },
                  caf::after(5s) >> [] { FAIL("no reply after SIGKILL"); });
  auto elapsed = std::chrono::steady_clock::now() - t0;
  REQUIRE(errors.size() == 3);
  for (auto& err : errors) {
    CHECK(code_of(err) == error_code::worker_crashed);
    CHECK(info_of(err).message.find("signal 9") != std::string::npos);
  }
  CHECK(elapsed < 1s);
  CHECK(code_of(exit_reason_of(w)) == error_code::worker_crashed);
}

TEST_CASE_METHOD(python_fixture, "a stopped worker times out and is recycled",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  auto pid = static_cast<pid_t>(st.pid);
  ::kill(pid, SIGSTOP);
  auto req = make_execute("ping");
  req.timeout = 300ms;
  auto r = call(w, req);
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::timeout);
  CHECK(code_of(exit_reason_of(w)) == error_code::timeout);
  CHECK(test::wait_gone(pid));
}

TEST_CASE_METHOD(python_fixture, "a garbage frame is a protocol_error and stops the worker",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  auto r = call(w, make_execute("garbage"));
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::protocol_error);
  CHECK(code_of(exit_reason_of(w)) == error_code::protocol_error);
  CHECK(test::wait_gone(static_cast<pid_t>(st.pid)));
}

TEST_CASE_METHOD(python_fixture, "print() in user code goes to the log, not into the protocol",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  for (int i = 0; i < 20; ++i) {
    auto r = call(w, make_execute("shout", std::string{"hey"}));
    REQUIRE(r);
    CHECK(*unpack<std::string>(*r) == "HEY");
  }
}

TEST_CASE_METHOD(python_fixture, "a user module that fails to import reports its traceback",
                 "[integration][worker]") {
  auto wc = test_worker_config();
  wc.modules = {"broken_module"};
  auto w = spawn(wc);
  auto st = ready(w);
  REQUIRE_FALSE(st);
  auto info = info_of(st.error());
  CHECK(info.code == error_code::python_error);
  CHECK(info.message.find("broken_module") != std::string::npos);
  CHECK(info.traceback.find("broken on purpose") != std::string::npos);
  CHECK(code_of(exit_reason_of(w)) == error_code::python_error);
}

TEST_CASE_METHOD(python_fixture, "an interpreter without msgpack fails fast with the fix",
                 "[integration][worker]") {
  auto wc = test_worker_config();
  wc.python = PYVISOR_TEST_PYTHON_DIR "/python-without-msgpack";
  auto t0 = std::chrono::steady_clock::now();
  auto w = spawn(wc);
  auto st = ready(w);
  REQUIRE_FALSE(st);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  auto msg = info_of(st.error()).message;
  CHECK(msg.find("python-without-msgpack") != std::string::npos);
  CHECK(msg.find("python3-msgpack") != std::string::npos);
}

TEST_CASE_METHOD(python_fixture, "a missing interpreter fails with a clear error",
                 "[integration][worker]") {
  auto wc = test_worker_config();
  wc.python = "/nonexistent/python3";
  auto w = spawn(wc);
  auto reason = exit_reason_of(w);
  CHECK(code_of(reason) == error_code::worker_crashed);
  CHECK(info_of(reason).message.find("/nonexistent/python3") != std::string::npos);
}

TEST_CASE_METHOD(python_fixture, "a graceful stop answers queued requests first",
                 "[integration][worker]") {
  auto [w, st] = spawn_ready();
  int done = 0;
  for (int i = 0; i < 3; ++i)
    self->send(w, make_execute("sleep", std::map<std::string, int>{{"ms", 50}}));
  self->send_exit(w, caf::exit_reason::user_shutdown);
  for (int i = 0; i < 3; ++i)
    self->receive([&](payload&) { ++done; },
                  [&](caf::error& err) { FAIL(to_string_readable(err)); },
                  caf::after(5s) >> [] { FAIL("no reply during graceful stop"); });
  CHECK(done == 3);
  CHECK(exit_reason_of(w) == caf::exit_reason::user_shutdown);
  CHECK(test::wait_gone(static_cast<pid_t>(st.pid)));
}

TEST_CASE_METHOD(python_fixture, "a worker forked from a template serves like a spawned one",
                 "[integration][worker][fork_server]") {
  auto channel = std::make_shared<fork_channel>();
  auto tmpl = spawn_template(sys, test_worker_config(), channel);
  auto wc = test_worker_config();
  wc.fork_from = channel;
  // Sent before the worker exists (its template is still importing): kept
  // and answered once it is forked, not dropped.
  auto w = spawn(wc);
  auto early = call(w, make_execute("echo", 41));
  REQUIRE(early);
  CHECK(*unpack<int>(*early) == 41);
  caf::scoped_actor self{sys};
  worker_status st;
  self->request(w, 10s, status_atom::value).receive([&](worker_status& x) { st = x; },
                                                     [](caf::error&) {});
  CHECK(st.pid > 0);
  CHECK(st.phase == worker_phase::ready);
  CHECK(getpgid(static_cast<pid_t>(st.pid)) == st.pid);
  // Its death is reported with the status the template saw.
  self->monitor(w);
  kill(static_cast<pid_t>(st.pid), SIGKILL);
  caf::error reason;
  self->receive([&](caf::down_msg& dm) { reason = dm.reason; }, caf::after(10s) >> [] {});
  CHECK(code_of(reason) == error_code::worker_crashed);
  CHECK(info_of(reason).message.find("killed by signal 9") != std::string::npos);
  caf::anon_send_exit(tmpl, caf::exit_reason::user_shutdown);
}
