// pyvisor::pool_counters: what a pool counts for its stats (private to the
// library): replies by outcome, overall and per command name with service
// times, retries, requeues, restarts and recycles.
//
// Per-command records are bounded: at most max_tracked_commands names, then
// other_commands; names that are not UTF-8 (a C++ caller or an RPC client
// may send any bytes) count under other_commands too, since a map key in
// `stats` and a Prometheus label must be text, or one hostile request would
// make both unreadable for everyone.

#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

#include "actors/pool/latency_histogram.hpp"
#include "actors/pool/outcome_counts.hpp"
#include "pyvisor/pool.hpp"

namespace pyvisor {

/// True for well-formed UTF-8 (no overlong forms, surrogates or code points
/// above U+10FFFF).
inline bool valid_utf8(const std::string& x) {
  auto* p = reinterpret_cast<const unsigned char*>(x.data());
  auto* end = p + x.size();
  while (p < end) {
    unsigned c = *p++;
    if (c < 0x80)
      continue;
    size_t more = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC2 ? 1 : 0;
    if (more == 0 || c > 0xF4 || static_cast<size_t>(end - p) < more)
      return false;
    unsigned first = *p;
    if ((c == 0xE0 && first < 0xA0) || (c == 0xED && first > 0x9F)
        || (c == 0xF0 && first < 0x90) || (c == 0xF4 && first > 0x8F))
      return false;
    for (size_t i = 0; i < more; ++i)
      if ((*p++ & 0xC0) != 0x80)
        return false;
  }
  return true;
}

struct pool_counters {
  struct command_rec {
    outcome_counts replies{};
    latency_histogram histogram;
  };

  /// Replies by outcome, indexed by error_code (none = ok).
  outcome_counts replies{};
  uint64_t retries = 0;
  uint64_t requeued = 0;
  uint64_t restarts = 0;
  uint64_t recycled = 0;
  std::unordered_map<std::string, command_rec> commands;

  /// Counts a reply by outcome, overall and for its command; `service_ns`
  /// (negative: the request never reached a worker) goes to the command's
  /// latency histogram.
  void count(const std::string& command, error_code code, int64_t service_ns = -1) {
    auto i = static_cast<size_t>(code);
    if (i >= error_code_count)
      return;
    ++replies[i];
    auto& rec = record_of(command);
    ++rec.replies[i];
    if (service_ns >= 0)
      rec.histogram.observe(static_cast<double>(service_ns) / 1000.0);
  }

  /// Fills the counted parts of `stats`.
  void fill(pool_stats& stats) const {
    stats.replies = outcome_map(replies);
    stats.retries = retries;
    stats.requeued = requeued;
    stats.restarts = restarts;
    stats.recycled = recycled;
    latency_histogram all;
    for (auto& [name, rec] : commands) {
      auto& cs = stats.commands[name];
      cs.replies = outcome_map(rec.replies);
      cs.histogram = rec.histogram;
      cs.latency_us = rec.histogram.percentiles();
      all.merge(rec.histogram);
    }
    stats.latency_us = all.percentiles();
  }

private:
  command_rec& record_of(const std::string& command) {
    auto i = commands.find(command);
    if (i != commands.end())
      return i->second;
    if (commands.size() >= max_tracked_commands || !valid_utf8(command))
      return commands[other_commands];
    return commands[command];
  }
};

} // namespace pyvisor
