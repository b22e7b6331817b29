#include "node/rpc_request.hpp"

#include <chrono>
#include <exception>

#include "messages/msgpack_cursor.hpp"

namespace pyvisor {

namespace {

// Reads the options map of execute into `req`; returns an error text.
std::string read_options(const msgpack::object& o, execute& req) {
  if (o.type == msgpack::type::NIL)
    return {};
  if (o.type != msgpack::type::MAP)
    return "options must be a map";
  for (const auto& kv : o.via.map) {
    if (kv.key.type != msgpack::type::STR)
      return "option names must be strings";
    auto key = kv.key.as<std::string>();
    const auto& v = kv.val;
    if (key == "session") {
      if (v.type == msgpack::type::NIL)
        continue;
      if (v.type != msgpack::type::STR)
        return "option 'session' must be a string";
      req.session = v.as<std::string>();
    } else if (key == "timeout_ms") {
      constexpr auto max_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                max_request_timeout)
                                .count();
      if (v.type != msgpack::type::POSITIVE_INTEGER || v.via.u64 == 0)
        return "option 'timeout_ms' must be a positive integer";
      if (v.via.u64 > static_cast<uint64_t>(max_ms))
        return "option 'timeout_ms' must be at most " + std::to_string(max_ms) + " (30 days)";
      req.timeout = std::chrono::milliseconds(v.via.u64);
    } else if (key == "idempotent") {
      if (v.type != msgpack::type::BOOLEAN)
        return "option 'idempotent' must be a boolean";
      req.idempotent = v.via.boolean;
    } else if (key == "stream") {
      if (v.type != msgpack::type::BOOLEAN)
        return "option 'stream' must be a boolean";
      req.stream = v.via.boolean;
    } else {
      return "unknown option '" + key + "' (known: session, timeout_ms, idempotent, stream)";
    }
  }
  return {};
}

void decode(const char* data, size_t size, rpc_message& m, bool& have_msgid) {
  using verdict = rpc_message::verdict;
  msgpack_cursor cur{data, size};
  size_t n = 0;
  if (!cur.array_header(n) || n < 2) {
    m.error = "not an RPC message array";
    return;
  }
  auto type_h = cur.next();
  auto& type = type_h.get();
  if (type.type != msgpack::type::POSITIVE_INTEGER) {
    m.error = "the message type must be 0 (request) or 2 (notification)";
    return;
  }
  m.notification = type.via.u64 == 2;
  if (!m.notification) {
    auto id_h = cur.next();
    if (id_h.get().type != msgpack::type::POSITIVE_INTEGER || id_h.get().via.u64 > 0xffffffffu) {
      m.error = "the msgid must be an unsigned 32-bit integer";
      return;
    }
    m.msgid = static_cast<uint32_t>(id_h.get().via.u64);
    have_msgid = true;
    if (type.via.u64 != 0 || n != 4) {
      m.what = verdict::reject;
      m.error = "expected a request [0, msgid, method, params]";
      return;
    }
  } else if (n != 3) {
    m.what = verdict::ignore;
    return;
  }
  auto bad = [&](std::string msg) {
    m.what = m.notification ? verdict::ignore : verdict::reject;
    m.error = std::move(msg);
  };
  auto method_h = cur.next();
  if (method_h.get().type != msgpack::type::STR)
    return bad("the method must be a string");
  m.method = method_h.get().as<std::string>();
  size_t nparams = 0;
  if (!cur.array_header(nparams))
    return bad("params must be an array");
  if (m.method == "execute") {
    if (nparams != 2 && nparams != 3)
      return bad("execute takes [command, args] or [command, args, options]");
    auto cmd_h = cur.next();
    if (cmd_h.get().type != msgpack::type::STR)
      return bad("the command must be a string");
    m.request.command = cmd_h.get().as<std::string>();
    auto range = cur.skip();
    m.request.args = payload{std::vector<char>(data + range.first, data + range.second)};
    if (nparams == 3) {
      auto opts_h = cur.next();
      auto err = read_options(opts_h.get(), m.request);
      if (!err.empty())
        return bad(err);
    }
  } else if (m.method == "cancel") {
    if (nparams != 1)
      return bad("cancel takes [msgid]");
    auto id_h = cur.next();
    if (id_h.get().type != msgpack::type::POSITIVE_INTEGER || id_h.get().via.u64 > 0xffffffffu)
      return bad("cancel takes the msgid of a request: an unsigned 32-bit integer");
    m.cancel_id = static_cast<uint32_t>(id_h.get().via.u64);
  } else if (m.method == "session.end") {
    if (nparams != 1)
      return bad("session.end takes [session_id]");
    auto id_h = cur.next();
    if (id_h.get().type != msgpack::type::STR)
      return bad("the session id must be a string");
    m.session_id = id_h.get().as<std::string>();
  } else if (m.method == "auth") {
    if (nparams != 1)
      return bad("auth takes [token]");
    auto token_h = cur.next();
    auto& t = token_h.get();
    if (t.type != msgpack::type::STR && t.type != msgpack::type::BIN)
      return bad("the token must be a string or bytes");
    m.token.assign(t.type == msgpack::type::STR ? t.via.str.ptr : t.via.bin.ptr,
                   t.type == msgpack::type::STR ? t.via.str.size : t.via.bin.size);
  }
  m.what = verdict::call;
}

} // namespace

rpc_message decode_rpc_message(const char* data, size_t size) noexcept {
  rpc_message m;
  bool have_msgid = false;
  try {
    decode(data, size, m, have_msgid);
  } catch (const std::exception& e) {
    // Truncated or invalid inside: answerable only if the msgid was read.
    auto msgid = m.msgid;
    m = rpc_message{};
    m.error = std::string{"malformed message: "} + e.what();
    if (have_msgid) {
      m.msgid = msgid;
      m.what = rpc_message::verdict::reject;
    }
  } catch (...) {
    m = rpc_message{};
    m.error = "malformed message";
  }
  return m;
}

std::optional<uint32_t> read_msgid(const char* data, size_t size) noexcept {
  try {
    msgpack_cursor cur{data, size};
    size_t n = 0;
    if (!cur.array_header(n) || n != 4)
      return std::nullopt;
    auto type = cur.next();
    if (type.get().type != msgpack::type::POSITIVE_INTEGER || type.get().via.u64 != 0)
      return std::nullopt;
    auto id = cur.next();
    if (id.get().type != msgpack::type::POSITIVE_INTEGER || id.get().via.u64 > 0xffffffffu)
      return std::nullopt;
    return static_cast<uint32_t>(id.get().via.u64);
  } catch (...) {
    return std::nullopt;
  }
}

} // namespace pyvisor
