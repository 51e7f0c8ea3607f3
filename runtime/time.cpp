// gort: the out-of-line half of include/gort/time.hpp — timers on the per-P timer heaps.
//
// A timer_core embeds an rt::timer, so arming costs one O(log n) heap insertion and no
// allocation; the core itself (with an after_func's closure behind it) is one rt::alloc block.
//
// Concurrency:
//  - Arming goes to the arming G's P (an OS thread uses P 0's heap; each heap has its own
//    lock), and stop is rt::timer_stop, which finds the timer in whatever heap holds it and
//    waits out a fire already under way: after stop returns, the fire is not running and will
//    not run, so reset may re-arm and free may release the memory.
//  - A ticker's fire re-arms its own timer. stop() first sets `stopped` under the core's lock,
//    which the fire checks under the same lock before re-arming; so either the re-arm happened
//    before stop's timer_stop (which then finds and removes it), or it does not happen.
//  - The fire runs in scheduler context and must not block: it starts a new G that try-sends
//    on the channel (see fire() for why not directly) or, for after_func, runs f (rt::g_reserve_new + g_launch, the steps of gort::go, which
//    only take the P's free list or the stack pool's lock and put the G on the P's queue, as
//    ready() does). The G holds a reference to the core, so the closure outlives a handle
//    destroyed while f runs.
#include "gort/time.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "sched.hpp"

namespace gort {

namespace detail {

struct timer_core {
  rt::timer tm;
  std::atomic<std::uint32_t> lock{0};  // guards stopped and period against the re-arming fire
  bool stopped = true;
  std::int64_t period = 0;
  chan_core* ch = nullptr;  // retained
  void (*call)(void*) = nullptr;
  void (*destroy)(void*) noexcept = nullptr;
  void* fn = nullptr;  // closure storage, in the same block
  std::atomic<int> refs{1};  // the handle, plus each running after_func G
};

}  // namespace detail

namespace {

using detail::timer_core;

void core_unref(timer_core* c) noexcept {
  if (c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (c->destroy) c->destroy(c->fn);
  if (c->ch) detail::chan_release(c->ch);
  c->~timer_core();
  rt::free_mem(c);
}

struct fn_frame {
  timer_core* c;
  std::chrono::steady_clock::time_point at;  // fire time, for the channel
};
struct unref {
  timer_core* c;
  ~unref() { core_unref(c); }
};
void fn_body(void* p) {
  timer_core* c = static_cast<fn_frame*>(p)->c;
  unref u{c};
  c->call(c->fn);
}
void send_body(void* p) {
  auto* fr = static_cast<fn_frame*>(p);
  unref u{fr->c};
  try {
    (void)detail::chan_send(fr->c->ch, &fr->at, -1);  // full: the tick is dropped, as in Go
  } catch (...) {
    // Someone closed the timer's channel through a copy of the handle: nothing to deliver.
  }
}
void fn_destroy(void*) noexcept {}

// Starts a G running body on a frame holding c (and a reference to it).
void start_g(timer_core* c, void (*body)(void*), std::chrono::steady_clock::time_point at) {
  c->refs.fetch_add(1, std::memory_order_relaxed);
  void* frame = nullptr;
  rt::g* gp;
  try {
    gp = rt::g_reserve_new(sizeof(fn_frame), alignof(fn_frame), &frame);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gort: timer: cannot start a G for a fired timer: %s\n", e.what());
    std::abort();
  }
  ::new (frame) fn_frame{c, at};
  rt::g_launch(gp, body, fn_destroy, false);
}

void fire(rt::timer* t);

// Puts c's timer on a heap: the caller's P, or P 0's from a thread without one.
void arm(timer_core* c, std::int64_t when) {
  c->tm.when = when;
  c->tm.fire = fire;
  c->tm.arg = c;
  rt::m* mp = rt::getm();
  rt::p* pp = mp ? mp->curp : nullptr;
  if (pp) {
    if (pp->tm.add(&c->tm)) rt::timer_armed(when);
    return;
  }
  // A foreign thread: counted in, like a foreign spawn, so shutdown waits for us.
  rt::sched.foreign.fetch_add(1, std::memory_order_seq_cst);
  if (rt::sched.state.load(std::memory_order_seq_cst) != 1) {
    rt::sched.foreign.fetch_sub(1, std::memory_order_seq_cst);
    throw std::logic_error("gort::timer: no runtime is running (start one with gort::run)");
  }
  if (rt::sched.ps[0]->tm.add(&c->tm)) rt::timer_armed(when);
  rt::sched.foreign.fetch_sub(1, std::memory_order_seq_cst);
}

void fire(rt::timer* t) {
  auto* c = static_cast<timer_core*>(t->arg);
  // The channel send runs in a G of its own, not here: a fire may run while a G is on its
  // way to parking (the scheduler runs due timers before switching away), still holding the
  // lock of the very channel it waits on, which its park commit releases only afterwards.
  if (c->ch) start_g(c, send_body, std::chrono::steady_clock::now());
  if (c->call) start_g(c, fn_body, {});
  rt::spin_lock(c->lock);
  if (c->period && !c->stopped) {
    // Next tick: the first period boundary after now (missed ticks are skipped, as in Go).
    const std::int64_t now = rt::nanotime();
    std::int64_t next = c->tm.when + c->period;
    if (next <= now) next += ((now - next) / c->period + 1) * c->period;
    c->tm.when = next;
    rt::p* pp = rt::getm()->curp;
    if (pp->tm.add(&c->tm)) rt::timer_armed(next);
  } else {
    c->stopped = true;
  }
  rt::spin_unlock(c->lock);
}

// Stops c; true if it was armed. Leaves it marked stopped.
bool stop_core(timer_core* c) noexcept {
  rt::spin_lock(c->lock);
  c->stopped = true;
  rt::spin_unlock(c->lock);
  return rt::timer_stop(&c->tm);
}

}  // namespace

namespace detail {

timer_core* timer_make(chan_core* ch, std::size_t fn_size, void (*call)(void*),
                       void (*destroy)(void*) noexcept, void** fn) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  const std::size_t head = (sizeof(timer_core) + 63) & ~std::size_t{63};
  void* mem = rt::alloc(head + fn_size + 64);
  // rt::alloc is 16-byte aligned; the closure gets up to 64.
  auto* c = ::new (mem) timer_core;
  auto base = reinterpret_cast<std::uintptr_t>(mem) + head;
  c->fn = fn_size ? reinterpret_cast<void*>((base + 63) & ~std::uintptr_t{63}) : nullptr;
  c->call = call;
  c->destroy = destroy;
  if (ch) {
    chan_retain(ch);
    c->ch = ch;
  }
  *fn = c->fn;
  return c;
}

void timer_bind(timer_core* t, void (*call)(void*), void (*destroy)(void*) noexcept) noexcept {
  t->call = call;
  t->destroy = destroy;
}

bool timer_reset(timer_core* c, std::int64_t when_ns, std::int64_t period_ns) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  const bool was = stop_core(c);
  if (c->ch) {
    // No stale value from before the reset (Go 1.23): drain the one slot.
    std::chrono::steady_clock::time_point junk;
    (void)chan_recv(c->ch, &junk, -1);
  }
  rt::spin_lock(c->lock);
  c->stopped = false;
  c->period = period_ns;
  rt::spin_unlock(c->lock);
  arm(c, when_ns);
  return was;
}

bool timer_stop(timer_core* c) noexcept {
  rt::nopreempt_scope np;
  const bool was = stop_core(c);
  if (c->ch) {
    std::chrono::steady_clock::time_point junk;
    try {
      (void)chan_recv(c->ch, &junk, -1);
    } catch (...) {
    }
  }
  return was;
}

void timer_free(timer_core* c) noexcept {
  rt::nopreempt_scope np;
  stop_core(c);
  core_unref(c);
}

}  // namespace detail

}  // namespace gort
