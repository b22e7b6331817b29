// pyvisor::payload: a msgpack-encoded value travelling through the actors.
//
// Callers pack any msgpack-c-adaptable value (structs with MSGPACK_DEFINE_MAP,
// maps, vectors, strings, msgpack::type::raw_ref / std::vector<char> as binary)
// with pyvisor::pack and unpack a reply into their own type with
// pyvisor::unpack. Between those two points the bytes are opaque: actors move
// them, the worker splices them into the wire frame as they are, and the reply
// bytes are cut out of Python's frame without being decoded and re-encoded.
//
// A default-constructed payload holds msgpack nil (one byte, 0xc0), so a
// payload is always a valid msgpack value. pyvisor's named enums (names.hpp)
// pack as their names.

#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <msgpack.hpp>

#include "caf/error.hpp"
#include "caf/expected.hpp"
#include "caf/meta/type_name.hpp"

#include "pyvisor/error_code.hpp"

namespace pyvisor {

struct payload {
  std::vector<char> bytes{'\xc0'};

  payload() = default;
  explicit payload(std::vector<char> raw) : bytes(std::move(raw)) {}

  /// True when the payload is msgpack nil.
  bool is_nil() const noexcept {
    return bytes.size() == 1 && bytes[0] == '\xc0';
  }
};

inline bool operator==(const payload& x, const payload& y) {
  return x.bytes == y.bytes;
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, payload& x) {
  return f(caf::meta::type_name("pyvisor::payload"), x.bytes);
}

namespace detail {

/// msgpack-c writes into anything with write(const char*, size_t).
struct vector_writer {
  std::vector<char>& out;
  void write(const char* data, size_t size) {
    out.insert(out.end(), data, data + size);
  }
};

/// Packs a string without building a std::string (keys, names).
template <class Packer>
void pack_str(Packer& pk, std::string_view s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

} // namespace detail

/// Packs `x` into a payload.
template <class T>
payload pack(const T& x) {
  payload result{std::vector<char>{}};
  detail::vector_writer w{result.bytes};
  msgpack::pack(w, x);
  return result;
}

/// Unpacks `x` into a `T`; a payload that is not valid msgpack or does not
/// convert to `T` yields bad_request with msgpack-c's reason.
template <class T>
caf::expected<T> unpack(const payload& x) {
  try {
    auto handle = msgpack::unpack(x.bytes.data(), x.bytes.size());
    return handle.get().as<T>();
  } catch (const std::exception& e) {
    return make_error(error_code::bad_request,
                      std::string{"cannot unpack payload: "} + e.what());
  }
}

/// Validates that `x` holds exactly one well-formed msgpack value.
bool is_valid_msgpack(const payload& x) noexcept;

/// keep_large_blocks()' settings.
constexpr size_t large_block_threshold = size_t{32} << 20;
constexpr size_t large_block_trim = size_t{256} << 20;

/// Makes glibc's malloc keep large blocks for reuse: blocks of up to 32 MiB
/// (its largest mmap threshold) come from the heap, and up to 256 MiB freed
/// at its top stay there. A large payload is then copied into memory
/// touched before (about 10 GB/s here) instead of fresh pages that fault in
/// one by one (1-2 GB/s); the price is a resident size that stays near its
/// peak. pyvisor-node calls it at start-up; call it once, early, in an
/// application that moves large payloads. Its workers get the same through
/// MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ (unless already set).
void keep_large_blocks() noexcept;

} // namespace pyvisor

namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
namespace adaptor {

/// A named enum (names.hpp) travels as its name.
template <class E>
struct pack<E, pyvisor::if_named_enum<E>> {
  template <class Stream>
  msgpack::packer<Stream>& operator()(msgpack::packer<Stream>& pk, E x) const {
    pyvisor::detail::pack_str(pk, pyvisor::name_of(x));
    return pk;
  }
};

template <class E>
struct convert<E, pyvisor::if_named_enum<E>> {
  const msgpack::object& operator()(const msgpack::object& obj, E& x) const {
    if (obj.type != msgpack::type::STR
        || !pyvisor::from_string(std::string_view{obj.via.str.ptr, obj.via.str.size}, x))
      throw msgpack::type_error();
    return obj;
  }
};

} // namespace adaptor
} // MSGPACK_API_VERSION_NAMESPACE
} // namespace msgpack
