#include "actors/process/child_output.hpp"

#include <cstdlib>
#include <string_view>

#include "actors/process/python_process.hpp"
#include "messages/log.hpp"

namespace pyvisor {

std::optional<log_record> python_log_record(const std::string& line) {
  static constexpr std::string_view mark{"\x1fpyvisor-log\x1f"};
  if (line.compare(0, mark.size(), mark) != 0)
    return std::nullopt;
  auto level_end = line.find('\x1f', mark.size());
  auto name_end = level_end == std::string::npos ? level_end : line.find('\x1f', level_end + 1);
  if (name_end == std::string::npos)
    return std::nullopt;
  int levelno = std::atoi(line.c_str() + mark.size());
  log_record result;
  result.level = levelno >= 50   ? spdlog::level::critical
                 : levelno >= 40 ? spdlog::level::err
                 : levelno >= 30 ? spdlog::level::warn
                 : levelno >= 20 ? spdlog::level::info
                 : levelno >= 10 ? spdlog::level::debug
                                 : spdlog::level::trace;
  result.logger = line.substr(level_end + 1, name_end - level_end - 1);
  result.text = line.substr(name_end + 1);
  return result;
}


int python_log_level() {
  switch (log().level()) {
    case spdlog::level::trace:
      return 1;
    case spdlog::level::debug:
      return 10;
    case spdlog::level::info:
      return 20;
    case spdlog::level::warn:
      return 30;
    case spdlog::level::err:
      return 40;
    case spdlog::level::critical:
      return 50;
    default:
      return 100; // off: above CRITICAL
  }
}

} // namespace pyvisor
