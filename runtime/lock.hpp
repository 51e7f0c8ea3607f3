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

class spinlock {
 public:
  void lock() noexcept { spin_lock(v_); }
  bool try_lock() noexcept {
    return !v_.load(std::memory_order_relaxed) && !v_.exchange(1, std::memory_order_acquire);
  }
  void unlock() noexcept { spin_unlock(v_); }

 private:
  std::atomic<std::uint32_t> v_{0};
};

}  // namespace gort::rt
