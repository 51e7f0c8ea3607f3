// Test helpers that look into the runtime or lean on the stack: waiting until a G is parked,
// spinning with no calls (for preemption tests), and frames larger than a stack guard.
#pragma once

#include <alloca.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>

#include "gort/gort.hpp"
#include "sched.hpp"

// Yields until the G published in `gp` is parked (true), or until `returned` is set or 20 s
// have passed (false; the limit only bounds the polling).
inline bool parks_without_returning(const std::atomic<gort::rt::g*>& gp,
                                    const std::atomic<bool>& returned) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (;;) {
    if (returned.load()) return false;
    if (gort::rt::g* g = gp.load(); g && g->status.load() == gort::rt::gstatus::waiting) return true;
    if (std::chrono::steady_clock::now() >= give_up) return false;
    gort::yield();
  }
}

// A loop with no calls at all: nothing in it can yield cooperatively.
inline void spin_until(const std::atomic<bool>& flag) {
  while (!flag.load(std::memory_order_relaxed)) {
  }
}

#if defined(__SANITIZE_THREAD__)
// TSan defers asynchronous signals until the thread next enters its runtime (an intercepted
// call), and a loop of plain atomic loads never does: under TSan a call-free spinner cannot be
// interrupted by anyone's signal. The spinners there make one opaque call per iteration, which
// is what lets TSan deliver the signal; the preemption they see is still the asynchronous one
// (the call is not a gort call).
[[gnu::noinline]] inline void opaque_call() { asm volatile("" ::: "memory"); }
inline void spin_until_tsan(const std::atomic<bool>& flag) {
  while (!flag.load(std::memory_order_relaxed)) opaque_call();
}
#define SPIN spin_until_tsan
#else
#define SPIN spin_until
#endif

// Runs a G that spins with SPIN until a G it queued behind itself sets `flag`, and waits for
// both. On a single P the setter can only run if the spinner is preempted asynchronously.
inline void spin_until_preempted(std::atomic<bool>& flag) {
  gort::wait_group wg;
  wg.add(2);
  gort::go([&] {
    gort::go([&] {
      flag.store(true, std::memory_order_relaxed);
      wg.done();
    });
    SPIN(flag);
    wg.done();
  });
  wg.wait();
}

// Uses the bottom of a buffer, as snprintf into a big local buffer would.
[[gnu::noinline]] inline int use_low_end(char* p) {
  for (std::size_t i = 0; i < 256; ++i) static_cast<volatile char*>(p)[i] = static_cast<char>(i);
  return static_cast<volatile char*>(p)[255];
}

// A frame of N bytes (with -fstack-clash-protection, probed page by page).
template <std::size_t N>
[[gnu::noinline]] int big_array() {
  std::array<char, N> a;
  return use_low_end(a.data());
}

[[gnu::noinline]] inline int big_alloca(std::size_t n) {
  return use_low_end(static_cast<char*>(alloca(n)));
}
