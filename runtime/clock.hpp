// gort: the runtime's clock.
#pragma once

#include <time.h>

#include <cstdint>

namespace gort::rt {

// CLOCK_MONOTONIC in nanoseconds; the same clock as std::chrono::steady_clock (a vDSO call).
inline std::int64_t nanotime() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace gort::rt
