// gort: configuration from the environment. Every GORT_* variable the runtime reads is read
// here: GORT_PROCS, GORT_TIME_SLICE, GORT_ASYNC_PREEMPT, GORT_SYSMON, GORT_SCAVENGE_PERIOD,
// GORT_DEADLOCK, GORT_MAX_THREADS (read_settings, at every run) and GORT_STACK_GUARD (when a
// stack pool is created). An environment value overrides the config field of the same name.
#include "env.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cgroup.hpp"
#include "pin.hpp"

namespace gort::rt {

namespace {

unsigned procs_from(const config& cfg) {
  unsigned n = cfg.procs;
  if (const char* env = std::getenv("GORT_PROCS"); env && *env) {
    char* end = nullptr;
    unsigned long v = std::strtoul(env, &end, 10);
    if (*end != '\0' || v == 0 || v > 4096)
      throw std::invalid_argument(std::string("gort: GORT_PROCS='") + env +
                                  "' is not a processor count in 1..4096");
    n = static_cast<unsigned>(v);
  }
  if (n > 4096)
    throw std::invalid_argument("gort: config.procs = " + std::to_string(n) +
                                " is out of range (at most 4096)");
  if (n == 0) n = default_procs(allowed_cpus(), cgroup_cpu_limit());
  return n;
}

bool env_bool(const char* name, bool def) {
  const char* env = std::getenv(name);
  if (!env || !*env) return def;
  if (!std::strcmp(env, "1")) return true;
  if (!std::strcmp(env, "0")) return false;
  throw std::invalid_argument(std::string("gort: ") + name + "='" + env + "' is not 0 or 1");
}

// "10ms", "250us", "1s", "500000ns".
std::int64_t env_duration_ns(const char* name, std::int64_t def) {
  const char* env = std::getenv(name);
  if (!env || !*env) return def;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(env, &end, 10);
  std::int64_t unit = 0;
  if (end != env && errno == 0) {
    if (!std::strcmp(end, "ns")) unit = 1;
    else if (!std::strcmp(end, "us")) unit = 1'000;
    else if (!std::strcmp(end, "ms")) unit = 1'000'000;
    else if (!std::strcmp(end, "s")) unit = 1'000'000'000;
  }
  if (!unit || v > 3'600'000'000'000ull / static_cast<unsigned long long>(unit))
    throw std::invalid_argument(std::string("gort: ") + name + "='" + env +
                                "' is not a duration such as 10ms, 500us or 1s");
  return static_cast<std::int64_t>(v) * unit;
}

}  // namespace

settings read_settings(const config& cfg) {
  settings s;
  s.procs = procs_from(cfg);
  std::int64_t slice = env_duration_ns("GORT_TIME_SLICE", cfg.time_slice.count());
  if (slice < 100'000)
    throw std::invalid_argument("gort: time_slice = " + std::to_string(slice) +
                                " ns is too short (at least 100us)");
  s.time_slice_ns = slice;
  s.async_preempt = env_bool("GORT_ASYNC_PREEMPT", cfg.async_preempt);
  s.sysmon = env_bool("GORT_SYSMON", cfg.sysmon);
  const std::int64_t scavenge = env_duration_ns("GORT_SCAVENGE_PERIOD", cfg.scavenge_period.count());
  if (scavenge < 0)
    throw std::invalid_argument("gort: scavenge_period = " + std::to_string(scavenge) +
                                " ns is negative (0 turns scavenging off)");
  s.scavenge_period_ns = scavenge;
  s.detect_deadlock = env_bool("GORT_DEADLOCK", cfg.detect_deadlock);
  unsigned long maxt = cfg.max_threads;
  if (const char* env = std::getenv("GORT_MAX_THREADS"); env && *env) {
    char* end = nullptr;
    maxt = std::strtoul(env, &end, 10);
    if (*end != '\0' || maxt == 0 || maxt > 1'000'000)
      throw std::invalid_argument(std::string("gort: GORT_MAX_THREADS='") + env +
                                  "' is not a thread count in 1..1000000");
  }
  if (maxt == 0) throw std::invalid_argument("gort: config.max_threads must be at least 1");
  s.max_threads = static_cast<std::uint32_t>(maxt);
  return s;
}

guard_mode stack_guard_from_env() noexcept {
  const char* v = std::getenv("GORT_STACK_GUARD");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return guard_mode::automatic;
  if (std::strcmp(v, "madvise") == 0) return guard_mode::madvise;
  if (std::strcmp(v, "mprotect") == 0) return guard_mode::mprotect;
  if (std::strcmp(v, "none") == 0) return guard_mode::none;
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    static const char msg[] = "gort: warning: ignoring GORT_STACK_GUARD (expected madvise, mprotect or none)\n";
    [[maybe_unused]] ssize_t w = ::write(2, msg, sizeof msg - 1);
  }
  return guard_mode::automatic;
}

}  // namespace gort::rt
