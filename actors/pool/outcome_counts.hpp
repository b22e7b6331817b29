// Replies counted by outcome ("ok" and each error code), as pools and the
// cluster front keep them for their stats (private to the library).

#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>

#include "pyvisor/error_code.hpp"

namespace pyvisor {

/// Index 0 counts successes, index i the error code i.
using outcome_counts = std::array<uint64_t, error_code_count>;

/// {"ok": n, error code name: n, ...} without the zero counts.
inline std::map<std::string, uint64_t> outcome_map(const outcome_counts& counts) {
  std::map<std::string, uint64_t> result;
  for (size_t i = 0; i < counts.size(); ++i)
    if (counts[i] > 0)
      result[i == 0 ? std::string{"ok"} : to_string(static_cast<error_code>(i))] = counts[i];
  return result;
}

} // namespace pyvisor
