// gort: the public API's out-of-line half (include/gort/gort.hpp), on top of the scheduler.
#include <system_error>
#include <thread>

#include "sched.hpp"

namespace gort {

namespace rt {
namespace {

inline g* as_g(gort::detail::gdesc* d) noexcept { return reinterpret_cast<g*>(d); }
inline const g* as_g(const gort::detail::gdesc* d) noexcept { return reinterpret_cast<const g*>(d); }

void sleep_fire(timer* t) { ready(static_cast<g*>(t->arg)); }

// Arms the sleep timer once the G is off its stack, so the timer cannot ready it early.
void sleep_commit(fiber* f, void*) {
  g* gp = g_of(f);
  p* pp = getm()->curp;
  if (pp->tm.add(&gp->sleep_timer)) timer_armed(gp->sleep_timer.when);
}

// A tiny spin lock for wait_group's waiter list: held for a few instructions, never across a
// block (park releases it after the G is off its stack).
void lock(std::atomic<std::uint32_t>& l) noexcept {
  for (;;) {
    if (l.exchange(1, std::memory_order_acquire) == 0) return;
    while (l.load(std::memory_order_relaxed)) std::this_thread::yield();
  }
}
void unlock(std::atomic<std::uint32_t>& l) noexcept { l.store(0, std::memory_order_release); }
void unlock_commit(fiber*, void* l) { unlock(*static_cast<std::atomic<std::uint32_t>*>(l)); }

}  // namespace
}  // namespace rt

namespace detail {

gdesc* g_new(std::size_t size, std::size_t align, void** frame) {
  return reinterpret_cast<gdesc*>(rt::g_reserve_new(size, align, frame));
}
void g_start(gdesc* g, body_fn body, destroy_fn destroy, bool joinable) noexcept {
  rt::g_launch(rt::as_g(g), body, destroy, joinable);
}
void g_discard(gdesc* g) noexcept { rt::g_unreserve(rt::as_g(g)); }
void g_join(gdesc* g) { rt::g_join_wait(rt::as_g(g)); }
void g_release(gdesc* g) noexcept { rt::g_drop(rt::as_g(g)); }
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

void wait_group::add(int delta) {
  std::int64_t now = count_.fetch_add(delta, std::memory_order_acq_rel) + delta;
  if (now < 0) {
    count_.fetch_sub(delta, std::memory_order_acq_rel);  // leave the group as it was
    throw std::logic_error("gort::wait_group: counter would go negative (done() or add(" +
                           std::to_string(delta) + ") without a matching add)");
  }
  if (now > 0 || delta == 0) return;
  // Reached zero: release every waiter. Waiters enqueue under the lock after reading a
  // non-zero count under it, so none can slip in between our decrement and this sweep.
  rt::lock(lock_);
  auto* w = static_cast<rt::waiter*>(waiters_);
  waiters_ = nullptr;
  rt::unlock(lock_);
  while (w) {
    rt::waiter* next = w->next;  // read first: a woken waiter's memory may vanish
    rt::wake(w);
    w = next;
  }
}

void wait_group::wait() {
  if (count_.load(std::memory_order_acquire) == 0) return;
  rt::lock(lock_);
  if (count_.load(std::memory_order_acquire) == 0) {
    rt::unlock(lock_);
    return;
  }
  rt::waiter w;
  w.next = static_cast<rt::waiter*>(waiters_);
  waiters_ = &w;
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
