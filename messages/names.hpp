// pyvisor names: every enum that crosses an interface (error codes, worker
// phases, pool and child states) has one checked name table, next to the
// enum, and travels as its name wherever it leaves C++ (stats over RPC, logs).
//
// An enum opts in by specialising enum_names with its table, listing
// {value, name} in enum order, one entry per value (N = last value + 1).
// name_of / from_string / to_string then work for it, and check the table at
// compile time: an entry missing, out of order or named twice fails the
// build. payload.hpp adds msgpack-c adaptors that write such an enum as its
// name (e.g. "ready") and read it back from that name only.

#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

namespace pyvisor {

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
};

/// Specialise for an enum E with `static constexpr name_table<E, N> table`.
template <class E>
struct enum_names {};

template <class E, class = void>
struct is_named_enum : std::false_type {};

template <class E>
struct is_named_enum<E, std::void_t<decltype(enum_names<E>::table)>> : std::true_type {};

template <class E>
using if_named_enum = std::enable_if_t<is_named_enum<E>::value>;

/// The name of `x`, or "invalid" for a value outside the enum.
template <class E, class = if_named_enum<E>>
constexpr std::string_view name_of(E x) noexcept {
  constexpr const auto& table = enum_names<E>::table;
  static_assert(table.complete(), "an enum's name table must list every value once, in order");
  auto i = static_cast<size_t>(x);
  return i < table.entries.size() ? table.entries[i].name : std::string_view{"invalid"};
}

/// Parses a name; returns false (leaving `x` alone) for unknown names.
template <class E, class = if_named_enum<E>>
constexpr bool from_string(std::string_view name, E& x) noexcept {
  for (const auto& entry : enum_names<E>::table.entries)
    if (entry.name == name) {
      x = entry.value;
      return true;
    }
  return false;
}

template <class E, class = if_named_enum<E>>
std::string to_string(E x) {
  return std::string{name_of(x)};
}

} // namespace pyvisor
