// gort: asynchronous preemption — stopping a G that runs for longer than its time slice
// without ever calling into the runtime (a tight loop, a long computation).
//
// The problem. C++ has no safe points: the interrupted code may be anywhere — inside malloc
// or mimalloc holding an arena lock, inside libstdc++ with a std::mutex held, half-way through
// a thread_local update whose address the compiler computed once before the loop, or inside
// the runtime itself updating its P's run queue. Go can move an interrupted goroutine to
// another thread because its compiler tells the runtime which instructions are safe. We have
// no such map.
//
// Rejected: switching Gs inside the signal handler (rewriting the interrupted context to call
// a yield routine, as Go does). The G would later resume on another thread, and arbitrary C++
// breaks in ways no PC check can rule out: a std::mutex unlocked by a thread that does not own
// it, a thread_local pointer cached in a register now pointing at the old thread's copy,
// errno and the C++ exception state of the wrong thread. Restricting it to "safe" PCs would
// need the PC ranges of every library and still miss state held in registers of user code.
// (It would also need a frame injected below the x86-64 red zone, and on AArch64 a register
// to return through, which the ABI does not leave free.)
//
// Adopted: the interrupted G never leaves its thread. The handler stops the *thread* instead:
//   1. sysmon finds a P whose schedtick has not moved for a time slice, records the request
//      (p->preempt_req = that tick) and sends SIGURG to the P's M.
//   2. The handler, on the M, checks that the request is still current (same slice), that the
//      M runs a G with a P, and that the G is outside the runtime (g->nopreempt == 0: every
//      runtime entry point raises it, as does gort::no_preempt). If not, it returns; the G
//      yields at its next runtime call (preempt_check), and sysmon asks again later.
//   3. Otherwise it CASes the P from prunning to ppreempted, pokes sysmon, and sleeps on the
//      M's note, still inside the handler, with the G's frames untouched on its stack.
//   4. sysmon (an ordinary thread, free to take locks and create threads) marks the G runnable
//      and wired to that M (g->lockedm), puts it on the global run queue, and hands the P to
//      another M (handoffp), which runs the Gs that were queued behind.
//   5. Whoever later dequeues the G gives its own P to the waiting M (startlockedm) — the
//      same path as lock_os_thread. The handler wakes with that P, makes the G current again
//      and returns; the G continues on the thread it never left.
// Only async-signal-safe work happens in the handler: atomics, futex wake/wait, reads of the
// M's own state. The P it receives may never have had a heap; acquirep(acquire_mode::in_signal) skips heap
// creation and CPU rebinding (both call into libraries the G may have been interrupted in).
//
// Deadlock freedom: a G stopped while holding a std::mutex keeps it; a G on another P that
// wants it blocks its M in the kernel, holding that P. sysmon sees that P's tick stand still
// as well and preempts it too — the signal interrupts the futex wait (SA_RESTART resumes it
// later) — so its P is handed on, and eventually a P reaches the lock holder's M. The price is
// threads: one M per G held for preemption, bounded by config.max_threads. The argument
// assumes a new M can start; a lock that thread start-up itself takes breaks it. Under ASan
// every starting thread allocates, so a G held inside ASan's allocator could hang the M
// meant to carry a P back to it: ASan builds start with parked spare Ms (proc.cpp, run_main).
//
// SIGURG, like Go: its default action is to ignore it, and programs rarely use it (it signals
// out-of-band socket data). A handler installed before gort::run is chained: signals that are
// not preemption requests reach it.
#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "gort/gort.hpp"
#include "preempt.hpp"

#include "m.hpp"
#include "proc.hpp"
#include "sysmon.hpp"

namespace gort {
namespace rt {

namespace {

struct sigaction old_action;
bool installed = false;

// The request is current when the P's tick still equals the one sysmon saw standing still.
bool requested(p* pp) noexcept {
  return pp->preempt_req.load(std::memory_order_relaxed) == pp->schedtick.load(std::memory_order_relaxed);
}

// Steps 3 and 5 above, on the interrupted M. Returns once the M holds a P and runs gp again.
void hold_for_preemption(m* mp, g* gp, p* pp) noexcept {
  std::uint32_t running = prunning;
  if (!pp->status.compare_exchange_strong(running, ppreempted, std::memory_order_acq_rel)) return;
  sysmon_poke();
  p* np = await_p(mp);
  if (!np) {
    // Shutdown: the G is abandoned like every other unfinished G; g0 exits the thread. sysmon
    // may be handing our P on right now (take_preempted, which writes to this M): take the P
    // back first, and if sysmon got there before us, wait until it is done (its pidle store).
    std::uint32_t s = ppreempted;
    if (!pp->status.compare_exchange_strong(s, prunning, std::memory_order_acq_rel))
      while (pp->status.load(std::memory_order_acquire) == ptaking) cpu_relax();
    mp->curg = nullptr;
    gp->fib.after = nullptr;
    gp->fib.switch_to(mp->g0, mp->eh);
    std::abort();  // never resumed
  }
  acquirep(mp, np, acquire_mode::in_signal);
  if (gp->locked == 0) gp->lockedm = nullptr;
  resume_on(mp, gp);
}

void on_sigurg(int sig, siginfo_t* info, void* uctx) {
  const int saved_errno = errno;
  m* mp = getm();
  g* gp = mp ? mp->curg : nullptr;
  p* pp = mp ? mp->curp : nullptr;
  if (gp && pp && requested(pp)) {
    if (gp->nopreempt.load(std::memory_order_relaxed) == 0) hold_for_preemption(mp, gp, pp);
    errno = saved_errno;
    return;
  }
  errno = saved_errno;
  // Not ours: pass it on to whatever handled SIGURG before gort::run.
  if (old_action.sa_flags & SA_SIGINFO) {
    if (old_action.sa_sigaction) old_action.sa_sigaction(sig, info, uctx);
  } else if (old_action.sa_handler != SIG_DFL && old_action.sa_handler != SIG_IGN && old_action.sa_handler) {
    old_action.sa_handler(sig);
  }
}

}  // namespace

void install_preempt_handler() {
  if (installed) return;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigurg;
  // SA_RESTART: system calls the signal interrupts are restarted where the kernel can
  // (docs/api.md "Signals and EINTR" lists those it cannot). SA_ONSTACK: the G's stack may be
  // nearly full; the handler runs on the M's alternate stack.
  sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGURG, &sa, &old_action) != 0) {
    std::fprintf(stderr, "gort: warning: cannot install the SIGURG handler (%s); "
                 "asynchronous preemption is off\n", std::strerror(errno));
    sched.async_preempt = false;
    return;
  }
  installed = true;
}

void uninstall_preempt_handler() {
  if (!installed) return;
  sigaction(SIGURG, &old_action, nullptr);
  installed = false;
}

// sysmon's half of step 1.
void preempt_m(m* mp) noexcept {
  pthread_kill(static_cast<pthread_t>(mp->tid), SIGURG);
}

}  // namespace rt

namespace detail {

void preempt_point() noexcept { rt::preempt_check(); }

void preempt_off() noexcept {
  if (rt::g* gp = rt::getg())
    gp->nopreempt.store(gp->nopreempt.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

void preempt_on() noexcept {
  if (rt::g* gp = rt::getg())
    gp->nopreempt.store(gp->nopreempt.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
}

}  // namespace detail
}  // namespace gort
