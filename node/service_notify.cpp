#include "node/service_notify.hpp"

#include <algorithm>
#include <cstdlib>

#include <systemd/sd-daemon.h>

#include "caf/actor_system.hpp"
#include "caf/event_based_actor.hpp"
#include "caf/send.hpp"

#include "messages/log.hpp"

namespace pyvisor {

namespace {

using tick_atom = caf::atom_constant<caf::atom("sd_tick")>;

/// STATUS= lines are refreshed this often (or at the watchdog's pace, if faster).
constexpr auto status_period = std::chrono::seconds(5);

void notify(const std::string& state) {
  if (int rc = sd_notify(0, state.c_str()); rc < 0)
    log().warn("sd_notify failed ({}): {}", -rc, state);
}

caf::behavior notifier(caf::event_based_actor* self, pool_actor pool, caf::timespan period,
                       bool watchdog) {
  self->send(self, tick_atom::value);
  return {
    [=](tick_atom) {
      self->delayed_send(self, period, tick_atom::value);
      // The answer must come within the period: a pool (or a scheduler)
      // that cannot answer in time gets no watchdog ping.
      self->request(pool, period, status_atom::value)
        .then(
          [=](pool_stats& st) {
            notify((watchdog ? "WATCHDOG=1\nSTATUS=" : "STATUS=") + status_line(st));
          },
          [=](caf::error& err) {
            log().warn("service status: the pool did not answer in time ({}){}",
                       to_string_readable(err), watchdog ? "; no watchdog ping" : "");
          });
    },
  };
}

bool managed() {
  return std::getenv("NOTIFY_SOCKET") != nullptr;
}

} // namespace

std::string status_line(const pool_stats& st) {
  return std::string{name_of(st.state)} + ": " + std::to_string(st.workers_in(worker_phase::ready))
         + "/" + std::to_string(st.workers.size()) + " workers ready, "
         + std::to_string(st.in_flight()) + " in flight, " + std::to_string(st.queue) + " queued";
}

void service_notifier::status(const std::string& status) {
  if (managed())
    notify("STATUS=" + status);
}

void service_notifier::ready(caf::actor_system& sys, pool_actor pool, const std::string& status) {
  if (!managed())
    return;
  notify("READY=1\nSTATUS=" + status);
  uint64_t usec = 0;
  bool watchdog = sd_watchdog_enabled(0, &usec) > 0 && usec > 0;
  caf::timespan period = status_period;
  if (watchdog) {
    period = std::min(period, caf::timespan{std::chrono::microseconds(usec / 2)});
    log().info("systemd watchdog: pinging every {} ms",
               std::chrono::duration_cast<std::chrono::milliseconds>(period).count());
  }
  actor_ = sys.spawn(notifier, std::move(pool), period, watchdog);
}

void service_notifier::stopping(const std::string& status) {
  if (actor_)
    caf::anon_send_exit(actor_, caf::exit_reason::user_shutdown);
  actor_ = nullptr;
  if (managed())
    notify("STOPPING=1\nSTATUS=" + status);
}

service_notifier::~service_notifier() {
  if (actor_)
    caf::anon_send_exit(actor_, caf::exit_reason::user_shutdown);
}

} // namespace pyvisor
