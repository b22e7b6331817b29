#include "messages/error_code.hpp"

#include <array>

#include "caf/message.hpp"
#include "caf/sec.hpp"

namespace pyvisor {

namespace {

constexpr std::array<std::string_view, 11> names{{
  "none", "bad_request", "unknown_command", "python_error", "worker_crashed",
  "timeout", "session_expired", "session_lost", "overloaded", "shutting_down",
  "protocol_error",
}};

} // namespace

std::string_view name_of(error_code x) noexcept {
  auto i = static_cast<size_t>(x);
  return i < names.size() ? names[i] : std::string_view{"invalid"};
}

bool from_string(std::string_view name, error_code& x) noexcept {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) {
      x = static_cast<error_code>(i);
      return true;
    }
  return false;
}

std::string to_string(error_code x) {
  return std::string{name_of(x)};
}

caf::error make_error(error_code x) {
  return caf::error{static_cast<uint8_t>(x), error_category};
}

caf::error make_error(error_code x, std::string message) {
  return caf::error{static_cast<uint8_t>(x), error_category,
                    caf::make_message(std::move(message))};
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
  // out inside CAF; map them so that callers deal with one vocabulary only.
  result.message = caf::to_string(err);
  if (err.category() == caf::atom("system")) {
    switch (static_cast<caf::sec>(err.code())) {
      case caf::sec::request_timeout:
        result.code = error_code::timeout;
        return result;
      case caf::sec::request_receiver_down:
        result.code = error_code::worker_crashed;
        return result;
      default:
        break;
    }
  }
  result.code = error_code::protocol_error;
  return result;
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
  if (!info.python_type.empty()) {
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
