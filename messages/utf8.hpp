// UTF-8 checks for text that comes from outside (command and method names,
// session ids) and may go back out in a msgpack str, which strict decoders
// require to be valid UTF-8. Private to the library and the node.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace pyvisor {

/// True for well-formed UTF-8 (no overlong forms, surrogates or code points
/// above U+10FFFF).
inline bool valid_utf8(std::string_view x) {
  auto* p = reinterpret_cast<const unsigned char*>(x.data());
  auto* end = p + x.size();
  while (p < end) {
    unsigned c = *p++;
    if (c < 0x80)
      continue;
    size_t more = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC2 ? 1 : 0;
    if (more == 0 || c > 0xF4 || static_cast<size_t>(end - p) < more)
      return false;
    unsigned first = *p;
    if ((c == 0xE0 && first < 0xA0) || (c == 0xED && first > 0x9F)
        || (c == 0xF0 && first < 0x90) || (c == 0xF4 && first > 0x8F))
      return false;
    for (size_t i = 0; i < more; ++i)
      if ((*p++ & 0xC0) != 0x80)
        return false;
  }
  return true;
}

/// `x` if it is valid UTF-8, else `x` with each byte outside ASCII written
/// as \xNN (a lossless, readable, always valid rendering).
inline std::string as_valid_utf8(std::string_view x) {
  if (valid_utf8(x))
    return std::string{x};
  std::string out;
  out.reserve(x.size() * 2);
  for (unsigned char c : x) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[5];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

} // namespace pyvisor
