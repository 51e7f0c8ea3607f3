// gort: boot and shutdown of a runtime (run_main), with the main G.
//
// Boot: validate the settings, claim the single runtime slot (sched.state stopped -> starting),
// build the Ps and the main G, go to running, install the signal handlers, then start the first
// M (holding P 0 with the main G queued), a spare M, the M factory and sysmon. Shutdown, once
// the main G's body returned: go to stopping, stop the M factory, wait for foreign submitters
// in flight, wake every M until all have exited (an M running a G exits when that G next
// enters the scheduler; the G is abandoned) and the factory is done, stop sysmon, join the
// threads, free everything, go to stopped, put the signal actions back. A failure before the first thread starts undoes everything.
#include "boot.hpp"

#include <chrono>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <vector>

#include "check.hpp"
#include "clock.hpp"
#include "deadlock.hpp"
#include "env.hpp"
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

// Single-threaded: every M has exited.
void teardown() GORT_NO_TSA {
  g_shutdown();  // what task and thread handles still hold, before the stacks go
  for (g* gp : sched.allg) gp->fib.destroy();
  sched.allg.reset();
  for (p* pp : sched.ps) {
    pp->tm.clear();
    delete pp;
  }
  sched.ps.reset();
  for (m* mp : sched.ms) delete mp;
  sched.ms.reset();
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

}  // namespace

std::uint64_t run_id() noexcept {
  g* mg = sched.main_g.load(std::memory_order_acquire);
  return mg ? mg->id : 0;
}

void run_main(const config& cfg, gort::detail::body_fn body, void* frame) {
  const settings set = read_settings(cfg);  // validates the config and the environment
  const unsigned n = set.procs;
  auto pool = std::make_unique<stack_pool>(cfg.stack_size);  // validates stack_size
  run_state stopped = run_state::stopped;
  if (!sched.state.compare_exchange_strong(stopped, run_state::starting, std::memory_order_acq_rel))
    throw std::logic_error("gort::run: a runtime is already running in this process");

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
  // scheduler; the G is abandoned.
  sched.state.store(run_state::stopping, std::memory_order_seq_cst);
  sched.sysmon_note.wakeup();  // it stops Gs that are still running (sysmon.cpp)
  mfactory_quit();  // an M it is creating now is in sched.ms before the factory exits
  while (sched.foreign.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  std::vector<m*> ms;
  {
    spin_guard l(sched.lock);
    ms.assign(sched.ms.begin(), sched.ms.end());
  }
  for (;;) {
    for (m* mp : ms) mp->park.wakeup();
    if (sched.nmrunning.load() == 0 && !mfactory_alive()) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    spin_guard l(sched.lock);
    ms.assign(sched.ms.begin(), sched.ms.end());
  }
  sysmon_stop();  // before the joins: it may still be signalling a thread on its way out
  mfactory_join();
  for (m* mp : ms)
    if (mp->thr.joinable()) mp->thr.join();
  teardown();
  sched.state.store(run_state::stopped, std::memory_order_seq_cst);
}  // ~run_signals: every M has exited, so no G can fault or be signalled any more

}  // namespace gort::rt
