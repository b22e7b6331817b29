// libFuzzer target: what a network client can send to pyvisor-node. The
// input is a stream of bytes as it arrives on a connection; the first byte
// chooses how the stream is cut into reads. It is framed twice - whole, and
// in those reads - the way the gateway frames it (rpc_framer), and both must
// give the same messages and the same final verdict; every complete message
// goes through decode_rpc_message.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "node/rpc_framer.hpp"
#include "node/rpc_request.hpp"
#include "messages/wire_codec.hpp"

namespace {

struct framed {
  std::vector<std::string> messages;
  pyvisor::rpc_framer::status last = pyvisor::rpc_framer::status::need_more;
};

framed frame(const char* data, size_t size, size_t chunk, size_t max_size) {
  using status = pyvisor::rpc_framer::status;
  pyvisor::rpc_framer f{max_size};
  framed out;
  for (size_t pos = 0; pos < size; pos += chunk) {
    f.append(data + pos, std::min(chunk, size - pos));
    for (;;) {
      auto s = f.next();
      if (s != status::message) {
        out.last = s;
        break;
      }
      out.messages.emplace_back(f.data(), f.size());
    }
    if (out.last != status::need_more)
      break;
  }
  return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  size_t chunk = 1 + data[0] % 17;
  auto bytes = reinterpret_cast<const char*>(data) + 1;
  size -= 1;
  // A small limit, so that too_large is reached too.
  size_t max_size = 4096;
  auto whole = frame(bytes, size, size == 0 ? 1 : size, max_size);
  auto pieces = frame(bytes, size, chunk, max_size);
  if (whole.messages != pieces.messages || whole.last != pieces.last)
    __builtin_trap(); // how TCP cut the stream must not matter
  for (auto& msg : whole.messages) {
    if (msg.empty() || msg.size() > max_size)
      __builtin_trap();
    auto m = pyvisor::decode_rpc_message(msg.data(), msg.size());
    if (m.what == pyvisor::rpc_message::verdict::call && m.method == "execute"
        && !m.request.args.bytes.empty()
        && !pyvisor::wire::is_single_msgpack_value(m.request.args.bytes.data(),
                                                   m.request.args.bytes.size()))
      __builtin_trap(); // args cut out must be exactly one value
    pyvisor::read_msgid(msg.data(), msg.size());
  }
  return 0;
}
