// gort: the G lifecycle: a G's creation in a stack of the pool, its start, exit and join, the
// free lists of dead Gs, and the scavenger that gives their memory back. g.hpp has the
// vocabulary (g_new, g_start, g_discard, g_join, g_release), shared with gort.hpp's detail::
// entry points, which are defined here too.
//
// Concurrency: a G is held by one owner at a time (g.hpp's set_status checks the hand-overs).
// Its memory and its frame are shared by the running G and at most one handle (task, thread).
// `refs` counts two kinds of hold in one word (ref_stack, ref_frame below):
//  - the frame's contents (the callable, a task's result): the G lets go when its body returns,
//    the handle when it is joined or dropped. Whoever lets go last destroys them, in its own
//    context: the G itself, on its own stack as its own user code, or the handle's owner. Never
//    the scheduler's after-switch step, which runs under the identity of whatever G (or g0)
//    comes next, where a destructor that parks would park the wrong G.
//  - the G's memory (descriptor, stack, heap frame): the G lets go once it is off its stack
//    (goexit_commit), the handle after its frame hold. The last one recycles the G.
// Completion is published through join_state (0 running, 1 done, else the joiner's
// wait_state), which goexit exchanges and a joiner CASes, so exactly one of them wakes the
// joiner. A P's free list is owned by the P; the global list of chains is under
// sched.gfree_lock.
//
// Handles and the runtime's lifetime. A G lives in its runtime's stack pool, which shutdown
// unmaps, but a handle may outlive run(). So each handle keeps its G's id, which tells the
// runtime that made the G: ids never repeat in a process and grow with time, so the Gs of the
// running runtime are those whose id is at least its main G's (`live_from`, set by g_new_main
// and cleared by g_shutdown). A handle reaches its G only while that runtime runs: from one of
// its Gs, or from a plain thread that counted itself in sched.foreign for the duration of the
// access (shutdown waits for those, as for spawning threads; a thread blocked in join is not
// counted while it sleeps). At shutdown, once every M has exited, g_shutdown settles what the
// handles still hold: a finished G's frame (a task's result) is destroyed there, on the thread
// that called run(); an abandoned G's frame is not (its body never returned, and nothing of it
// is unwound), nor freed if the G sits in a blocking call that shutdown left it in (the call
// may be writing to it); a plain thread blocked joining an abandoned G is woken and told. After that a
// handle of that runtime never touches its G again: dropping it does nothing, joining it
// throws. g_shutdown also takes abandoned waiters off the queues of channels and sync objects
// (g.hpp, abandon_hook).
#include "g.hpp"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <iterator>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "alloc.hpp"
#include "fork.hpp"
#include "proc.hpp"
#include "san.hpp"
#include "wait.hpp"

#if GORT_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace gort::rt {

namespace {

// A P keeps at most this many dead Gs; past it, half go to the global free list.
constexpr std::uint32_t gfree_max = 64;
// G ids handed to a P at a time.
constexpr std::uint64_t goid_batch = 16;

// The two kinds of hold counted in g::refs (see the top of the file).
constexpr int ref_stack = 1;
constexpr int ref_frame = 1 << 8;
constexpr int stack_refs(int r) noexcept { return r & (ref_frame - 1); }
constexpr int frame_refs(int r) noexcept { return r / ref_frame; }

// The id of the running runtime's main G (see the top of the file); the maximum while none runs.
constexpr std::uint64_t no_runtime = ~std::uint64_t{0};
std::atomic<std::uint64_t> live_from{no_runtime};
bool live_id(std::uint64_t id) noexcept { return id >= live_from.load(std::memory_order_relaxed); }

// ws.winner of a plain thread woken from join because shutdown abandoned the G it waited for.
char shutdown_tag;

// Free lists. A P keeps up to gfree_max dead Gs; past that, half of them move to the global
// list as one chain, and a P that runs out takes one whole chain back. Moving chains, not Gs,
// matters: a dead G's descriptor was last written by the P where it died, so walking a list of
// them one by one is a cache miss per G, which a lock-holding loop would serialise (measured:
// that loop was 65% of g_new's time in the spawn benchmark at procs = 2). The chain
// to give away is this P's own most recent Gs, whose lines it still holds.
void gfpush_chain(g* head, std::uint32_t n) GORT_REQUIRES(sched.gfree_lock) {
  sched.gfree_lock.assert_held();
  head->gfree_next_chain = sched.gfree;
  head->gfree_chain_len = n;
  sched.gfree = head;
  sched.ngfree.fetch_add(n, std::memory_order_relaxed);
}

// sched.gfree non-null.
g* gfget_chain(std::uint32_t& n) GORT_REQUIRES(sched.gfree_lock) {
  sched.gfree_lock.assert_held();
  g* head = sched.gfree;
  n = head->gfree_chain_len;
  sched.gfree = head->gfree_next_chain;
  const std::uint32_t left = sched.ngfree.load(std::memory_order_relaxed) - n;
  sched.ngfree.store(left, std::memory_order_relaxed);
  sched.ngfree_low = std::min(sched.ngfree_low, left);
  return head;
}

// p::ngfree == length of p::gfree (debug builds; at most gfree_max long).
void check_gfree(p* pp) {
#if GORT_DEBUG
  std::uint32_t n = 0;
  for (g* gp = pp->gfree; gp; gp = gp->schedlink) ++n;
  GORT_ASSERT(n == pp->ngfree, "P %u: ngfree = %u but its free list holds %u Gs", pp->id, pp->ngfree, n);
#else
  (void)pp;
#endif
}

// gp is dead (its frame destroyed) or was reserved and never started.
void gfput(p* pp, g* gp) {
  GORT_ASSERT(gp->status.load(std::memory_order_relaxed) == gstatus::dead ||
                  gp->status.load(std::memory_order_relaxed) == gstatus::idle,
              "G %llu freed while %d", static_cast<unsigned long long>(gp->id),
              static_cast<int>(gp->status.load(std::memory_order_relaxed)));
  gp->status.store(gstatus::idle, std::memory_order_relaxed);
  if (!pp) {
    gp->schedlink = nullptr;
    spin_guard l(sched.gfree_lock);
    gfpush_chain(gp, 1);
    return;
  }
  gp->schedlink = pp->gfree;
  pp->gfree = gp;
  if (++pp->ngfree >= gfree_max) {
    g* head = pp->gfree;
    g* last = head;
    for (std::uint32_t i = 1; i < gfree_max / 2; ++i) last = last->schedlink;
    pp->gfree = last->schedlink;
    pp->ngfree -= gfree_max / 2;
    last->schedlink = nullptr;
    spin_guard l(sched.gfree_lock);
    gfpush_chain(head, gfree_max / 2);
  }
  check_gfree(pp);
}

g* gfget(p* pp) {
  if (pp && !pp->gfree) {
    if (sched.ngfree.load(std::memory_order_relaxed) == 0) return nullptr;
    spin_guard l(sched.gfree_lock);
    if (!sched.gfree) return nullptr;
    pp->gfree = gfget_chain(pp->ngfree);
  }
  if (pp && pp->gfree) {
    g* gp = pp->gfree;
    pp->gfree = gp->schedlink;
    pp->ngfree--;
    // The next spawn's descriptor (and the frame area below it): start fetching it now.
    if (pp->gfree) __builtin_prefetch(pp->gfree, 1);
    return gp;
  }
  if (!pp) {
    spin_guard l(sched.gfree_lock);
    if (!sched.gfree) return nullptr;
    std::uint32_t n;
    g* gp = gfget_chain(n);
    if (g* rest = gp->schedlink) gfpush_chain(rest, n - 1);
    return gp;
  }
  return nullptr;
}

constexpr std::size_t g_reserve = (sizeof(g) + 63) & ~std::size_t{63};

// sched.ngfree == sum of the chain lengths on sched.gfree (debug builds; O(chains), so only
// from the scavenger, once per period).
void check_global_gfree() GORT_REQUIRES(sched.gfree_lock) {
#if GORT_DEBUG
  std::uint64_t n = 0;
  for (g* h = sched.gfree; h; h = h->gfree_next_chain) n += h->gfree_chain_len;
  GORT_ASSERT(n == sched.ngfree.load(std::memory_order_relaxed),
              "ngfree = %u but the global free chains hold %llu Gs",
              sched.ngfree.load(std::memory_order_relaxed), static_cast<unsigned long long>(n));
#endif
}

}  // namespace

// Scavenging. The free lists keep a dead G's stack committed, which is what makes spawning
// cheap, but after a spike of a million Gs it would also keep gigabytes resident for good.
// sysmon calls this once per scavenge_period: it frees half of the global list's low-water
// mark over that period (the Gs no spawn needed), beyond a reserve, and each freed G's stack
// goes back to the pool with its memory released (then trim() unmaps chunks left empty).
// Halving rather than freeing the whole surplus at once keeps a program that spikes every few
// seconds from paying for fresh pages every time. Per-P lists (at most gfree_max each) and
// the main G are never touched. Returns the number of Gs freed.
std::size_t scavenge_gs() noexcept {
  g* chains = nullptr;  // detached chains, linked through gfree_next_chain
  std::uint32_t taken = 0;
  {
    spin_guard l(sched.gfree_lock);
    check_global_gfree();
    const std::uint32_t low = sched.ngfree_low;
    const std::uint32_t want = low > scavenge_keep ? (low - scavenge_keep + 1) / 2 : 0;
    while (taken < want && sched.gfree) {
      std::uint32_t k;
      g* h = gfget_chain(k);
      h->gfree_next_chain = chains;
      h->gfree_chain_len = k;
      chains = h;
      taken += k;
    }
    sched.ngfree_low = sched.ngfree.load(std::memory_order_relaxed);
  }
  if (!taken) return 0;
  // Out of allg (the deadlock report and teardown walk it), in batches so that the scheduler
  // never waits long for sched.lock: each removal is a swap with the last entry.
  constexpr std::uint32_t batch = 256;
  g* h = chains;
  g* gp = h;
  while (gp) {
    spin_guard l(sched.lock);
    GORT_ASSERT(!sched.allg.empty(), "scavenging Gs that allg does not hold");
    for (std::uint32_t k = 0; k < batch && gp; ++k) {
      g* last = sched.allg.back();
      sched.allg[gp->allg_index] = last;
      last->allg_index = gp->allg_index;
      sched.allg.pop_back();
      if (!(gp = gp->schedlink) && (h = h->gfree_next_chain)) gp = h;
    }
  }
  for (h = chains; h;) {
    g* next_chain = h->gfree_next_chain;
    for (gp = h; gp;) {
      g* next = gp->schedlink;
      gp->fib.destroy();
      const stack s = gp->stk;
      gp->~g();
      sched.stacks->release(s);
      gp = next;
    }
    h = next_chain;
  }
  sched.stacks->trim();
  return taken;
}

namespace {

// The descriptor and the typed frame sit above the part of the stack a fiber runs on, and are
// written before the fiber is set up (fiber::init unpoisons only the part below them). Under
// ASan, shadow left there by earlier users of the same addresses (a previous G on this stack
// with a smaller frame, whose top frames never returned and keep their redzones; a stack of
// an earlier runtime mapped at the same place) would read as a stack overflow.
void unpoison([[maybe_unused]] void* p, [[maybe_unused]] std::size_t n) noexcept {
#if GORT_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#endif
}

g* gcreate() {
  stack s = sched.stacks->get();  // std::bad_alloc on ENOMEM
  void* at = static_cast<char*>(s.top()) - g_reserve;
  unpoison(at, g_reserve);
  g* gp = ::new (at) g;
  gp->stk = s;
  spin_guard l(sched.lock);
  gp->allg_index = static_cast<std::uint32_t>(sched.allg.push_back_unlocked_growth(gp, sched.lock));
  return gp;
}

std::uint64_t new_goid(p* pp) {
  if (!pp) return sched.goid_gen.fetch_add(1, std::memory_order_relaxed) + 1;
  if (pp->goid_next == pp->goid_end) {
    pp->goid_next = sched.goid_gen.fetch_add(goid_batch, std::memory_order_relaxed) + 1;
    pp->goid_end = pp->goid_next + goid_batch;
  }
  return pp->goid_next++;
}

[[noreturn]] void die_exception(g* gp, const char* what) {
  std::fprintf(stderr, "gort: G %llu terminated by exception: %s\n",
               static_cast<unsigned long long>(gp->id), what);
  std::fflush(stderr);
  std::terminate();
}

// Gives back a frame's memory (its contents are destroyed or abandoned already).
void free_frame(g* gp) noexcept {
  if (gp->frame_on_heap) free_mem(gp->frame);
  gp->frame = nullptr;
  gp->frame_on_heap = false;
}

// The frame's contents are gone (destroyed by the last frame holder): no user code runs here.
void recycle(g* gp) {
  free_frame(gp);
  gp->destroy = nullptr;
  stack_pool::set_owner(gp->stk, 0);
  m* mp = getm();
  gfput(mp ? mp->curp : nullptr, gp);
}

void goexit_commit(fiber* f, void*) {
  g* gp = g_of(f);
  const int old = gp->refs.fetch_sub(ref_stack, std::memory_order_acq_rel);
  GORT_ASSERT(stack_refs(old) >= 1 && frame_refs(old) <= 1, "G %llu: exit with holds %#x",
              static_cast<unsigned long long>(gp->id), old);
  if (old == ref_stack) recycle(gp);
}

// The G's hold on its frame ends when its body has returned, still on its own stack and as its
// own user code (preemptible, may park). A detached G is the frame's only holder; a joinable
// one destroys the frame only if its handle already let go.
void body_done(g* gp) {
  if (gp->joinable && frame_refs(gp->refs.fetch_sub(ref_frame, std::memory_order_acq_rel)) != 1) return;
  if (gp->destroy) gp->destroy(gp->frame);
}

[[noreturn]] void goexit(g* gp) {
  // A G found asleep in the kernel (kernel_wait.cpp) takes a P back first: its exit is a
  // runtime call like any other. It may go on on another M.
  (void)getm();
  gp->nopreempt.store(1, std::memory_order_relaxed);  // runtime code from here on
  if (gp->lockedm) {
    // Still locked (lock_os_thread without unlock): the wiring ends with the G.
    gp->curm->lockedg = nullptr;
    gp->lockedm = nullptr;
    gp->locked = 0;
  }
  if (gp->joinable) {
    std::uintptr_t old = gp->join_state.exchange(1, std::memory_order_acq_rel);
    if (old > 1) {
      // The joiner has no deadline and nobody else wakes it: the claim cannot fail.
      auto* ws = reinterpret_cast<wait_state*>(old);
      if (!claim(*ws)) GORT_THROW("G %llu: its joiner was already woken", static_cast<unsigned long long>(gp->id));
      finish(*ws);
    }
  }
  set_status(gp, gstatus::running, gstatus::dead, std::memory_order_release);
  leave(gp, {goexit_commit, nullptr}, leave_mode::dying);
  std::abort();
}

void g_entry(fiber*, void* arg) {
  g* gp = static_cast<g*>(arg);
  gp->nopreempt.store(0, std::memory_order_relaxed);  // out of the scheduler, into user code
  try {
    gp->body(gp->frame);
  } catch (const std::exception& e) {
    die_exception(gp, e.what());
  } catch (...) {
    die_exception(gp, "an exception not derived from std::exception");
  }
  body_done(gp);
  goexit(gp);
}

// Makes a reserved G (frame placed) ready to run: its fiber, its hold count, its owner tag.
void g_prepare(g* gp, gort::detail::body_fn body, gort::detail::destroy_fn destroy, bool joinable) noexcept {
  gp->body = body;
  gp->destroy = destroy;
  gp->joinable = joinable;
  // A detached G's frame hold is implicit (body_done): only its memory hold is counted.
  gp->refs.store(joinable ? 2 * (ref_stack + ref_frame) : ref_stack, std::memory_order_relaxed);
  gp->nopreempt.store(1, std::memory_order_relaxed);  // g_entry clears it
  gp->lockedm = nullptr;
  gp->locked = 0;
  gp->join_state.store(0, std::memory_order_relaxed);
  char* top = gp->frame_on_heap ? reinterpret_cast<char*>(gp) : static_cast<char*>(gp->frame);
  char* lo = static_cast<char*>(gp->stk.lo);
  gp->fib.init(lo, static_cast<std::size_t>(top - lo) & ~std::size_t{15}, g_entry, gp);
  stack_pool::set_owner(gp->stk, gp->id);
  set_status(gp, gstatus::idle, gstatus::runnable, std::memory_order_release);
}

struct join_ctx {
  g* target;
  wait_state* ws;
  bool foreign;  // a plain thread counted in sched.foreign: uncounted once published
};

// After the joiner is off its stack (or, for a thread, before it sleeps): publish its
// wait_state, unless the target finished meanwhile.
void join_commit(fiber*, void* arg) {
  auto* jc = static_cast<join_ctx*>(arg);
  g* target = jc->target;
  wait_state* ws = jc->ws;
  std::uintptr_t expect = 0;
  // After a successful CAS the joiner may be woken (and its stack reused) at any moment: touch
  // nothing of it afterwards.
  const bool foreign = jc->foreign;  // jc lives on the joiner's stack: read before publishing
  if (!target->join_state.compare_exchange_strong(expect, reinterpret_cast<std::uintptr_t>(ws),
                                                  std::memory_order_acq_rel)) {
    claim(*ws);  // finished meanwhile: nobody else can claim it
    finish(*ws);
  }
  // A thread sleeps uncounted: shutdown must not wait for a join that may never end (it wakes
  // the thread instead if the G is abandoned: g_shutdown).
  if (foreign) foreign_leave();
}

// Access to a handle's G (see the top of the file): `live` when the handle's runtime runs and
// the caller may touch the G until the access ends. A plain thread is counted in sched.foreign
// meanwhile; `pinned` says it still is.
struct handle_access {
  bool live = false;
  bool pinned = false;
  explicit handle_access(std::uint64_t id) noexcept {
    if (getg()) {  // a G: its runtime runs, and only the handles of that runtime are live
      live = live_id(id);
      return;
    }
    if (!foreign_enter()) return;
    live = pinned = live_id(id);
    if (!live) foreign_leave();
  }
  void unpin() noexcept {
    if (pinned) foreign_leave();
    pinned = false;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// The lifecycle (g.hpp's vocabulary)

g* g_new(std::size_t size, std::size_t align, void** frame) {
  if (align > 64) throw std::invalid_argument("gort: a G's callable needs alignment <= 64");
  if (forked()) [[unlikely]]
    throw std::logic_error(std::string("gort: go/spawn ") + forked_message());
  m* mp = getm();
  p* pp = mp ? mp->curp : nullptr;
  // A foreign thread stays counted in until g_start or g_discard.
  if (!pp && !foreign_enter())
    throw std::logic_error("gort: no runtime is running (start one with gort::run)");
  g* gp = gfget(pp);
  if (!gp) {
    try {
      gp = gcreate();
    } catch (...) {
      if (!pp) foreign_leave();
      throw;
    }
  }
  gp->id = new_goid(pp);
  char* lim = reinterpret_cast<char*>(gp);
  if (size <= sched.frame_budget) {
    gp->frame = reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(lim) - size) & ~(std::uintptr_t{align} - 1));
    gp->frame_on_heap = false;
    unpoison(gp->frame, static_cast<std::size_t>(lim - static_cast<char*>(gp->frame)));
  } else {
    try {
      gp->frame = alloc(size + 64);
    } catch (...) {
      gfput(pp, gp);
      if (!pp) foreign_leave();
      throw;
    }
    gp->frame_on_heap = true;
  }
  *frame = gp->frame;
  return gp;
}

bool g_start(g* gp, gort::detail::body_fn body, gort::detail::destroy_fn destroy, bool joinable) noexcept {
  g_prepare(gp, body, destroy, joinable);
  m* mp = getm();
  p* pp = mp ? mp->curp : nullptr;
  if (pp) {
    pp->q.owner().note_spawn(pp->schedtick.load(std::memory_order_relaxed));
    runqput(pp, gp, queue_at::next);
    wakep();
    // One slot left: the spawner's own, at the back of the line (give_way).
    return pp->q.owner().ring_length() >= runq::size - 1;
  }
  globrunqput(gp);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // see wakep
  wakep();
  foreign_leave();
  return false;
}

void g_discard(g* gp) noexcept {
  free_frame(gp);
  gp->destroy = nullptr;
  m* mp = getm();
  p* pp = mp ? mp->curp : nullptr;
  gfput(pp, gp);
  if (!pp) foreign_leave();
}

join_result g_join(g* target, bool foreign) {
  if (target->join_state.load(std::memory_order_acquire) == 1) return join_result::done;
  wait_state ws;
  join_ctx jc{target, &ws, foreign};
  block(ws, 0, "join", {join_commit, &jc});
  return ws.winner == &shutdown_tag ? join_result::abandoned : join_result::woken;
}

// A handle lets go: first of the frame (destroying it if the G is done with it: user code, so
// outside any no-preemption bracket), then of the G's memory, which the G may still be leaving.
void g_release(g* gp) noexcept {
  if (frame_refs(gp->refs.fetch_sub(ref_frame, std::memory_order_acq_rel)) == 1 && gp->destroy)
    gp->destroy(gp->frame);
  nopreempt_scope np;
  if (gp->refs.fetch_sub(ref_stack, std::memory_order_acq_rel) == ref_stack) recycle(gp);
}

namespace {

// Whether p lies on the stack of some G of this runtime (sorted [lo, top) ranges).
bool on_a_stack(const std::vector<std::pair<std::uintptr_t, std::uintptr_t>>& stacks, const void* p) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  auto it = std::upper_bound(stacks.begin(), stacks.end(), std::make_pair(a, ~std::uintptr_t{0}));
  return it != stacks.begin() && a < std::prev(it)->second;
}

// Whether shutdown may touch the object an abandon_hook names: not one on a G's stack (it goes
// with the stacks, and may be gone already, as a local of main_fn is) and, under ASan, not
// one in freed memory: there a G's locals may live on a fake stack, outside its own, which is
// poisoned once the frame returned.
bool hook_object_alive(const std::vector<std::pair<std::uintptr_t, std::uintptr_t>>& stacks,
                       const void* p) noexcept {
  if (on_a_stack(stacks, p)) return false;
#if GORT_ASAN
  if (__asan_address_is_poisoned(p)) return false;
#endif
  return true;
}

}  // namespace

void g_shutdown(g* const* kept, std::size_t nkept) noexcept GORT_NO_TSA {
  // Abandoned waiters leave the queues of objects that may outlive us (g.hpp, abandon_hook).
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> stacks;
  try {
    stacks.reserve(sched.allg.size());
  } catch (...) {
  }
  for (g* gp : sched.allg)
    if (stacks.size() < stacks.capacity())
      stacks.emplace_back(reinterpret_cast<std::uintptr_t>(gp->stk.lo),
                          reinterpret_cast<std::uintptr_t>(gp->stk.top()));
  std::sort(stacks.begin(), stacks.end());
  for (g* gp : sched.allg) {
    abandon_hook* h = gp->queued_on;
    if (!h || gp->status.load(std::memory_order_relaxed) == gstatus::idle) continue;
    gp->queued_on = nullptr;
    if (stacks.size() == sched.allg.size() && hook_object_alive(stacks, h->object)) h->detach(h);
  }
  // Plain threads still finishing wake-ups of Gs they took off a queue (wait.hpp, claim): let
  // them finish before the stacks go. One that took an abandoned G's node did so under the
  // lock that detach has just taken, so its count is visible here.
  while (sched.foreign.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  for (g* gp : sched.allg) {
    const gstatus st = gp->status.load(std::memory_order_relaxed);
    if (st == gstatus::idle) continue;  // on a free list (frame gone) or never started
    const int r = gp->refs.load(std::memory_order_relaxed);
    if (st == gstatus::dead) {
      // Finished and not recycled. Its handle still holds the frame (the G let go of it when
      // its body returned): destroy it now, while its memory is there.
      if (gp->joinable && frame_refs(r) == 1 && gp->destroy) gp->destroy(gp->frame);
    } else if (gp->joinable) {
      // Abandoned: a plain thread waiting to join it is woken and told (g_join). A G waiting
      // to join it is abandoned too, its wait_state on its own stack.
      const std::uintptr_t js = gp->join_state.load(std::memory_order_relaxed);
      if (js > 1) {
        auto* ws = reinterpret_cast<wait_state*>(js);
        if (!ws->gp && claim(*ws)) {
          ws->winner = &shutdown_tag;
          finish(*ws);
        }
      }
    }
    // Nothing reads it any more (its handle's runtime is ending), except a call still in
    // progress on a G left in it.
    if (std::find(kept, kept + nkept, gp) == kept + nkept) free_frame(gp);
  }
  live_from.store(no_runtime, std::memory_order_relaxed);
}

g* g_new_main(gort::detail::body_fn body, void* ctx) {
  g* mg = gcreate();
  mg->id = sched.goid_gen.fetch_add(1) + 1;
  live_from.store(mg->id, std::memory_order_relaxed);  // published by the state's store (boot)
  mg->frame = reinterpret_cast<char*>(mg) - 64;
  unpoison(mg->frame, 64);
  *static_cast<void**>(mg->frame) = ctx;
  mg->frame_on_heap = false;
  g_prepare(mg, body, nullptr, false);
  return mg;
}

}  // namespace gort::rt

// ---------------------------------------------------------------------------------------------
// gort.hpp's detail:: entry points. Each opens a nopreempt_scope before touching runtime state.

namespace gort::detail {

namespace {
inline rt::g* as_g(gdesc* d) noexcept { return reinterpret_cast<rt::g*>(d); }
}  // namespace

gdesc* g_new(std::size_t size, std::size_t align, void** frame, std::uint64_t* id) {
  rt::preempt_check();  // a loop that only spawns must still yield its slice
  rt::nopreempt_scope np;
  rt::g* gp = rt::g_new(size, align, frame);
  *id = gp->id;
  rt::g* parent = rt::getg();
  gp->parent = parent ? parent->id : 0;
  // g_new is called from the launch template, which is inlined into the caller of go/spawn:
  // this return address points into the user's function.
  gp->created_at = __builtin_return_address(0);
  return reinterpret_cast<gdesc*>(gp);
}

void g_start(gdesc* g, body_fn body, destroy_fn destroy, bool joinable) noexcept {
  bool spilled;
  {
    rt::nopreempt_scope np;
    spilled = rt::g_start(as_g(g), body, destroy, joinable);
  }
  // Back-pressure: a G whose spawning filled its P's queue lets what it spawned run (it goes to
  // the back of the line), instead of creating Gs faster than anyone runs them, each holding a
  // stack. Without it a loop spawning 1M short Gs keeps tens of thousands alive at once and
  // pays for as many fresh stacks (docs/design.md, "Spawn back-pressure").
  if (spilled) rt::give_way();
}

void g_discard(gdesc* g) noexcept {
  rt::nopreempt_scope np;
  rt::g_discard(as_g(g));
}

int g_join(gdesc* g, std::uint64_t id) {
  rt::handle_access a(id);
  if (!a.live) return 0;
  rt::join_result r;
  {
    rt::nopreempt_scope np;
    r = rt::g_join(as_g(g), a.pinned);
  }
  if (r == rt::join_result::abandoned) return 0;  // a plain thread, woken by shutdown
  if (!a.pinned) return 1;                        // a G
  if (r == rt::join_result::done) return 2;       // never slept: still counted
  // Slept uncounted (join_commit): count again before the caller reads the frame.
  rt::handle_access again(id);
  return again.live ? 2 : 0;
}

void g_release(gdesc* g, std::uint64_t id) noexcept {
  rt::handle_access a(id);
  if (!a.live) return;  // the runtime shut down: g_shutdown settled the G
  rt::g_release(as_g(g));
  a.unpin();
}

void g_release_joined(gdesc* g, int pin) noexcept {
  rt::g_release(as_g(g));
  if (pin == 2) rt::foreign_leave();
}

std::uint64_t current_g_id() noexcept {
  rt::g* gp = rt::getg();
  return gp ? gp->id : 0;
}

}  // namespace gort::detail
