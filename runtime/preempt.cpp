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
// At shutdown no G is held: a G stopped where it is would keep what it holds (a FILE's lock,
// malloc's) past run(), so it runs on to its next runtime call, and a held one is resumed to
// do so (hold_for_preemption); only after shutdown's cut-off is a G abandoned mid-code.
// Only async-signal-safe work happens in the handler: atomics, futex wake/wait, reads of the
// M's own state. The P it receives may never have had a heap; acquirep(acquire_mode::in_signal) skips heap
// creation and CPU rebinding (both call into libraries the G may have been interrupted in).
//
// Deadlock freedom: a G stopped while holding a std::mutex keeps it; a G on another P that
// wants it blocks its M in the kernel, holding that P. sysmon finds that M asleep in the kernel
// and the handler lets its P go without holding the G (kernel_wait.cpp), so the P is handed
// on, and eventually a P reaches the lock holder's M. The price is threads: one M per G held
// for preemption or asleep in the kernel, bounded by config.max_threads. No hand-off waits for
// a thread to be created (a lock that thread creation takes may be the one the held G holds):
// sysmon holds a G only when a parked M, or the M of a wired G, can take its P, and only the M
// factory creates threads (mfactory.cpp).
//
// SIGURG, like Go: its default action is to ignore it, and programs rarely use it (it signals
// out-of-band socket data). A handler installed before gort::run is chained: every SIGURG gort
// did not send reaches it, and none that gort sent does (sent_by_gort below). Every M unblocks
// SIGURG when it starts (unblock_preempt_signal), whatever mask it inherited from the thread
// that created it: a program that blocks all signals before gort::run, to take them with
// sigwait or a signalfd, would otherwise turn asynchronous preemption off without a word.
// sysmon keeps the mask it inherited: it is never signalled and runs no Gs. The handler is
// installed for the duration of one run and the previous action put back when run_main
// leaves, normally or by an exception.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "gort/gort.hpp"
#include "preempt.hpp"

#include "boot.hpp"
#include "clock.hpp"
#include "kernel_wait.hpp"
#include "m.hpp"
#include "proc.hpp"
#include "sysmon.hpp"

namespace gort {
namespace rt {

namespace {

// The action found when ours was installed: the one chained to, and put back by
// uninstall_preempt_handler. Written only while ours is not installed.
struct sigaction old_action;
// Ours is installed, or was and has since been replaced by a handler that may chain to it.
// Written by run_main's thread before it starts any M, read by the Ms.
bool installed = false;

// What every preemption signal carries in si_value: the address of this object, which nothing
// outside this file can know. Not const, so that no constant merging can share its address.
char preempt_token;

// Whether gort sent this SIGURG (preempt_m). A standard signal pending twice on a thread is
// delivered once, with the siginfo of the first send, so what the handler needs is a mark on
// the signal itself, not a count or a flag beside it: a per-M "sent" flag would claim a
// pthread_kill from the program that arrives while ours is in flight, and let ours pass as the
// program's when the two merge. preempt_m therefore sends with pthread_sigqueue, which
// delivers si_code = SI_QUEUE, the sender's pid and a value of the sender's choosing, and the
// value is preempt_token's address. kill(), tgkill() and pthread_kill() arrive with SI_USER or
// SI_TKILL; a sigqueue() from the program carries its own value. Only a sender that read our
// address out of this process could imitate the mark.
bool sent_by_gort(const siginfo_t* info) noexcept {
  return info->si_code == SI_QUEUE && info->si_value.sival_ptr == &preempt_token &&
         info->si_pid == getpid();
}

// The request is current when the P's tick still equals the one sysmon saw standing still.
bool requested(p* pp) noexcept {
  return pp->preempt_req.load(std::memory_order_relaxed) == pp->schedtick.load(std::memory_order_relaxed);
}


// Shutdown found gp held (step 3 done, step 5 never coming: await_p returned null). A G left
// where the signal stopped it would keep what it holds (a FILE's lock, malloc's), so it runs on
// instead, on this M with a P, to its next runtime call (see hold_for_preemption). Returns
// false if no P came before the cut-off; the G is then abandoned where it is.
bool resume_for_shutdown(m* mp, g* gp, p* pp) noexcept {
  // sysmon may be handing our P on right now (take_preempted, which writes to this M): take
  // the P back first, and if sysmon got there before us, wait until it is done (its pidle
  // store).
  std::uint32_t s = ppreempted;
  if (pp->status.compare_exchange_strong(s, prunning, std::memory_order_acq_rel)) {
    if (gp->locked == 0) gp->lockedm = nullptr;
    return true;  // still ours, the G still running
  }
  while (pp->status.load(std::memory_order_acquire) == ptaking) cpu_relax();
  // sysmon queued the G globally, wired to us, and handed the P on.
  return resume_wired_for_shutdown(mp, gp);
}

}  // namespace

bool resume_wired_for_shutdown(m* mp, g* gp) noexcept {
  // Whoever dequeued gp since passes us its P (startlockedm), as while running; else we take
  // it out of the queue and run it on an idle P, of which shutdown frees one per exiting M.
  for (;;) {
    if (p* np = mp->nextp_take()) {
      acquirep(mp, np, acquire_mode::in_signal);
      break;
    }
    p* np;
    {
      spin_guard l(sched.lock);
      np = pidleget();
      if (np && !globrunqremove(gp)) {  // dequeued: its P is on its way to us
        pidleput(np);
        np = nullptr;
      }
    }
    if (np) {
      acquirep(mp, np, acquire_mode::in_signal);
      break;
    }
    if (shutdown_cut_off()) return false;
    // Woken by a P handed over (startlockedm) or by run_main's rounds; the timeout covers an
    // M that exits and frees a P without waking anyone.
    mp->park.clear();
    if (!mp->nextp_peek()) mp->park.sleep_until(nanotime() + 200'000);
  }
  if (gp->locked == 0) gp->lockedm = nullptr;
  resume_on(mp, gp);
  return true;
}

namespace {

// Steps 3 and 5 above, on the interrupted M. Returns once the M holds a P and runs gp again.
//
// Shutdown (the runtime no longer running): a G stopped now would keep whatever lock it holds
// past run(), so it is not stopped but left to run on to its next runtime call, where, with
// preempt_req current, preempt_check yields it to g0, which sees the runtime stopping and
// exits the thread; a G that parks or yields gets there too. Only once the cut-off has passed
// (boot.cpp) is it abandoned where it runs. A G already held when shutdown began is resumed
// the same way (resume_for_shutdown).
void hold_for_preemption(m* mp, g* gp, p* pp) noexcept {
  if (!running()) {
    if (shutdown_cut_off()) cut_off(mp, gp);
    return;
  }
  std::uint32_t running_word = prunning;
  if (!pp->status.compare_exchange_strong(running_word, ppreempted, std::memory_order_acq_rel)) return;
  sysmon_poke();
  if (p* np = await_p(mp)) {
    acquirep(mp, np, acquire_mode::in_signal);
    if (gp->locked == 0) gp->lockedm = nullptr;
    resume_on(mp, gp);
  } else if (!resume_for_shutdown(mp, gp, pp)) {
    cut_off(mp, gp);
  }
  if (!running()) {  // make its next runtime call its last
    p* cp = mp->curp;
    cp->preempt_req.store(cp->schedtick.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
}

void on_sigurg(int sig, siginfo_t* info, void* uctx) {
  if (sent_by_gort(info)) {
    // A request that is no longer current (the G reached the scheduler since, or the M has
    // moved on) or a G that cannot be stopped now is left alone: sysmon asks again if needed.
    // Either way the signal was gort's and goes no further.
    // A G found asleep in a system call loses its P instead of being held (kernel_wait.cpp):
    // holding it would requeue it as runnable and keep an M for a G that cannot run anyway.
    const int saved_errno = errno;
    m* mp = getm_raw();
    g* gp = mp ? mp->curg : nullptr;
    if (gp && gp->nopreempt.load(std::memory_order_relaxed) == 0) {
      if (mp->kstate.load(std::memory_order_relaxed)) {
        // sysmon saw this P-less G use CPU: back to a P, unless it is in the kernel again.
        if (!in_syscall(uctx)) kernel_rejoin_in_signal(mp, gp);
      } else if (p* pp = mp->curp) {
        const std::uint32_t tick = pp->schedtick.load(std::memory_order_relaxed);
        const bool preempt = requested(pp);
        if ((preempt || pp->kprobe_req.load(std::memory_order_relaxed) == tick) && in_syscall(uctx))
          kernel_enter(mp, gp, pp);
        else if (preempt)
          hold_for_preemption(mp, gp, pp);
      }
    }
    errno = saved_errno;
    return;
  }
  // Not gort's: pass it on to whatever handled SIGURG before gort::run.
  if (old_action.sa_flags & SA_SIGINFO) {
    if (old_action.sa_sigaction) old_action.sa_sigaction(sig, info, uctx);
  } else if (old_action.sa_handler != SIG_DFL && old_action.sa_handler != SIG_IGN && old_action.sa_handler) {
    old_action.sa_handler(sig);
  }
}

}  // namespace

void cut_off(m* mp, g* gp) noexcept {
  note_cut_off(gp);
  mp->curg = nullptr;
  gp->fib.after = nullptr;
  gp->fib.switch_to(mp->g0, mp->eh);
  std::abort();  // never resumed
}

bool install_preempt_handler() {
  if (installed) return false;
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
    return false;
  }
  installed = true;
  return true;
}

void uninstall_preempt_handler() {
  if (!installed) return;
  // Put back only our own action. A handler the program installed over ours while the runtime
  // ran stays, and so does ours behind it (installed stays true), since that handler may chain
  // to it: the next run then neither installs ours again nor saves a handler that chains to
  // ours as the one to chain to.
  struct sigaction cur;
  std::memset(&cur, 0, sizeof cur);
  if (sigaction(SIGURG, nullptr, &cur) != 0 || !(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != on_sigurg)
    return;
  if (sigaction(SIGURG, &old_action, nullptr) == 0) installed = false;
}

void unblock_preempt_signal() noexcept {
  // Asynchronous preemption off: the program's mask stands.
  if (!installed || !sched.async_preempt || !sched.sysmon_on) return;
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGURG);
  pthread_sigmask(SIG_UNBLOCK, &s, nullptr);
}

// sysmon's half of step 1. The token marks the signal as gort's (sent_by_gort).
void preempt_m(m* mp) noexcept {
  sigval v;
  v.sival_ptr = &preempt_token;
  pthread_sigqueue(static_cast<pthread_t>(mp->tid), SIGURG, v);
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
