// libFuzzer target: what a network client can send to pyvisor-node. The
// input is a stream of bytes as it arrives on a connection: it is cut into
// messages the way the gateway frames them (msgpack_cursor over the buffer)
// and every complete message goes through decode_rpc_message.
#include <cstddef>
#include <cstdint>
#include <exception>

#include "actors/rpc_request.hpp"
#include "messages/msgpack_cursor.hpp"
#include "messages/wire_codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = reinterpret_cast<const char*>(data);
  size_t pos = 0;
  while (pos < size) {
    size_t end = 0;
    try {
      pyvisor::msgpack_cursor probe{bytes + pos, size - pos};
      probe.next();
      end = probe.offset();
    } catch (const std::exception&) {
      return 0; // incomplete or not msgpack: the gateway waits or closes
    }
    if (end == 0)
      __builtin_trap(); // no progress would loop forever in the gateway
    auto m = pyvisor::decode_rpc_message(bytes + pos, end);
    if (m.what == pyvisor::rpc_message::verdict::call && m.method == "execute"
        && !m.request.args.bytes.empty()
        && !pyvisor::wire::is_single_msgpack_value(m.request.args.bytes.data(),
                                                   m.request.args.bytes.size()))
      __builtin_trap(); // args cut out must be exactly one value
    pos += end;
  }
  return 0;
}
