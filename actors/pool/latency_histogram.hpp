// pyvisor::latency_histogram: how long a pool's workers took, per command.
//
// One fixed set of bucket bounds (10 us to 60 s, five per decade: 1, 2, 3,
// 5, 7 x 10^k) serves every histogram, so histograms add up by adding their
// counts, cost the same few hundred bytes however many requests they saw,
// and are exactly what a Prometheus histogram is (node/metrics.cpp exports
// them as pyvisor_request_duration_seconds). The percentiles in `stats` are
// estimated from the buckets by linear interpolation within the bucket that
// holds the rank, so an estimate is in the same bucket as the truth (bounds
// are at most 2x apart). They cover every request since the pool
// (re)started, not a recent window: for a recent view, rate() the Prometheus
// histogram.

#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "caf/meta/type_name.hpp"

#include "msgpack.hpp"

namespace pyvisor {

/// Service time percentiles, microseconds.
struct latency_percentiles {
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;

  MSGPACK_DEFINE_MAP(p50, p90, p99);
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, latency_percentiles& x) {
  return f(caf::meta::type_name("pyvisor::latency_percentiles"), x.p50, x.p90, x.p99);
}

/// Upper bounds of the buckets in microseconds; a last bucket (+Inf) holds
/// what is above them all.
inline constexpr std::array<double, 34> latency_bounds_us{{
  10,     20,     30,     50,     70,                      // 10 us
  100,    200,    300,    500,    700,                     // 100 us
  1e3,    2e3,    3e3,    5e3,    7e3,                     // 1 ms
  1e4,    2e4,    3e4,    5e4,    7e4,                     // 10 ms
  1e5,    2e5,    3e5,    5e5,    7e5,                     // 100 ms
  1e6,    2e6,    3e6,    5e6,    7e6,                     // 1 s
  1e7,    2e7,    3e7,    6e7,                             // 10 s .. 60 s
}};

struct latency_histogram {
  /// counts[i]: observations above bound i-1 and at most bound i; the last
  /// entry (index latency_bounds_us.size()) those above every bound. Empty
  /// until the first observation.
  std::vector<uint64_t> counts;
  double sum_us = 0;
  uint64_t count = 0;

  void observe(double us) {
    if (counts.empty())
      counts.resize(latency_bounds_us.size() + 1);
    size_t i = 0;
    while (i < latency_bounds_us.size() && us > latency_bounds_us[i])
      ++i;
    ++counts[i];
    sum_us += us;
    ++count;
  }

  void merge(const latency_histogram& other) {
    if (other.counts.empty())
      return;
    if (counts.empty())
      counts.resize(latency_bounds_us.size() + 1);
    for (size_t i = 0; i < counts.size() && i < other.counts.size(); ++i)
      counts[i] += other.counts[i];
    sum_us += other.sum_us;
    count += other.count;
  }

  /// The q-quantile (0 < q <= 1), interpolated within its bucket; the
  /// overflow bucket answers its lower bound (60 s). 0 when empty.
  double quantile(double q) const {
    if (count == 0)
      return 0;
    auto rank = q * static_cast<double>(count);
    double below = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
      auto n = static_cast<double>(counts[i]);
      if (n > 0 && below + n >= rank) {
        if (i == latency_bounds_us.size())
          return latency_bounds_us.back();
        double lo = i == 0 ? 0 : latency_bounds_us[i - 1];
        double hi = latency_bounds_us[i];
        return lo + (hi - lo) * ((rank - below) / n);
      }
      below += n;
    }
    return latency_bounds_us.back();
  }

  latency_percentiles percentiles() const {
    return {quantile(0.50), quantile(0.90), quantile(0.99)};
  }

  MSGPACK_DEFINE_MAP(counts, sum_us, count);
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, latency_histogram& x) {
  return f(caf::meta::type_name("pyvisor::latency_histogram"), x.counts, x.sum_us, x.count);
}

} // namespace pyvisor
