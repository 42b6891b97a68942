// The Prometheus text exposition format (version 0.0.4) of an instance's Metrics:
// every metric is listed in docs/metrics.md.
#pragma once

#include <string>

#include "cli/metrics.hpp"

namespace understudy::cli {

inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

std::string prometheus_text(const Metrics& m, MetricsClock::time_point now = MetricsClock::now());

} // namespace understudy::cli
