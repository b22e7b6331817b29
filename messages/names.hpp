// pyvisor names: every enum that crosses an interface (error codes, worker
// phases, pool and child states) has one checked name table, and travels as
// its name wherever it leaves C++ (stats over RPC, logs).
//
// A table lists {value, name} in enum order, one entry per value; its owner
// checks it at compile time with `static_assert(table.complete())`, so an
// enumerator added without a name, or a table out of order, fails the build.
// An enum opts into the msgpack adaptors below by specialising
// is_named_enum next to its name_of / from_string: msgpack-c then writes it
// as its name (e.g. "ready") and reads it back from that name only.

#pragma once

#include <array>
#include <cstddef>
#include <string_view>
#include <type_traits>

#include <msgpack.hpp>

#include "pyvisor/payload.hpp"

namespace pyvisor {

/// Specialise as std::true_type for an enum E that has
/// `std::string_view name_of(E)` and `bool from_string(std::string_view, E&)`.
template <class E>
struct is_named_enum : std::false_type {};

template <class E>
struct enum_name {
  E value;
  std::string_view name;
};

/// The names of an enum with N values 0..N-1.
template <class E, size_t N>
struct name_table {
  std::array<enum_name<E>, N> entries;

  /// True when entry i names value i and no name is empty or repeated.
  constexpr bool complete() const {
    for (size_t i = 0; i < N; ++i) {
      if (static_cast<size_t>(entries[i].value) != i || entries[i].name.empty())
        return false;
      for (size_t j = 0; j < i; ++j)
        if (entries[j].name == entries[i].name)
          return false;
    }
    return true;
  }

  constexpr std::string_view name(E x) const noexcept {
    auto i = static_cast<size_t>(x);
    return i < N ? entries[i].name : std::string_view{"invalid"};
  }

  constexpr bool parse(std::string_view name, E& x) const noexcept {
    for (const auto& entry : entries)
      if (entry.name == name) {
        x = entry.value;
        return true;
      }
    return false;
  }
};

} // namespace pyvisor

namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
namespace adaptor {

template <class E>
struct pack<E, std::enable_if_t<pyvisor::is_named_enum<E>::value>> {
  template <class Stream>
  msgpack::packer<Stream>& operator()(msgpack::packer<Stream>& pk, E x) const {
    pyvisor::detail::pack_str(pk, name_of(x));
    return pk;
  }
};

template <class E>
struct convert<E, std::enable_if_t<pyvisor::is_named_enum<E>::value>> {
  const msgpack::object& operator()(const msgpack::object& obj, E& x) const {
    if (obj.type != msgpack::type::STR
        || !from_string(std::string_view{obj.via.str.ptr, obj.via.str.size}, x))
      throw msgpack::type_error();
    return obj;
  }
};

} // namespace adaptor
} // MSGPACK_API_VERSION_NAMESPACE
} // namespace msgpack
