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
/// a forged header): at most `burst` lines per `every`, the rest counted
/// into the next line that is due. Not thread-safe: one owner per instance.
class log_throttle {
public:
  explicit log_throttle(std::chrono::steady_clock::duration every = std::chrono::seconds(10),
                        uint64_t burst = 1)
    : every_(every), burst_(burst) {
  }

  /// Counts one occurrence; returns how many to report (this one included)
  /// if a line is due now, else 0.
  uint64_t due() {
    ++pending_;
    auto now = std::chrono::steady_clock::now();
    if (!logged_ || now - window_ >= every_) {
      logged_ = true;
      window_ = now;
      lines_ = 0;
    }
    if (lines_ >= burst_)
      return 0;
    ++lines_;
    auto n = pending_;
    pending_ = 0;
    return n;
  }

private:
  std::chrono::steady_clock::duration every_;
  uint64_t burst_;
  /// When the current window began, and the lines logged in it.
  std::chrono::steady_clock::time_point window_;
  uint64_t lines_ = 0;
  bool logged_ = false;
  uint64_t pending_ = 0;
};

} // namespace pyvisor
