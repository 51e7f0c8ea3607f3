// gort: blocking calls and Gs wired to their thread (Go's entersyscall/exitsyscall and
// LockOSThread). docs/design.md "Blocking calls" has the protocol; in short:
//
// A G about to block its thread marks its P `psyscall` and keeps it. If the call returns
// before sysmon looks twice, the G takes the P back with one CAS and nothing else happened
// (the cheap case, a few nanoseconds). If sysmon sees the same call in progress on two
// consecutive ticks, it CASes the P to idle and hands it to another M, so the Gs queued
// behind keep running. The returning G then takes its old P if idle, else any idle P; with
// none it queues itself globally and its M parks until needed.
//
// Inside the call the thread behaves as a plain OS thread (no current G, no P): its P may be
// in use elsewhere at any moment, so runtime code reached from inside the call must not touch
// it. gort primitives used from there block the thread, as they would on any foreign thread.
#include "blocking.hpp"

#include "gort/gort.hpp"
#include "boot.hpp"
#include "m.hpp"
#include "g.hpp"
#include "proc.hpp"

namespace gort {

namespace rt {
namespace {

// After the G is off its stack (on its M's g0, which holds no P): queue it for any M.
void requeue_commit(fiber* f, void*) { requeue(g_of(f), queue_at::back); }

}  // namespace

void syscall_leave(m* mp, p* pp, g* gp) noexcept {
  mp->oldp = pp;
  mp->curp = nullptr;
  const std::uint32_t tick = pp->syscalltick.load(std::memory_order_relaxed) + 1;
  pp->syscalltick.store(tick, std::memory_order_relaxed);
  mp->oldp_word = psyscall_word(tick);
  mp->callg = gp;  // for shutdown, which may leave this M in its call (boot.cpp)
  mp->call.store(2 * ++mp->ncalls, std::memory_order_release);
  pp->status.store(mp->oldp_word, std::memory_order_release);  // from here sysmon may retake pp
}

void syscall_return(m* mp, g* gp) noexcept {
  p* pp = std::exchange(mp->oldp, nullptr);
  std::uint32_t s = mp->oldp_word;
  if (pp->status.compare_exchange_strong(s, prunning, std::memory_order_acq_rel)) {
    // Nobody took it: carry on where we were (same time slice, same tick), unless sysmon saw
    // the slice run out meanwhile (a G making short calls back to back): then yield now.
    mp->curp = pp;
    mp->curg = gp;
    mp->call.store(0, std::memory_order_relaxed);
    preempt_check();
    return;
  }
  // sysmon (or shutdown) took our P meanwhile. If shutdown has left this M in its call, the
  // runtime it belonged to may be gone: touch nothing of it and stay here (abandoned_in_call).
  if (mp->call.exchange(0, std::memory_order_acq_rel) & 1) abandoned_in_call();
  if (p* np = take_idle_p(pp)) {
    acquirep(mp, np);
    resume_on(mp, gp);
    return;
  }
  // No P anywhere: off to the global queue, and this M waits for work (or, if the G is wired
  // to it, for the G to come round again).
  mp->curg = gp;  // curp stays null: the preemption handler leaves a P-less M alone
  set_status(gp, gstatus::running, gstatus::runnable);
  leave_to(mp, gp, nullptr, {requeue_commit, nullptr}, leave_mode::resumable);
}

}  // namespace rt

namespace detail {

void* blocking_enter() noexcept {
  rt::m* mp = rt::getm();
  rt::g* gp = mp ? mp->curg : nullptr;
  if (!gp) return nullptr;  // a plain thread, or already inside a blocking call
  // Until the P is let go (curp cleared, status psyscall), an asynchronous preemption could
  // hand it to another M behind our back and leave us writing to a P that is not ours.
  rt::nopreempt_scope np(gp);
  rt::p* pp = mp->curp;
  if (pp->defer_wake.load(std::memory_order_relaxed)) {  // a hand-off that would wait out the call
    pp->defer_wake.store(0, std::memory_order_relaxed);
    rt::wakep();
  }
  mp->curg = nullptr;
  rt::syscall_leave(mp, pp, gp);
  return gp;
}

void blocking_exit(void* token) noexcept {
  if (!token) return;
  rt::syscall_return(rt::getm(), static_cast<rt::g*>(token));
}

}  // namespace detail

void lock_os_thread() {
  rt::m* mp = rt::getm();
  rt::g* gp = mp ? mp->curg : nullptr;
  if (!gp) return;  // a plain thread is its own thread already
  if (gp->locked == ~0u) throw std::overflow_error("gort::lock_os_thread: nested too deeply");
  if (gp->locked++ == 0) {
    gp->lockedm = mp;
    mp->lockedg = gp;
  }
}

void unlock_os_thread() {
  rt::m* mp = rt::getm();
  rt::g* gp = mp ? mp->curg : nullptr;
  if (!gp || gp->locked == 0) return;  // like Go: unlocking an unlocked G does nothing
  if (--gp->locked == 0) {
    gp->lockedm = nullptr;
    mp->lockedg = nullptr;
  }
}

}  // namespace gort
