// pyvisor::decode_rpc_message: one MessagePack-RPC message, decoded into
// what the gateway must do with it. Pure (no actors, no I/O, never throws),
// so that the RPC input the network sends can be tested and fuzzed on its
// own (tests/fuzz/).
//
// Verdicts:
// - close:   not a message anyone can be answered for (no readable msgid);
//            the gateway closes the connection.
// - ignore:  a malformed notification: nobody to answer.
// - reject:  a request with a readable msgid that is malformed or misuses a
//            method: answer `bad_request` with `error`.
// - call:    a well-formed request or notification of `method` (ping,
//            execute, cancel, session.end, stats, auth, or any other name, which the
//            gateway answers with unknown_method).
// Command arguments are cut out as raw bytes, never decoded.

#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "pyvisor/execute.hpp"

namespace pyvisor {

struct rpc_message {
  enum class verdict : uint8_t { close, ignore, reject, call };
  verdict what = verdict::close;
  bool notification = false;
  uint32_t msgid = 0;
  /// Why (close, reject).
  std::string error;
  std::string method;
  /// method == "execute": the request to run.
  execute request;
  /// method == "session.end": the session.
  std::string session_id;
  /// method == "cancel": the msgid of the request to cancel.
  uint32_t cancel_id = 0;
  /// method == "auth": the token the client gave (a secret: never logged).
  std::string token;
};

/// Decodes the complete message [data, data + size).
rpc_message decode_rpc_message(const char* data, size_t size) noexcept;

/// The msgid of a request that begins with [data, data + size), whatever
/// follows (missing, too large, invalid): none unless the bytes start as
/// [0, msgid, ...]. Lets the gateway answer a message it cannot take whole.
std::optional<uint32_t> read_msgid(const char* data, size_t size) noexcept;

} // namespace pyvisor
