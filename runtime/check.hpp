// gort: invariants that execute.
//
// GORT_THROW(fmt, ...) is Go's `throw`: an impossible state was reached. It prints one line,
// "gort: fatal: <message>", and aborts, in every build. It writes with write(2) from a stack
// buffer, so it is usable in the preemption signal handler and with runtime locks held.
//
// GORT_ASSERT(cond, fmt, ...) checks a precondition or a counting invariant in debug builds
// (NDEBUG unset: `debugoptimized`, which is what tools/test builds) and compiles to nothing in
// release builds (tools/bench), so hot paths may carry them. The condition must have no side
// effects.
//
// GORT_CHECK(cond, fmt, ...) is GORT_ASSERT that stays on in release builds: for conditions that
// are cheap to test and would corrupt memory if they were false.
#pragma once

namespace gort::rt {

[[noreturn, gnu::cold, gnu::format(printf, 1, 2)]] void fatal(const char* fmt, ...) noexcept;

}  // namespace gort::rt

#define GORT_THROW(...) ::gort::rt::fatal(__VA_ARGS__)

#define GORT_CHECK(cond, ...)                      \
  do {                                             \
    if (__builtin_expect(!(cond), 0)) [[unlikely]] \
      ::gort::rt::fatal(__VA_ARGS__);              \
  } while (0)

#ifdef NDEBUG
#define GORT_DEBUG 0
#define GORT_ASSERT(cond, ...) \
  do {                         \
  } while (0)
#else
#define GORT_DEBUG 1
#define GORT_ASSERT(cond, ...) GORT_CHECK(cond, __VA_ARGS__)
#endif
