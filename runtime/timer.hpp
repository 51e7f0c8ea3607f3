// gort: a P's timer heap.
//
// Each P keeps the timers armed by Gs running on it in a 4-ary min-heap ordered by (when, seq):
// O(log n) arm/disarm, and timers with equal deadlines fire in arming order. The heap has its
// own lock because other Ps run a P's expired timers when that P is busy or idle (so no timer
// waits behind a long-running G), and `next` publishes the earliest deadline so the scheduler
// can check "anything due?" without the lock or a clock read when there are no timers.
//
// Timers are intrusive (a G embeds its sleep timer); the heap is an array of pointers, which
// add() may have to grow. A timer armed in a step that must not fail (a park's commit, after
// the switch) is armed with add_reserved() in room that reserve() made beforehand, where an
// allocation failure can still be reported: invariant capacity >= size + reserved, under mu_.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "lock.hpp"
#include <vector>

namespace gort::rt {

class timers;

// fire(t) runs on some M in scheduler context (g0, or the stack of a G that is switching out),
// without any timer lock held: it must not block or park. It may ready Gs, take short runtime
// locks and re-arm t itself, but must not stop t (stop waits for a running fire to finish).
struct timer {
  std::int64_t when = 0;           // CLOCK_MONOTONIC ns
  void (*fire)(timer*) = nullptr;
  void* arg = nullptr;
  std::uint64_t seq = 0;
  std::int32_t idx = -1;  // position in its heap, under that heap's lock; -1 when not armed
  // The heap t is armed in (null: none). Written under that heap's lock.
  std::atomic<timers*> heap{nullptr};
  // Fires of t under way: counted from the moment run() takes t off the heap until its fire
  // returns. A count, not a flag: a fire that re-arms t may still be running when another
  // runner fires t again. stop() waits for zero.
  std::atomic<std::uint32_t> firing{0};
};

// Disarms t wherever it is armed, and waits until a fire of t that is already under way has
// returned. True if t was armed (so it will now never fire). Any thread; not from t's own fire.
bool timer_stop(timer* t) noexcept;

class timers {
 public:
  // Arms t (t->when and t->fire set by the caller). Returns true if t became the earliest.
  // Throws std::bad_alloc if the heap cannot grow (nothing armed then).
  bool add(timer* t);
  // Makes room for one add_reserved(); throws std::bad_alloc (nothing reserved then).
  void reserve();
  // add() into room that reserve() made: never allocates.
  bool add_reserved(timer* t) noexcept;
  // From inside a timer's fire: re-arms it on the heap that is firing it, in the room its
  // removal left (run() keeps that room reserved for the fire). Never allocates; returns
  // whether it became that heap's earliest.
  static bool rearm_in_fire(timer* t) noexcept;
  // Disarms t if it is armed here; true if it was.
  bool remove(timer* t) noexcept;
  // Fires every timer due at `now`. Returns how many fired.
  int run(std::int64_t now);
  // Earliest deadline, 0 if none. Lock-free; may be stale by one concurrent add/run.
  std::int64_t next() const noexcept { return next_.load(std::memory_order_acquire); }
  std::size_t size() const noexcept;
  // Drops every timer without firing (shutdown).
  void clear() noexcept;

 private:
  void up(std::size_t i) noexcept;
  void down(std::size_t i) noexcept;
  void publish() noexcept { next_.store(heap_.empty() ? 0 : heap_[0]->when, std::memory_order_release); }
  void make_room();  // capacity for one more beyond size + reserved_ (under mu_)
  bool push(timer* t) noexcept;  // into existing capacity (under mu_)

  mutable spinlock mu_;
  std::vector<timer*> heap_;
  std::size_t reserved_ = 0;  // add_reserved() calls to come: capacity >= size + reserved_
  std::uint64_t seq_ = 0;
  std::atomic<std::int64_t> next_{0};
};

}  // namespace gort::rt
