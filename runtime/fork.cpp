// gort: fork() while a runtime runs (fork.hpp).
//
// Three pthread_atfork handlers, which run on the forking thread only:
//  - prepare (parent, before glibc takes its own locks for the fork: stdio's list, malloc's
//    arenas): if the caller is a G, hold asynchronous preemption off until `parent`. A G held
//    by the preemption signal between glibc's prepare and parent steps would keep every malloc
//    arena locked while the other Ms run Gs that allocate.
//  - parent: undoes prepare. The G is still on the same M: nothing in fork parks or yields,
//    and preemption was held off.
//  - child: the only thread left is the caller. A runtime that was not stopped is marked
//    forked; nothing else is touched (a child handler must stay async-signal-safe, and the
//    runtime's memory is a copy nobody else uses).
// posix_spawn and vfork run no atfork handlers; their children only exec.
#include "fork.hpp"

#include <pthread.h>

#include <mutex>
#include <new>

#include "check.hpp"

namespace gort::rt {

namespace {

// Written only by the G itself, as nopreempt_scope does (sched.hpp).
void add_nopreempt(int d) noexcept {
  if (g* gp = getg())
    gp->nopreempt.store(gp->nopreempt.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
}

void prepare() noexcept { add_nopreempt(1); }
void parent() noexcept { add_nopreempt(-1); }

void child() noexcept {
  if (sched.state.load(std::memory_order_relaxed) != run_state::stopped)
    sched.state.store(run_state::forked, std::memory_order_relaxed);
}

}  // namespace

void install_fork_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (pthread_atfork(prepare, parent, child) != 0) throw std::bad_alloc();  // its only error
  });
}

const char* forked_message() noexcept {
  return "in a child process forked while a runtime ran: only the forking thread exists there, "
         "so the runtime cannot be used or started again (exec or _exit instead)";
}

void forked_fail(const char* what) noexcept { fatal("%s %s", what, forked_message()); }

}  // namespace gort::rt
