// gort: note, a one-shot wake-up between OS threads (Go's note), on a futex.
//
// An M with nothing to do sleeps on its note; whoever hands it work wakes the note. The wake
// may come before the sleep (the sleeper then returns at once), and at most one thread sleeps
// on a note at a time. States: 0 clear, 1 woken, 2 a sleeper is (about to be) in the kernel, so
// a waker only pays for the futex syscall when someone really sleeps.
#pragma once

#include <atomic>
#include <cstdint>

namespace gort::rt {

class note {
 public:
  void clear() noexcept { key_.store(0, std::memory_order_relaxed); }
  void wakeup() noexcept;
  void sleep() noexcept;
  // Sleeps until woken or until CLOCK_MONOTONIC reaches deadline_ns; true if woken.
  bool sleep_until(std::int64_t deadline_ns) noexcept;

 private:
  std::atomic<std::uint32_t> key_{0};
};

// Raw futex helpers for other waiters (foreign-thread parking).
void futex_wait(std::atomic<std::uint32_t>* addr, std::uint32_t expect) noexcept;
bool futex_wait_until(std::atomic<std::uint32_t>* addr, std::uint32_t expect,
                      std::int64_t deadline_ns) noexcept;
void futex_wake(std::atomic<std::uint32_t>* addr, int n) noexcept;

}  // namespace gort::rt
