// gort: a P's timer heap (timer.hpp): a 4-ary min-heap under its own lock, fired outside it.
#include "timer.hpp"

#include <algorithm>

#include "check.hpp"

namespace gort::rt {

namespace {
// The heap whose run() is firing a timer on this thread, while its room is unused.
thread_local timers* fire_room = nullptr;
constexpr std::size_t arity = 4;  // shallower than binary: fewer cache misses per sift
inline bool before(const timer* a, const timer* b) noexcept {
  return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}
}  // namespace

void timers::up(std::size_t i) noexcept {
  timer* t = heap_[i];
  while (i > 0) {
    std::size_t parent = (i - 1) / arity;
    if (!before(t, heap_[parent])) break;
    heap_[i] = heap_[parent];
    heap_[i]->idx = static_cast<std::int32_t>(i);
    i = parent;
  }
  heap_[i] = t;
  t->idx = static_cast<std::int32_t>(i);
}

void timers::down(std::size_t i) noexcept {
  timer* t = heap_[i];
  std::size_t n = heap_.size();
  for (;;) {
    std::size_t c = i * arity + 1;
    if (c >= n) break;
    std::size_t best = c;
    for (std::size_t k = c + 1; k < c + arity && k < n; ++k)
      if (before(heap_[k], heap_[best])) best = k;
    if (!before(heap_[best], t)) break;
    heap_[i] = heap_[best];
    heap_[i]->idx = static_cast<std::int32_t>(i);
    i = best;
  }
  heap_[i] = t;
  t->idx = static_cast<std::int32_t>(i);
}

void timers::make_room() {
  const std::size_t need = heap_.size() + reserved_ + 1;
  if (heap_.capacity() < need)
    heap_.reserve(std::max<std::size_t>({need, 2 * heap_.capacity(), 16}));
}

bool timers::push(timer* t) noexcept {
  GORT_ASSERT(heap_.size() < heap_.capacity(), "timer heap: no room for an add");
  t->heap.store(this, std::memory_order_relaxed);
  t->seq = seq_++;
  heap_.push_back(t);  // within capacity: no allocation
  up(heap_.size() - 1);
  publish();
  return heap_[0] == t;
}

bool timers::add(timer* t) {
  spin_guard l(mu_);
  make_room();  // may throw: nothing changed yet
  return push(t);
}

void timers::reserve() {
  spin_guard l(mu_);
  make_room();
  ++reserved_;
}

bool timers::rearm_in_fire(timer* t) noexcept {
  timers* h = fire_room;
  GORT_CHECK(h, "timer re-armed in a fire outside timers::run");
  fire_room = nullptr;
  return h->add_reserved(t);
}

bool timers::add_reserved(timer* t) noexcept {
  spin_guard l(mu_);
  GORT_ASSERT(reserved_ > 0, "timer heap: add_reserved without a reserve");
  --reserved_;
  return push(t);
}

bool timers::remove(timer* t) noexcept {
  spin_guard l(mu_);
  // t->idx belongs to the heap holding t and is written under that heap's lock: read it only
  // once t->heap says that is this heap (under our lock that cannot change but by us).
  if (t->heap.load(std::memory_order_relaxed) != this) return false;
  std::int32_t i = t->idx;
  timer* last = heap_.back();
  heap_.pop_back();
  t->idx = -1;
  t->heap.store(nullptr, std::memory_order_relaxed);
  if (last != t) {
    heap_[static_cast<std::size_t>(i)] = last;
    last->idx = i;
    down(static_cast<std::size_t>(i));
    up(static_cast<std::size_t>(last->idx));
  }
  publish();
  return true;
}

int timers::run(std::int64_t now) {
  int fired = 0;
  for (;;) {
    timer* t;
    {
      spin_guard l(mu_);
      if (heap_.empty() || heap_[0]->when > now) {
        publish();
        return fired;
      }
      t = heap_[0];
      timer* last = heap_.back();
      heap_.pop_back();
      if (!heap_.empty()) {
        heap_[0] = last;
        down(0);
      }
      t->idx = -1;
      // firing before heap: timer_stop reads heap == null (acquire), then must see firing.
      t->firing.fetch_add(1, std::memory_order_relaxed);
      t->heap.store(nullptr, std::memory_order_release);
      publish();
      ++reserved_;  // the slot t left: capacity >= size + reserved_ still holds
    }
    // Unlocked: fire may ready a G, which takes run-queue locks, or re-arm this very timer
    // (rearm_in_fire, into the slot reserved above).
    fire_room = this;
    t->fire(t);
    if (fire_room) {  // not re-armed here
      fire_room = nullptr;
      spin_guard l(mu_);
      --reserved_;
    }
    t->firing.fetch_sub(1, std::memory_order_release);  // t's memory may be reused from here
    ++fired;
  }
}

std::size_t timers::size() const noexcept {
  spin_guard l(mu_);
  return heap_.size();
}

void timers::clear() noexcept {
  spin_guard l(mu_);
  for (timer* t : heap_) {
    t->idx = -1;
    t->heap.store(nullptr, std::memory_order_relaxed);
  }
  heap_.clear();
  reserved_ = 0;
  publish();
}

bool timer_stop(timer* t) noexcept {
  bool removed = false;
  // A concurrent re-arm may move t between heaps: retry until it is in none.
  while (timers* h = t->heap.load(std::memory_order_acquire)) {
    if (h->remove(t)) {
      removed = true;
      break;
    }
  }
  while (t->firing.load(std::memory_order_acquire)) cpu_relax();
  return removed;
}

}  // namespace gort::rt
