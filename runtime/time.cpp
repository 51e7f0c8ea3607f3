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
//  - The fire runs in scheduler context and must not block. It try-sends the fire time on the
//    channel directly: the scheduler runs fires only on g0 or on the stack of a G that yields
//    (never of one still parking, which may hold the lock of the very channel it is about to
//    wait on until its commit runs), so no lock of ours or of the channel is held by the M
//    that fires. The send is a try_send: a full channel drops the value (as Go's does), it
//    never blocks. Because the send happens inside the fire, stop() (which waits the fire
//    out) followed by draining the channel leaves no stale value behind. A value drained
//    there had been sent but not received: as in Go 1.23, stop and reset then return true.
//  - An after_func fire queues a launch of f (see launch_queue), which starts a new G for it
//    (rt::g_new + g_start, the steps of gort::go, which only take the P's free list
//    or the stack pool's lock and put the G on the P's queue, as ready() does). The launch and
//    then the G hold a reference to the core, so the closure outlives a handle destroyed
//    while f is queued or running.
//  - after(d) has no handle: its core frees itself once it has fired. It cannot do so inside
//    its own fire (the heap writes t->firing = false after fire returns), so the fire only
//    pushes it on `retired` (a lock-free stack: any M pushes, whoever drains takes the whole
//    list with one exchange, so there is no ABA), and the next timer creation frees it after
//    seeing its `firing` flag drop.
#include "gort/time.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "san.hpp"
#include "boot.hpp"
#include "g.hpp"
#include "alloc.hpp"
#include "proc.hpp"
#include "timer_sleeper.hpp"

#if GORT_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace gort {

namespace detail {

struct timer_core {
  rt::timer tm;
  std::atomic<std::uint32_t> lock{0};  // guards stopped and period against the re-arming fire
  bool stopped = true;
  bool self_owned = false;  // after(d): no handle, freed after its fire
  std::int64_t period = 0;
  chan_core* ch = nullptr;  // retained
  void (*call)(void*) = nullptr;
  void (*destroy)(void*) noexcept = nullptr;
  void* fn = nullptr;  // closure storage, in the same block
  std::atomic<int> refs{1};  // the handle, plus each pending launch and running after_func G
  timer_core* next_retired = nullptr;
  timer_core* next_launch = nullptr;  // under launches.lock
  std::uint32_t pending = 0;          // launches of f owed; under launches.lock
};

}  // namespace detail

namespace {

// TSan does not see rt::alloc/free_mem (mimalloc's own entry points) as synchronising, so a
// core freed by one G and its block reused by another would look like a race. Say that a
// free happens before the next allocation of the same block.
inline void mem_freeing(void* p) noexcept {
#if GORT_TSAN
  __tsan_release(p);
#else
  (void)p;
#endif
}
inline void mem_reused(void* p) noexcept {
#if GORT_TSAN
  __tsan_acquire(p);
#else
  (void)p;
#endif
}

using detail::timer_core;
using time_point = std::chrono::steady_clock::time_point;

std::atomic<timer_core*> retired{nullptr};

void core_unref(timer_core* c) noexcept {
  if (c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (c->destroy) c->destroy(c->fn);
  if (c->ch) detail::chan_release(c->ch);
  c->~timer_core();
  mem_freeing(c);
  rt::free_mem(c);
}

// Frees the fired after(d) cores. Their fires have returned or are about to (the push is the
// fire's last step): wait for the heap's `firing` store before reusing the memory.
void drain_retired() noexcept {
  if (!retired.load(std::memory_order_relaxed)) return;
  timer_core* c = retired.exchange(nullptr, std::memory_order_acquire);
  while (c) {
    timer_core* next = c->next_retired;
    while (c->tm.firing.load(std::memory_order_acquire)) rt::cpu_relax();
    c->~timer_core();
    mem_freeing(c);
    rt::free_mem(c);
    c = next;
  }
}

struct fn_frame {
  timer_core* c;
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
void fn_destroy(void*) noexcept {}

// Starts a G running c's function; it takes over a reference to c.
void start_g(timer_core* c) {
  void* frame = nullptr;
  rt::g* gp;
  try {
    gp = rt::g_new(sizeof(fn_frame), alignof(fn_frame), &frame);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gort: timer: cannot start a G for a fired after_func: %s\n", e.what());
    std::abort();
  }
  ::new (frame) fn_frame{c};
  rt::g_start(gp, fn_body, fn_destroy, false);
}

// The launch queue: fired after_func timers whose G has not been started yet, oldest first.
//
// Why not start f's G in the fire itself: a P runs all of its due timers in one go, so a burst
// of n fires would create n Gs before the first of them runs, each needing a stack of its own
// (fresh stacks cost page faults and guard-page system calls). Instead a fire queues its timer
// and makes sure a launcher G exists. A launcher starts one G per queued fire and yields to it
// right away (the new G sits in runnext), so that G usually runs f and dies, handing its stack
// back, before the next one is started: a burst costs a couple of live stacks, not n. Each f
// still runs in a G of its own, started in fire order. A blocking f delays nobody: once it
// parks, the launcher (queued behind it) runs again; a long one is preempted, or the launcher
// is stolen by an idle P meanwhile. Launchers end when the queue is empty, so none outlives
// the work (the deadlock report never sees one idle), and while more fires are queued,
// up to one launcher per P runs so that idle Ps can take part.
//
// Concurrency: queue, per-timer `pending` counts and `launchers` are guarded by `lock`. A
// timer re-armed and fired again before its first launch is queued once with pending == 2.
// The decision "no launcher runs, start one" and a launcher's "queue empty, exit" are both
// made under the lock, so a fire either finds a launcher that will still see its entry or
// starts one: no entry is stranded.
//
// The queue outlives a runtime, but launchers do not: a run may end (its main G returns)
// with a launcher still queued, which then never runs again. So the state belongs to one run,
// named by its main G's id (ids never repeat in a process), and the first fire of a new run
// starts afresh. Fired-but-unlaunched after_funcs of the old run are dropped (leaked), as its
// unfinished Gs are. Reading main_g->id is safe from a fire or a G: the main G's memory lives
// until every M has exited.
struct launch_queue {
  rt::spinlock lock;
  timer_core* head = nullptr;
  timer_core* tail = nullptr;
  std::uint32_t launchers = 0;
  std::uint64_t run = 0;  // main G id of the run this state belongs to
} launches;

std::uint64_t run_id() noexcept { return rt::run_id(); }

void launcher_body(void*);

void start_launcher() {
  void* frame = nullptr;
  rt::g* gp;
  try {
    gp = rt::g_new(0, 1, &frame);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gort: timer: cannot start a G for fired after_func timers: %s\n", e.what());
    std::abort();
  }
  rt::g_start(gp, launcher_body, fn_destroy, false);
}

void launcher_body(void*) {
  for (;;) {
    timer_core* c;
    bool helper = false;
    {
      rt::nopreempt_scope np;
      launches.lock.lock();
      c = launches.head;
      if (!c) {
        --launches.launchers;
        launches.lock.unlock();
        return;
      }
      if (--c->pending == 0) {
        launches.head = c->next_launch;
        if (!launches.head) launches.tail = nullptr;
      }
      if (launches.head && launches.launchers < rt::nprocs()) {
        ++launches.launchers;
        helper = true;
      }
      launches.lock.unlock();
      if (helper) start_launcher();
      start_g(c);  // into runnext: the yield below runs it next
    }
    rt::yield_g();
  }
}

// From a fire: queue one launch of c's f (the caller holds a reference for it).
void queue_launch(timer_core* c) {
  bool start = false;
  const std::uint64_t run = run_id();
  launches.lock.lock();
  if (run && run != launches.run) {
    for (timer_core* x = launches.head; x; x = x->next_launch) x->pending = 0;  // leaked
    launches.head = launches.tail = nullptr;
    launches.launchers = 0;
    launches.run = run;
  }
  if (c->pending++ == 0) {
    c->next_launch = nullptr;
    if (launches.tail) launches.tail->next_launch = c;
    else launches.head = c;
    launches.tail = c;
  }
  if (launches.launchers == 0) {
    launches.launchers = 1;
    start = true;
  }
  launches.lock.unlock();
  if (start) start_launcher();
}

void fire(rt::timer* t);

// Puts c's timer on a heap: the caller's P, or P 0's from a thread without one.
void arm(timer_core* c, std::int64_t when) {
  c->tm.when = when;
  c->tm.fire = fire;
  c->tm.arg = c;
  rt::arm_timer_here(&c->tm, "gort::timer");
}

void send_now(timer_core* c) noexcept {
  time_point now = std::chrono::steady_clock::now();
  try {
    (void)detail::chan_send(c->ch, &now, -1);  // full: the value is dropped, as in Go
  } catch (...) {
    // Closed through a copy of c(): nothing to deliver.
  }
}

void fire(rt::timer* t) {
  auto* c = static_cast<timer_core*>(t->arg);
  if (c->self_owned) {
    send_now(c);
    detail::chan_release(std::exchange(c->ch, nullptr));
    // Last: from here the drainer may free c once the heap clears t->firing.
    timer_core* head = retired.load(std::memory_order_relaxed);
    do c->next_retired = head;
    while (!retired.compare_exchange_weak(head, c, std::memory_order_release, std::memory_order_relaxed));
    return;
  }
  if (c->ch) send_now(c);
  if (c->call) {
    c->refs.fetch_add(1, std::memory_order_relaxed);  // the launch's, then its G's
    queue_launch(c);
  }
  if (!c->period) {
    // One-shot: nobody re-arms it here, so `stopped` needs no lock (stop and reset write it
    // only after waiting this fire out, or before timer_stop finds it still on the heap).
    return;
  }
  rt::spin_lock(c->lock);
  if (!c->stopped) {
    // Next tick: the first period boundary after now (missed ticks are skipped, as in Go).
    const std::int64_t now = rt::nanotime();
    std::int64_t next = c->tm.when + c->period;
    if (next <= now) next += ((now - next) / c->period + 1) * c->period;
    c->tm.when = next;
    rt::rearm_timer_in_fire(&c->tm);  // into the slot it left: allocates nothing
  }
  rt::spin_unlock(c->lock);
}

// Stops c; true if it was armed. Leaves it marked stopped.
bool stop_core(timer_core* c) noexcept {
  if (c->period) {
    rt::spin_lock(c->lock);
    c->stopped = true;
    rt::spin_unlock(c->lock);
  }
  return rt::timer_stop(&c->tm);
}

// Empties the channel's one slot, so that no value from before the call is received after it
// (Go 1.23). True if it held a value: a fire the program had not received yet, which Go 1.23
// counts as not delivered (its Stop and Reset then report the timer as stopped while pending).
bool drain_chan(timer_core* c) noexcept {
  if (!c->ch) return false;
  time_point junk;
  try {
    return detail::chan_recv(c->ch, &junk, -1) == detail::chan_status::ok;
  } catch (...) {
    return false;
  }
}

}  // namespace

namespace detail {

timer_core* timer_make(chan_core* ch, std::size_t fn_size, std::size_t fn_align, void** fn) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  drain_retired();
  // rt::alloc blocks are 16-byte aligned and the header is a multiple of 16: a closure
  // aligned above that finds its place in fn_align - 16 bytes of slack.
  const std::size_t head = (sizeof(timer_core) + 15) & ~std::size_t{15};
  void* mem = rt::alloc(head + fn_size + (fn_align > 16 ? fn_align - 16 : 0));
  mem_reused(mem);
  auto* c = ::new (mem) timer_core;
  if (fn_size) {
    const auto base = reinterpret_cast<std::uintptr_t>(mem) + head;
    c->fn = reinterpret_cast<void*>((base + fn_align - 1) & ~(std::uintptr_t{fn_align} - 1));
  }
  if (ch) {
    chan_retain(ch);
    c->ch = ch;
  }
  *fn = c->fn;
  return c;
}

void timer_start(timer_core* c, void (*call)(void*), void (*destroy)(void*) noexcept, std::int64_t when_ns,
                 std::int64_t period_ns) {
  rt::nopreempt_scope np;
  c->call = call;
  c->destroy = destroy;
  c->period = period_ns;
  c->stopped = false;
  arm(c, when_ns);
}

void timer_after(chan_core* ch, std::int64_t when_ns) {
  void* unused;
  timer_core* c = timer_make(ch, 0, 1, &unused);
  rt::nopreempt_scope np;
  c->self_owned = true;
  c->stopped = false;
  try {
    arm(c, when_ns);
  } catch (...) {
    core_unref(c);
    throw;
  }
}

bool timer_reset(timer_core* c, std::int64_t when_ns, std::int64_t period_ns) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  bool was = stop_core(c);
  was |= drain_chan(c);
  rt::spin_lock(c->lock);
  c->stopped = false;
  c->period = period_ns;
  rt::spin_unlock(c->lock);
  arm(c, when_ns);
  return was;
}

bool timer_stop(timer_core* c) noexcept {
  rt::nopreempt_scope np;
  bool was = stop_core(c);
  was |= drain_chan(c);
  return was;
}

void timer_free(timer_core* c) noexcept {
  rt::nopreempt_scope np;
  stop_core(c);
  core_unref(c);
}

}  // namespace detail

}  // namespace gort
