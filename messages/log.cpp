#include "messages/log.hpp"

#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace pyvisor {

spdlog::logger& log() {
  static std::shared_ptr<spdlog::logger> instance = [] {
    if (auto existing = spdlog::get("pyvisor"))
      return existing;
    try {
      return spdlog::stderr_color_mt("pyvisor");
    } catch (const spdlog::spdlog_ex&) {
      // Registered concurrently by someone else in the meantime.
      return spdlog::get("pyvisor");
    }
  }();
  return *instance;
}

} // namespace pyvisor
