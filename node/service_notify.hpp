// The node's readiness protocol with systemd (Type=notify, sd_notify(3)).
//
// When the node runs under a service manager that set NOTIFY_SOCKET, it
// says READY=1 once the pool is ready and the RPC port listens (so that
// `systemctl start` returns when the node can serve, and units ordered
// after it start then), STOPPING=1 when it begins to shut down, and STATUS=
// lines with the pool's state (shown by `systemctl status`), refreshed
// every 5 s. With WatchdogSec= set (WATCHDOG_USEC), it sends WATCHDOG=1 at
// half that period, but only after the pool answered a status request in
// time: a node whose actor system is wedged stops petting the watchdog and
// is restarted by systemd. Without NOTIFY_SOCKET every call does nothing.
//
// Python workers never see NOTIFY_SOCKET (python_process removes it from
// their environment): only the node speaks for the service.

#pragma once

#include <string>

#include "caf/actor.hpp"
#include "caf/fwd.hpp"

#include "pyvisor/pool.hpp"

namespace pyvisor {

/// Talks to the service manager for the node's lifetime; does nothing
/// without NOTIFY_SOCKET.
class service_notifier {
public:
  /// Sends STATUS=`status` (start-up progress).
  void status(const std::string& status);

  /// Sends READY=1 with a first STATUS line and starts the actor that
  /// refreshes the status and pets the watchdog.
  void ready(caf::actor_system& sys, pool_actor pool, const std::string& status);

  /// Sends STOPPING=1 and `status`; stops the actor.
  void stopping(const std::string& status);

  /// Stops the actor (the actor system could not shut down while it ticks).
  ~service_notifier();

private:
  caf::actor actor_;
};

/// The STATUS= text for a pool's stats: state, ready workers, load.
std::string status_line(const pool_stats& st);

} // namespace pyvisor
