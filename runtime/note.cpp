// gort: futex wake-ups between OS threads: note (an M's one-shot park) and the raw futex calls.
#include "note.hpp"

#include "clock.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

namespace gort::rt {

void futex_wait(std::atomic<std::uint32_t>* addr, std::uint32_t expect) noexcept {
  // EINTR and spurious returns are fine: every caller re-checks its condition.
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), FUTEX_WAIT_PRIVATE, expect, nullptr,
          nullptr, 0);
}

bool futex_wait_until(std::atomic<std::uint32_t>* addr, std::uint32_t expect,
                      std::int64_t deadline_ns) noexcept {
  timespec ts{static_cast<time_t>(deadline_ns / 1'000'000'000),
              static_cast<long>(deadline_ns % 1'000'000'000)};
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline: no drift from recomputing a
  // relative timeout after every spurious wake-up.
  long r = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr),
                   FUTEX_WAIT_BITSET_PRIVATE, expect, &ts, nullptr, FUTEX_BITSET_MATCH_ANY);
  return !(r == -1 && errno == ETIMEDOUT);
}

void futex_wake(std::atomic<std::uint32_t>* addr, int n) noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), FUTEX_WAKE_PRIVATE, n, nullptr,
          nullptr, 0);
}

void note::wakeup() noexcept {
  if (key_.exchange(1, std::memory_order_acq_rel) == 2) futex_wake(&key_, 1);
}

void note::sleep() noexcept {
  for (;;) {
    std::uint32_t k = key_.load(std::memory_order_acquire);
    if (k == 1) return;
    if (k == 0 && !key_.compare_exchange_strong(k, 2, std::memory_order_acq_rel)) continue;
    futex_wait(&key_, 2);
  }
}

bool note::sleep_until(std::int64_t deadline_ns) noexcept {
  for (;;) {
    std::uint32_t k = key_.load(std::memory_order_acquire);
    if (k == 1) return true;
    if (k == 0 && !key_.compare_exchange_strong(k, 2, std::memory_order_acq_rel)) continue;
    if (!futex_wait_until(&key_, 2, deadline_ns) || nanotime() >= deadline_ns) {
      // Timed out. Go back to "clear" unless a wake-up slipped in meanwhile.
      std::uint32_t two = 2;
      if (key_.compare_exchange_strong(two, 0, std::memory_order_acq_rel)) return false;
      return true;
    }
  }
}

}  // namespace gort::rt
