// Assertions for code running in many Gs at once. Catch2's assertions are not thread-safe, so
// Gs running in parallel count failures with EXPECT, and the test's main G (or thread) checks
// the count is zero: an `expect_none` in scope does that when it goes out of scope.
#pragma once

#include <catch2/catch_test_macros.hpp>

#include <atomic>

inline std::atomic<long> bad{0};

#define EXPECT(cond)                                          \
  do {                                                        \
    if (!(cond)) bad.fetch_add(1, std::memory_order_relaxed); \
  } while (0)

struct expect_none {
  expect_none() { bad.store(0); }
  ~expect_none() { CHECK(bad.load() == 0); }
};
