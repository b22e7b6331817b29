#include "pyvisor/registry.hpp"

#include "caf/actor_system_config.hpp"

#include "messages/worker_listener.hpp"
#include "pyvisor/worker_actor.hpp"

namespace pyvisor {

void add_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<payload>("pyvisor::payload");
  cfg.add_message_type<execute>("pyvisor::execute");
  cfg.add_message_type<worker_phase>("pyvisor::worker_phase");
  cfg.add_message_type<worker_status>("pyvisor::worker_status");
  cfg.add_message_type<worker_actor>("pyvisor::worker_actor");
  cfg.add_message_type<worker_listener_actor>("pyvisor::worker_listener_actor");
  cfg.add_error_category(error_category,
                         [](uint8_t code, caf::atom_value, const caf::message& ctx) {
                           auto err = caf::error{code, error_category, ctx};
                           return "pyvisor." + to_string_readable(err);
                         });
}

} // namespace pyvisor
