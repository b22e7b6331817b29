// What a worker process writes outside the protocol, as the node logs it
// (private to actors/process/): its stdout and stderr split into lines, and
// the lines that carry a Python `logging` record (python/pyvisor/worker.py
// marks them) read back with their level and logger name. No CAF.

#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include <spdlog/common.h>

namespace pyvisor {

// Splits a byte stream into lines and logs each, tagged.
struct line_logger {
  std::string buf;

  template <class OnLine>
  void feed(const char* data, size_t size, OnLine&& on_line) {
    buf.append(data, size);
    size_t start = 0;
    for (auto nl = buf.find('\n'); nl != std::string::npos; nl = buf.find('\n', start)) {
      on_line(buf.substr(start, nl - start));
      start = nl + 1;
    }
    buf.erase(0, start);
    // A child that never writes a newline must not grow the buffer forever.
    if (buf.size() > 64 * 1024) {
      on_line(buf);
      buf.clear();
    }
  }

  template <class OnLine>
  void flush(OnLine&& on_line) {
    if (!buf.empty())
      on_line(buf);
    buf.clear();
  }
};

/// A line of a Python `logging` record (python/pyvisor/worker.py, LOG_MARK):
/// MARK levelno US logger US text.
struct log_record {
  spdlog::level::level_enum level;
  std::string logger;
  std::string text;
};

/// The record a marked line carries, or nothing for a plain line.
std::optional<log_record> python_log_record(const std::string& line);

} // namespace pyvisor
