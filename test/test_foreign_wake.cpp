// Wake-ups from plain threads racing shutdown: a plain std::thread sends on a channel, unlocks
// a gort::mutex and releases a semaphore whose waiters are parked Gs, at varying moments
// around the main G's return, over many runs. Every round must end without a crash or a hang
// and with the documented result (docs/api.md, "Handles and the runtime's lifetime"): each
// wake-up either reached its G or, the G abandoned first, left the object as if nobody waited.
#include <catch2/catch_test_macros.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include <gort/chan.hpp>
#include <gort/gort.hpp>
#include <gort/sync.hpp>

#include "child.hpp"
#include "test_util.hpp"

namespace {

struct objects {
  gort::chan<int> ch{1};
  gort::mutex mu;
  gort::semaphore sem{0};
};

}  // namespace

TEST_CASE("plain-thread wake-ups racing shutdown are delivered or left in the object") {
  const int rounds = static_cast<int>(std::max(50L, 3000 / test_scale()));
  std::atomic<int> start{-1}, finished{-1};
  std::atomic<objects*> cur{nullptr};
  std::thread waker([&] {
    for (int i = 0; i < rounds; ++i) {
      while (start.load(std::memory_order_acquire) < i) std::this_thread::yield();
      objects* o = cur.load(std::memory_order_acquire);
      // A different moment of the shutdown each round: 0 to ~60 us after the go-ahead.
      for (int k = (i * 7919) % 64 * 40; k > 0; --k) asm volatile("" ::: "memory");
      o->ch.send(1);
      o->mu.unlock();
      o->sem.release();
      finished.store(i, std::memory_order_release);
    }
  });
  int in_buffer = 0, unlocked = 0, released = 0, bad = 0;
  for (int i = 0; i < rounds; ++i) {
    auto o = std::make_unique<objects>();
    o->mu.lock();  // by this thread; the waker unlocks it (any thread may)
    std::atomic<int> got{0};  // bits: 1 received, 2 locked, 4 acquired (by a G that ran on)
    gort::run(gort::config{.procs = static_cast<unsigned>(1 + i % 2)}, [&] {
      objects* p = o.get();
      gort::go([p, &got] {
        if (p->ch.recv()) got.fetch_or(1);
      });
      gort::go([p, &got] {
        p->mu.lock();
        got.fetch_or(2);
        p->mu.unlock();
      });
      gort::go([p, &got] {
        p->sem.acquire();
        got.fetch_or(4);
      });
      gort::yield();  // with one P the three run and park before this G goes on
      cur.store(p, std::memory_order_release);
      start.store(i, std::memory_order_release);
    });  // returns while the waker may be waking the Gs
    while (finished.load(std::memory_order_acquire) < i) std::this_thread::yield();
    const int g = got.load();
    // The value went to the receiver or stayed in the buffer, never both.
    const bool buffered = o->ch.try_recv().has_value();
    bad += buffered && (g & 1);
    in_buffer += buffered;
    // The mutex was handed to the G (which unlocked it if it ran on) or left unlocked.
    const bool free = o->mu.try_lock();
    bad += !free && (g & 2);
    unlocked += free;
    if (free) o->mu.unlock();
    // The unit went to the G or stayed in the semaphore.
    const bool unit = o->sem.try_acquire();
    bad += unit && (g & 4);
    released += unit;
  }
  waker.join();
  INFO("rounds " << rounds << ": in buffer " << in_buffer << ", mutex free " << unlocked
                 << ", unit left " << released);
  CHECK(bad == 0);
}

// The same race with a long chain: one release wakes thousands of parked Gs, and the plain
// thread walks that chain (each node on a G's stack) while the main G returns and shutdown
// abandons the Gs. Shutdown must wait for the walk before it unmaps the stacks. (The walk of
// 4,000 nodes takes 0.2-0.5 ms and shutdown about 3 ms here, so this rarely overlaps without
// an OS preemption of the waker; the hand-over test below holds the window open.)
TEST_CASE("a plain thread's long wake chain outlasts the main G") {
  const int waiters = 4000;
  const int rounds = static_cast<int>(std::max(3L, 12 / test_scale()));
  for (int round = 0; round < rounds; ++round) {
    const child_result r = run_in_child(
        [&] {
          gort::semaphore sem{0};  // outlives the run: the thread's release may come after it
          std::atomic<bool> go{false}, released{false};
          std::thread waker([&] {
            while (!go.load()) std::this_thread::yield();
            sem.release(waiters);
            released = true;
          });
          gort::run(gort::config{.procs = 2, .stack_size = 16 * 1024}, [&] {
            std::atomic<int> arrived{0};
            for (int i = 0; i < waiters; ++i)
              gort::go([&sem, &arrived] {
                arrived.fetch_add(1);
                sem.acquire();
              });
            while (arrived.load() < waiters) gort::yield();
            go = true;
          });  // returns while the waker walks its chain
          waker.join();
          if (!released) std::_Exit(5);
        },
        60);
    INFO("round " << round << ": status " << r.status << ", " << r.out);
    REQUIRE(r.exited(0));
  }
}

namespace {

// An element whose move, the step of an unbuffered hand-over between taking the receiver off
// the queue and waking it, waits (when asked to) until the main thread says run() returned,
// for at most hold_ms.
std::atomic<bool> hold_moves{false}, in_move{false}, run_returned{false};
constexpr int hold_ms = 200;

struct slow_move {
  int v = 0;
  explicit slow_move(int x) noexcept : v(x) {}
  slow_move(slow_move&& o) noexcept : v(o.v) {
    if (!hold_moves.exchange(false)) return;
    in_move = true;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(hold_ms);
    while (!run_returned.load() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  }
};

}  // namespace

// The window made wide: the plain thread has taken the parked receiver off the queue and is
// moving the value into the receiver's stack when the main G returns. run() must not return
// (and unmap that stack) until the hand-over is done, so the move's wait for run() to return
// ends by its time limit instead. Without the wait the move wrote to an unmapped stack.
TEST_CASE("run() waits for a plain thread's hand-over to a G in progress") {
  for (int round = 0; round < 2; ++round) {
    const child_result r = run_in_child(
        [] {
          gort::chan<slow_move> ch;  // unbuffered: the value moves straight to the receiver
          std::atomic<bool> go{false};
          std::thread sender([&] {
            while (!go.load()) std::this_thread::yield();
            hold_moves = true;
            ch.send(slow_move(7));
          });
          const auto t0 = std::chrono::steady_clock::now();
          gort::run(gort::config{.procs = 1}, [&] {
            gort::go([ch] { (void)ch.recv(); });
            gort::yield();  // one P: the receiver runs and parks
            go = true;
            while (!in_move.load()) gort::yield();
          });  // returns while the sender is inside the hand-over
          run_returned = true;
          const auto waited = std::chrono::steady_clock::now() - t0;
          sender.join();
          if (waited < std::chrono::milliseconds(hold_ms)) {
            std::fprintf(stderr, "run() returned during the hand-over\n");
            std::_Exit(6);
          }
        },
        60);
    INFO("round " << round << ": status " << r.status << ", " << r.out);
    REQUIRE(r.exited(0));
  }
}
