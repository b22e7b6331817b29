// Unit tests of latency_histogram (actors/pool/latency_histogram.hpp): what
// the pool's `stats` percentiles and the Prometheus histograms are made of.
#include "support/catch_caf.hpp"

#include "pyvisor/latency_histogram.hpp"
#include "pyvisor/pool.hpp"

using namespace pyvisor;

namespace {

/// Index of the bucket that holds `us`.
size_t bucket_of(double us) {
  size_t i = 0;
  while (i < latency_bounds_us.size() && us > latency_bounds_us[i])
    ++i;
  return i;
}

} // namespace

TEST_CASE("bucket bounds rise and are at most 2x apart", "[unit][pool][metrics]") {
  for (size_t i = 1; i < latency_bounds_us.size(); ++i) {
    CHECK(latency_bounds_us[i] > latency_bounds_us[i - 1]);
    CHECK(latency_bounds_us[i] <= 2 * latency_bounds_us[i - 1]);
  }
}

TEST_CASE("observations land in their bucket, bounds inclusive", "[unit][pool][metrics]") {
  latency_histogram h;
  CHECK(h.quantile(0.5) == 0);
  h.observe(10);   // on the first bound
  h.observe(10.5); // just above it
  h.observe(1e9);  // above every bound
  REQUIRE(h.counts.size() == latency_bounds_us.size() + 1);
  CHECK(h.counts[0] == 1);
  CHECK(h.counts[1] == 1);
  CHECK(h.counts.back() == 1);
  CHECK(h.count == 3);
  CHECK(h.sum_us == Approx(10 + 10.5 + 1e9));
  CHECK(h.quantile(1.0) == latency_bounds_us.back());
}

TEST_CASE("percentile estimates stay in the bucket of the true percentile",
          "[unit][pool][metrics]") {
  // 1000 service times spread over four decades (a skewed distribution).
  std::vector<double> xs;
  for (int i = 0; i < 1000; ++i)
    xs.push_back(15.0 * std::pow(1.01, i)); // 15 us .. about 320 ms
  latency_histogram h;
  for (auto x : xs)
    h.observe(x);
  for (double q : {0.5, 0.9, 0.99}) {
    auto truth = xs[static_cast<size_t>(q * xs.size()) - 1];
    auto estimate = h.quantile(q);
    INFO("q=" << q << " truth=" << truth << " estimate=" << estimate);
    CHECK(bucket_of(estimate) == bucket_of(truth));
  }
  auto p = h.percentiles();
  CHECK(p.p50 < p.p90);
  CHECK(p.p90 < p.p99);
}

TEST_CASE("histograms add up by merging", "[unit][pool][metrics]") {
  latency_histogram a;
  latency_histogram b;
  latency_histogram both;
  for (int i = 1; i <= 100; ++i) {
    auto x = static_cast<double>(i * 37 % 5000);
    (i % 2 == 0 ? a : b).observe(x);
    both.observe(x);
  }
  latency_histogram empty;
  a.merge(empty);
  empty.merge(a);
  CHECK(empty.counts == a.counts);
  a.merge(b);
  CHECK(a.counts == both.counts);
  CHECK(a.count == 100);
  CHECK(a.sum_us == Approx(both.sum_us));
  CHECK(a.quantile(0.9) == Approx(both.quantile(0.9)));
}

TEST_CASE("command statistics travel in stats as a map", "[unit][pool][metrics]") {
  pool_stats s;
  auto& cs = s.commands["echo"];
  cs.replies["ok"] = 3;
  cs.histogram.observe(120);
  cs.latency_us = cs.histogram.percentiles();
  auto bytes = pack(s);
  auto handle = msgpack::unpack(bytes.bytes.data(), bytes.bytes.size());
  auto top = handle.get().as<std::map<std::string, msgpack::object>>();
  auto commands = top.at("commands").as<std::map<std::string, msgpack::object>>();
  auto echo = commands.at("echo").as<std::map<std::string, msgpack::object>>();
  CHECK(echo.at("replies").as<std::map<std::string, uint64_t>>().at("ok") == 3);
  auto hist = echo.at("histogram").as<std::map<std::string, msgpack::object>>();
  CHECK(hist.at("count").as<uint64_t>() == 1);
  auto latency = echo.at("latency_us").as<std::map<std::string, double>>();
  CHECK(latency.at("p50") > 100);
  CHECK(latency.at("p50") <= 200);
}
