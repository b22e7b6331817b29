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

/// What reached the caller of one stream (execute::stream).
struct stream_tally {
  uint64_t chunks = 0;
  uint64_t bytes = 0;
};

struct pool_counters {
  struct command_rec {
    outcome_counts replies{};
    latency_histogram histogram;
    uint64_t streams = 0;
    uint64_t chunks = 0;
    uint64_t chunk_bytes = 0;
  };

  /// Streams taken in and not answered yet (opened() and count()).
  uint64_t open_streams = 0;

  /// Replies by outcome, indexed by error_code (none = ok).
  outcome_counts replies{};
  uint64_t retries = 0;
  uint64_t requeued = 0;
  uint64_t restarts = 0;
  uint64_t recycled = 0;
  std::unordered_map<std::string, command_rec> commands;

  /// Counts a reply by outcome, overall and for its command; `service_ns`
  /// (negative: the request never reached a worker) goes to the command's
  /// latency histogram; `stream`: the request was a stream, and this is
  /// what reached its caller of it.
  void count(const std::string& command, error_code code, int64_t service_ns = -1,
             const stream_tally* stream = nullptr) {
    auto i = static_cast<size_t>(code);
    if (i >= error_code_count)
      return;
    ++replies[i];
    auto& rec = record_of(command);
    ++rec.replies[i];
    if (service_ns >= 0)
      rec.histogram.observe(static_cast<double>(service_ns) / 1000.0);
    if (stream != nullptr) {
      if (open_streams > 0)
        --open_streams;
      ++rec.streams;
      rec.chunks += stream->chunks;
      rec.chunk_bytes += stream->bytes;
    }
  }

  /// A stream was taken in: open until its reply is counted.
  void opened() {
    ++open_streams;
  }

  /// Fills the counted parts of `stats`.
  void fill(pool_stats& stats) const {
    stats.replies = outcome_map(replies);
    stats.retries = retries;
    stats.requeued = requeued;
    stats.restarts = restarts;
    stats.recycled = recycled;
    stats.streams_open = open_streams;
    latency_histogram all;
    for (auto& [name, rec] : commands) {
      auto& cs = stats.commands[name];
      cs.replies = outcome_map(rec.replies);
      cs.histogram = rec.histogram;
      cs.latency_us = rec.histogram.percentiles();
      cs.streams = rec.streams;
      cs.chunks = rec.chunks;
      cs.chunk_bytes = rec.chunk_bytes;
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
