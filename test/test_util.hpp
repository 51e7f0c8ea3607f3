// Small helpers shared by the tests.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>

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

// GORT_PROCS overrides config.procs; a value inherited from the environment would make the
// procs assertions meaningless, so each test case runs with it unset (and restores it).
// Sets an environment variable for a scope, restoring what was there.
struct scoped_env {
  std::string name;
  std::optional<std::string> saved;
  scoped_env(const char* n, const char* value) : name(n) {
    if (const char* v = std::getenv(n)) saved = v;
    setenv(n, value, 1);
  }
  ~scoped_env() {
    if (saved) setenv(name.c_str(), saved->c_str(), 1);
    else unsetenv(name.c_str());
  }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;
};

struct no_procs_env {
  std::optional<std::string> saved;
  no_procs_env() {
    if (const char* v = std::getenv("GORT_PROCS")) saved = v;
    unsetenv("GORT_PROCS");
  }
  ~no_procs_env() {
    if (saved) setenv("GORT_PROCS", saved->c_str(), 1);
    else unsetenv("GORT_PROCS");
  }
  no_procs_env(const no_procs_env&) = delete;
  no_procs_env& operator=(const no_procs_env&) = delete;
};
