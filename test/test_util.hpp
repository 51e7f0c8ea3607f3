// Small helpers shared by the tests.
#pragma once

#include <sys/mman.h>
#include <sys/resource.h>

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "gort/config.hpp"
#include "gort_build_config.h"
#if GORT_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define TEST_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define TEST_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

// A plain mmap'd stack for tests of the arch layer that must not depend on the stack pool.
struct test_stack {
  static constexpr std::size_t size = 64 * 1024;
  char* lo = nullptr;
  unsigned vg_id = 0;
  test_stack() {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    lo = static_cast<char*>(p);
    // Raw arch-level switches are invisible to ASan: shadow left by an earlier stack at this
    // address would read as poisoned frames.
    TEST_UNPOISON(lo, size);
#if GORT_HAVE_VALGRIND
    vg_id = VALGRIND_STACK_REGISTER(lo, lo + size);  // so memcheck follows the switches
#endif
  }
  test_stack(test_stack&& o) noexcept : lo(o.lo), vg_id(o.vg_id) { o.lo = nullptr; }
  test_stack(const test_stack&) = delete;
  ~test_stack() {
    if (!lo) return;
#if GORT_HAVE_VALGRIND
    VALGRIND_STACK_DEREGISTER(vg_id);
#endif
    munmap(lo, size);
  }
  void* top() const { return lo + size; }
  bool contains(const void* p) const {
    auto* c = static_cast<const char*>(p);
    return c >= lo && c < lo + size;
  }
};

// Divisor for iteration counts in slow environments (qemu): GORT_TEST_SCALE=10 runs a tenth.
inline long test_scale() {
  const char* s = std::getenv("GORT_TEST_SCALE");
  long v = s ? std::atol(s) : 1;
  return v > 0 ? v : 1;
}

inline gort::config with_procs(unsigned n, gort::pin_policy pin = gort::pin_policy::none) {
  gort::config c;
  c.procs = n;
  c.pin = pin;
  return c;
}

// Sets an environment variable for a scope (unsets it if value is null), restoring what was
// there.
struct scoped_env {
  std::string name;
  std::optional<std::string> saved;
  scoped_env(const char* n, const char* value) : name(n) {
    if (const char* v = std::getenv(n)) saved = v;
    if (value) setenv(n, value, 1);
    else unsetenv(n);
  }
  ~scoped_env() {
    if (saved) setenv(name.c_str(), saved->c_str(), 1);
    else unsetenv(name.c_str());
  }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;
};

// GORT_PROCS overrides config.procs; a value inherited from the environment would make the
// procs assertions meaningless, so each test case runs with it unset (and restores it).
struct no_procs_env : scoped_env {
  no_procs_env() : scoped_env("GORT_PROCS", nullptr) {}
};

// Keeps the environment from overriding what a test configures: every variable that overrides
// a gort::config field is unset for the scope (and restored after it).
struct clean_env {
  no_procs_env procs;
  scoped_env time_slice{"GORT_TIME_SLICE", nullptr};
  scoped_env async_preempt{"GORT_ASYNC_PREEMPT", nullptr};
  scoped_env sysmon{"GORT_SYSMON", nullptr};
  scoped_env scavenge_period{"GORT_SCAVENGE_PERIOD", nullptr};
  scoped_env deadlock{"GORT_DEADLOCK", nullptr};
  scoped_env max_threads{"GORT_MAX_THREADS", nullptr};
};

// CPU time the whole process has used, user and system, over all its threads.
inline std::chrono::nanoseconds process_cpu_time() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto tv = [](const timeval& t) {
    return std::chrono::seconds(t.tv_sec) + std::chrono::microseconds(t.tv_usec);
  };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

// Values 0..n-1 handed out over several receivers, each of which lists what it got: counts
// that show whether every value arrived exactly once (then out_of_range and repeated are 0 and
// total is n).
struct delivery_count {
  long total = 0;         // values received, over all the lists
  long out_of_range = 0;  // values outside 0..n-1
  long repeated = 0;      // receipts of a value already received
};
template <class T>
delivery_count count_deliveries(const std::vector<std::vector<T>>& lists, long n) {
  delivery_count c;
  std::vector<bool> seen(static_cast<std::size_t>(n), false);
  for (const auto& list : lists) {
    c.total += static_cast<long>(list.size());
    for (const T v : list) {
      const long x = static_cast<long>(v);
      if (x < 0 || x >= n) {
        ++c.out_of_range;
      } else if (seen[static_cast<std::size_t>(x)]) {
        ++c.repeated;
      } else {
        seen[static_cast<std::size_t>(x)] = true;
      }
    }
  }
  return c;
}
