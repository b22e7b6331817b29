// libFuzzer target: msgpack_cursor, which the gateway uses to cut values out
// of untrusted input. Any walk (headers, parses, skips) over any bytes must
// end with a value, a clean exception, and offsets that stay in bounds and
// only grow.
#include <cstddef>
#include <cstdint>
#include <exception>

#include "messages/msgpack_cursor.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  // The first byte chooses the walk: 2 bits per step.
  auto plan = data[0];
  pyvisor::msgpack_cursor cur{reinterpret_cast<const char*>(data) + 1, size - 1};
  try {
    for (int step = 0; step < 64 && !cur.at_end(); ++step) {
      auto before = cur.offset();
      size_t n = 0;
      switch ((plan >> ((step % 4) * 2)) & 3) {
        case 0:
          cur.array_header(n);
          break;
        case 1:
          cur.map_header(n);
          break;
        case 2:
          cur.next();
          break;
        default: {
          auto range = cur.skip();
          if (range.first != before || range.second != cur.offset())
            __builtin_trap();
        }
      }
      if (cur.offset() < before || cur.offset() > size - 1)
        __builtin_trap();
    }
  } catch (const std::exception&) {
    // truncated or invalid input: a clean error is the expected outcome
  }
  return 0;
}
