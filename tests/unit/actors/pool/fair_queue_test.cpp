// Unit tests of the pool's queue (actors/pool/fair_queue.hpp): what it keeps
// per session stays bounded however many distinct session ids pass through
// it (issue #26: a million refused ids held 362 MB for good).
#include "support/catch_caf.hpp"

#include <string>

#include "actors/pool/fair_queue.hpp"

using namespace pyvisor;

namespace {

queued_ptr session_request(const std::string& id) {
  auto q = std::make_shared<queued>();
  q->req.command = "ping";
  q->req.session = id;
  return q;
}

} // namespace

TEST_CASE("session tails are forgotten once nothing waits", "[unit][pool][queue]") {
  fair_queue queue{16, 0.5};
  // Routed at once (the queue is empty), whether the affinity then accepts
  // or refuses them: nothing of theirs waits.
  for (int i = 0; i < 10000; ++i)
    queue.place(*session_request("s" + std::to_string(i)), false);
  CHECK(queue.session_tails() == 1);
}

TEST_CASE("a session's later request keeps its place behind the earlier one",
          "[unit][pool][queue]") {
  fair_queue queue{16, 0.5};
  auto first = session_request("a");
  first->key = queue.place(*first, false);
  queue.push(first);
  auto second = session_request("a");
  second->key = queue.place(*second, false);
  CHECK(first->key < second->key);
  queue.push(second);
  // While requests wait, a tail ahead of the first waiting request stays
  // (a later request of that session must not overtake it); the sweep
  // prunes the rest, and once nothing waits they all go.
  for (int i = 0; i < 1000; ++i)
    queue.place(*session_request("x" + std::to_string(i)), false);
  queue.prune_session_tails();
  CHECK(queue.session_tails() == 1001);
  queue.take(queue.begin());
  queue.take(queue.begin());
  REQUIRE(queue.empty());
  queue.place(*session_request("y"), false);
  CHECK(queue.session_tails() == 1);
}

TEST_CASE("the bytes waiting have a budget: the first request always waits",
          "[unit][pool][queue]") {
  fair_queue queue{100, 1.0, 1000};
  auto big = [] {
    auto q = std::make_shared<queued>();
    q->req.command = "echo";
    q->req.args.bytes.assign(600, 'x');
    return q;
  };
  auto first = big();
  CHECK_FALSE(queue.refusal(first->requester, 600)); // alone: taken whatever its size
  first->key = queue.place(*first, false);
  queue.push(first);
  CHECK(queue.bytes() == 600);
  auto second = big();
  auto err = queue.refusal(second->requester, 600);
  REQUIRE(err);
  CHECK(code_of(err) == error_code::overloaded);
  CHECK(info_of(err).message.find("pool.max-queued-bytes") != std::string::npos);
  queue.take(queue.begin());
  CHECK(queue.bytes() == 0);
  CHECK_FALSE(queue.refusal(second->requester, 600));
}
