// gort: the public API's out-of-line half (include/gort/gort.hpp), on top of the scheduler.
#include <system_error>
#include <thread>

#include "sched.hpp"

namespace gort {

namespace rt {
namespace {

inline g* as_g(gort::detail::gdesc* d) noexcept { return reinterpret_cast<g*>(d); }
inline const g* as_g(const gort::detail::gdesc* d) noexcept { return reinterpret_cast<const g*>(d); }

void sleep_fire(timer* t) { ready(static_cast<g*>(t->arg), false); }

// Arms the sleep timer once the G is off its stack, so the timer cannot ready it early.
void sleep_commit(fiber* f, void*) {
  g* gp = g_of(f);
  p* pp = getm()->curp;
  const std::int64_t when = gp->sleep_timer.when;  // the G may run (and re-arm) once it is added
  if (pp->tm.add(&gp->sleep_timer)) timer_armed(when);
}

// wait_group's lock: held for a few instructions, never across a block (park releases it once
// the G is off its stack).
void unlock_commit(fiber*, void* l) { spin_unlock(*static_cast<std::atomic<std::uint32_t>*>(l)); }

}  // namespace
}  // namespace rt

namespace detail {

// Every entry point opens a nopreempt_scope before touching runtime state (sched.hpp).

gdesc* g_new(std::size_t size, std::size_t align, void** frame) {
  rt::preempt_check();  // a loop that only spawns must still yield its slice
  rt::nopreempt_scope np;
  rt::g* gp = rt::g_reserve_new(size, align, frame);
  rt::g* parent = rt::getg();
  gp->parent = parent ? parent->id : 0;
  // g_new is called from the launch template, which is inlined into the caller of go/spawn:
  // this return address points into the user's function.
  gp->created_at = __builtin_return_address(0);
  return reinterpret_cast<gdesc*>(gp);
}
void g_start(gdesc* g, body_fn body, destroy_fn destroy, bool joinable) noexcept {
  bool spilled;
  {
    rt::nopreempt_scope np;
    spilled = rt::g_launch(rt::as_g(g), body, destroy, joinable);
  }
  // Back-pressure: a G whose spawning filled its P's queue lets what it spawned run (it goes to
  // the back of the line), instead of creating Gs faster than anyone runs them, each holding a
  // stack. Without it a loop spawning 1M short Gs keeps tens of thousands alive at once and
  // pays for as many fresh stacks (docs/design.md, "Spawn back-pressure").
  if (spilled) rt::give_way();
}
void g_discard(gdesc* g) noexcept {
  rt::nopreempt_scope np;
  rt::g_unreserve(rt::as_g(g));
}
void g_join(gdesc* g) {
  rt::nopreempt_scope np;
  rt::g_join_wait(rt::as_g(g));
}
void g_release(gdesc* g) noexcept {
  rt::nopreempt_scope np;
  rt::g_drop(rt::as_g(g));
}
std::uint64_t g_id(const gdesc* g) noexcept { return rt::as_g(g)->id; }
std::uint64_t current_g_id() noexcept {
  rt::g* gp = rt::getg();
  return gp ? gp->id : 0;
}

void run_main(const config& cfg, body_fn body, void* frame) { rt::run_main(cfg, body, frame); }

void yield_now() noexcept { rt::yield_g(); }

void sleep_until_steady(std::int64_t steady_ns) {
  rt::g* gp = rt::getg();
  if (!gp) {
    std::this_thread::sleep_until(std::chrono::steady_clock::time_point(std::chrono::nanoseconds(steady_ns)));
    return;
  }
  rt::nopreempt_scope np;
  // Timers fire at `when` or later, never before; the loop only guards against being readied
  // by something other than the timer.
  while (rt::nanotime() < steady_ns) {
    gp->sleep_timer.when = steady_ns;
    gp->sleep_timer.fire = rt::sleep_fire;
    gp->sleep_timer.arg = gp;
    rt::park("sleep", {rt::sleep_commit, nullptr});
  }
}

unsigned procs() {
  if (rt::sched.state.load(std::memory_order_acquire) != 1)
    throw std::logic_error("gort::procs: no runtime is running");
  return rt::sched.nprocs;
}

}  // namespace detail

// state_ packs the counter (high 32 bits) and the number of parked waiters (low 32), so that
// the add() that brings the counter to zero learns atomically how many wait:
//  - none: it returns without touching the group again, so a wait() that sees zero and returns
//    may destroy the group at once (the usual "wg on the stack" pattern);
//  - n: those n registered (a CAS that only succeeds while the counter is non-zero) and
//    enqueued under lock_, in that order, and cannot return before being woken, so the group
//    is alive while we take the n oldest waiters off the FIFO, subtract n and wake them. A
//    waiter of the next round (the group reused at once) stays queued for its own round.
void wait_group::add(int delta) {
  constexpr std::uint64_t one = std::uint64_t{1} << 32;
  const std::uint64_t d = static_cast<std::uint64_t>(static_cast<std::int64_t>(delta)) * one;
  const std::uint64_t s = state_.fetch_add(d, std::memory_order_acq_rel) + d;
  const auto counter = static_cast<std::int32_t>(s >> 32);
  const auto n = static_cast<std::uint32_t>(s);
  if (counter < 0) {
    state_.fetch_sub(d, std::memory_order_acq_rel);  // leave the group as it was
    throw std::logic_error("gort::wait_group: counter would go negative (done() or add(" +
                           std::to_string(delta) + ") without a matching add)");
  }
  if (counter > 0 || n == 0 || delta >= 0) return;
  rt::nopreempt_scope np;
  rt::spin_lock(lock_);
  auto* first = static_cast<rt::waiter*>(head_);
  rt::waiter* last = first;
  for (std::uint32_t i = 1; i < n; ++i) last = last->next;
  head_ = last->next;
  if (!head_) tail_ = nullptr;
  last->next = nullptr;
  state_.fetch_sub(n, std::memory_order_acq_rel);
  rt::spin_unlock(lock_);
  for (rt::waiter* w = first; w;) {
    rt::waiter* next = w->next;  // read first: a woken waiter's memory may vanish
    rt::wake(w);
    w = next;
  }
}

void wait_group::wait() {
  std::uint64_t s = state_.load(std::memory_order_acquire);
  if ((s >> 32) == 0) return;
  rt::nopreempt_scope np;
  rt::spin_lock(lock_);
  do {
    if ((s >> 32) == 0) {
      rt::spin_unlock(lock_);
      return;
    }
  } while (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel));
  rt::waiter w;
  if (tail_) static_cast<rt::waiter*>(tail_)->next = &w;
  else head_ = &w;
  tail_ = &w;
  rt::wait_on(w, "wait_group", {rt::unlock_commit, &lock_});
}

void thread::check_joinable(const char* what) const {
  if (!g_)
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            std::string(what) + ": thread is not joinable");
  if (detail::current_g_id() == detail::g_id(g_))
    throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                            std::string(what) + ": a thread cannot join itself");
}

}  // namespace gort
