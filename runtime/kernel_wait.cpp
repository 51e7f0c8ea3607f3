// gort: a G asleep in the kernel outside gort::blocking — a plain read() on a silent socket, a
// futex wait inside a contended std::mutex, a waitpid — loses its P the way a gort::blocking
// call does, instead of holding it (and every G queued behind it) for a whole time slice.
//
// Detection (sysmon.cpp, retake). A P whose schedtick stood still between two looks runs one G
// all along. sysmon samples that M's thread CPU clock at every look: if the thread got less
// than half of the wall time between the looks, it was not running — asleep in the kernel, or
// waiting for a CPU. sysmon cannot tell those apart from outside, and only the first matters,
// so it asks the M itself (p::kprobe_req, then the preemption signal) when the P has something
// else to do: queued Gs, global work, timers, or a G stuck for a whole slice.
//
// Conversion (the SIGURG handler, on the M, preempt.cpp). The handler sees the interrupted
// context. A thread the signal woke from a system call is at the syscall/svc instruction again
// when the kernel will restart the call (SA_RESTART, futex, nanosleep's restart block), or just
// past it with EINTR as the result (epoll_wait, poll: these return EINTR to the caller, as any
// signal would make them). Either way the G is in, or about to go back into, the kernel. If the
// G runs its own code (nopreempt == 0), the handler puts the M in gort::blocking's state —
// syscall_leave: the P marked psyscall and let go — but keeps the G current and sets m::kstate,
// then returns into the restarted call. sysmon retakes the P at its next look (it knows the call
// is a real wait) and hands it on. The G is never requeued as runnable, and a thread that was
// merely waiting for a CPU is left alone (its context is not in a system call).
//
// Return. The G comes out of the kernel into its own code, with no P. Two ways take one back:
//  - its next runtime call: getm() (proc.cpp) sees kstate and calls kernel_rejoin, which runs
//    blocking_exit's path (syscall_return) at that safe point: the old P if nobody took it,
//    else an idle one, else the global queue;
//  - sysmon, for a G that computes without calling the runtime: it samples the CPU clock of
//    every M in kstate, and one that used kernel_run_ns of CPU is signalled; the handler, if
//    the G is no longer in a system call, takes a P back for it, or queues the G wired to its
//    M and waits in the handler for one, as a G held for preemption does (preempt.cpp).
// Until one of these, the thread runs beside the procs Ms: for at most kernel_run_ns of CPU
// plus sysmon's look interval.
//
// Races. kstate is set by the handler and taken back with an exchange, by the G's thread only
// (getm or the handler, which interrupts that same thread), so exactly one of them returns the
// G. A handler that interrupts kernel_rejoin after its exchange finds kstate 0 and curp null,
// and leaves the M alone as it does any P-less M. sysmon only reads kstate and signals.
#include "kernel_wait.hpp"

#include <signal.h>
#include <time.h>
#include <ucontext.h>

#include <cerrno>
#include <cstdint>

#include "blocking.hpp"
#include "boot.hpp"
#include "g.hpp"
#include "m.hpp"
#include "preempt.hpp"
#include "proc.hpp"
#include "sysmon.hpp"

namespace gort::rt {

namespace {

// CPU time an M in kstate may use without a P before sysmon has the handler return it to one.
// One signal round trip costs about 3 us here, so a G that alternates between short waits and
// work pays at most ~3% for being brought back; and no thread exceeds procs for longer than
// this plus a look interval.
constexpr std::int64_t kernel_run_ns = 100'000;

}  // namespace

bool in_syscall(const void* uctx) noexcept {
  const auto* uc = static_cast<const ucontext_t*>(uctx);
#if defined(__x86_64__)
  // syscall is 0f 05. The bytes read are the interrupted instruction's own (or, at pc - 2, those
  // of the instruction before it, checked to lie in the same page): always mapped code.
  const auto pc = static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]);
  const auto* at = reinterpret_cast<const unsigned char*>(pc);
  if (at[0] == 0x0f && at[1] == 0x05) return true;
  return (pc & 0xfff) >= 2 && at[-2] == 0x0f && at[-1] == 0x05 &&
         uc->uc_mcontext.gregs[REG_RAX] == -EINTR;
#elif defined(__aarch64__)
  constexpr std::uint32_t svc0 = 0xd4000001;  // svc #0
  const auto pc = static_cast<std::uintptr_t>(uc->uc_mcontext.pc);
  const auto* at = reinterpret_cast<const std::uint32_t*>(pc);
  if (at[0] == svc0) return true;
  return (pc & 0xfff) >= 4 && at[-1] == svc0 &&
         static_cast<std::int64_t>(uc->uc_mcontext.regs[0]) == -EINTR;
#else
  (void)uc;
  return false;
#endif
}

void kernel_enter(m* mp, g* gp, p* pp) noexcept {
  mp->kstate.store(1, std::memory_order_relaxed);
  mp->kepoch.fetch_add(1, std::memory_order_relaxed);
  sched.nkernel.fetch_add(1, std::memory_order_relaxed);
  sched.nkernel_found.fetch_add(1, std::memory_order_relaxed);
  syscall_leave(mp, pp, gp);
  sysmon_poke();
}

m* kernel_rejoin(m* mp) noexcept {
  if (mp->kstate.exchange(0, std::memory_order_acq_rel) == 0) return mp;
  sched.nkernel.fetch_sub(1, std::memory_order_relaxed);
  g* gp = mp->curg;
  mp->curg = nullptr;  // the blocking-call state proper, which syscall_return expects
  syscall_return(mp, gp);
  return getm_raw();  // gp may go on on another M
}

void kernel_rejoin_in_signal(m* mp, g* gp) noexcept {
  // Shutdown treats this M as one in a blocking call (boot.cpp, m::call); the G's next runtime
  // call (kernel_rejoin) takes the way out shutdown left it.
  if (!running()) return;
  if (mp->kstate.exchange(0, std::memory_order_acq_rel) == 0) return;
  sched.nkernel.fetch_sub(1, std::memory_order_relaxed);
  p* pp = mp->oldp;
  mp->oldp = nullptr;
  std::uint32_t s = mp->oldp_word;
  if (pp->status.compare_exchange_strong(s, prunning, std::memory_order_acq_rel)) {
    mp->curp = pp;  // nobody took it: the same slice goes on
    mp->call.store(0, std::memory_order_relaxed);
    return;
  }
  if (mp->call.exchange(0, std::memory_order_acq_rel) & 1) abandoned_in_call();
  if (p* np = take_idle_p(pp)) {
    acquirep(mp, np, acquire_mode::in_signal);
    resume_on(mp, gp);
    return;
  }
  // No P: the G waits for one in the global queue, wired to this M, which waits here (the
  // G's frames stay on its stack, as for a hold; preempt.cpp). Whoever dequeues it hands this
  // M its own P (startlockedm). sysmon's backstop covers a P that went idle meanwhile.
  const bool wired = gp->locked != 0;
  gp->lockedm = mp;
  set_status(gp, gstatus::running, gstatus::runnable);
  globrunqput(gp);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  sysmon_poke();
  p* np = await_p(mp);
  if (!np) {
    // Shutdown came meanwhile: run on to the next runtime call, as a held G does (preempt.cpp),
    // and make that call its last.
    if (!resume_wired_for_shutdown(mp, gp)) cut_off(mp, gp);
    if (wired) gp->lockedm = mp;
    p* cp = mp->curp;
    cp->preempt_req.store(cp->schedtick.load(std::memory_order_relaxed), std::memory_order_relaxed);
    return;
  }
  acquirep(mp, np, acquire_mode::in_signal);
  if (!wired) gp->lockedm = nullptr;
  resume_on(mp, gp);
}

std::int64_t thread_cpu_ns(const m* mp) noexcept {
  if (!mp->has_cpuclock) return -1;
  timespec ts;
  if (clock_gettime(mp->cpuclock, &ts) != 0) return -1;
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool watch_kernel_ms() noexcept {
  bool ran = false;
  spin_guard l(sched.lock);
  for (m* mp : sched.ms) {
    if (!mp->kstate.load(std::memory_order_acquire)) continue;
    const std::int64_t cpu = thread_cpu_ns(mp);
    if (cpu < 0) continue;
    const std::uint32_t e = mp->kepoch.load(std::memory_order_relaxed);
    if (e != mp->kepoch_seen || mp->kcpu_base < 0) {
      mp->kepoch_seen = e;
      mp->kcpu_base = cpu;
      continue;
    }
    if (cpu != mp->kcpu_base) ran = true;
    if (cpu - mp->kcpu_base >= kernel_run_ns) {
      mp->kcpu_base = cpu;
      preempt_m(mp);
    }
  }
  return ran;
}

}  // namespace gort::rt
