#include "messages/wire_codec.hpp"

#include <malloc.h>

#include <msgpack.hpp>

#include "messages/msgpack_cursor.hpp"
#include "pyvisor/payload.hpp"

namespace pyvisor::wire {

namespace {

using packer = msgpack::packer<pyvisor::detail::vector_writer>;

// Reserves the 4-byte length prefix and returns its position.
size_t begin_frame(std::vector<char>& out) {
  auto pos = out.size();
  out.resize(pos + 4);
  return pos;
}

void end_frame(std::vector<char>& out, size_t pos) {
  auto len = out.size() - pos - 4;
  out[pos] = static_cast<char>((len >> 24) & 0xff);
  out[pos + 1] = static_cast<char>((len >> 16) & 0xff);
  out[pos + 2] = static_cast<char>((len >> 8) & 0xff);
  out[pos + 3] = static_cast<char>(len & 0xff);
}

using pyvisor::detail::pack_str;

std::string as_string(const msgpack::object& o) {
  if (o.type == msgpack::type::NIL)
    return {};
  if (o.type != msgpack::type::STR)
    throw msgpack::type_error{};
  return std::string{o.via.str.ptr, o.via.str.size};
}

void read_error(const msgpack::object& o, remote_error& err) {
  if (o.type != msgpack::type::MAP)
    throw std::runtime_error("field 'error' is not a map");
  for (const auto& kv : o.via.map) {
    auto key = as_string(kv.key);
    if (key == "code")
      err.code = as_string(kv.val);
    else if (key == "type")
      err.type = as_string(kv.val);
    else if (key == "message")
      err.message = as_string(kv.val);
    else if (key == "traceback")
      err.traceback = as_string(kv.val);
  }
}

// A reply frame is {id, ok, result | error}: this packs all but the last
// value.
void pack_reply_head(packer& pk, uint64_t id, bool ok) {
  pk.pack_map(3);
  pack_str(pk, "id");
  pk.pack_uint64(id);
  pack_str(pk, "ok");
  if (ok)
    pk.pack_true();
  else
    pk.pack_false();
  pack_str(pk, ok ? "result" : "error");
}

} // namespace

void append_request(std::vector<char>& out, uint64_t id, std::string_view cmd,
                    const std::vector<char>& args, std::string_view session, double deadline,
                    const stream_window* stream, const shared_ref* shared) {
  auto pos = begin_frame(out);
  pyvisor::detail::vector_writer w{out};
  packer pk{w};
  pk.pack_map(4 + (deadline > 0 ? 1 : 0) + (stream != nullptr ? 1 : 0)
              + (shared != nullptr ? 1 : 0));
  if (shared != nullptr) {
    pack_str(pk, "shm");
    pk.pack_array(2);
    pk.pack_uint64(shared->pos);
    pk.pack_uint64(shared->len);
  }
  if (deadline > 0) {
    pack_str(pk, "deadline");
    pk.pack_double(deadline);
  }
  if (stream != nullptr) {
    pack_str(pk, "stream");
    pk.pack_array(2);
    pk.pack_uint64(stream->chunks);
    pk.pack_uint64(stream->bytes);
  }
  pack_str(pk, "id");
  pk.pack_uint64(id);
  pack_str(pk, "cmd");
  pack_str(pk, cmd);
  pack_str(pk, "args");
  if (args.empty() || shared != nullptr)
    pk.pack_nil();
  else
    out.insert(out.end(), args.begin(), args.end());
  pack_str(pk, "session");
  if (session.empty())
    pk.pack_nil();
  else
    pack_str(pk, session);
  end_frame(out, pos);
}

void append_reply(std::vector<char>& out, uint64_t id, const std::vector<char>& result) {
  auto pos = begin_frame(out);
  pyvisor::detail::vector_writer w{out};
  packer pk{w};
  pack_reply_head(pk, id, true);
  out.insert(out.end(), result.begin(), result.end());
  end_frame(out, pos);
}

void append_error_reply(std::vector<char>& out, uint64_t id, const remote_error& err) {
  auto pos = begin_frame(out);
  pyvisor::detail::vector_writer w{out};
  packer pk{w};
  pack_reply_head(pk, id, false);
  pk.pack_map(4);
  pack_str(pk, "code");
  pack_str(pk, err.code);
  pack_str(pk, "type");
  pack_str(pk, err.type);
  pack_str(pk, "message");
  pack_str(pk, err.message);
  pack_str(pk, "traceback");
  pack_str(pk, err.traceback);
  end_frame(out, pos);
}

void append_hello(std::vector<char>& out, int64_t pid, std::string_view python,
                  const std::vector<std::string>& commands) {
  auto pos = begin_frame(out);
  pyvisor::detail::vector_writer w{out};
  packer pk{w};
  pk.pack_map(4);
  pack_str(pk, "hello");
  pk.pack_true();
  pack_str(pk, "pid");
  pk.pack_int64(pid);
  pack_str(pk, "python");
  pack_str(pk, python);
  pack_str(pk, "commands");
  pk.pack_array(static_cast<uint32_t>(commands.size()));
  for (const auto& c : commands)
    pack_str(pk, c);
  end_frame(out, pos);
}

std::string decode(const char* data, size_t size, frame& out) {
  if (size == 0)
    return "empty frame";
  bool have_id = false;
  bool have_ok = false;
  msgpack_cursor cur{data, size};
  try {
    size_t entries = 0;
    if (!cur.map_header(entries))
      return "frame is not a msgpack map";
    for (size_t i = 0; i < entries; ++i) {
      auto key_handle = cur.next();
      auto key = as_string(key_handle.get());
      if (key == "result" || key == "chunk") {
        // Cut out as raw bytes, never built into objects: the result is
        // neither inspected nor re-encoded (a list of millions of elements
        // costs one walk, no allocation).
        auto range = cur.skip();
        out.result.assign(data + range.first, data + range.second);
        if (key == "chunk")
          out.type = frame_type::chunk;
        continue;
      }
      auto value_handle = cur.next();
      const auto& value = value_handle.get();
      if (key == "id") {
        out.id = value.as<uint64_t>();
        have_id = true;
      } else if (key == "ok") {
        out.ok = value.as<bool>();
        have_ok = true;
      } else if (key == "error") {
        read_error(value, out.error);
      } else if (key == "hello") {
        out.type = frame_type::hello;
        out.ok = value.as<bool>();
        have_ok = true;
      } else if (key == "pid") {
        out.pid = value.as<int64_t>();
      } else if (key == "python") {
        out.python = as_string(value);
      } else if (key == "commands") {
        out.commands = value.as<std::vector<std::string>>();
      } else if (key == "control") {
        out.control = value.as<bool>();
      } else if (key == "shm") {
        if (value.type == msgpack::type::BOOLEAN) {
          out.shared_memory = value.as<bool>(); // hello
        } else {
          auto ref = value.as<std::vector<uint64_t>>();
          if (ref.size() != 2)
            return "'shm' must be [position, length]";
          out.shared = true;
          out.shared_pos = ref[0];
          out.shared_len = ref[1];
        }
      } else if (key == "concurrency") {
        out.concurrency = value.as<uint32_t>();
      } else if (key == "started") {
        out.type = frame_type::started;
      }
      // Unknown keys are ignored so that the protocol can grow.
    }
  } catch (const msgpack::insufficient_bytes&) {
    return "truncated msgpack in frame";
  } catch (const std::bad_alloc&) {
    return "frame declares more elements than it can hold";
  } catch (const std::exception& e) {
    return std::string{"invalid frame: "} + e.what();
  }
  if (cur.offset() != size)
    return "trailing bytes after the frame's map";
  if (out.type == frame_type::chunk || out.type == frame_type::started) {
    if (!have_id || have_ok)
      return out.type == frame_type::chunk ? "chunk frame needs an 'id' and no 'ok'"
                                           : "started frame needs an 'id' and no 'ok'";
    return {};
  }
  if (!have_ok)
    return "frame has no 'ok', 'hello' or 'chunk' field";
  if (out.type == frame_type::reply) {
    if (!have_id)
      return "reply frame has no 'id'";
    if (out.ok && out.result.empty() && !out.shared)
      out.result.push_back('\xc0');
  }
  if (out.shared && !(out.type == frame_type::chunk || (out.type == frame_type::reply && out.ok)))
    return "'shm' names a value only in a chunk or a successful reply";
  return {};
}

void append_control(std::vector<char>& out, const std::vector<uint64_t>& revoke,
                    uint64_t interrupt, std::string_view reason) {
  append_control(out, revoke,
                 interrupt == 0 ? std::vector<uint64_t>{} : std::vector<uint64_t>{interrupt},
                 reason);
}

void append_control(std::vector<char>& out, const std::vector<uint64_t>& revoke,
                    const std::vector<uint64_t>& interrupts, std::string_view reason) {
  pyvisor::detail::vector_writer w{out};
  packer pk{w};
  pk.pack_map((revoke.empty() ? 0 : 1) + (interrupts.empty() ? 0 : 2));
  if (!revoke.empty()) {
    pack_str(pk, "revoke");
    pk.pack_array(static_cast<uint32_t>(revoke.size()));
    for (auto id : revoke)
      pk.pack_uint64(id);
  }
  if (!interrupts.empty()) {
    // One id as a number (what a sequential worker reads), several as a list.
    pack_str(pk, "interrupt");
    if (interrupts.size() == 1) {
      pk.pack_uint64(interrupts.front());
    } else {
      pk.pack_array(static_cast<uint32_t>(interrupts.size()));
      for (auto id : interrupts)
        pk.pack_uint64(id);
    }
    pack_str(pk, "reason");
    pack_str(pk, reason);
  }
}

namespace {

// A frame {id, key: value} whose value `write_value` appends.
template <class WriteValue>
void append_id_frame(std::vector<char>& out, uint64_t id, std::string_view key,
                     WriteValue write_value) {
  auto pos = begin_frame(out);
  pyvisor::detail::vector_writer w{out};
  packer pk{w};
  pk.pack_map(2);
  pack_str(pk, "id");
  pk.pack_uint64(id);
  pack_str(pk, key);
  write_value(pk);
  end_frame(out, pos);
}

} // namespace

void append_started(std::vector<char>& out, uint64_t id) {
  append_id_frame(out, id, "started", [](packer& pk) { pk.pack_true(); });
}

void append_credit(std::vector<char>& out, uint64_t id, uint64_t taken) {
  pyvisor::detail::vector_writer w{out};
  packer pk{w};
  pk.pack_map(2);
  pack_str(pk, "credit");
  pk.pack_uint64(id);
  pack_str(pk, "taken");
  pk.pack_uint64(taken);
}

void append_chunk(std::vector<char>& out, uint64_t id, const std::vector<char>& value) {
  append_id_frame(out, id, "chunk",
                  [&](packer&) { out.insert(out.end(), value.begin(), value.end()); });
}

bool is_control_message(const char* data, size_t size) noexcept {
  if (size == 0)
    return false;
  auto b = static_cast<unsigned char>(data[0]);
  return (b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf;
}

std::optional<control_message> decode_control(const char* data, size_t size) noexcept {
  try {
    msgpack_cursor cur{data, size};
    size_t entries = 0;
    if (!cur.map_header(entries))
      return std::nullopt;
    control_message result;
    for (size_t i = 0; i < entries; ++i) {
      auto key_handle = cur.next();
      auto value_handle = cur.next();
      auto key = as_string(key_handle.get());
      if (key == "revoke")
        result.revoke = value_handle.get().as<std::vector<uint64_t>>();
      else if (key == "interrupt" && value_handle.get().type == msgpack::type::ARRAY)
        result.interrupts = value_handle.get().as<std::vector<uint64_t>>();
      else if (key == "interrupt")
        result.interrupts = {value_handle.get().as<uint64_t>()};
      else if (key == "reason")
        result.reason = as_string(value_handle.get());
      else if (key == "credit")
        result.credit = value_handle.get().as<uint64_t>();
      else if (key == "taken")
        result.taken = value_handle.get().as<uint64_t>();
    }
    if (cur.offset() != size)
      return std::nullopt;
    if (!result.interrupts.empty())
      result.interrupt = result.interrupts.front();
    return result;
  } catch (...) {
    return std::nullopt;
  }
}

std::optional<std::vector<uint64_t>> decode_revoked(const char* data, size_t size) noexcept {
  try {
    msgpack_cursor cur{data, size};
    size_t entries = 0;
    if (!cur.map_header(entries))
      return std::nullopt;
    std::optional<std::vector<uint64_t>> result;
    for (size_t i = 0; i < entries; ++i) {
      auto key_handle = cur.next();
      auto value_handle = cur.next();
      if (as_string(key_handle.get()) == "revoked")
        result = value_handle.get().as<std::vector<uint64_t>>();
    }
    if (cur.offset() != size)
      return std::nullopt;
    return result;
  } catch (...) {
    return std::nullopt;
  }
}

bool is_single_msgpack_value(const char* data, size_t size) noexcept {
  try {
    msgpack_cursor cur{data, size};
    cur.skip(); // a walk: checks without building objects
    return cur.offset() == size;
  } catch (...) {
    return false;
  }
}

} // namespace pyvisor

namespace pyvisor {

void keep_large_blocks() noexcept {
  mallopt(M_MMAP_THRESHOLD, large_block_threshold);
  mallopt(M_TRIM_THRESHOLD, large_block_trim);
}

bool is_valid_msgpack(const payload& x) noexcept {
  return wire::is_single_msgpack_value(x.bytes.data(), x.bytes.size());
}

} // namespace pyvisor
