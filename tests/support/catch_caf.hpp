// Lets Catch2 print caf::error and pyvisor::error_code in failed assertions.
#pragma once

#include <catch2/catch.hpp>

#include "pyvisor/error_code.hpp"

namespace Catch {

template <>
struct StringMaker<pyvisor::error_code> {
  static std::string convert(pyvisor::error_code x) {
    return pyvisor::to_string(x);
  }
};

template <>
struct StringMaker<caf::error> {
  static std::string convert(const caf::error& x) {
    return pyvisor::to_string_readable(x);
  }
};

} // namespace Catch
