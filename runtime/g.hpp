// gort: the G lifecycle (g.cpp): creating a G in a stack of the pool, its status transitions,
// the free lists of dead Gs (per P and global), the scavenger that gives their memory back, a
// G's start, exit and join.
//
// One vocabulary, shared with gort.hpp's detail:: entry points:
//   g_new      reserve a G (from a free list, else a fresh stack) and place its typed frame
//   g_start    make it runnable; g_discard: give back a reserved G that was never started
//   g_join     wait until it finished; g_release: drop a handle's hold on it
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
void g_join(g* target);
void g_release(g* gp) noexcept;

// The main G of a runtime: created at boot outside any P, frame set by the caller.
g* g_new_main(gort::detail::body_fn body, void* ctx);

// Frees surplus dead Gs and their stacks' memory (sysmon, once per scavenge period). It leaves
// scavenge_keep of them on the global free list, and an idle sysmon keeps waking for it only
// while more than that are cached.
inline constexpr std::uint32_t scavenge_keep = 1024;
std::size_t scavenge_gs() noexcept;

}  // namespace gort::rt
