// gort: configuration from the environment (env.cpp). Every GORT_* variable is read here, so
// docs/building.md's table has one place to be checked against. A malformed value is an
// std::invalid_argument naming the variable and what it expects; a config field out of range
// likewise names the field.
#pragma once

#include <cstdint>

#include "gort/config.hpp"
#include "stack.hpp"

namespace gort::rt {

// A config with the environment's overrides applied and every value validated.
struct settings {
  unsigned procs = 0;  // resolved: never 0
  std::int64_t time_slice_ns = 0;
  bool async_preempt = true;
  bool sysmon = true;
  std::int64_t scavenge_period_ns = 0;
  bool detect_deadlock = true;
  std::uint32_t max_threads = 0;
};
settings read_settings(const config& cfg);

// GORT_STACK_GUARD (auto, madvise, mprotect, none); a bad value warns once and means auto.
guard_mode stack_guard_from_env() noexcept;

}  // namespace gort::rt
