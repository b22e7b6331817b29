// pyvisor::supervisor: an OTP-style supervisor for any CAF actors.
//
// What it is: an event-based actor that starts children from child specs,
// watches them with monitors (never links: `exit_reason::kill` would otherwise
// spread to the supervisor), and restarts them according to a strategy,
// their restart type, a restart intensity and a back-off policy. It knows
// nothing of Python; the worker pool is just one user.
//
// Semantics (as OTP's supervisor; the deviations are marked below: proven
// children, back-off, and shutdown of simple_one_for_one children):
// - Exit kinds: normal (empty reason or exit_reason::normal), shutdown
//   (exit_reason::user_shutdown), killed (exit_reason::kill), abnormal
//   (anything else, e.g. an exception = sec::runtime_error, a pyvisor error).
// - Restart types: permanent children are always restarted, transient ones
//   only after killed / abnormal exits, temporary ones never (and forgotten).
// - Strategies: one_for_one restarts the child alone; one_for_all stops all
//   other children (reverse start order) and restarts all; rest_for_one stops
//   and restarts the children started after it; simple_one_for_one has no
//   static children, only dynamic ones of one template spec (start_child /
//   terminate_child at run time), each restarted alone.
// - Intensity: more than `max_restarts` restarts within `period` make the
//   supervisor stop all children (reverse start order) and quit with
//   supervisor_error::max_restart_intensity, which its own supervisor sees as
//   an abnormal exit (escalation). Supervisors nest as ordinary children.
// - Proven children (a deviation from OTP, opt-in): intensity exists to stop
//   restarting what restarting does not fix. Whoever owns a child may tell
//   the supervisor that the child's current incarnation proved itself
//   (child_healthy_atom: it came up and did real work, or its owner is about
//   to stop it on purpose). That incarnation's exit then does not count
//   toward intensity, and it is restarted at once with its back-off reset:
//   its last restart fixed it. Without such a message, every restart counts,
//   as in OTP.
// - Back-off (beyond OTP, as gRPC does it): a child that dies within
//   `reset_after` of its start is crash-looping, and its restart waits
//   min(max, initial * multiplier^(n-1)) * (1 +- jitter), n = such deaths in
//   a row; a child that ran for `reset_after` or longer is restarted at once
//   and its count starts over. A zero initial delay never waits.
// - Shutdown (an exit message to the supervisor, or giving up): children stop
//   one by one in reverse start order, each with its shutdown spec
//   (brutal_kill, or user_shutdown then kill after the timeout); the dynamic
//   children of simple_one_for_one stop all at once, concurrently (as in
//   OTP), so a pool of N workers stops within one shutdown timeout; then the
//   supervisor quits. If the supervisor itself is killed, it still kills its
//   children on the way out.
// - Every start, exit (with reason), restart and give-up is logged and
//   counted; an optional observer is told of every child start and exit.
// Time comes from the actor clock, so CAF's test coordinator drives all of
// it deterministically.

#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "caf/actor.hpp"
#include "caf/error.hpp"
#include "caf/fwd.hpp"
#include "caf/meta/type_name.hpp"
#include "caf/replies_to.hpp"
#include "caf/timespan.hpp"
#include "caf/typed_actor.hpp"

#include "pyvisor/names.hpp"

namespace pyvisor {

enum class restart_type : uint8_t { permanent, transient, temporary };

enum class supervision_strategy : uint8_t {
  one_for_one,
  one_for_all,
  rest_for_one,
  simple_one_for_one,
};

/// The exit reasons a supervisor produces itself (category "supervisor").
enum class supervisor_error : uint8_t {
  none = 0,
  /// Too many restarts within the period; the supervisor gave up.
  max_restart_intensity,
  /// A child's start function returned no actor.
  start_failed,
  /// start_child on a supervisor that is not simple_one_for_one, or a
  /// duplicate / unknown child id.
  bad_child,
};

constexpr caf::atom_value supervisor_error_category = caf::atom("supervisor");

caf::error make_error(supervisor_error x, std::string message = {});

std::string to_string(supervisor_error x);
std::string to_string(restart_type x);
std::string to_string(supervision_strategy x);

/// How a child is stopped.
struct shutdown_spec {
  /// Kill at once (exit_reason::kill) instead of asking first.
  bool brutal_kill = false;
  /// With !brutal_kill: time between user_shutdown and kill.
  caf::timespan timeout = std::chrono::seconds(5);

  static shutdown_spec brutal() {
    return {true, caf::timespan{0}};
  }
  static shutdown_spec after(caf::timespan t) {
    return {false, t};
  }
};

/// Restart back-off, gRPC style. All-zero means "restart at once".
struct backoff_policy {
  caf::timespan initial = std::chrono::milliseconds(10);
  double multiplier = 2.0;
  caf::timespan max = std::chrono::seconds(2);
  /// Relative, 0..1: the delay is scaled by a factor in [1 - jitter, 1 + jitter].
  double jitter = 0.2;
  /// A child that ran this long before failing is restarted at once and its
  /// count starts over: it was not crash-looping, a healthy child died.
  caf::timespan reset_after = std::chrono::seconds(1);

  static backoff_policy none() {
    return {caf::timespan{0}, 1.0, caf::timespan{0}, 0.0, caf::timespan{0}};
  }

  /// The delay before restart number `n` (n >= 1) given `u` uniform in [-1, 1].
  caf::timespan delay(size_t n, double u) const;
};

/// Starts one child. `id` is the child's id (for dynamic children: the one
/// given to start_child). Must return a valid actor or an invalid handle on
/// failure (counted as an abnormal exit).
using start_function = std::function<caf::actor(caf::actor_system&, const std::string& id)>;

struct child_spec {
  std::string id;
  start_function start;
  restart_type restart = restart_type::permanent;
  shutdown_spec shutdown;
};

struct supervisor_flags {
  supervision_strategy strategy = supervision_strategy::one_for_one;
  /// Intensity: more than max_restarts within period -> give up.
  size_t max_restarts = 3;
  caf::timespan period = std::chrono::seconds(5);
  backoff_policy backoff;
  /// Seed of the jitter; the same seed gives the same delays.
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  /// Name in logs.
  std::string name = "supervisor";
  /// Optional: receives (child_up_atom, id, actor) and
  /// (child_down_atom, id, reason) for every start and exit.
  caf::actor observer;
};

/// Where a child is in its life cycle.
enum class child_state : uint8_t {
  running,
  /// Exited; it starts again after its back-off.
  restarting,
  /// Asked to stop; waiting for its exit (or its shutdown timeout).
  stopping,
  stopped,
  // Add new states above this line and their names to the table below.
};

constexpr size_t child_state_count = static_cast<size_t>(child_state::stopped) + 1;

template <>
struct enum_names<child_state> {
  static constexpr name_table<child_state, child_state_count> table{{{
    {child_state::running, "running"},
    {child_state::restarting, "restarting"},
    {child_state::stopping, "stopping"},
    {child_state::stopped, "stopped"},
  }}};
};

/// A row of which_children.
struct child_info {
  std::string id;
  /// Invalid while the child is restarting or stopped.
  caf::actor handle;
  child_state state = child_state::stopped;
  uint64_t restarts = 0;
  bool dynamic = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, child_info& x) {
  return f(caf::meta::type_name("pyvisor::child_info"), x.id, x.handle, x.state, x.restarts,
           x.dynamic);
}

/// count_children plus the supervisor's event counters.
struct supervisor_counts {
  uint64_t specs = 0;
  uint64_t active = 0;
  uint64_t restarting = 0;
  uint64_t starts = 0;
  uint64_t exits = 0;
  uint64_t restarts = 0;
  /// Restarts of proven incarnations (not counted toward intensity).
  uint64_t forgiven = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, supervisor_counts& x) {
  return f(caf::meta::type_name("pyvisor::supervisor_counts"), x.specs, x.active, x.restarting,
           x.starts, x.exits, x.restarts, x.forgiven);
}

using which_children_atom = caf::atom_constant<caf::atom("sv_which")>;
using count_children_atom = caf::atom_constant<caf::atom("sv_count")>;
using start_child_atom = caf::atom_constant<caf::atom("sv_start")>;
using terminate_child_atom = caf::atom_constant<caf::atom("sv_term")>;
using child_up_atom = caf::atom_constant<caf::atom("sv_up")>;
using child_down_atom = caf::atom_constant<caf::atom("sv_down")>;
using child_healthy_atom = caf::atom_constant<caf::atom("sv_healthy")>;

/// The supervisor's public interface.
using supervisor_actor = caf::typed_actor<
  caf::replies_to<which_children_atom>::with<std::vector<child_info>>,
  caf::replies_to<count_children_atom>::with<supervisor_counts>,
  /// simple_one_for_one only: starts a child of the template spec with this id.
  caf::replies_to<start_child_atom, std::string>::with<caf::actor>,
  /// Stops a child with its shutdown spec and forgets it; true when done.
  caf::replies_to<terminate_child_atom, std::string>::with<bool>,
  /// (id, handle): the child's incarnation `handle` proved itself; its exit
  /// will not count toward intensity (ignored if `handle` is no longer the
  /// child's current incarnation).
  caf::reacts_to<child_healthy_atom, std::string, caf::actor>>;

/// Spawns a supervisor. For simple_one_for_one, `children` holds exactly one
/// template spec (its id is ignored) and no child starts until start_child.
supervisor_actor spawn_supervisor(caf::actor_system& sys, supervisor_flags flags,
                                  std::vector<child_spec> children);

/// Registers the supervisor's message types and error category.
void add_supervisor_types(caf::actor_system_config& cfg);

} // namespace pyvisor
