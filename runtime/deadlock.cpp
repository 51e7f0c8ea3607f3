// gort: the deadlock report — Go's "all goroutines are asleep - deadlock!".
//
// sysmon asks when it finds every P idle. The runtime is dead-locked when nothing can ever
// make a waiting G runnable again: no G runs, is queued or is inside a blocking call; no timer
// is armed (a deadline or a sleep would wake someone); no foreign thread is submitting work;
// and no thread has appeared since run() began (it might hold a channel and send on it later;
// we cannot know, so its existence keeps the detector quiet). Threads that existed before
// run() are not counted: the process may have helpers that are not the program's (TSan's
// background thread, qemu-user's RCU thread), and we cannot tell them apart. A program whose
// pre-existing thread feeds the runtime turns detection off (config.detect_deadlock). The
// main G must still be unfinished: once it returns, run() abandons the waiting Gs, as Go's
// main does.
//
// The check reads counters without stopping the world, so one clean look proves nothing (an
// M may be half-way through readying a G). Two looks 10 ms apart must agree and show no
// progress in between: every path out of "waiting" goes through a run queue and a schedule,
// which moves a P's schedtick or leaves a queue non-empty at the second look.
#include <dirent.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "deadlock.hpp"

#include "mfactory.hpp"
#include "sched.hpp"

namespace gort::rt {

int count_threads() noexcept {
  DIR* d = opendir("/proc/self/task");
  if (!d) return -1;
  int n = 0;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n;
}

void describe_site(const void* at, char* buf, std::size_t n) noexcept {
  Dl_info info{};
  if (at && dladdr(at, &info) && info.dli_fname) {
    const char* base = std::strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    if (info.dli_sname)
      std::snprintf(buf, n, "%s+0x%lx (%s)", info.dli_sname,
                    static_cast<unsigned long>(static_cast<const char*>(at) - static_cast<const char*>(info.dli_saddr)), base);
    else
      std::snprintf(buf, n, "%s+0x%lx", base,
                    static_cast<unsigned long>(static_cast<const char*>(at) - static_cast<const char*>(info.dli_fbase)));
  } else {
    std::snprintf(buf, n, "%p", at);
  }
}

namespace {

struct snapshot {
  std::uint64_t ticks = 0;
  std::uint64_t goids = 0;
  bool operator==(const snapshot&) const = default;
};

bool all_asleep(snapshot* snap) {
  if (!running() || !sched.main_g.load()) return false;
  if (sched.npidle.load(std::memory_order_seq_cst) != sched.nprocs) return false;
  if (sched.nglobal.load(std::memory_order_acquire) || sched.foreign.load()) return false;
  std::uint64_t ticks = 0;
  for (p* pp : sched.ps) {
    if (!pp->q.empty() || pp->tm.next() != 0) return false;
    ticks += pp->schedtick.load(std::memory_order_relaxed) + pp->syscalltick.load(std::memory_order_relaxed);
  }
  // Runtime threads: the Ms, sysmon (the caller) and the M factory. Anything beyond those and
  // the threads that existed when run() began is a foreign thread that may yet wake someone.
  const int threads = count_threads();
  if (threads < 0 || threads > sched.threads_at_start + static_cast<int>(sched.nmrunning.load()) + 1 +
                                   int{mfactory_alive()})
    return false;
  bool waiting = false;
  {
    spin_guard l(sched.lock);
    for (g* gp : sched.allg) {
      gstatus st = gp->status.load(std::memory_order_acquire);
      if (st == gstatus::running || st == gstatus::runnable) return false;
      waiting |= st == gstatus::waiting;
    }
  }
  snap->ticks = ticks;
  snap->goids = sched.goid_gen.load();
  return waiting;
}


[[noreturn]] void report() {
  std::fprintf(stderr, "gort: all goroutines are asleep - deadlock!\n");
  spin_guard l(sched.lock);
  for (g* gp : sched.allg) {
    if (gp->status.load(std::memory_order_acquire) != gstatus::waiting) continue;
    const char* why = gp->wait_reason ? gp->wait_reason : "waiting";
    if (gp == sched.main_g.load()) {
      std::fprintf(stderr, "  G %llu [%s]: the main G\n", static_cast<unsigned long long>(gp->id), why);
      continue;
    }
    char site[512];
    describe_site(gp->created_at, site, sizeof site);
    if (gp->parent)
      std::fprintf(stderr, "  G %llu [%s]: created by G %llu at %s\n", static_cast<unsigned long long>(gp->id),
                   why, static_cast<unsigned long long>(gp->parent), site);
    else
      std::fprintf(stderr, "  G %llu [%s]: created by a plain thread at %s\n",
                   static_cast<unsigned long long>(gp->id), why, site);
  }
  std::fflush(stderr);
  std::abort();
}

}  // namespace

// sysmon, with every P idle. Returns only if the runtime is not dead-locked; `nap` sleeps
// for up to the given time and returns false if woken early (something happened).
void check_deadlock(bool (*nap)(std::int64_t ns)) {
  if (!sched.detect_deadlock) return;
  snapshot a, b;
  if (!all_asleep(&a)) return;
  if (!nap(10'000'000)) return;
  if (!all_asleep(&b) || !(a == b)) return;
  report();
}

}  // namespace gort::rt
