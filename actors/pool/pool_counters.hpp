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
#include "messages/utf8.hpp"
#include "pyvisor/pool.hpp"

namespace pyvisor {

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
