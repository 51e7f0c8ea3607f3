// gort: synchronisation that parks the G, never the M (docs/sync.md).
//
//   gort::mutex mu;
//   gort::condition_variable cv;
//   {
//     std::unique_lock lk(mu);
//     cv.wait(lk, [&] { return ready; });   // parks this G; other Gs keep the thread
//   }
//
// Every type is also usable from plain OS threads (they then block on a futex), takes
// std::chrono durations and time points of any clock, and fits the standard library's shapes
// (std::lock_guard, std::unique_lock, std::scoped_lock, std::shared_lock).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>  // std::cv_status
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <type_traits>
#include <utility>

#include "gort/gort.hpp"

namespace gort {

namespace detail {

// Deadlines cross into the runtime as CLOCK_MONOTONIC (steady_clock) nanoseconds; 0 means
// none. A deadline too far to represent (never_ns, deadline.hpp) is no deadline at all; one at
// or before the clock's epoch is 1 (already due: only an immediate success counts).
inline std::int64_t sync_deadline(std::int64_t ns) noexcept { return ns >= never_ns ? 0 : ns > 0 ? ns : 1; }
template <class Rep, class Per>
std::int64_t sync_deadline_after(const std::chrono::duration<Rep, Per>& d) {
  return sync_deadline(steady_deadline_after(d));
}

// Runs op(deadline_ns) until it succeeds or Clock says t has passed. steady_clock deadlines go
// straight through; other clocks (system_clock may jump) are waited for in steady steps, each
// re-measured against Clock, so a clock set back does not end the wait early.
template <class Clock, class Dur, class Op>
bool until_clock(const std::chrono::time_point<Clock, Dur>& t, Op op) {
  if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
    return op(sync_deadline(steady_deadline_at(t)));
  } else {
    for (;;) {
      const auto now = Clock::now();
      if (now >= t) return op(sync_deadline_after(std::chrono::nanoseconds(0)));
      if (op(sync_deadline_after(t - now))) return true;
    }
  }
}

}  // namespace detail

// Go's sync.Mutex behind std::mutex's interface (plus std::timed_mutex's). A locker spins a
// few rounds, then parks. Normal mode lets a running locker barge in ahead of woken waiters
// (throughput); a waiter that has waited more than 1 ms switches the mutex to starvation mode,
// where unlock hands the lock straight to the oldest waiter (FIFO) until the queue drains.
// unlock() of a mutex that is not locked throws std::system_error(operation_not_permitted).
// Not recursive; any G or thread may unlock (as in Go).
class mutex {
 public:
  constexpr mutex() noexcept = default;
  mutex(const mutex&) = delete;
  mutex& operator=(const mutex&) = delete;
  ~mutex() = default;

  void lock() {
    // Free (neither locked nor starving): take it, even with waiters queued (normal mode lets a
    // running G barge in; the queue bits stay as they are).
    std::uint32_t e = 0;
    if (state_.compare_exchange_strong(e, 1, std::memory_order_acquire, std::memory_order_relaxed)) return;
    if (!(e & 5u) && state_.compare_exchange_strong(e, e | 1u, std::memory_order_acquire, std::memory_order_relaxed))
      return;
    lock_slow(0);
  }
  bool try_lock() noexcept {
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    while (!(s & 5u))  // neither locked nor starving (a starving mutex belongs to its queue)
      if (state_.compare_exchange_weak(s, s | 1u, std::memory_order_acquire, std::memory_order_relaxed))
        return true;
    return false;
  }
  template <class Rep, class Per>
  bool try_lock_for(const std::chrono::duration<Rep, Per>& d) {
    return try_lock() || lock_slow(detail::sync_deadline_after(d));
  }
  template <class Clock, class Dur>
  bool try_lock_until(const std::chrono::time_point<Clock, Dur>& t) {
    return try_lock() || detail::until_clock(t, [this](std::int64_t dl) { return lock_slow(dl); });
  }
  void unlock() {
    // Locked, not starving, and nobody to wake (no waiters, or one already woken): one CAS is
    // the whole unlock, and the last touch of the mutex.
    std::uint32_t e = 1;
    if (state_.compare_exchange_strong(e, 0, std::memory_order_release, std::memory_order_relaxed)) return;
    if ((e & 5u) == 1u && (!(e & 8u) || (e & 2u)) &&
        state_.compare_exchange_strong(e, e & ~1u, std::memory_order_release, std::memory_order_relaxed))
      return;
    unlock_slow();
  }

 private:
  friend class condition_variable;
  GORT_API bool lock_slow(std::int64_t deadline_ns);
  GORT_API void unlock_slow();
  bool unlock_quiet();  // unlock without the starvation-mode yield; true if handed off

  // locked 1 | woken 2 | starving 4 | waiters queued 8 | queue lock 16, in one word so that an
  // unlock's last touch of the mutex is the one CAS that releases it. Protocol: runtime/sync.cpp.
  std::atomic<std::uint32_t> state_{0};
  void* head_ = nullptr;
  void* tail_ = nullptr;
};

// Go's sync.RWMutex behind std::shared_timed_mutex's interface: many readers or one writer.
// Writer-preferring: once a writer waits, new readers queue behind it, so writers are not
// starved; a writer's unlock admits the readers queued at the front together.
class shared_mutex {
 public:
  constexpr shared_mutex() noexcept = default;
  shared_mutex(const shared_mutex&) = delete;
  shared_mutex& operator=(const shared_mutex&) = delete;
  ~shared_mutex() = default;

  void lock() {
    std::uint64_t e = 0;
    if (!state_.compare_exchange_strong(e, writer, std::memory_order_acquire, std::memory_order_relaxed))
      lock_slow(0);
  }
  bool try_lock() noexcept {
    std::uint64_t e = 0;
    return state_.compare_exchange_strong(e, writer, std::memory_order_acquire, std::memory_order_relaxed);
  }
  template <class Rep, class Per>
  bool try_lock_for(const std::chrono::duration<Rep, Per>& d) {
    return try_lock() || lock_slow(detail::sync_deadline_after(d));
  }
  template <class Clock, class Dur>
  bool try_lock_until(const std::chrono::time_point<Clock, Dur>& t) {
    return try_lock() || detail::until_clock(t, [this](std::int64_t dl) { return lock_slow(dl); });
  }
  GORT_API void unlock();

  void lock_shared() {
    if (!try_lock_shared()) lock_shared_slow(0);
  }
  bool try_lock_shared() noexcept {
    std::uint64_t s = state_.load(std::memory_order_relaxed);
    while (!(s & (writer | pending)))
      if (state_.compare_exchange_weak(s, s + reader, std::memory_order_acquire, std::memory_order_relaxed))
        return true;
    return false;
  }
  template <class Rep, class Per>
  bool try_lock_shared_for(const std::chrono::duration<Rep, Per>& d) {
    return try_lock_shared() || lock_shared_slow(detail::sync_deadline_after(d));
  }
  template <class Clock, class Dur>
  bool try_lock_shared_until(const std::chrono::time_point<Clock, Dur>& t) {
    return try_lock_shared() ||
           detail::until_clock(t, [this](std::int64_t dl) { return lock_shared_slow(dl); });
  }
  GORT_API void unlock_shared();

 private:
  static constexpr std::uint64_t writer = 1;   // a writer holds it
  static constexpr std::uint64_t pending = 2;  // the queue is not empty: newcomers queue too
  static constexpr std::uint64_t reader = 4;   // readers holding it, counted from bit 2
  GORT_API bool lock_slow(std::int64_t deadline_ns);
  GORT_API bool lock_shared_slow(std::int64_t deadline_ns);

  std::atomic<std::uint64_t> state_{0};
  std::atomic<std::uint32_t> qlock_{0};
  void* head_ = nullptr;
  void* tail_ = nullptr;
};

// std::condition_variable for std::unique_lock<gort::mutex>. Waiting parks the G; wakes are
// FIFO; a wait may return spuriously (use the predicate forms). The lock must be held by the
// caller (std::system_error(operation_not_permitted) otherwise).
class condition_variable {
 public:
  constexpr condition_variable() noexcept = default;
  condition_variable(const condition_variable&) = delete;
  condition_variable& operator=(const condition_variable&) = delete;
  ~condition_variable() = default;

  GORT_API void notify_one() noexcept;
  GORT_API void notify_all() noexcept;

  void wait(std::unique_lock<mutex>& lk) { wait_impl(lk, 0); }
  template <class Pred>
  void wait(std::unique_lock<mutex>& lk, Pred pred) {
    while (!pred()) wait(lk);
  }
  template <class Rep, class Per>
  std::cv_status wait_for(std::unique_lock<mutex>& lk, const std::chrono::duration<Rep, Per>& d) {
    return wait_impl(lk, detail::sync_deadline_after(d)) ? std::cv_status::no_timeout
                                                         : std::cv_status::timeout;
  }
  template <class Rep, class Per, class Pred>
  bool wait_for(std::unique_lock<mutex>& lk, const std::chrono::duration<Rep, Per>& d, Pred pred) {
    using steady = std::chrono::steady_clock;
    const std::chrono::nanoseconds dl(detail::steady_deadline_after(d));
    return wait_until(lk, steady::time_point(std::chrono::ceil<steady::duration>(dl)), std::move(pred));
  }
  template <class Clock, class Dur>
  std::cv_status wait_until(std::unique_lock<mutex>& lk, const std::chrono::time_point<Clock, Dur>& t) {
    std::int64_t dl;
    if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
      dl = detail::sync_deadline(detail::steady_deadline_at(t));
    } else {
      dl = detail::sync_deadline_after(t - Clock::now());
    }
    wait_impl(lk, dl);
    // As std: the verdict is the clock's, not the wake-up's (a wake at the deadline is a
    // no_timeout only if the clock says so; a system_clock set back reads as a spurious wake).
    return Clock::now() < t ? std::cv_status::no_timeout : std::cv_status::timeout;
  }
  template <class Clock, class Dur, class Pred>
  bool wait_until(std::unique_lock<mutex>& lk, const std::chrono::time_point<Clock, Dur>& t, Pred pred) {
    while (!pred())
      if (wait_until(lk, t) == std::cv_status::timeout) return pred();
    return true;
  }

 private:
  // True if woken by a notify (or spuriously), false if the deadline passed.
  GORT_API bool wait_impl(std::unique_lock<mutex>& lk, std::int64_t deadline_ns);

  std::atomic<std::uint32_t> qlock_{0};
  void* head_ = nullptr;
  void* tail_ = nullptr;
};

// A counting semaphore (std::counting_semaphore's interface, runtime-sized): acquire takes a
// unit, parking while there is none; release(n) hands units to waiters in FIFO order first.
// release with n < 0, or past max(), throws std::invalid_argument.
class semaphore {
 public:
  explicit semaphore(std::ptrdiff_t initial) : state_(check_initial(initial)) {}
  semaphore(const semaphore&) = delete;
  semaphore& operator=(const semaphore&) = delete;
  ~semaphore() = default;

  static constexpr std::ptrdiff_t max() noexcept { return 0x7fffffff; }

  void acquire() {
    if (!try_acquire()) acquire_slow(0);
  }
  bool try_acquire() noexcept {
    std::uint64_t s = state_.load(std::memory_order_relaxed);
    while (s & count_mask)
      if (state_.compare_exchange_weak(s, s - 1, std::memory_order_acquire, std::memory_order_relaxed))
        return true;
    return false;
  }
  template <class Rep, class Per>
  bool try_acquire_for(const std::chrono::duration<Rep, Per>& d) {
    return try_acquire() || acquire_slow(detail::sync_deadline_after(d));
  }
  template <class Clock, class Dur>
  bool try_acquire_until(const std::chrono::time_point<Clock, Dur>& t) {
    return try_acquire() ||
           detail::until_clock(t, [this](std::int64_t dl) { return acquire_slow(dl); });
  }
  GORT_API void release(std::ptrdiff_t n = 1);

 private:
  static constexpr std::uint64_t count_mask = 0xffffffffu;  // units; waiters queued above
  static std::uint64_t check_initial(std::ptrdiff_t v) {
    if (v < 0 || v > max())
      throw std::invalid_argument("gort::semaphore: initial count out of range [0, max()]");
    return static_cast<std::uint64_t>(v);
  }
  GORT_API bool acquire_slow(std::int64_t deadline_ns);

  std::atomic<std::uint64_t> state_;  // queued waiters << 32 | units
  std::atomic<std::uint32_t> qlock_{0};
  void* head_ = nullptr;
  void* tail_ = nullptr;
};

// std::once_flag / std::call_once: the first caller runs f; concurrent callers park until it
// returns. If f throws, the exception propagates to its caller and another caller (a waiting
// one, or the next to arrive) runs its own f.
class once_flag {
 public:
  constexpr once_flag() noexcept = default;
  once_flag(const once_flag&) = delete;
  once_flag& operator=(const once_flag&) = delete;

 private:
  template <class F, class... A>
  friend void call_once(once_flag& fl, F&& f, A&&... args);
  GORT_API bool begin();  // true: the caller must run f, then finish(ok)
  GORT_API void finish(bool ok) noexcept;

  std::atomic<std::uint32_t> state_{0};  // 0 not run, 1 running, 2 done
  std::atomic<std::uint32_t> qlock_{0};
  void* head_ = nullptr;
  void* tail_ = nullptr;
};

template <class F, class... A>
void call_once(once_flag& fl, F&& f, A&&... args) {
  if (fl.state_.load(std::memory_order_acquire) == 2) return;
  if (!fl.begin()) return;
  try {
    std::invoke(std::forward<F>(f), std::forward<A>(args)...);
  } catch (...) {
    fl.finish(false);
    throw;
  }
  fl.finish(true);
}

// std::latch: a single-use countdown; wait() parks until the count reaches zero. Counting
// below zero, or a negative update, throws std::invalid_argument. Safe to destroy as soon as
// wait() returns (the last count_down touches the latch before it wakes anyone).
class latch {
 public:
  explicit latch(std::ptrdiff_t expected) : state_(check(expected) << 32) {}
  latch(const latch&) = delete;
  latch& operator=(const latch&) = delete;
  ~latch() = default;

  static constexpr std::ptrdiff_t max() noexcept { return 0x7fffffff; }
  GORT_API void count_down(std::ptrdiff_t n = 1);
  bool try_wait() const noexcept { return (state_.load(std::memory_order_acquire) >> 32) == 0; }
  GORT_API void wait() const;
  void arrive_and_wait(std::ptrdiff_t n = 1) {
    count_down(n);
    wait();
  }

 private:
  static std::uint64_t check(std::ptrdiff_t v) {
    if (v < 0 || v > max()) throw std::invalid_argument("gort::latch: expected count out of range [0, max()]");
    return static_cast<std::uint64_t>(v);
  }
  mutable std::atomic<std::uint64_t> state_;  // count << 32 | registered waiters
  mutable std::atomic<std::uint32_t> qlock_{0};
  mutable void* head_ = nullptr;
  mutable void* tail_ = nullptr;
};

namespace detail {
struct barrier_noop {
  void operator()() noexcept {}
};
// barrier's type-erased half (runtime/sync.cpp).
class barrier_core {
 public:
  GORT_API explicit barrier_core(std::ptrdiff_t expected);
  barrier_core(const barrier_core&) = delete;
  barrier_core& operator=(const barrier_core&) = delete;
  // Returns the phase the arrival belongs to. The last arrival runs complete(ctx) first.
  GORT_API std::uint64_t arrive(std::ptrdiff_t n, bool drop, void (*complete)(void*), void* ctx);
  GORT_API void wait(std::uint64_t phase) const;

 private:
  std::int64_t expected_, remaining_;
  std::uint64_t phase_ = 0;
  mutable std::atomic<std::uint32_t> qlock_{0};
  mutable void* head_ = nullptr;
  mutable void* tail_ = nullptr;
};
}  // namespace detail

// std::barrier: `expected` participants arrive each phase; the last to arrive runs the
// completion function (on its own G, before anyone is released), then the phase advances and
// every waiter is released. arrive_and_drop also lowers the count for the following phases.
template <class Completion = detail::barrier_noop>
class barrier {
 public:
  class arrival_token {
   public:
    arrival_token() noexcept = default;

   private:
    friend class barrier;
    explicit arrival_token(std::uint64_t ph) noexcept : phase_(ph) {}
    std::uint64_t phase_ = 0;
  };

  explicit barrier(std::ptrdiff_t expected, Completion f = Completion())
      : core_(expected), f_(std::move(f)) {}
  barrier(const barrier&) = delete;
  barrier& operator=(const barrier&) = delete;

  static constexpr std::ptrdiff_t max() noexcept { return 0x7fffffff; }

  [[nodiscard]] arrival_token arrive(std::ptrdiff_t n = 1) {
    return arrival_token(core_.arrive(n, false, &barrier::complete, this));
  }
  void wait(arrival_token&& t) const { core_.wait(t.phase_); }
  void arrive_and_wait() { wait(arrive()); }
  void arrive_and_drop() { (void)core_.arrive(1, true, &barrier::complete, this); }

 private:
  static void complete(void* self) { static_cast<barrier*>(self)->f_(); }
  detail::barrier_core core_;
  Completion f_;
};

}  // namespace gort
