// The single place that makes pyvisor's messages known to an actor system.
//
// Call add_message_types(cfg) on every actor_system_config that runs pyvisor
// actors or talks to them remotely; both ends of a remote connection must
// register the same names. It also registers the "pyvisor" error category, so
// that actor_system::render(err) prints e.g. "pyvisor: timeout (...)".

#pragma once

namespace caf {
class actor_system_config;
} // namespace caf

namespace pyvisor {

void add_message_types(caf::actor_system_config& cfg);

} // namespace pyvisor
