// Unit tests of the inbox where workers' I/O threads leave their done
// reports for the pool core (actors/worker/completion_inbox.hpp): nothing
// is lost, and a wake-up message is asked for exactly when the core has
// work waiting on a report and is not already being woken.
#include <catch2/catch.hpp>

#include "actors/worker/completion_inbox.hpp"

using namespace pyvisor;

namespace {

completion report(uint64_t worker, std::string command) {
  return completion{worker, 0, 1000, "", std::move(command)};
}

} // namespace

TEST_CASE("an inbox keeps every report, oldest first, and asks for no wake-up unless wanted",
          "[unit][inbox]") {
  completion_inbox inbox;
  CHECK_FALSE(inbox.post(report(1, "a")));
  CHECK_FALSE(inbox.post(report(2, "b")));
  auto taken = inbox.take();
  REQUIRE(taken.size() == 2);
  CHECK(taken[0].command == "a");
  CHECK(taken[1].worker == 2);
  CHECK(inbox.take().empty());
}

TEST_CASE("a wanted report asks for one wake-up until the inbox is taken", "[unit][inbox]") {
  completion_inbox inbox;
  CHECK_FALSE(inbox.wake_when_posted(true)); // nothing waiting yet
  CHECK(inbox.post(report(1, "a")));         // the first one wakes
  CHECK_FALSE(inbox.post(report(1, "b")));   // already being woken
  CHECK(inbox.take().size() == 2);
  CHECK(inbox.post(report(1, "c"))); // taken since: wakes again
  SECTION("reports that came while not wanted are owed a wake-up once wanted") {
    inbox.take();
    CHECK_FALSE(inbox.wake_when_posted(false));
    CHECK_FALSE(inbox.post(report(1, "d")));
    CHECK(inbox.wake_when_posted(true));
    CHECK_FALSE(inbox.wake_when_posted(true)); // asked for once
    CHECK(inbox.take().size() == 1);
  }
}
