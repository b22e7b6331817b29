// libFuzzer target: what a (broken or hostile) worker process can write on
// its reply pipe. The input is the raw pipe stream: length-prefixed frames
// fed to the node's frame_reader in two arbitrary chunks. The same bytes, as
// one packet of its control socket, go through the revoke-answer decoder.
#include <cstddef>
#include <cstdint>

#include "messages/wire_codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0)
    return 0;
  auto bytes = reinterpret_cast<const char*>(data);
  // The first byte picks where TCP-like chunking cuts the stream.
  size_t cut = data[0] % size;
  pyvisor::wire::frame_reader reader{1 << 20};
  size_t frames = 0;
  auto on_frame = [&](pyvisor::wire::frame&& f) {
    ++frames;
    if (f.type == pyvisor::wire::frame_type::reply && f.ok
        && !pyvisor::wire::is_single_msgpack_value(f.result.data(), f.result.size()))
      __builtin_trap(); // a result handed to callers must be one msgpack value
  };
  if (reader.feed(bytes + 1, cut > 0 ? cut - 1 : 0, on_frame))
    reader.feed(bytes + cut, size - cut, on_frame);
  if (pyvisor::wire::is_control_message(bytes, size))
    (void) pyvisor::wire::decode_revoked(bytes, size);
  else if (pyvisor::wire::decode_revoked(bytes, size))
    __builtin_trap(); // dump text is never taken for a message
  return 0;
}
