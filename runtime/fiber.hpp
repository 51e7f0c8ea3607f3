// gort: a fiber is an execution context plus the per-thread state that must travel with it.
//
// arch/ switches registers and stacks. That is not enough to run arbitrary C++ on several
// stacks of one thread: some state the language runtime and the sanitizers keep per *thread*
// really belongs to the *execution* and must be swapped with it, or one coroutine corrupts
// another:
//
//  - C++ exception globals (__cxa_get_globals(): the chain of caught exceptions and the count
//    of uncaught ones). A coroutine that switches away inside a `catch` block, or while a
//    destructor runs during unwinding, would otherwise leave its exception visible to
//    std::current_exception() / std::uncaught_exceptions() in whatever runs next on the thread,
//    and lose it when it resumes on another thread.
//  - ASan: each stack switch must be announced (__sanitizer_start/finish_switch_fiber), or ASan
//    reports false stack-buffer overflows and loses its fake stacks.
//  - TSan: each fiber is a TSan "fiber" (its own shadow call stack and vector clock); switches
//    are announced with __tsan_switch_to_fiber, which also orders the two fibers' accesses.
//
// Every switch in gort goes through fiber::switch_to, so nothing later has to retrofit this.
//
// Protocol. The data word of an arch::transfer always carries a pointer to a `hop` on the
// leaving fiber's stack. The arriving side reads it at once (the leaving fiber cannot be
// resumed before its context is published, which the arriving side does itself), records the
// leaving fiber's context, and runs the leaving fiber's `after` action, if any, now that the
// leaving fiber is off its stack: that is where the scheduler publishes "this G is parked".
#pragma once

#include <cstddef>
#include <cstdint>

#include "context.hpp"

namespace gort::rt {

// Mirror of libstdc++'s / libc++abi's __cxa_eh_globals (both: caughtExceptions, then
// uncaughtExceptions; ARM EHABI's extra field does not exist on AArch64).
struct eh_globals {
  void* caught = nullptr;
  unsigned int uncaught = 0;
};

// The calling thread's exception globals. The pointer is per thread and never changes, so an
// M caches it once; it must never be cached across a switch by code that may migrate.
eh_globals* thread_eh_globals() noexcept;

// Under ASan, zeroes the shadow of [lo, lo+size), stack memory about to be unmapped. Frames
// that never return (every finished fiber's last ones, parked fibers abandoned at shutdown)
// leave redzones in the shadow, and munmap does not clear it: a thread stack or TLS block
// mapped there later would be reported as overflowing. The inner shadow pages are given back
// to the kernel (madvise), not written, so a reservation of many stacks costs nothing to
// clear. No-op in other builds. `lo` and `size` are page-aligned.
void forget_stack_shadow(void* lo, std::size_t size) noexcept;

struct fiber;
using after_fn = void (*)(fiber* left, void* arg);

struct fiber {
  arch::ctx ctx = nullptr;  // valid only while suspended
  eh_globals eh;            // this fiber's exception globals while it is not running

  // Run on the arriving side once this fiber is off its stack; one-shot, set before switching.
  after_fn after = nullptr;
  void* after_arg = nullptr;

  // Stack bounds, for ASan; a thread's own fiber learns them on its first switch.
  const void* stack_lo = nullptr;
  std::size_t stack_size = 0;
  void* asan_fake_stack = nullptr;
  void* tsan = nullptr;  // TSan fiber handle
  bool owns_tsan = false;

  // What a fresh fiber runs on its first switch.
  void (*entry)(fiber* self, void* arg) = nullptr;
  void* entry_arg = nullptr;

  // Makes this fiber a fresh context on [lo, lo+size); entry runs on first switch into it and
  // must end with a final switch (exit_to, or switch_to with `final`). `arg` is handed to entry.
  void init(void* lo, std::size_t size, void (*entry)(fiber* self, void* arg), void* arg);

  // Adopts the calling thread's current execution (its native stack) as a fiber, so it can
  // switch to others and be switched back to.
  void init_thread() noexcept;

  // Releases sanitizer state; call once the fiber is dead and suspended for the last time
  // (its final switch) or, for a thread fiber, before the thread ends.
  void destroy() noexcept;

  // Switches from this (running) fiber to `to` (suspended). `teh` is the running thread's
  // exception globals (thread_eh_globals() of the current thread). Returns when some fiber
  // switches back to this one, possibly on another thread.
  // `final`: this fiber is finished and never resumed (as exit_to, which see); the scheduler
  // passes it here instead of calling exit_to so that every switch goes through one call site.
  void switch_to(fiber& to, eh_globals* teh, bool final = false) noexcept;

  // Final switch of a finished fiber: like switch_to, but never returns, and tells ASan to
  // drop this fiber's fake stack.
  [[noreturn]] void exit_to(fiber& to, eh_globals* teh) noexcept;
};

}  // namespace gort::rt
