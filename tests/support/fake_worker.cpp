// pyvisor-test-fake-worker: a C++ stand-in for the Python worker, for unit
// tests of the worker's request path (no Python). Started by python_process
// exactly as an interpreter would be (its arguments are ignored), it speaks
// the pipe protocol (docs/protocol.md) on fds 3 and 4: a hello frame, then
// one reply per request, one request at a time in pipe order, as the
// Python worker runs them. Commands:
//   echo         replies its args
//   sleep        args: milliseconds (an integer); replies them after as long
//   hang         never replies (until killed)
//   crash        exits with code 1 without replying
//   raise        replies a python_error
//   session.drop replies nil
// EOF on fd 3 ends it with exit code 0.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <msgpack.hpp>

#include "messages/wire_codec.hpp"

namespace {

bool read_all(int fd, char* buf, size_t n) {
  while (n > 0) {
    auto got = ::read(fd, buf, n);
    if (got <= 0)
      return false;
    buf += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

void write_all(int fd, const std::vector<char>& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    auto put = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (put <= 0)
      _exit(2);
    off += static_cast<size_t>(put);
  }
}

} // namespace

int main() {
  using namespace pyvisor;
  std::vector<char> out;
  wire::append_hello(out, getpid(), "fake",
                     {"crash", "echo", "hang", "raise", "session.drop", "sleep"});
  write_all(4, out);
  for (;;) {
    char head[4];
    if (!read_all(3, head, 4))
      return 0;
    auto b = reinterpret_cast<unsigned char*>(head);
    size_t len = (size_t{b[0]} << 24) | (size_t{b[1]} << 16) | (size_t{b[2]} << 8) | b[3];
    std::vector<char> body(len);
    if (!read_all(3, body.data(), len))
      return 0;
    auto handle = msgpack::unpack(body.data(), body.size());
    auto fields = handle.get().as<std::map<std::string, msgpack::object>>();
    auto id = fields["id"].as<uint64_t>();
    auto cmd = fields["cmd"].as<std::string>();
    msgpack::sbuffer args;
    msgpack::pack(args, fields["args"]);
    std::vector<char> result(args.data(), args.data() + args.size());
    out.clear();
    if (cmd == "echo") {
      wire::append_reply(out, id, result);
    } else if (cmd == "sleep") {
      std::this_thread::sleep_for(std::chrono::milliseconds(fields["args"].as<int64_t>()));
      wire::append_reply(out, id, result);
    } else if (cmd == "hang") {
      for (;;)
        pause();
    } else if (cmd == "crash") {
      _exit(1);
    } else if (cmd == "raise") {
      wire::append_error_reply(out, id, {"", "ValueError", "raised on request", ""});
    } else if (cmd == "session.drop") {
      msgpack::sbuffer nil;
      msgpack::pack(nil, msgpack::type::nil_t{});
      wire::append_reply(out, id, std::vector<char>(nil.data(), nil.data() + nil.size()));
    } else {
      wire::append_error_reply(out, id, {"unknown_command", "UnknownCommand", cmd, ""});
    }
    write_all(4, out);
  }
}
