// gort: the scheduler's state: G, M, P and the global `sched`. docs/design.md explains the
// protocols. Invariants sit next to the fields they guard.
//
// The types, and who owns them:
//   g        a goroutine: descriptor at the top of its own stack (g.cpp creates and recycles
//            them). Fields are owned by whoever holds the G: its M while it runs, the run queue
//            or wait list it sits in otherwise.
//   m        an OS thread (m.cpp). Its fields are written by its own thread, except `nextp`
//            (handed over by startm) and `park` (woken by anyone).
//   p        a logical processor: run queue, timers, free Gs, heap. Written by the M holding
//            it (p::curm), except the atomics sysmon and thieves read or CAS.
//   sched_t  the one runtime: its lock guards the global queue and the idle lists.
//
// Counting invariants (checked in debug builds where they are cheap to walk):
//   sched.npidle     == length of the sched.pidle list             (proc.cpp, pidleput/get)
//   sched.nmidle     == length of the sched.midle list             (m.cpp, mput/mget)
//   p::ngfree        == length of p::gfree                         (g.cpp, gfput/gfget)
//   sched.ngfree     == sum of gfree_chain_len over sched.gfree     (g.cpp, scavenge_gs)
//   sched.nmspinning == number of Ms with m::spinning set; going below zero throws in every
//                       build (proc.cpp stop_spinning, m.cpp startm/newm)
//
// Which header declares what: proc.hpp (queues, idle Ps, ready/park/yield, switching),
// m.hpp (M lifecycle and hand-off), g.hpp (G lifecycle, free lists), timer_sleeper.hpp
// (arming timers, the M that sleeps until the earliest one), boot.hpp (run and shutdown),
// alloc.hpp (runtime allocation), env.hpp (configuration from the environment), sysmon.hpp,
// preempt.hpp, deadlock.hpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "fiber.hpp"
#include "lock.hpp"
#include "gort/config.hpp"
#include "gort/gort.hpp"
#include "clock.hpp"
#include "note.hpp"
#include "runq.hpp"
#include "stack.hpp"
#include "static_vec.hpp"
#include "timer.hpp"

struct mi_heap_s;

namespace gort::rt {

struct m;
struct p;
struct abandon_hook;  // g.hpp

enum class gstatus : std::uint8_t {
  idle,      // on a free list, or reserved by g_new and not yet started
  runnable,  // in a run queue
  running,   // on an M (m->curg == this)
  waiting,   // parked; someone holds a pointer to ready() it later
  dead,      // finished; frame alive while a handle holds it
};

// A G lives at the top of its own stack: descriptor, then the typed frame (the callable, and
// a task's result) below it, then the frames of the code it runs. Creating a G touches one page
// and allocates nothing; a parked G usually costs that one page.
struct alignas(64) g {  // (the fiber must stay first: g_of)
  fiber fib;
  std::uint64_t id = 0;
  std::atomic<gstatus> status{gstatus::idle};  // transitions: set_status (g.hpp)
  g* schedlink = nullptr;  // run queue / free list link, owned by whoever holds the G there
  // When the G entered its P's ring (the P's stamp_ns): the owner runs the oldest G ahead of
  // newer ones once it has waited a time slice (fast_next). Atomic: a thief may move the G.
  std::atomic<std::int64_t> queued_at{0};
  // The global free list is a list of chains (gfput/gfget); on a chain's first G these link
  // to the next chain and give this chain's length.
  g* gfree_next_chain = nullptr;
  std::uint32_t gfree_chain_len = 0;
  std::uint32_t allg_index = 0;  // where sched.allg holds this G (sched.lock)
  m* curm = nullptr;       // while running

  stack stk;
  void* frame = nullptr;  // typed frame (gort.hpp), at the top of the stack
  bool frame_on_heap = false;  // a frame too large for the stack top is allocated instead
  gort::detail::body_fn body = nullptr;
  gort::detail::destroy_fn destroy = nullptr;
  bool joinable = false;

  // Holders of this G's frame: the running G itself, plus one for a task/thread handle. The
  // last to let go recycles the G.
  std::atomic<int> refs{0};
  // Completion, for join: 0 running with no joiner, 1 done, else the joiner's wait_state*.
  std::atomic<std::uintptr_t> join_state{0};

  timer sleep_timer;  // sleep_for/sleep_until, armed only while parked in sleep

  // Why it waits, for debugging and the deadlock report.
  const char* wait_reason = nullptr;
  // The queue of a channel or sync object this G waits in (g.hpp, abandon_hook): set by the G
  // around its park and cleared when it runs again, read by shutdown (g_shutdown).
  abandon_hook* queued_on = nullptr;

  // Asynchronous preemption is held off while this is non-zero: the G is inside the runtime
  // (touching its P's queues, heaps or locks) or inside a gort::no_preempt region. Written
  // only by the G itself (on whichever M runs it), read by the preemption signal handler on
  // that same M. A G starts at 1: it is first entered from inside the scheduler.
  std::atomic<int> nopreempt{0};
  // Wired to one M: by lock_os_thread (locked > 0), or while its M is held in the preemption
  // signal handler (locked == 0). Such a G only ever runs on lockedm; see docs/design.md.
  m* lockedm = nullptr;
  std::uint32_t locked = 0;

  // Where it was created, for the deadlock report: the creating G (0: a plain thread) and the
  // return address of the gort::go / spawn / thread call.
  std::uint64_t parent = 0;
  const void* created_at = nullptr;
};

// P states. A P in psyscall or ppreempted still belongs to its M until sysmon (or the M
// itself, on its way out) moves it on with a CAS; see docs/design.md "sysmon".
enum : std::uint32_t {
  pidle = 0,     // on the idle list, or between owners
  prunning = 1,  // held by an M running Gs or the scheduler
  psyscall = 2,  // its M is inside gort::blocking(); sysmon may retake it
  ppreempted = 3,  // its M is held in the preemption signal handler; sysmon hands it on
  ptaking = 4,     // sysmon is handing a ppreempted P on (take_preempted); then pidle
};
// A P in a blocking call carries which call in its status word: psyscall in the low bits, the
// P's syscalltick of that call above them (psyscall_word). The M coming back CASes from the
// exact word it stored, so it cannot take back a P that sysmon retook and another M has since
// taken into a blocking call of its own (an ABA that a plain psyscall value allowed: two Ms
// then ran on one P; the p::curm check in releasep caught it).
inline constexpr std::uint32_t pstatus_bits = 3;
inline constexpr std::uint32_t pstatus_kind(std::uint32_t s) noexcept { return s & ((1u << pstatus_bits) - 1); }
inline constexpr std::uint32_t psyscall_word(std::uint32_t tick) noexcept { return psyscall | (tick << pstatus_bits); }

// Work that must wait until the leaving G is off its stack: installed as the leaving fiber's
// after-switch action (fiber::after), so it runs on the arriving side. See park/yield/goexit.
struct transition {
  after_fn fn = nullptr;  // fn(left fiber, arg); the left G is g_of(left)
  void* arg = nullptr;
};

struct p {
  std::uint32_t id = 0;
  std::atomic<m*> curm{nullptr};  // the M holding this P, if any (read by sysmon)
  std::atomic<std::uint32_t> status{pidle};
  // Bumped by the owner at every schedule / blocking call; sysmon compares successive samples
  // to spot a G that overstays its time slice, or a blocking call that lasts more than a tick.
  std::atomic<std::uint32_t> schedtick{0};
  std::atomic<std::uint32_t> syscalltick{0};
  // sysmon asks the handler to look whether the G of slice `schedtick == kprobe_req` sleeps in
  // a system call, and if so to let the P go (kernel_wait.cpp).
  std::atomic<std::uint32_t> kprobe_req{~0u};
  // sysmon asks the G of slice `schedtick == preempt_req` to yield. A later schedule changes
  // schedtick, which cancels a stale request without anyone writing here.
  std::atomic<std::uint32_t> preempt_req{~0u};
  p* link = nullptr;  // idle list, under sched.lock
  runq q;
  // Schedules until the next look at the global queue (the 1-in-61 fairness rule, fast_next).
  std::uint32_t global_countdown = 61;
  // nanotime() at the last 1-in-61 fairness look (fast_next) or g0 schedule (findrunnable),
  // always taken before the G it precedes starts: so a lower bound on the running slice's
  // start, which sysmon reads, and the stamp of Gs queued meanwhile (relaxed; owner-written).
  std::atomic<std::int64_t> stamp_ns{0};
  std::int64_t stale_pick_ns = 0;  // when fast_next last ran a stale oldest G first
  // A G readied into an empty runnext wakes no idle P at once (ready, "Deferred wake-ups" in
  // docs/design.md): its readier usually blocks within a call or two and this P runs it. The
  // readier's runtime calls count defer_wake down (preempt_check) and the last one wakes a P
  // after all, unless this P has scheduled since (schedtick != defer_tick) or runnext emptied.
  // defer_wake is atomic only for sysmon's look (its backstop); the owner alone writes it.
  std::atomic<std::uint32_t> defer_wake{0};
  std::uint32_t defer_tick = 0;

  // Dead Gs, stacks attached, ready for reuse: this is both the G-descriptor cache and the
  // stack cache (a G lives in its stack). Owned by the P: no locks.
  g* gfree = nullptr;
  std::uint32_t ngfree = 0;

  // G ids are handed out in batches so spawning does not bounce one cache line between Ps.
  std::uint64_t goid_next = 0, goid_end = 0;

  timers tm;

  // Allocation: a mimalloc heap may only allocate on the thread that created it (mimalloc
  // 2.0.9), so each P has a home M that creates and owns `heap`. An M that holds a P it is not
  // the home of allocates from its own thread's default heap instead (rt::alloc). Freeing is
  // allowed from any thread.
  mi_heap_s* heap = nullptr;
  m* home = nullptr;

  int cpu = -1;  // with pinning: the OS CPU this P's M runs on
};

struct m {
  std::uint32_t id = 0;
  fiber g0;              // the thread's own stack: where schedule() runs
  g* curg = nullptr;     // the G running on this M, or null on g0
  p* curp = nullptr;     // the P held, if any
  std::atomic<p*> nextp{nullptr};  // handed over by startm before the M is woken
  bool spinning = false; // looking for work; counted in sched.nmspinning
  m* link = nullptr;     // idle list, under sched.lock
  note park;
  eh_globals* eh = nullptr;  // this thread's exception globals (fixed per thread)
  std::uint64_t rand = 0;
  int bound_cpu = -1;
  std::vector<p*> homes;  // the Ps whose heap this M created and must delete (mexit)
  std::thread thr;
  unsigned long tid = 0;  // pthread_t, for the preemption signal
  g* lockedg = nullptr;   // this M runs only this G (lock_os_thread)
  g* handoff = nullptr;   // a G wired to another M, dequeued here: g0 passes it on
  // What this M, as a thief, last saw at the old end of each P's ring (indexed by P id) and
  // since when: steal_work leaves a running P's short ring alone until its oldest G has waited
  // ring_grace_ns (proc.cpp, ring_aged). Sized to the Ps by newm; touched only by this M.
  struct ring_watch {
    g* oldest = nullptr;
    std::int64_t since = 0;
  };
  std::vector<ring_watch> watch;
  p* oldp = nullptr;      // the P held when the current blocking call began
  std::uint32_t oldp_word = 0;  // the status word that call gave oldp (psyscall_word)
  // A G found asleep in a plain system call (kernel_wait.cpp): 1 while the preemption handler
  // has put this M in the blocking-call state (oldp, oldp_word, curp null) with curg kept, so
  // that the G, back in its own code, is still the current G. Taken back to 0 (an exchange:
  // exactly once) by whoever returns the G to a P: its next runtime call (getm) or the
  // handler, at sysmon's request. Set only while the G runs its own code (nopreempt == 0).
  std::atomic<std::uint32_t> kstate{0};
  std::atomic<std::uint32_t> kepoch{0};  // bumped at every such conversion
  // This thread's CPU-time clock, sampled by sysmon (valid once has_cpuclock, set by mstart).
  clockid_t cpuclock{};
  bool has_cpuclock = false;
  // sysmon's own, for an M in kstate: the episode it last saw and the M's CPU time then.
  std::uint32_t kepoch_seen = 0;
  std::int64_t kcpu_base = -1;
  // Shutdown's view of blocking calls (boot.cpp, "abandon_calls"): 0 outside one; 2 * the
  // call's number (ncalls) inside it, written by this M before it lets its P go; that plus 1
  // once shutdown has left the M in its call (a CAS), after which the M never comes back
  // (blocking_exit). callg: the G of the current call, written before `call`.
  std::atomic<std::uint64_t> call{0};
  std::uint64_t ncalls = 0;
  g* callg = nullptr;

  void nextp_store(p* pp) noexcept { nextp.store(pp, std::memory_order_release); }
  p* nextp_take() noexcept { return nextp.exchange(nullptr, std::memory_order_acq_rel); }
  p* nextp_peek() const noexcept { return nextp.load(std::memory_order_acquire); }
};

// The runtime's lifecycle (sched.state). Only `running` accepts work; boot.cpp moves it
// stopped -> starting -> running -> stopping -> stopped. `forked`: this process is a child
// forked while a runtime was not stopped, and the runtime is dead for good (fork.hpp).
enum class run_state : int { stopped, starting, running, stopping, forked };

// Fields are grouped by who writes them, one cache line per group: wakep() reads npidle and
// nmspinning on every spawn and wake-up, and must not miss in cache because another P just took
// the run-queue lock.
struct sched_t {
  // Read on hot paths, written when Ms park or spin.
  alignas(64) std::atomic<std::uint32_t> npidle{0};
  std::atomic<std::uint32_t> nmspinning{0};
  std::atomic<std::uint32_t> nglobal{0};  // global run queue length; a hint without the lock
  std::atomic<run_state> state{run_state::stopped};
  std::uint32_t nprocs = 0;
  std::size_t frame_budget = 0;  // largest typed frame kept on a G's stack (else allocated)

  // Guarded by `lock`: the global run queue (FIFO through g::schedlink), idle Ps, idle Ms, the
  // M and G lists.
  alignas(64) spinlock lock;
  g* ghead GORT_GUARDED_BY(lock) = nullptr;
  g* gtail GORT_GUARDED_BY(lock) = nullptr;
  p* pidle GORT_GUARDED_BY(lock) = nullptr;
  m* midle GORT_GUARDED_BY(lock) = nullptr;
  std::uint32_t nmidle GORT_GUARDED_BY(lock) = 0;
  static_vec<m*> ms GORT_GUARDED_BY(lock);    // every M ever created in this runtime
  static_vec<g*> allg GORT_GUARDED_BY(lock);  // every G ever created in this runtime (they live in its stack pool)

  // Dead Gs beyond a P's cache, and Gs freed by foreign threads.
  alignas(64) spinlock gfree_lock;
  g* gfree GORT_GUARDED_BY(gfree_lock) = nullptr;  // chains of dead Gs (see gfput)
  std::atomic<std::uint32_t> ngfree{0};  // Gs in them; written under gfree_lock, read as a hint
  std::uint32_t ngfree_low GORT_GUARDED_BY(gfree_lock) = 0;  // the fewest since the last scavenge

  // The M sleeping with a timeout until the earliest timer of any P (null: none). Whoever arms
  // an earlier timer wakes it. See docs/design.md "Timers".
  alignas(64) std::atomic<m*> timer_sleeper{nullptr};
  std::atomic<std::int64_t> timer_sleep_until{0};

  alignas(64) std::atomic<std::uint64_t> goid_gen{0};
  static_vec<p*> ps;
  // For stealing: every stride in 1..nprocs coprime with nprocs, so a walk that starts at a
  // random P and steps by a random one of these visits every P once (boot.cpp fills it).
  static_vec<std::uint32_t> steal_strides;
  stack_pool* stacks = nullptr;
  // Foreign threads that submit work count themselves here first, so shutdown can wait for
  // them to finish touching the runtime.
  std::atomic<int> foreign{0};
  std::atomic<std::uint32_t> nmrunning{0};  // Ms not yet exited

  // Preemption and sysmon (sysmon.cpp). Fixed while the runtime runs.
  std::int64_t time_slice_ns = 10'000'000;
  bool async_preempt = true;
  bool sysmon_on = true;
  std::int64_t scavenge_period_ns = 1'000'000'000;  // 0: never (scavenge_gs)
  std::uint32_t max_threads = 10'000;
  // sysmon sleeps on this; 1 while it sleeps with no deadline (every P idle), so the first
  // P to get busy again must wake it (pidleget).
  alignas(64) note sysmon_note;
  std::atomic<std::uint32_t> sysmon_wait{0};
  // When sysmon should have started watching: run()'s start, or the moment a P left the idle
  // list while it slept. Its first look counts running slices from here, not from when it got
  // a CPU (thread start-up alone measured 2-8 ms here, which made the first preemption late).
  std::atomic<std::int64_t> sysmon_since{0};
  // Counters, for tests: Gs stopped by the preemption signal, Ps
  // retaken from blocking calls.
  std::atomic<std::uint64_t> npreempted{0};
  std::atomic<std::uint64_t> nretaken{0};
  // Gs found asleep in a plain system call and put in the blocking state (kernel_wait.cpp):
  // how many so far, and how many Ms are in that state now (sysmon watches them while > 0).
  std::atomic<std::uint64_t> nkernel_found{0};
  std::atomic<std::uint32_t> nkernel{0};
  // Holds sysmon gave back because no M could take the P (sysmon.cpp, take_preempted).
  std::atomic<std::uint64_t> nholds_declined{0};

  // Deadlock detection (deadlock.cpp). main_g: the main G while it has not finished.
  std::atomic<g*> main_g{nullptr};
  bool detect_deadlock = true;
  int threads_at_start = 0;  // OS threads of the process when run() began
  // Parked Ms started with the runtime beyond the one spare (ASan builds: run_main says why).
  unsigned extra_spares = 0;
};

// Never destroyed (exit() must not free it under running Ms): see static_vec.hpp.
static_assert(std::is_trivially_destructible_v<sched_t>);
extern sched_t sched;

static_assert(offsetof(g, fib) == 0, "g_of relies on the fiber being first");
inline g* g_of(fiber* f) noexcept { return reinterpret_cast<g*>(f); }

// Whether the runtime accepts work (sched.state == running).
inline bool running(std::memory_order mo = std::memory_order_acquire) noexcept {
  return sched.state.load(mo) == run_state::running;
}

// A thread that is no M, about to touch the runtime (spawn, arm a timer, reach a handle's G):
// counts itself in sched.foreign before looking at the state, so shutdown (which sets the state,
// then waits for foreign == 0) waits for it. True: counted, and the runtime runs; the caller
// calls foreign_leave when done. False: not counted, no runtime runs.
inline bool foreign_enter() noexcept {
  sched.foreign.fetch_add(1, std::memory_order_seq_cst);
  if (running(std::memory_order_seq_cst)) return true;
  sched.foreign.fetch_sub(1, std::memory_order_seq_cst);
  return false;
}
inline void foreign_leave() noexcept { sched.foreign.fetch_sub(1, std::memory_order_seq_cst); }

// The current M of the calling thread, or null on a thread that is not an M. A G may resume
// on another thread after any switch, and compilers cache thread-pointer arithmetic across
// calls, so this is an opaque call every time (see docs/design.md "Thread-local state").
m* getm() noexcept;
// getm without returning a G found asleep in the kernel to a P (kernel_wait.cpp): for the
// preemption handler, which decides that itself, and for kernel_wait.cpp.
m* getm_raw() noexcept;
// The calling thread becomes the M mp (null: no M any more); mstart and mexit.
void setm(m* mp) noexcept;
inline g* getg() noexcept {
  m* mp = getm();
  return mp ? mp->curg : nullptr;
}

// Brackets runtime code that runs on a G's stack: while any is open, the preemption signal
// leaves the G alone (it would otherwise stop the M in the middle of a run-queue or heap
// update). Every runtime entry point a G can call opens one. Cheap: one TLS read.
class nopreempt_scope {
 public:
  nopreempt_scope() noexcept : nopreempt_scope(getg()) {}
  explicit nopreempt_scope(g* gp) noexcept : gp_(gp) {  // gp: the current G, or null
    if (gp_) gp_->nopreempt.store(gp_->nopreempt.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  ~nopreempt_scope() {
    if (gp_) gp_->nopreempt.store(gp_->nopreempt.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  }
  nopreempt_scope(const nopreempt_scope&) = delete;
  nopreempt_scope& operator=(const nopreempt_scope&) = delete;

 private:
  g* gp_;
};

}  // namespace gort::rt
