#include "pyvisor/error_code.hpp"

#include "caf/message.hpp"
#include "caf/sec.hpp"

namespace pyvisor {

caf::error make_error(error_code x) {
  return caf::error{static_cast<uint8_t>(x), error_category};
}

caf::error make_error(error_code x, std::string message) {
  return caf::error{static_cast<uint8_t>(x), error_category,
                    caf::make_message(std::move(message))};
}

caf::error session_lost_error(const std::string& session, const std::string& why) {
  return make_error(error_code::session_lost, "session '" + session + "' was lost: " + why);
}

caf::error make_error(error_code x, std::string message, std::string python_type,
                      std::string traceback) {
  return caf::error{static_cast<uint8_t>(x), error_category,
                    caf::make_message(std::move(message), std::move(python_type),
                                      std::move(traceback))};
}

error_info info_of(const caf::error& err) {
  error_info result;
  if (!err)
    return result;
  if (err.category() == error_category) {
    result.code = static_cast<error_code>(err.code());
    const auto& ctx = err.context();
    if (ctx.size() >= 1 && ctx.match_element<std::string>(0))
      result.message = ctx.get_as<std::string>(0);
    if (ctx.size() >= 3 && ctx.match_element<std::string>(1)
        && ctx.match_element<std::string>(2)) {
      result.python_type = ctx.get_as<std::string>(1);
      result.traceback = ctx.get_as<std::string>(2);
    }
    return result;
  }
  // CAF's own errors reach callers when an actor vanished or a request timed
  // out inside CAF; map them so that callers deal with one vocabulary only,
  // and say what happened in pyvisor's words: CAF's names (system_error(...))
  // mean nothing to a client.
  auto with = [&](error_code code, const char* text) {
    result.code = code;
    result.message = text;
    return result;
  };
  if (err.category() == caf::atom("system")) {
    switch (static_cast<caf::sec>(err.code())) {
      case caf::sec::request_timeout:
        return with(error_code::timeout, "no reply before the caller's timeout");
      case caf::sec::request_receiver_down:
        return with(error_code::unavailable,
                    "the actor serving this request is gone: no pool can serve it now; "
                    "retry later");
      case caf::sec::unexpected_message:
      case caf::sec::unexpected_response:
        return with(error_code::bad_request, "the receiver does not accept this message");
      case caf::sec::no_actor_published_at_port:
      case caf::sec::no_route_to_receiving_node:
      case caf::sec::cannot_forward_to_invalid_actor:
      case caf::sec::connection_timeout:
      case caf::sec::cannot_connect_to_node:
      case caf::sec::remote_linking_failed:
      case caf::sec::cannot_open_port:
      case caf::sec::disconnect_during_handshake:
        return with(error_code::unavailable, "the remote pool cannot be reached");
      default:
        break;
    }
  }
  if (err.category() == caf::atom("exit"))
    return with(error_code::unavailable, "the actor serving this request stopped");
  return with(error_code::protocol_error, "unexpected runtime error");
}

error_code code_of(const caf::error& err) {
  if (!err)
    return error_code::none;
  if (err.category() == error_category)
    return static_cast<error_code>(err.code());
  return info_of(err).code;
}

std::string to_string_readable(const caf::error& err) {
  if (!err)
    return "none";
  auto info = info_of(err);
  std::string result{name_of(info.code)};
  // A Python error's message already starts with its type ("KeyError: 'x'").
  if (!info.python_type.empty() && info.message.rfind(info.python_type + ": ", 0) != 0) {
    result += ": ";
    result += info.python_type;
  }
  if (!info.message.empty()) {
    result += ": ";
    result += info.message;
  }
  return result;
}

} // namespace pyvisor
