// gort: timers (Go's time.Timer, time.AfterFunc, time.Ticker, time.After). docs/time.md.
//
//   gort::timer t(50ms);
//   auto when = t.c().recv();                 // parks this G until the timer fires
//   auto h = gort::after_func(1s, [] { ... }); // runs in its own G; h.stop() cancels it
//   gort::ticker tk(10ms);
//   for (int i = 0; i < 5; ++i) tk.c().recv();
//
// Each armed timer costs O(log n) in its P's timer heap; nothing polls. The fire time sent on
// a timer's channel is steady_clock::now() at the moment it fired (>= the deadline).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "gort/chan.hpp"
#include "gort/deadline.hpp"
#include "gort/gort.hpp"

namespace gort {

namespace detail {

struct timer_core;  // runtime/time.cpp

// A timer whose fire try-sends steady_clock::now() on ch (a full channel drops the value, as
// Go's does), and/or runs call(fn) in a new G. `period` > 0 re-arms it (ticker).
// fn_size bytes (alignment fn_align <= 64) of closure storage come with it; *fn receives their
// address. Not armed until timer_start.
GORT_API timer_core* timer_make(chan_core* ch, std::size_t fn_size, std::size_t fn_align, void** fn);
// Arms a new timer for the first time, with what it runs (null: nothing) once its closure is
// constructed in the storage.
GORT_API void timer_start(timer_core* t, void (*call)(void*), void (*destroy)(void*) noexcept,
                          std::int64_t when_ns, std::int64_t period_ns);
// time.After: a handle-less timer that sends the time on ch once at when_ns, then frees itself.
GORT_API void timer_after(chan_core* ch, std::int64_t when_ns);
// Arms (or re-arms) at steady deadline when_ns with period_ns (0: one-shot). Returns true if
// the timer was armed before or its channel held a fire not yet received (Go 1.23's Reset
// result). Drops that stale value from its channel.
GORT_API bool timer_reset(timer_core* t, std::int64_t when_ns, std::int64_t period_ns);
// True if this stopped a pending fire, or discarded the value of a fire not yet received (Go
// 1.23's Stop result). Waits out a fire already under way. Drops a stale value, as reset does.
GORT_API bool timer_stop(timer_core* t) noexcept;
// Stops and lets go of the handle's hold (the closure lives on while its G runs).
GORT_API void timer_free(timer_core* t) noexcept;

// A fire time: now for d <= 0, never_ns (armed, but it does not fire) for a d too long.
template <class Rep, class Per>
std::int64_t timer_when(const std::chrono::duration<Rep, Per>& d) {
  return steady_deadline_after(d);
}
template <class Rep, class Per>
std::int64_t timer_period(const std::chrono::duration<Rep, Per>& d, const char* what) {
  if (d <= d.zero()) throw std::invalid_argument(std::string(what) + ": non-positive interval");
  return saturating_ns(d);
}

}  // namespace detail

// A one-shot timer. Constructed with a duration, it fires once after it and sends the fire
// time on c() (capacity 1). stop() cancels it; reset(d) re-arms it for d from now. Both return
// what Go 1.23's Stop and Reset do: true if the timer was pending, where a fire whose value
// has not been received yet counts as pending (the call discards the value); false if it had
// been stopped, or had fired and its value was received. So `if (!t.stop()) t.c().recv();`
// (the pre-1.23 idiom) never waits for a value that will not come, unless the program received
// the value itself. After stop or reset, c() yields no stale value from before the call.
// Destroying an armed timer stops it first.
// Works from Gs and OS threads while a runtime runs (otherwise std::logic_error).
class timer {
 public:
  using time_point = std::chrono::steady_clock::time_point;

  timer() noexcept = default;
  template <class Rep, class Per>
  explicit timer(const std::chrono::duration<Rep, Per>& d) : ch_(std::in_place, 1) {
    void* unused;
    core_ = detail::timer_make(detail::core_of(*ch_, "gort::timer"), 0, 1, &unused);
    start(nullptr, nullptr, detail::timer_when(d), 0);
  }
  timer(timer&& o) noexcept : ch_(std::exchange(o.ch_, std::nullopt)), core_(std::exchange(o.core_, nullptr)) {}
  timer& operator=(timer&& o) noexcept {
    if (this != &o) {
      if (core_) detail::timer_free(core_);
      ch_ = std::exchange(o.ch_, std::nullopt);
      core_ = std::exchange(o.core_, nullptr);
    }
    return *this;
  }
  timer(const timer&) = delete;
  timer& operator=(const timer&) = delete;
  ~timer() {
    if (core_) detail::timer_free(core_);
  }

  // The channel the fire time arrives on. An after_func timer has none (std::logic_error).
  const chan<time_point>& c() const {
    if (!ch_) throw std::logic_error("gort::timer::c: this timer has no channel (empty, moved-from, or after_func)");
    return *ch_;
  }
  bool stop() noexcept { return core_ && detail::timer_stop(core_); }
  template <class Rep, class Per>
  bool reset(const std::chrono::duration<Rep, Per>& d) {
    check("gort::timer::reset");
    return detail::timer_reset(core_, detail::timer_when(d), 0);
  }
  explicit operator bool() const noexcept { return core_ != nullptr; }

 private:
  template <class Rep, class Per, class F>
  friend timer after_func(const std::chrono::duration<Rep, Per>& d, F&& f);
  friend class ticker;
  void check(const char* what) const {
    if (!core_) throw std::logic_error(std::string(what) + ": empty timer");
  }
  void start(void (*call)(void*), void (*destroy)(void*) noexcept, std::int64_t when, std::int64_t period) {
    try {
      detail::timer_start(core_, call, destroy, when, period);
    } catch (...) {
      detail::timer_free(std::exchange(core_, nullptr));
      throw;
    }
  }

  std::optional<chan<time_point>> ch_;  // empty for after_func timers
  detail::timer_core* core_ = nullptr;
};

// Go's time.AfterFunc: after d, runs f() in its own G (an exception escaping f ends the
// process, as for go()). The returned timer has no channel; stop() keeps f from running (true
// if it did), reset(d) schedules it again. Destroying the handle stops a pending f.
template <class Rep, class Per, class F>
timer after_func(const std::chrono::duration<Rep, Per>& d, F&& f) {
  using Fn = std::decay_t<F>;
  static_assert(alignof(Fn) <= 64, "gort::after_func: callable alignment above 64");
  void* mem = nullptr;
  timer t;
  t.core_ = detail::timer_make(nullptr, sizeof(Fn), alignof(Fn), &mem);
  try {
    ::new (mem) Fn(std::forward<F>(f));
  } catch (...) {
    detail::timer_free(std::exchange(t.core_, nullptr));  // nothing constructed, nothing bound
    throw;
  }
  t.start([](void* p) { (*static_cast<Fn*>(p))(); }, [](void* p) noexcept { static_cast<Fn*>(p)->~Fn(); },
          detail::timer_when(d), 0);
  return t;
}

// Go's time.Ticker: sends the time on c() every period (capacity 1: a slow receiver misses
// ticks rather than queueing them; missed periods are skipped, not bunched). stop() ends the
// ticks; reset(d) restarts with a new period.
class ticker {
 public:
  using time_point = std::chrono::steady_clock::time_point;

  template <class Rep, class Per>
  explicit ticker(const std::chrono::duration<Rep, Per>& d) {
    const std::int64_t period = detail::timer_period(d, "gort::ticker");
    t_.ch_.emplace(1);
    void* unused;
    t_.core_ = detail::timer_make(detail::core_of(*t_.ch_, "gort::ticker"), 0, 1, &unused);
    t_.start(nullptr, nullptr, detail::timer_when(d), period);
  }
  const chan<time_point>& c() const { return t_.c(); }
  void stop() noexcept { t_.stop(); }
  template <class Rep, class Per>
  void reset(const std::chrono::duration<Rep, Per>& d) {
    t_.check("gort::ticker::reset");
    detail::timer_reset(t_.core_, detail::timer_when(d), detail::timer_period(d, "gort::ticker::reset"));
  }

 private:
  timer t_;
};

// Go's time.After: a channel that receives the time once, after d. Behind it is a timer with
// no handle, which frees itself once it has fired; it cannot be stopped, so prefer timer (or
// select's on_timeout) where the wait may be abandoned: it stays armed until d has passed.
template <class Rep, class Per>
chan<std::chrono::steady_clock::time_point> after(const std::chrono::duration<Rep, Per>& d) {
  chan<std::chrono::steady_clock::time_point> ch(1);
  detail::timer_after(detail::core_of(ch, "gort::after"), detail::timer_when(d));
  return ch;
}

}  // namespace gort
