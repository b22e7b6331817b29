// pyvisor::log(): the spdlog logger every pyvisor component writes to.
//
// It is the logger registered under the name "pyvisor"; if none is registered
// when first used, one writing to stderr is created, so that a library user's
// stdout stays theirs. Register your own "pyvisor" logger (any sinks) before
// starting pyvisor actors to redirect it. Lives beside the message vocabulary
// because every layer (supervision, actors) uses it and it depends on nothing.

#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include <spdlog/logger.h>

namespace pyvisor {

spdlog::logger& log();

/// One kind of warning that a peer can cause at will (a refused connection,
/// a forged header): logged at most once per `every`, with how many
/// happened since the last line. Not thread-safe: one owner per instance.
class log_throttle {
public:
  explicit log_throttle(std::chrono::steady_clock::duration every = std::chrono::seconds(10))
    : every_(every) {
  }

  /// Counts one occurrence; returns how many to report (this one included)
  /// if a line is due now, else 0.
  uint64_t due() {
    ++pending_;
    auto now = std::chrono::steady_clock::now();
    if (logged_ && now - last_ < every_)
      return 0;
    logged_ = true;
    last_ = now;
    auto n = pending_;
    pending_ = 0;
    return n;
  }

private:
  std::chrono::steady_clock::duration every_;
  std::chrono::steady_clock::time_point last_;
  bool logged_ = false;
  uint64_t pending_ = 0;
};

} // namespace pyvisor
