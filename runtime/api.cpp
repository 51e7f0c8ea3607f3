// gort: the public API's out-of-line half (include/gort/gort.hpp) on top of the scheduler:
// run, yield, sleep, procs, wait_group and thread. The G lifecycle half is in g.cpp.
#include <system_error>
#include <thread>

#include "boot.hpp"
#include "g.hpp"
#include "proc.hpp"
#include "timer_sleeper.hpp"
#include "wait.hpp"
#include "waitq.hpp"

namespace gort {

namespace rt {
namespace {

void sleep_fire(timer* t) { ready(static_cast<g*>(t->arg), queue_at::back); }

// Arms the sleep timer once the G is off its stack, so the timer cannot ready it early, in
// room reserved on P `arg`'s heap before the switch (this step must not fail).
void sleep_commit(fiber* f, void* arg) {
  arm_timer_reserved(static_cast<p*>(arg), &g_of(f)->sleep_timer);
}

// A parked wait(): no deadline, so every node popped is claimed by the add() that pops it.
struct wg_node {
  wait_state ws;
  wg_node* next = nullptr;
  wg_node* prev = nullptr;
  bool queued = false;
};
using wg_queue = waitq<wg_node, waitq_words<wg_node>>;

// The abandon_hook of a G parked in wait() (g.hpp): shutdown takes its node off the queue and
// its registration off the count, as if it had never waited.
struct wg_hook : abandon_hook {
  std::atomic<std::uint64_t>* state;
  std::atomic<std::uint32_t>* lock;
  wg_queue q;
  wg_node* w;
};
void wg_detach(abandon_hook* h) noexcept {
  auto* wh = static_cast<wg_hook*>(h);
  spin_lock(*wh->lock);
  if (wh->w->queued) {
    wh->q.unlink(wh->w);
    wh->state->fetch_sub(1, std::memory_order_acq_rel);
  }
  spin_unlock(*wh->lock);
}

}  // namespace
}  // namespace rt

namespace detail {

// Every entry point opens a nopreempt_scope before touching runtime state (sched.hpp). The
// G lifecycle entry points (g_new ... g_release) are in g.cpp.

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
    rt::p* pp = rt::getm()->curp;
    pp->tm.reserve();  // std::bad_alloc from here, not from the commit
    rt::park("sleep", {rt::sleep_commit, pp});
  }
}

unsigned procs() {
  if (!rt::running())
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
  rt::wg_queue q{{head_, tail_}};
  rt::wg_node* first = nullptr;  // the n oldest, claimed, chained through `next` once popped
  rt::wg_node** last = &first;
  rt::spin_lock(lock_);
  for (std::uint32_t i = 0; i < n; ++i) {
    rt::wg_node* w = q.pop();
    GORT_CHECK(w && rt::claim(w->ws), "wait_group: %u waiters counted, fewer claimable queued", n);
    *last = w;
    last = &w->next;
  }
  *last = nullptr;
  state_.fetch_sub(n, std::memory_order_acq_rel);
  rt::spin_unlock(lock_);
  for (rt::wg_node* w = first; w;) {
    rt::wg_node* next = w->next;  // read first: a finished waiter's memory may vanish
    rt::finish(w->ws);
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
  rt::wg_node w;
  rt::wg_queue{{head_, tail_}}.push_back(&w);
  rt::wg_hook h{{rt::wg_detach, this}, &state_, &lock_, {{head_, tail_}}, &w};
  rt::queued_scope qs(&h);
  rt::block(w.ws, 0, "wait_group", rt::unlocking(lock_));
}

void thread::check_joinable(const char* what) const {
  if (!g_)
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            std::string(what) + ": thread is not joinable");
  if (detail::current_g_id() == id_)
    throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                            std::string(what) + ": a thread cannot join itself");
}

void thread::runtime_gone(const char* what) {
  g_ = nullptr;
  throw std::system_error(std::make_error_code(std::errc::no_such_process),
                          std::string(what) + ": the runtime that ran this thread has shut down");
}

}  // namespace gort
