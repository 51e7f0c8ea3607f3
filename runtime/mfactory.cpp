// gort: the M factory, Go's template thread. Creating an M allocates (the m, its watch vector,
// std::thread's state) and creates a thread (pthread_create takes the thread library's stack
// cache lock and the dynamic linker's TLS lock). Any of those locks may be held by a G that the
// preemption signal stopped right inside malloc or pthread_create, and that G cannot let go
// until some M runs it again. A thread that hands Ps on cannot wait for that: sysmon waiting on
// such a lock stopped every hand-off, retake and preemption for good (issue 12, item 3).
//
// So once the runtime runs, only this thread creates Ms. startm with no idle M (and no wired
// G waiting for a P) queues its P here (mfactory_request, under sched.lock: a link through
// p::link, no allocation) and pokes the factory's note. The factory creates one spare M per
// queued P, without a P: each spare, once started and parked, takes a queued P
// (m.cpp, reroute_requests). It also keeps the parked reserve topped up (`reserve` idle Ms),
// which claim_m asks for when sysmon takes a parked M to hold a G.
//
// The factory may itself block on a lock a held G holds (thread creation allocates). It never
// holds a P meanwhile: the queued Ps stay in the list, and sysmon, at every look, hands them
// to any M that can run them after all (one that parked since, or the M of a wired G that came
// to the global queue: reroute_requests), so the holder gets a P, runs, and lets go.
//
// A P queued here is between owners (status pidle, not on the idle list); thieves may still
// steal its Gs. If the OS refuses the thread, fail_requests (m.cpp) hands the Ps and their Gs
// on as newm's failure path does.
//
// Concurrency: the request list is under sched.lock; the factory's note is woken by anyone
// (note.hpp); `quit` and `alive` are atomics. The thread is a pointer, never a static
// std::thread (exit() would run a joinable std::thread's destructor: std::terminate).
#include "mfactory.hpp"

#include <atomic>
#include <cstdio>
#include <system_error>
#include <thread>

#include "check.hpp"
#include "note.hpp"
#include "proc.hpp"

namespace gort::rt {

namespace {

std::thread* factory = nullptr;
note factory_note;
std::atomic<bool> quit{false};
std::atomic<bool> alive{false};

// Ps waiting for a new M, by whether that M starts spinning, linked through p::link.
p* want_plain GORT_GUARDED_BY(sched.lock) = nullptr;
p* want_spin GORT_GUARDED_BY(sched.lock) = nullptr;
std::atomic<std::uint32_t> npending{0};  // Ps in the two lists
// Parked Ms the factory keeps: the one spare of boot.cpp plus the ASan build's extra ones.
// Fixed while the factory runs.
std::uint32_t reserve = 0;

void serve() {
  while (!quit.load(std::memory_order_acquire) && running()) {
    reroute_requests();  // to Ms that parked since the Ps were queued
    // One new M per request not yet covered by a starting spare (each spare, once parked,
    // takes a queued P: m.cpp, reroute_requests), then the reserve.
    bool requests, short_of;
    {
      spin_guard l(sched.lock);
      const std::uint32_t soon = nmidle_soon();
      requests = npending.load(std::memory_order_relaxed) > soon;
      short_of = soon < reserve + npending.load(std::memory_order_relaxed) &&
                 sched.ms.size() < sched.max_threads;
    }
    if (!requests && !short_of) break;
    if (!newm(nullptr, spin::no)) {  // refused: the requests' Ps and Gs go back (m.cpp)
      fail_requests();
      break;
    }
  }
}

void factory_main() {
  while (!quit.load(std::memory_order_acquire)) {
    factory_note.clear();  // a poke from here on is seen by the sleep below
    serve();
    if (quit.load(std::memory_order_acquire)) break;
    factory_note.sleep();
  }
  alive.store(false, std::memory_order_release);
}

}  // namespace

void mfactory_start() {
  quit.store(false);
  reserve = sched.sysmon_on && sched.max_threads > 1 ? 1 + sched.extra_spares : 0;
  alive.store(true);
  try {
    factory = new std::thread(factory_main);
  } catch (const std::system_error& e) {
    alive.store(false);
    std::fprintf(stderr, "gort: warning: cannot start the M factory thread (%s); Ms are created "
                 "where they are needed, which a G held inside malloc can block\n", e.what());
  }
}

void mfactory_quit() noexcept {
  quit.store(true, std::memory_order_seq_cst);
  factory_note.wakeup();
}

bool mfactory_alive() noexcept { return alive.load(std::memory_order_acquire); }

void mfactory_join() {
  if (!factory) return;
  factory->join();
  delete factory;
  factory = nullptr;
  spin_guard l(sched.lock);
  want_plain = want_spin = nullptr;
  npending.store(0, std::memory_order_relaxed);
}

bool mfactory_request(p* pp, spin spinning) {
  sched.lock.assert_held();
  // After mfactory_quit the P stays queued: shutdown needs no new M.
  if (!factory) return false;
  GORT_ASSERT(!pp->link, "P %u queued for a new M while linked", pp->id);
  p*& head = spinning == spin::yes ? want_spin : want_plain;
  pp->link = head;
  head = pp;
  npending.fetch_add(1, std::memory_order_relaxed);
  return true;
}

p* mfactory_take(spin* spinning) {
  sched.lock.assert_held();
  p* pp = want_spin;
  if (pp) {
    want_spin = pp->link;
    *spinning = spin::yes;
  } else if ((pp = want_plain)) {
    want_plain = pp->link;
    *spinning = spin::no;
  } else {
    return nullptr;
  }
  pp->link = nullptr;
  npending.fetch_sub(1, std::memory_order_relaxed);
  return pp;
}

bool mfactory_pending() noexcept { return npending.load(std::memory_order_relaxed) != 0; }

void mfactory_poke() noexcept { factory_note.wakeup(); }

}  // namespace gort::rt
