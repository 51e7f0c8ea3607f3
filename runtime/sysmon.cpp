// gort: sysmon, the monitor thread. It holds no P and runs no Gs; it watches the Ps and acts
// where a P is stuck:
//   - a G has run for longer than its time slice without passing through the scheduler:
//     ask it to yield (preempt_req, checked at runtime calls) and, with asynchronous
//     preemption, signal its M (preempt.cpp);
//   - an M was stopped by that signal (ppreempted): move its G to the global queue, wired to
//     the M, and hand the P to another M;
//   - an M has been inside gort::blocking() for more than a tick: retake its P and hand it on
//     (blocking.cpp has the other half).
//
// Cadence. A tick is 20 us while sysmon finds things to do. After 50 ticks in a row with
// nothing to do it doubles its sleep, up to a cap, and it never sleeps past the moment the
// oldest running slice expires. When every P is idle it sleeps with no deadline (no CPU at
// all) until a P is taken from the idle list (pidle_taken wakes it).
//
// The cap is about when a slice started. A look that sees a P's schedtick moved knows only
// that the running slice began after two lower bounds: the previous look, and the P's own
// stamp (p::stamp_ns, taken at every 61st schedule and at every g0 schedule, always before the G
// starts). The slice is counted from the later of the two, so no G overstays it by more than
// sysmon's own lateness; the price is that a slice may be cut short by the bound's distance
// from the true start. Where the stamp is fresh (a P switching thousands of times a second:
// servers, fork-join, yield loops) that distance is microseconds whatever the sleep, so the
// cap is time_slice / 2 (5 ms by default). Where some running P's stamp is stale (a few
// long-running Gs, the case preemption exists for) only the look bounds it, and the cap is
// time_slice / 10 (1 ms): not Go's 10 ms, because wake-up latency behind a spinning G is what
// users notice. The long cap matters where sysmon shares a CPU with an M: each wake-up there
// preempts the M, which measured 2.5-6% of a procs = 1 yield loop at 1,000 wake-ups a second.
// A P that turns from dense switching to a long computation within one long sleep can have
// that G's slice cut short by up to the long cap; nothing ever overstays.
//
// Samples are taken without stopping anyone: a P's schedtick or syscalltick that moved
// between two looks means progress; only an unchanged value across ticks triggers action, and
// every action is a CAS on p->status that the P's own M races against fairly.
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "sysmon.hpp"

#include "deadlock.hpp"
#include "g.hpp"
#include "kernel_wait.hpp"
#include "m.hpp"
#include "mfactory.hpp"
#include "preempt.hpp"
#include "proc.hpp"

namespace gort::rt {

namespace {

constexpr std::int64_t look_interval_ns = 20'000;
constexpr int idle_ticks_before_backoff = 50;
// A G that ignores a preemption request (inside no_preempt, or in runtime code) is signalled
// again no more often than this: its M would otherwise take a signal every tick.
constexpr std::int64_t resignal_ns = 1'000'000;

struct psample {
  std::uint32_t schedtick = 0;
  std::int64_t schedwhen = 0;
  std::uint32_t syscalltick = 0;
  bool in_syscall = false;  // the last look saw this syscalltick inside a blocking call
  std::int64_t signalled = 0;
  // The running M's CPU time at the last look (-1: unknown), for spotting a G asleep in the
  // kernel (kernel_wait.cpp); the slice and time of the last probe; and the syscalltick a
  // probe's conversion will give the P, which the next look then retakes at once.
  std::int64_t cpu = -1;
  m* cpu_m = nullptr;
  std::uint32_t probed = ~0u;
  std::int64_t probed_at = 0;
  std::uint32_t kcall = 0;
  bool kexpect = false;
};

// A timer on pp is overdue by more than a look: the P's Gs run timers only when it schedules,
// and a G making short blocking calls back to back (blocking_exit's fast path keeps the P)
// would hold them back for the rest of its slice. Such a P's slice ends early: a cooperative
// request, which the G honours when its call returns (blocking_exit's preempt_check). Measured
// on shortblock (8 Gs in 10 us gort::blocking calls on 2 Ps, usleep taking 87 us here): the
// main G's 1 ms sleep came back 40-52 ms late, waiting for such slices to end.
// Also lowers *next_deadline to the look after pp's next timer is due, so that sysmon's backoff
// does not add its cap (up to 5 ms) to the wait.
bool timer_overdue(p* pp, std::int64_t now, std::int64_t* next_deadline) {
  const std::int64_t w = pp->tm.next();
  if (w == 0) return false;
  *next_deadline = std::min(*next_deadline, w + look_interval_ns + 1);
  return w + look_interval_ns < now;
}

// Whether taking the P from a G asleep in the kernel is worth a signal: the P has other work
// (queued Gs here or globally, timers), or the G has held it for a whole slice. Otherwise the
// G gets it back for free when its call returns, as Go's retake leaves such a P alone.
bool kernel_probe_worth(p* pp, std::int64_t stuck_ns) {
  return !pp->q.empty() || global_queue_hint() != 0 || pp->tm.next() != 0 ||
         stuck_ns >= sched.time_slice_ns;
}

// A pointer, never a static std::thread: exit() (from a G, or from any thread while a runtime
// runs) destroys statics, and a joinable std::thread's destructor calls std::terminate, which
// turned every exit(status) into an abort.
std::thread* monitor = nullptr;
std::atomic<bool> quit{false};

// The M held for preemption on pp gets pp back (preempt.cpp, hold_for_preemption: it resumes
// its G, which runs a new slice), and the factory is asked for a parked M for next time.
void decline_hold(m* mp, p* pp) {
  pp->curm.store(nullptr, std::memory_order_relaxed);
  mp->curp = nullptr;
  pp->status.store(pidle, std::memory_order_release);
  sched.nholds_declined.fetch_add(1, std::memory_order_relaxed);
  mp->nextp_store(pp);
  mp->park.wakeup();
  mfactory_poke();
}

// Step 4 of preempt.cpp's protocol: the P's M is parked in the signal handler with its G.
void take_preempted(p* pp) {
  // Claimed with a CAS: on shutdown the held M may be taking its P back at the same moment
  // (preempt.cpp, hold_for_preemption), and then it is the M's. If we win, the M waits for
  // the pidle below before it touches its own state again.
  std::uint32_t expect = ppreempted;
  if (!pp->status.compare_exchange_strong(expect, ptaking, std::memory_order_acq_rel)) return;
  m* mp = pp->curm.load(std::memory_order_relaxed);
  g* gp = mp->curg;
  // The P goes to an M that exists (never to a new one: creating it could wait on a lock gp
  // holds). With none, the hold is declined: the M gets its own P back and its G runs on.
  m* to = claim_m(pp);
  if (!to) {
    decline_hold(mp, pp);
    return;
  }
  gp->lockedm = mp;
  set_status(gp, gstatus::running, gstatus::runnable);
  pp->curm.store(nullptr, std::memory_order_relaxed);
  mp->curp = nullptr;
  pp->status.store(pidle, std::memory_order_release);
  globrunqput(gp);
  sched.npreempted.fetch_add(1, std::memory_order_relaxed);
  to->nextp_store(pp);
  to->park.wakeup();
}

// One look at every P. Returns whether anything needed doing; *next_deadline is lowered to
// when the oldest running slice will have expired.
// `prev`: the time of the previous look. A tick seen to have moved since then started its slice
// somewhere after `prev`; counting from `prev` means no G overstays its slice by more than
// sysmon's own lateness, at the price of cutting some slices short by up to one look interval.
// *stale is set when some running P's stamp is older than `fresh_ns` (see Cadence).
bool retake(std::vector<psample>& ps, std::int64_t now, std::int64_t prev, std::int64_t fresh_ns,
            std::int64_t* next_deadline, bool* stale) {
  bool acted = false;
  const bool stopping = !running();
  for (std::size_t i = 0; i < sched.ps.size(); ++i) {
    p* pp = sched.ps[i];
    psample& s = ps[i];
    std::uint32_t st = pp->status.load(std::memory_order_acquire);
    if (stopping && st != prunning) continue;
    // Shutdown: Gs still running are abandoned at their next runtime call. One over its slice
    // gets the usual request and signal, and its handler lets it run on to that call until
    // shutdown's cut-off, then sends its M to exit (preempt.cpp). So a G in an endless loop
    // cannot hold shutdown up, and nothing is cut off needlessly.
    if (st == ppreempted) {
      take_preempted(pp);
      acted = true;
      continue;
    }
    if (pstatus_kind(st) == psyscall) {
      // The slice goes on across blocking calls: blocking_exit's fast path takes the P back
      // without a schedule, so a G making short calls back to back would otherwise never be
      // seen over its slice (the P is in a call at nearly every look) and starve the Gs queued
      // behind it. Count it here too; once it is over, ask the G to yield when its call returns
      // (no signal: its M is in the kernel).
      const std::uint32_t tick = pp->schedtick.load(std::memory_order_relaxed);
      if (tick != s.schedtick || s.schedwhen == 0) {
        s.schedtick = tick;
        s.schedwhen = prev ? prev : now;
        s.signalled = 0;
      } else if ((now - s.schedwhen >= sched.time_slice_ns || timer_overdue(pp, now, next_deadline)) &&
                 pp->preempt_req.load(std::memory_order_relaxed) != tick) {
        pp->preempt_req.store(tick, std::memory_order_relaxed);
        acted = true;
      }
      std::uint32_t t = pp->syscalltick.load(std::memory_order_relaxed);
      // A G the handler found asleep in the kernel (our probe): a real wait, retaken at once.
      const bool found = s.kexpect && t == s.kcall;
      s.kexpect = false;
      if (!found && (!s.in_syscall || t != s.syscalltick)) {
        s.syscalltick = t;
        s.in_syscall = true;
        continue;
      }
      // The same call on two looks, at least a tick apart: the P is wasted where it is. For a
      // G found asleep in a plain call only if an M can take the P within max_threads: that
      // hand-off is an optimisation, and the call gives the P back when it returns.
      if (m* cm = pp->curm.load(std::memory_order_relaxed);
          cm && cm->kstate.load(std::memory_order_relaxed) && !m_within_limit())
        continue;
      std::uint32_t expect = st;
      if (pp->status.compare_exchange_strong(expect, pidle, std::memory_order_acq_rel)) {
        pp->curm.store(nullptr, std::memory_order_relaxed);
        sched.nretaken.fetch_add(1, std::memory_order_relaxed);
        handoffp(pp);
        acted = true;
      }
      s.in_syscall = false;
      continue;
    }
    s.in_syscall = false;
    if (st == pidle) {
      // Backstop for the timer sleeper: a due timer on an idle P gets an M.
      std::int64_t w = pp->tm.next();
      if (w && w + look_interval_ns < now) wakep();
      continue;
    }
    if (st != prunning) continue;
    m* mp = pp->curm.load(std::memory_order_relaxed);
    if (!mp) continue;  // between owners
    // The stamp before the tick: a stamp newer than the tick read belongs to a schedule that
    // is ending this slice, which the next look sees as a moved tick.
    const std::int64_t stamp = pp->stamp_ns.load(std::memory_order_relaxed);
    if (now - stamp > fresh_ns) *stale = true;
    std::uint32_t t = pp->schedtick.load(std::memory_order_relaxed);
    // The M's CPU time since the last look (kernel_wait.cpp), sampled only while one G runs
    // across looks: reading another thread's CPU clock takes its CPU's run-queue lock, and at
    // every look on every P it cost skynet 25% with sysmon on (against 10% off, 1.1M Gs).
    std::int64_t ran = -1;
    if (t == s.schedtick && s.schedwhen != 0) {
      const std::int64_t cpu = thread_cpu_ns(mp);
      if (s.cpu_m == mp && s.cpu >= 0 && cpu >= 0) ran = cpu - s.cpu;
      s.cpu = cpu;
      s.cpu_m = mp;
    } else {
      s.cpu = -1;
    }
    s.kexpect = false;
    if (t != s.schedtick || s.schedwhen == 0) {
      s.schedtick = t;
      s.schedwhen = std::max(prev ? prev : now, std::min(stamp, now));
      s.signalled = 0;
    } else {
      // The same G ran since the last look but its thread got under half the time: asleep in
      // the kernel, or waiting for a CPU. The handler tells which (kernel_wait.cpp), and lets
      // the P go in the first case. Asked at most once a resignal_ns per slice.
      if (sched.async_preempt && ran >= 0 && ran * 2 < now - prev &&
          (s.probed != t || now - s.probed_at >= resignal_ns) && kernel_probe_worth(pp, now - s.schedwhen) &&
          m_within_limit()) {
        pp->kprobe_req.store(t, std::memory_order_relaxed);
        s.probed = t;
        s.probed_at = now;
        s.kcall = pp->syscalltick.load(std::memory_order_relaxed) + 1;
        s.kexpect = true;
        preempt_m(mp);
        acted = true;
        continue;
      }
      // Backstop for a deferred wake-up (proc.cpp, ready): the readier went on computing
      // without a runtime call, and its hand-off waits while Ps may be idle. A thief's grace
      // check sees the tick standing still and takes it.
      if (pp->defer_wake.load(std::memory_order_relaxed) && pp->q.has_next()) wakep();
      // The backstop's delay is the look interval: keep it short while a deferral is pending.
      if (pp->defer_wake.load(std::memory_order_relaxed)) *stale = true;
      // An overdue timer ends the slice early, cooperatively (timer_overdue): no signal.
      if (timer_overdue(pp, now, next_deadline) && pp->preempt_req.load(std::memory_order_relaxed) != t) {
        pp->preempt_req.store(t, std::memory_order_relaxed);
        acted = true;
      }
      if (now - s.schedwhen >= sched.time_slice_ns) {
        // Over its slice. A first request counts as action (sysmon stays alert to hand the P
        // on quickly); repeats for a G that cannot be stopped yet do not, and are rate-limited.
        if (s.signalled == 0) {
          pp->preempt_req.store(t, std::memory_order_relaxed);
          acted = true;
        }
        if (s.signalled == 0 || now - s.signalled >= resignal_ns) {
          // Holding the M costs a thread to run the P meanwhile: at the thread limit, the G is
          // left to cooperative preemption rather than making the program fail.
          // Nor is it held when no M could take its P (take_preempted): the factory is asked
          // for one, and the next request (resignal_ns on) finds it.
          if (sched.async_preempt && (stopping || sched.nmrunning.load() + 1 < sched.max_threads)) {
            if (stopping || m_available(pp)) preempt_m(mp);
            else mfactory_poke();
          }
          s.signalled = now;
        }
        continue;
      }
    }
    *next_deadline = std::min(*next_deadline, s.schedwhen + sched.time_slice_ns);
  }
  return acted;
}

// Sleeps ns unless poked first; true if the whole time passed.
bool nap(std::int64_t ns) {
  return !sched.sysmon_note.sleep_until(nanotime() + ns) && !quit.load(std::memory_order_acquire);
}

void sysmon_main() {
  // How late a preemption comes is how late sysmon gets a CPU after its timer expires, and on
  // a busy machine it queues behind the very threads it is to interrupt. It runs a few
  // microseconds per look, so where the system allows (root, CAP_SYS_NICE) it asks for a
  // little more priority than the Ms; elsewhere this fails quietly and it runs as they do.
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), -5);
  std::vector<psample> samples(sched.ps.size());
  const std::int64_t short_cap = std::clamp<std::int64_t>(sched.time_slice_ns / 10, look_interval_ns, 10'000'000);
  const std::int64_t long_cap = std::clamp<std::int64_t>(sched.time_slice_ns / 2, look_interval_ns, 50'000'000);
  std::int64_t sleep = look_interval_ns;
  // The previous look; at first, and after sleeping with every P idle, when sysmon should have
  // started watching (sched.sysmon_since).
  std::int64_t last_look = sched.sysmon_since.load(std::memory_order_relaxed);
  int idle = 0;
  const std::int64_t scavenge_period = sched.scavenge_period_ns;
  std::int64_t next_scavenge = scavenge_period ? nanotime() + scavenge_period : 0;
  while (!quit.load(std::memory_order_acquire)) {
    if (next_scavenge && nanotime() >= next_scavenge) {
      if (running()) scavenge_gs();
      next_scavenge = nanotime() + scavenge_period;
    }
    // Every P idle: sleep until one is taken (pidle_taken), with no timeout at all, unless
    // dead Gs beyond the scavenger's reserve are cached: then until the next scavenge. Not
    // while a G found asleep in the kernel has no P (kernel_wait.cpp): back in its own code it
    // may compute without a runtime call, and only sysmon's look brings it back to a P.
    if (sched.npidle.load(std::memory_order_seq_cst) == sched.nprocs &&
        sched.nkernel.load(std::memory_order_seq_cst) == 0 && running()) {
      sched.sysmon_note.clear();
      // Before sysmon_wait: a P taken from here on stores a later time (pidle_taken).
      sched.sysmon_since.store(nanotime(), std::memory_order_relaxed);
      sched.sysmon_wait.store(1, std::memory_order_seq_cst);
      if (sched.npidle.load(std::memory_order_seq_cst) == sched.nprocs &&
          running(std::memory_order_seq_cst) && !quit.load(std::memory_order_seq_cst)) {
        check_deadlock(nap);  // returns only if not dead-locked
        if (next_scavenge && sched.ngfree.load(std::memory_order_relaxed) > scavenge_keep)
          sched.sysmon_note.sleep_until(next_scavenge);
        else
          sched.sysmon_note.sleep();
      }
      sched.sysmon_wait.store(0, std::memory_order_seq_cst);
      for (psample& s : samples) s = psample{};
      last_look = sched.sysmon_since.load(std::memory_order_relaxed);
      sleep = look_interval_ns;
      idle = 0;
      continue;
    }
    // Cleared before the look, so that a poke during or after it cuts the next sleep short;
    // a poke before it describes state the look sees anyway.
    sched.sysmon_note.clear();
    std::int64_t now = nanotime();
    std::int64_t deadline = now + long_cap;
    const std::int64_t prev = std::exchange(last_look, now);
    bool stale = false;
    if (mfactory_pending()) reroute_requests();  // the factory may be blocked: mfactory.cpp
    bool acted = retake(samples, now, prev, short_cap, &deadline, &stale);
    // Gs back from the kernel without a P (kernel_wait.cpp): while one computes, look often.
    if (sched.nkernel.load(std::memory_order_relaxed) != 0 && watch_kernel_ms()) stale = true;
    // Backstop for a G such a handler queued globally while a P was going idle. Not at
    // shutdown: no new work starts then.
    if (running() && global_queue_hint() != 0 && sched.npidle.load(std::memory_order_relaxed) != 0 &&
        sched.nmspinning.load(std::memory_order_relaxed) == 0)
      wakep();
    if (acted) {
      idle = 0;
      sleep = look_interval_ns;
    } else if (++idle > idle_ticks_before_backoff) {
      sleep = std::min(sleep * 2, long_cap);
    }
    const std::int64_t nap_ns = std::min(sleep, stale ? short_cap : long_cap);
    // A blocking call seen now is retaken at the next look if still in progress; that look is
    // not brought forward: in a loop of short blocking calls nearly every look sees one, and
    // sysmon would tick every 20 us for nothing.
    sched.sysmon_note.sleep_until(std::max(std::min(now + nap_ns, deadline), now + look_interval_ns));
  }
}

}  // namespace

void sysmon_poke() noexcept { sched.sysmon_note.wakeup(); }

void sysmon_start() {
  if (!sched.sysmon_on) return;
  quit.store(false);
  try {
    monitor = new std::thread(sysmon_main);
  } catch (const std::system_error& e) {
    // The OS refused the thread (RLIMIT_NPROC reached by the Gs that started first): run on
    // without sysmon, so without preemption or hand-offs of blocked Ps, rather than throw out
    // of gort::run while Gs are running.
    std::fprintf(stderr, "gort: warning: cannot start the sysmon thread (%s); running without "
                 "preemption and blocking-call hand-off\n", e.what());
  }
}

// Once every M has exited (sysmon keeps stopping runaway Gs until then).
void sysmon_stop() {
  if (!monitor) return;
  quit.store(true, std::memory_order_seq_cst);
  sched.sysmon_note.wakeup();
  monitor->join();
  delete monitor;
  monitor = nullptr;
}

}  // namespace gort::rt
