// libFuzzer target: the worker frame codec in both directions. Fields taken
// from the input are encoded as the node encodes requests (append_request)
// and as a worker encodes replies and hellos (append_reply,
// append_error_reply, append_hello); decoding must give them back exactly.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "messages/wire_codec.hpp"

namespace {

std::vector<char> one_value(FuzzedDataProvider& in) {
  // Any bytes that form exactly one msgpack value, else a packed string.
  auto raw = in.ConsumeRandomLengthString(256);
  std::vector<char> bytes(raw.begin(), raw.end());
  if (!bytes.empty() && pyvisor::wire::is_single_msgpack_value(bytes.data(), bytes.size()))
    return bytes;
  msgpack::sbuffer buf;
  msgpack::pack(buf, raw);
  return {buf.data(), buf.data() + buf.size()};
}

void check(bool ok) {
  if (!ok)
    __builtin_trap();
}

pyvisor::wire::frame decode_frame(const std::vector<char>& out) {
  check(out.size() >= 4);
  pyvisor::wire::frame f;
  auto err = pyvisor::wire::decode(out.data() + 4, out.size() - 4, f);
  check(err.empty());
  return f;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in{data, size};
  auto id = in.ConsumeIntegral<uint64_t>();
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: { // node -> worker
      auto cmd = in.ConsumeRandomLengthString(64);
      auto session = in.ConsumeRandomLengthString(64);
      auto args = one_value(in);
      std::vector<char> out;
      pyvisor::wire::append_request(out, id, cmd, args, session);
      auto oh = msgpack::unpack(out.data() + 4, out.size() - 4);
      auto m = oh.get().as<std::map<std::string, msgpack::object>>();
      check(m.at("id").as<uint64_t>() == id);
      check(m.at("cmd").as<std::string>() == cmd);
      if (session.empty())
        check(m.at("session").is_nil());
      else
        check(m.at("session").as<std::string>() == session);
      break;
    }
    case 1: { // worker -> node, success
      auto result = one_value(in);
      std::vector<char> out;
      pyvisor::wire::append_reply(out, id, result);
      auto f = decode_frame(out);
      check(f.type == pyvisor::wire::frame_type::reply && f.id == id && f.ok);
      check(f.result == result);
      break;
    }
    case 2: { // worker -> node, error
      pyvisor::wire::remote_error err{in.ConsumeRandomLengthString(32),
                                      in.ConsumeRandomLengthString(32),
                                      in.ConsumeRandomLengthString(128),
                                      in.ConsumeRandomLengthString(256)};
      std::vector<char> out;
      pyvisor::wire::append_error_reply(out, id, err);
      auto f = decode_frame(out);
      check(f.id == id && !f.ok);
      check(f.error.code == err.code && f.error.type == err.type);
      check(f.error.message == err.message && f.error.traceback == err.traceback);
      break;
    }
    default: { // worker -> node, hello
      auto pid = in.ConsumeIntegral<int64_t>();
      auto python = in.ConsumeRandomLengthString(16);
      std::vector<std::string> commands;
      while (in.remaining_bytes() > 0 && commands.size() < 16)
        commands.push_back(in.ConsumeRandomLengthString(24));
      std::vector<char> out;
      pyvisor::wire::append_hello(out, pid, python, commands);
      auto f = decode_frame(out);
      check(f.type == pyvisor::wire::frame_type::hello && f.ok);
      check(f.pid == pid && f.python == python && f.commands == commands);
    }
  }
  return 0;
}
