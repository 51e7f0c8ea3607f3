// gort: the runtime's internal lock.
//
// Every critical section in the scheduler is a handful of pointer moves (queue splices, free
// list transfers, timer heap sifts). A futex mutex turns contention on such sections into
// syscalls and thread sleeps that cost microseconds; measured on the spawn benchmark, std::mutex
// spent most of its time in futex calls. This lock spins with `pause`/`yield` hints first and
// only then gives the CPU away with sched_yield, which bounds the damage when the holder's
// thread was descheduled. It is never held across a switch or a blocking call.
#pragma once

#include <sched.h>

#include <atomic>
#include <cstdint>

#include "check.hpp"

// Clang's thread-safety analysis (-Wthread-safety, on in tools/test's clang suite): a field
// marked GORT_GUARDED_BY(l) may only be touched with l held, a function marked
// GORT_REQUIRES(l) only called with it held. GCC ignores the attributes.
#if defined(__clang__)
#define GORT_TSA(x) __attribute__((x))
#else
#define GORT_TSA(x)
#endif
#define GORT_CAPABILITY(x) GORT_TSA(capability(x))
#define GORT_SCOPED_CAPABILITY GORT_TSA(scoped_lockable)
#define GORT_GUARDED_BY(x) GORT_TSA(guarded_by(x))
#define GORT_PT_GUARDED_BY(x) GORT_TSA(pt_guarded_by(x))
#define GORT_REQUIRES(...) GORT_TSA(requires_capability(__VA_ARGS__))
#define GORT_EXCLUDES(...) GORT_TSA(locks_excluded(__VA_ARGS__))
#define GORT_ACQUIRE(...) GORT_TSA(acquire_capability(__VA_ARGS__))
#define GORT_RELEASE(...) GORT_TSA(release_capability(__VA_ARGS__))
#define GORT_TRY_ACQUIRE(...) GORT_TSA(try_acquire_capability(__VA_ARGS__))
#define GORT_ASSERT_CAPABILITY(x) GORT_TSA(assert_capability(x))
// For code the analysis cannot follow: single-threaded boot and teardown, and locks taken in
// one function and released in another (a park's commit step).
#define GORT_NO_TSA GORT_TSA(no_thread_safety_analysis)

namespace gort::rt {

inline void cpu_relax() noexcept {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// The algorithm on a bare word, for locks whose storage lives elsewhere (the public headers'
// wait_group keeps a std::atomic<std::uint32_t> and must not see this header).
inline void spin_lock(std::atomic<std::uint32_t>& v) noexcept {
  for (int spins = 0;; ++spins) {
    if (!v.load(std::memory_order_relaxed) && !v.exchange(1, std::memory_order_acquire)) return;
    if (spins < 64) cpu_relax();
    else sched_yield();
  }
}
inline void spin_unlock(std::atomic<std::uint32_t>& v) noexcept { v.store(0, std::memory_order_release); }

class GORT_CAPABILITY("spinlock") spinlock {
 public:
  void lock() noexcept GORT_ACQUIRE() { spin_lock(v_); }
  bool try_lock() noexcept GORT_TRY_ACQUIRE(true) {
    return !v_.load(std::memory_order_relaxed) && !v_.exchange(1, std::memory_order_acquire);
  }
  void unlock() noexcept GORT_RELEASE() {
    GORT_ASSERT(v_.load(std::memory_order_relaxed), "unlock of a spinlock that is not held");
    spin_unlock(v_);
  }
  // Go's assertLockHeld: in debug builds, that somebody holds it (the lock does not record who,
  // which would cost a store on every acquisition); for the analysis, that the caller does.
  void assert_held() const noexcept GORT_ASSERT_CAPABILITY(this) {
    GORT_ASSERT(v_.load(std::memory_order_relaxed), "a runtime lock that must be held is not");
  }

 private:
  std::atomic<std::uint32_t> v_{0};
};

// std::lock_guard for spinlocks, visible to the analysis (libstdc++'s lock_guard is not).
class GORT_SCOPED_CAPABILITY spin_guard {
 public:
  explicit spin_guard(spinlock& l) noexcept GORT_ACQUIRE(l) : l_(l) { l_.lock(); }
  ~spin_guard() GORT_RELEASE() { l_.unlock(); }
  spin_guard(const spin_guard&) = delete;
  spin_guard& operator=(const spin_guard&) = delete;

 private:
  spinlock& l_;
};

}  // namespace gort::rt
