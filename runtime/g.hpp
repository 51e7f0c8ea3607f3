// gort: the G lifecycle (g.cpp): creating a G in a stack of the pool, its status transitions,
// the free lists of dead Gs (per P and global), the scavenger that gives their memory back, a
// G's start, exit and join.
//
// One vocabulary, shared with gort.hpp's detail:: entry points:
//   g_new      reserve a G (from a free list, else a fresh stack) and place its typed frame
//   g_start    make it runnable; g_discard: give back a reserved G that was never started
//   g_join     wait until it finished; g_release: drop a handle's hold on it
//   g_shutdown settle the handles' holds when the runtime shuts down
#pragma once

#include <cstddef>
#include <cstdint>

#include "check.hpp"
#include "sched.hpp"

namespace gort::rt {

// Every G status change goes through here; debug builds check that `from` was the status.
inline void set_status(g* gp, gstatus from, gstatus to,
                       std::memory_order mo = std::memory_order_relaxed) noexcept {
  GORT_ASSERT(gp->status.load(std::memory_order_relaxed) == from,
              "G %llu: status %d, expected %d on the way to %d",
              static_cast<unsigned long long>(gp->id),
              static_cast<int>(gp->status.load(std::memory_order_relaxed)), static_cast<int>(from),
              static_cast<int>(to));
  (void)from;
  gp->status.store(to, mo);
}

g* g_new(std::size_t size, std::size_t align, void** frame);
// Returns true when the new G left its P's ring full (the spawner should give way).
bool g_start(g* gp, gort::detail::body_fn body, gort::detail::destroy_fn destroy,
             bool joinable) noexcept;
void g_discard(g* gp) noexcept;
// done: finished before the call; woken: waited, then finished; abandoned: a plain thread
// woken by shutdown (g_shutdown), the G never finished. `foreign`: the caller is a plain thread
// counted in sched.foreign, which stops counting once its wait is published.
enum class join_result { done, woken, abandoned };
join_result g_join(g* target, bool foreign);
// A handle lets go of its G. Destroys the frame (user code) if the G is done with it.
void g_release(g* gp) noexcept;
// Teardown, single-threaded with every M gone, before the stack pool is unmapped: settles what
// handles still hold (g.cpp, "Handles and the runtime's lifetime"); their handles go inert.
// `kept[0..nkept)`: Gs left inside a blocking call (boot.cpp), whose frames stay.
void g_shutdown(g* const* kept, std::size_t nkept) noexcept;

// Shutdown and objects that outlive the runtime. A G parked in the queue of a channel or sync
// object leaves a node on its own stack there, and shutdown unmaps that stack; a plain thread
// using the object afterwards would follow the queue into it. So a G parks with an
// abandon_hook (beside its nodes, on its stack) in g::queued_on, set before it publishes its
// node and cleared when it runs again, and g_shutdown, finding the G abandoned, calls `detach`,
// which takes the G's nodes off the object's queues (under the object's lock: plain threads may
// be using it) and undoes what the G's wait meant to the object's state. An object that itself
// lies on a G's stack is left alone: it goes with the stacks (and may already be gone, as when
// main_fn returned past it). Any other object must outlive the Gs parked in it, as for any
// call in progress on an object.
struct abandon_hook {
  void (*detach)(abandon_hook*) noexcept;
  const void* object;
};

// Records hook as what the calling G (if any) waits in, until the scope ends.
class queued_scope {
 public:
  explicit queued_scope(abandon_hook* hook) noexcept : gp_(getg()) {
    if (gp_) gp_->queued_on = hook;
  }
  ~queued_scope() {
    if (gp_) gp_->queued_on = nullptr;
  }
  queued_scope(const queued_scope&) = delete;
  queued_scope& operator=(const queued_scope&) = delete;

 private:
  g* gp_;
};

// The main G of a runtime: created at boot outside any P, frame set by the caller.
g* g_new_main(gort::detail::body_fn body, void* ctx);

// Frees surplus dead Gs and their stacks' memory (sysmon, once per scavenge period). It leaves
// scavenge_keep of them on the global free list, and an idle sysmon keeps waking for it only
// while more than that are cached.
inline constexpr std::uint32_t scavenge_keep = 1024;
std::size_t scavenge_gs() noexcept;

}  // namespace gort::rt
