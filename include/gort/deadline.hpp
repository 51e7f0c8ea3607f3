// gort: turning the durations and time points of the public API into steady_clock deadlines.
//
// Every call that takes a duration (chan::send_for/recv_for, on_timeout, sleep_for, the
// try_*_for and wait_for of sync.hpp, timers and tickers) computes "now + d" here, and every
// call that takes a steady_clock time point converts it here. Both saturate: a duration or a
// time point too far away for the deadline to fit (nanoseconds::max(), hours::max(), a huge
// floating-point count) becomes never_ns instead of wrapping around into the past, where it
// would make the call return at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>

namespace gort::detail {

// The deadline that never comes: about 146 years of CLOCK_MONOTONIC time, i.e. after boot.
// Half the range of int64_t, so that code adding an interval to a deadline (a ticker's next
// period) cannot overflow. A call that treats "no deadline" specially (0 for channels and
// sync.hpp) maps never_ns to it.
inline constexpr std::int64_t never_ns = std::numeric_limits<std::int64_t>::max() / 2;

// d in nanoseconds, rounded up, within [0, never_ns]: 0 for d <= 0, never_ns for anything at
// least that long (or NaN). The comparison is done in floating point, before any conversion
// that could overflow (hours::max() in nanoseconds does).
template <class Rep, class Per>
constexpr std::int64_t saturating_ns(const std::chrono::duration<Rep, Per>& d) noexcept {
  const double ns = std::chrono::duration<double, std::nano>(d).count();
  if (ns <= 0) return 0;
  if (!(ns < static_cast<double>(never_ns))) return never_ns;
  // Below 2^62: the conversion to nanoseconds fits in int64_t.
  return std::chrono::ceil<std::chrono::nanoseconds>(d).count();
}

inline std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// now + d as a steady_clock deadline in nanoseconds (d rounded up), saturating at never_ns.
// d <= 0 gives now: whether that means "do not wait" is the caller's business.
template <class Rep, class Per>
std::int64_t steady_deadline_after(const std::chrono::duration<Rep, Per>& d) noexcept {
  const std::int64_t now = steady_now_ns();
  const std::int64_t ns = saturating_ns(d);
  return ns >= never_ns - now ? never_ns : now + ns;
}

// A steady_clock time point as a deadline in nanoseconds (rounded up), within
// [0, never_ns]: 0 for the clock's epoch or before it.
template <class Dur>
constexpr std::int64_t steady_deadline_at(const std::chrono::time_point<std::chrono::steady_clock, Dur>& t) noexcept {
  return saturating_ns(t.time_since_epoch());
}

}  // namespace gort::detail
