// gort: boot and shutdown of a runtime (run_main), with the main G.
//
// Boot: validate the settings, claim the single runtime slot (sched.state stopped -> starting),
// build the Ps and the main G, go to running, install the signal handlers, then start the first
// M (holding P 0 with the main G queued), a spare M, the M factory and sysmon. Shutdown, once
// the main G's body returned: set the cut-off, go to stopping, stop the M factory, wait for
// foreign submitters in flight, wake every M until all have exited but those left inside
// blocking calls (an M running a G exits when that G next enters the scheduler, Gs stopped by
// preemption included, which run on to get there until the cut-off; the G is abandoned) and
// the factory is done, stop sysmon, join the threads (detach the left ones), name the Gs cut
// off, free everything but what the left Ms may touch, go to stopped, put the signal actions
// back. A failure before the first thread starts undoes everything.
// docs/design.md, "Shutdown with Gs in user code or in blocking calls", has the protocols.
//
// Concurrency: run_main alone moves the state; an M learns of shutdown from it. Deciding that an
// M stays in its blocking call is a CAS on m::call that the M's return races (abandon_calls).
// The cut-off and the list of Gs cut off are atomics that the preemption handler reads and
// appends to.
#include "boot.hpp"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"
#include "clock.hpp"
#include "deadlock.hpp"
#include "env.hpp"
#include "fork.hpp"
#include "g.hpp"
#include "m.hpp"
#include "mfactory.hpp"
#include "overflow.hpp"
#include "pin.hpp"
#include "preempt.hpp"
#include "proc.hpp"
#include "san.hpp"
#include "sysmon.hpp"

namespace gort::rt {

namespace {

struct main_ctx {
  gort::detail::body_fn body;
  void* frame;
  note done;
};

void main_body(void* p) {
  auto* mc = *static_cast<main_ctx**>(p);  // g_new_main put the context at the frame's start
  mc->body(mc->frame);  // captures its own exceptions (gort.hpp run())
  sched.main_g.store(nullptr);  // Gs left waiting now are abandoned, not dead-locked
  mc->done.wakeup();
}


// The signal handlers of one run (preempt.cpp, overflow.cpp), installed just before the first
// M starts, after everything in run_main that can fail without a thread to stop. The
// destructor puts back the actions found on every way out of run_main, returning or throwing.
// Only what this run installed is put back: the overflow handler may have been installed by
// the program itself.
struct run_signals {
  bool overflow = false;
  bool preempt = false;
  run_signals() {
    overflow = install_overflow_handler();
    if (sched.async_preempt && sched.sysmon_on) preempt = install_preempt_handler();
  }
  ~run_signals() {
    if (preempt) uninstall_preempt_handler();
    if (overflow) uninstall_overflow_handler();
  }
  run_signals(const run_signals&) = delete;
  run_signals& operator=(const run_signals&) = delete;
};

// Leftovers of runs that left Ms inside blocking calls (abandon_calls): those Ms, linked
// through m::link, and the Ps of those runs, through p::link. Kept for good, never touched
// again: such an M, when its call returns, reads its P's status word (blocking_exit).
m* leftover_ms = nullptr;
p* leftover_ps = nullptr;

// Single-threaded: every M has exited but those in `left` (left inside blocking calls, with
// their Gs in `kept`), which touch nothing here but their own M, their P's status and their
// G's stack.
void teardown(const std::vector<m*>& left = {}, const std::vector<g*>& kept = {}) GORT_NO_TSA {
  g_shutdown(kept.data(), kept.size());  // what task and thread handles still hold, before the stacks go
  for (g* gp : sched.allg)
    if (std::find(kept.begin(), kept.end(), gp) == kept.end()) gp->fib.destroy();
  for (g* gp : kept) sched.stacks->keep_mapped(gp->stk);
  sched.allg.reset();
  for (p* pp : sched.ps) {
    pp->tm.clear();
    if (left.empty()) {
      delete pp;
      continue;
    }
    // Any of them may be the P a left M reads when its call returns (m::oldp): it stays, in a
    // state no status word of a call matches, so that M's fast path fails.
    pp->status.store(pidle, std::memory_order_relaxed);
    pp->link = leftover_ps;
    leftover_ps = pp;
  }
  sched.ps.reset();
  for (m* mp : sched.ms) {
    if (std::find(left.begin(), left.end(), mp) == left.end()) {
      delete mp;
      continue;
    }
    mp->link = leftover_ms;
    leftover_ms = mp;
  }
  sched.ms.reset();
  sched.nmrunning.fetch_sub(static_cast<std::uint32_t>(left.size()));
  sched.steal_strides.reset();
  delete sched.stacks;
  sched.stacks = nullptr;
  sched.ghead = sched.gtail = nullptr;
  sched.nglobal = 0;
  sched.pidle = nullptr;
  sched.npidle = 0;
  sched.midle = nullptr;
  sched.nmidle = 0;
  sched.nmspinning = 0;
  sched.gfree = nullptr;
  sched.ngfree = 0;
  sched.ngfree_low = 0;
  sched.timer_sleeper = nullptr;
  sched.timer_sleep_until = 0;
  sched.sysmon_wait = 0;
}

// How long shutdown lets Gs that have not reached the runtime run on (preempt.cpp,
// hold_for_preemption) before it abandons them where they are. Such a G was stopped in the
// middle of ordinary code, which reaches a runtime call within a time slice or so (10 ms by
// default) when it runs alone; at shutdown it competes for CPUs with the other Gs doing the
// same, and on a loaded machine an M waits tens of ms for a CPU. From shutdown's start to the
// last M's exit measured 0.03-3.8 ms (median 0.3 ms, 240 runs of test_shutdown's fprintf and
// malloc loopers, 2 cores shared with a CI run): 1 s is hundreds of times the worst of that,
// and still short beside a process's exit.
constexpr std::int64_t shutdown_grace_ns = 1'000'000'000;
std::atomic<std::int64_t> cut_off_at{0};  // 0 while running; run_main sets it at shutdown

// Gs cut off at the cut-off (note_cut_off), named once every M has exited. A fixed array:
// written by signal handlers. Past its size only the count grows.
constexpr std::size_t max_named_cut_offs = 64;
std::atomic<g*> cut_offs[max_named_cut_offs];
std::atomic<std::size_t> ncut_offs{0};

// One line per G cut off at shutdown, on stderr.
void report_cut_offs() {
  const std::size_t n = ncut_offs.exchange(0);
  for (std::size_t i = 0; i < n && i < max_named_cut_offs; ++i) {
    g* gp = cut_offs[i].exchange(nullptr);
    if (!gp) continue;
    char site[512];
    describe_site(gp->created_at, site, sizeof site);
    char by[64];
    if (gp == sched.main_g.load()) std::snprintf(by, sizeof by, "the main G");
    else if (gp->parent) std::snprintf(by, sizeof by, "G %llu", static_cast<unsigned long long>(gp->parent));
    else std::snprintf(by, sizeof by, "a plain thread");
    std::fprintf(stderr, "gort: G %llu (created by %s at %s) did not reach a runtime call within "
                 "%lld ms of shutdown and was abandoned where it ran, with whatever it held\n",
                 static_cast<unsigned long long>(gp->id), by, site,
                 static_cast<long long>(shutdown_grace_ns / 1'000'000));
  }
  if (n > max_named_cut_offs)
    std::fprintf(stderr, "gort: and %zu more Gs were abandoned at shutdown the same way\n",
                 n - max_named_cut_offs);
}

// Shutdown's part of the blocking-call protocol. An M inside gort::blocking may stay in the
// kernel for ever (a read on an idle pipe), so shutdown does not wait for it: it leaves the M
// there, and the M, when its call returns, sees that (m::call) and never comes back into the
// runtime (blocking_exit, abandoned_in_call). The decision is a CAS on m::call, raced fairly by
// the M's own exchange in blocking_exit's slow path; the M's fast path (taking its P back with
// a CAS on the P's status word) must fail first, so the P is taken here, as sysmon retakes
// one, unless sysmon already did. An M whose P is not in its call any more (back, or not yet
// in) is left for a later round. Appends the Ms left, and their Gs, to `left` and `kept`.
void abandon_calls(const std::vector<m*>& ms, std::vector<m*>& left, std::vector<g*>& kept) {
  for (m* mp : ms) {
    const std::uint64_t c = mp->call.load(std::memory_order_acquire);
    if (c == 0 || (c & 1)) continue;
    bool back = false;
    for (p* pp : sched.ps) {
      if (pp->curm.load(std::memory_order_relaxed) != mp) continue;
      std::uint32_t st = pp->status.load(std::memory_order_acquire);
      if (pstatus_kind(st) != psyscall || !pp->status.compare_exchange_strong(st, pidle, std::memory_order_acq_rel)) {
        back = true;
        continue;
      }
      pp->curm.store(nullptr, std::memory_order_relaxed);
      spin_guard l(sched.lock);
      pidleput(pp);
    }
    std::uint64_t expect = c;
    if (back || !mp->call.compare_exchange_strong(expect, c | 1, std::memory_order_acq_rel)) continue;
    left.push_back(mp);
    kept.push_back(mp->callg);  // written before the call's number (blocking_enter)
  }
}

}  // namespace

bool shutdown_cut_off() noexcept {
  const std::int64_t at = cut_off_at.load(std::memory_order_acquire);
  return at != 0 && nanotime() >= at;
}

void note_cut_off(g* gp) noexcept {
  const std::size_t i = ncut_offs.fetch_add(1);
  if (i < max_named_cut_offs) cut_offs[i].store(gp);
}

namespace {
std::atomic<std::uint64_t> nleft_returned{0};
}  // namespace

void abandoned_in_call() noexcept {
  // No handler of any run may run here (this M's TLS still names it): every signal blocked.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  setm(nullptr);
  nleft_returned.fetch_add(1, std::memory_order_release);
  for (;;) pause();
}

std::uint64_t left_calls_returned() noexcept { return nleft_returned.load(std::memory_order_acquire); }

std::uint64_t run_id() noexcept {
  g* mg = sched.main_g.load(std::memory_order_acquire);
  return mg ? mg->id : 0;
}

void run_main(const config& cfg, gort::detail::body_fn body, void* frame) {
  const settings set = read_settings(cfg);  // validates the config and the environment
  const unsigned n = set.procs;
  auto pool = std::make_unique<stack_pool>(cfg.stack_size);  // validates stack_size
  install_fork_handlers();
  run_state stopped = run_state::stopped;
  if (!sched.state.compare_exchange_strong(stopped, run_state::starting,
                                           std::memory_order_acq_rel)) {
    if (stopped == run_state::forked)
      throw std::logic_error(std::string("gort::run ") + forked_message());
    throw std::logic_error("gort::run: a runtime is already running in this process");
  }

  sched.time_slice_ns = set.time_slice_ns;
  sched.async_preempt = set.async_preempt;
  sched.sysmon_on = set.sysmon;
  sched.scavenge_period_ns = set.scavenge_period_ns;
  sched.detect_deadlock = set.detect_deadlock;
  sched.max_threads = set.max_threads;
  sched.stacks = pool.release();
  sched.frame_budget = cfg.stack_size / 4;
  sched.nprocs = n;
  main_ctx mc{body, frame, {}};
  // Until the first thread starts, a failure (bad_alloc, a stack that cannot be mapped) undoes
  // everything and leaves the runtime stopped, with no signal handler installed yet.
  try {
    sched.steal_strides.clear();
    for (std::uint32_t i = 1; i <= n; ++i)
      if (std::gcd(i, n) == 1) sched.steal_strides.push_back(i);
    std::vector<int> cpus = place_procs(cfg.pin, n);
    for (unsigned i = 0; i < n; ++i) {
      auto pp = std::make_unique<p>();
      pp->id = i;
      if (!cpus.empty()) pp->cpu = cpus[i];
      sched.ps.push_back(pp.get());
      pp.release();
    }
    {
      spin_guard l(sched.lock);
      for (unsigned i = n; i-- > 1;) pidleput(sched.ps[i]);
    }
    sched.main_g.store(g_new_main(main_body, &mc));
    // Threads that are not ours (deadlock.cpp), counted before we create any.
#if GORT_TSAN
    // TSan starts a background thread of its own at the process's first pthread_create. Make
    // that happen now, so that it is counted here and never passes for a new foreign thread.
    std::thread([] {}).join();
#endif
    sched.threads_at_start = count_threads();
  } catch (...) {
    sched.main_g.store(nullptr);
    teardown();
    sched.state.store(run_state::stopped);
    throw;
  }
  g* mg = sched.main_g.load(std::memory_order_relaxed);
  sched.sysmon_since.store(nanotime(), std::memory_order_relaxed);
  runqput(sched.ps[0], mg, queue_at::back);
  sched.state.store(run_state::running, std::memory_order_seq_cst);
  // From here on nothing is undone on an exception but the signal actions: see run_signals.
  const run_signals handlers;
  sched.extra_spares = 0;
#if GORT_ASAN
  // Under ASan a starting thread allocates (ASan's thread set-up frees into its quarantine)
  // before it reaches gort, so it needs the allocator's size-class locks. A G held for
  // preemption inside ASan's allocator (preempt.cpp) keeps such a lock, and a hand-off that
  // has to create the M meant to carry a P back to it then hangs at the thread's start: seen
  // once in CI with 100 us slices. Parked spares make hand-offs reuse threads instead; more
  // than this many Gs held at once still creates threads, as without ASan. Started before the
  // first M, so that main_fn sees them all.
  if (sched.sysmon_on && sched.async_preempt && sched.max_threads >= 64)
    for (; sched.extra_spares < 16; ++sched.extra_spares) newm(nullptr, spin::no);
#endif
  // One spare M, parked: the first hand-off (a preemption, a long blocking call) would
  // otherwise wait for a thread to be created, measured at 2-4 ms here.
  if (sched.sysmon_on && sched.max_threads > 1) newm(nullptr, spin::no);
  // From here on the only creator of Ms; before the first M, which may already need one.
  mfactory_start();
  if (!newm(sched.ps[0], spin::no)) GORT_THROW("cannot start the first M");
  sysmon_start();

  mc.done.sleep();

  // Shutdown: stop taking foreign work, wait for foreign submitters in flight, then wake every
  // M so it sees the state and exits. Ms running a G exit when that G next enters the
  // scheduler, and Gs held for preemption run on to get there (hold_for_preemption), until
  // the cut-off; the G is abandoned. Ms inside blocking calls are left there (abandon_calls).
  cut_off_at.store(nanotime() + shutdown_grace_ns, std::memory_order_release);
  sched.state.store(run_state::stopping, std::memory_order_seq_cst);
  sched.sysmon_note.wakeup();  // it stops Gs that are still running (sysmon.cpp)
  mfactory_quit();  // an M it is creating now is in sched.ms before the factory exits
  while (sched.foreign.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  std::vector<m*> ms, left;
  std::vector<g*> kept;
  {
    spin_guard l(sched.lock);
    ms.assign(sched.ms.begin(), sched.ms.end());
  }
  for (;;) {
    for (m* mp : ms) mp->park.wakeup();
    abandon_calls(ms, left, kept);
    if (sched.nmrunning.load() == left.size() && !mfactory_alive()) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    spin_guard l(sched.lock);
    ms.assign(sched.ms.begin(), sched.ms.end());
  }
  sysmon_stop();  // before the joins: it may still be signalling a thread on its way out
  mfactory_join();
  for (m* mp : ms) {
    if (std::find(left.begin(), left.end(), mp) != left.end()) mp->thr.detach();
    else if (mp->thr.joinable()) mp->thr.join();
  }
  report_cut_offs();
  teardown(left, kept);
  cut_off_at.store(0, std::memory_order_relaxed);
  sched.state.store(run_state::stopped, std::memory_order_seq_cst);
}  // ~run_signals: every M has exited, so no G can fault or be signalled any more

}  // namespace gort::rt
