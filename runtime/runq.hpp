// gort: a P's local run queue: a 256-slot double-ended ring plus a `runnext` slot.
//
// Order. The owner runs the *newest* G of the ring first (LIFO) and thieves take the *oldest*
// half (FIFO), as in Cilk-style work stealing; Go's ring is FIFO at both ends. The reason is
// memory, which for stackful Gs is time: a fork-join program (skynet, recursive fib, a
// parallel sort) run breadth-first keeps every G of a whole tree level alive at once, each on
// its own stack, and a stack slot used for the first time costs microseconds of kernel time
// (guard install, first-touch fault). Run depth-first, the same program keeps a few dozen Gs
// per P alive and reuses the same warm stacks; thieves still take the oldest, largest
// subtrees, so work spreads as well as before. Measured: skynet with 1.1M Gs went from ~90k
// distinct stacks to a few hundred (docs/benchmarks.md).
//
// LIFO alone would starve: a G that yields, or is preempted, or whose timer fired, must wait
// behind what is already queued, not jump ahead of it. Those go in at the old end
// (`put_back`: the back of the line). And a G buried under newer ones must not wait forever:
// every G is stamped when it enters the ring, and the owner runs the oldest G first once it has
// waited a stale period (10 time slices, 100 ms by default), at most once per period
// (`get_oldest`, from fast_next's 1-in-61 look). So a G i places from the old end runs within
// about i + 1 periods however much newer work arrives, where Go's FIFO ring bounds it by the
// slices of the Gs ahead of it. Taking the oldest more often undoes the depth-first order,
// because in a long fork-join run every deferred sibling is "old" (measured: taking it at
// every 61st schedule kept 4,600 stacks alive for a 100k-leaf tree instead of ~30; see
// stale_slices in proc.cpp for once per slice). The old end stays sorted by stamp: put_back
// gives its G the stamp of the G it goes behind.
//
// The state. Head (old end), tail (new end) and a tag share one 64-bit word, `ht_`:
//   bits 0..8  head, 9..17 tail  (positions mod 512; length = tail - head mod 512, <= 256)
//   bits 18..63 tag, incremented by *every* change of the word
// so a word value is never seen twice (2^46 changes would take years). Every change is one
// atomic RMW on the whole word, and so a compare-and-swap that succeeds proves nothing at all
// happened since its load: no owner push or pop at either end, no other thief. That is the
// whole concurrency argument, and it is why both ends can move without Go's and Tokio's
// finer reasoning (Go's ring only ever advances; Tokio splits head into steal/real):
//  - Slots are written only by the owner (and by a thief into its *own* ring, past its tail,
//    before publishing), and only outside [head, tail): a push checks length < 256 first, so
//    the slot it writes holds no queued G. A thief copying [head, head+n) may read a slot the
//    owner is overwriting only if the owner has since changed the word; its CAS then fails
//    and the copy is discarded. Slots are relaxed atomics so those racing reads are defined
//    (and TSan-clean); the word's release/acquire orders slot contents.
//  - Owner pops (either end) and thieves' grabs are CAS loops on the word; the owner's push at
//    the new end is a fetch_add (it alone moves tail forward, and the add carries out of the
//    tail field into the tag, which only has to grow).
//  - With a single P no thief exists, and the owner uses plain stores (`alone`); Ms without a
//    P read the word only to ask "empty?".
//
// runnext holds the G most recently readied by the running G (a spawned child, a woken
// partner). It runs next, inheriting the rest of the time slice, which keeps producer/consumer
// pairs on one P with their data in cache. The G it displaces goes to the new end. Thieves
// take runnext only as a last resort.
//
// Why 256: the same as Go and Tokio. Large enough that a spawn burst rarely spills to the
// global queue, small enough (2 KiB of pointers) that stealing half is a short copy.
#pragma once

#include <atomic>
#include <cstdint>

namespace gort::rt {

struct g;

class runq {
 public:
  static constexpr std::uint32_t size = 256;

  // Owner only: at the new end (runs soon). False when full; the caller then spills.
  bool put(g* gp, bool alone = false) noexcept {
    std::uint64_t w = ht_.load(std::memory_order_relaxed);
    if (len(w) >= size) return false;
    buf_[tail(w) % size].store(gp, std::memory_order_relaxed);
    if (alone) ht_.store(w + tail_one + tag_one, std::memory_order_release);
    else ht_.fetch_add(tail_one + tag_one, std::memory_order_release);
    return true;
  }

  // Owner only: at the old end, the back of the line (yield, timers, requeues). False when
  // full.
  bool put_back(g* gp, bool alone = false) noexcept {
    std::uint64_t w = ht_.load(std::memory_order_relaxed);
    for (;;) {
      if (len(w) >= size) return false;
      std::uint32_t h = (head(w) - 1) & pos_mask;
      buf_[h % size].store(gp, std::memory_order_relaxed);
      std::uint64_t nw = make(tag(w) + 1, tail(w), h);
      if (alone) {
        ht_.store(nw, std::memory_order_release);
        return true;
      }
      if (ht_.compare_exchange_weak(w, nw, std::memory_order_release, std::memory_order_relaxed))
        return true;
    }
  }

  // Owner only: puts gp into runnext and returns what was there (to be put in the ring).
  // `alone` (a single P, so no thief): two plain accesses instead of a locked exchange, which
  // is a fifth of a channel hand-off at procs = 1.
  g* put_next(g* gp, bool alone = false) noexcept {
    if (alone) {
      g* old = next_.load(std::memory_order_relaxed);
      next_.store(gp, std::memory_order_relaxed);
      return old;
    }
    return next_.exchange(gp, std::memory_order_acq_rel);
  }

  // Owner only. Takes runnext first (inherit_time = true), then the newest G of the ring.
  g* get(bool& inherit_time, bool alone = false) noexcept {
    g* n = next_.load(std::memory_order_relaxed);
    if (n && (alone ? (next_.store(nullptr, std::memory_order_relaxed), true)
                    : next_.compare_exchange_strong(n, nullptr, std::memory_order_acquire))) {
      inherit_time = true;
      return n;
    }
    inherit_time = false;
    std::uint64_t w = ht_.load(std::memory_order_acquire);
    for (;;) {
      if (len(w) == 0) return nullptr;
      std::uint32_t t = (tail(w) - 1) & pos_mask;
      g* gp = buf_[t % size].load(std::memory_order_relaxed);
      std::uint64_t nw = make(tag(w) + 1, t, head(w));
      if (alone) {
        ht_.store(nw, std::memory_order_relaxed);
        return gp;
      }
      if (ht_.compare_exchange_weak(w, nw, std::memory_order_acquire, std::memory_order_acquire))
        return gp;
    }
  }

  // Owner only: the oldest G of the ring, skipping runnext (fairness, see fast_next).
  g* get_oldest(bool alone = false) noexcept {
    std::uint64_t w = ht_.load(std::memory_order_acquire);
    for (;;) {
      if (len(w) == 0) return nullptr;
      g* gp = buf_[head(w) % size].load(std::memory_order_relaxed);
      std::uint64_t nw = make(tag(w) + 1, tail(w), (head(w) + 1) & pos_mask);
      if (alone) {
        ht_.store(nw, std::memory_order_relaxed);
        return gp;
      }
      if (ht_.compare_exchange_weak(w, nw, std::memory_order_acquire, std::memory_order_acquire))
        return gp;
    }
  }

  // Owner only, on a full ring: claims the oldest half for the global queue. Returns how many
  // were copied into out[0..n) (at most size / 2), 0 if a thief made room (the caller retries
  // its put).
  std::uint32_t grab_half_for_spill(g** out) noexcept {
    std::uint64_t w = ht_.load(std::memory_order_acquire);
    for (;;) {
      if (len(w) < size) return 0;
      std::uint32_t n = size / 2;
      for (std::uint32_t i = 0; i < n; ++i) out[i] = buf_[(head(w) + i) % size].load(std::memory_order_relaxed);
      if (ht_.compare_exchange_weak(w, make(tag(w) + 1, tail(w), (head(w) + n) & pos_mask),
                                    std::memory_order_acq_rel, std::memory_order_acquire))
        return n;
    }
  }

  // Any thread: moves the oldest half of this queue into `dst`'s ring, past dst's tail,
  // without publishing them (the stealing owner publishes with commit_steal). dst must be
  // empty (the thief looks only when it has nothing). Takes runnext only if `take_next` and
  // the ring is empty. Returns the number of Gs moved.
  std::uint32_t grab(runq& dst, bool take_next) noexcept {
    const std::uint32_t dt = tail(dst.ht_.load(std::memory_order_relaxed));
    std::uint64_t w = ht_.load(std::memory_order_acquire);
    for (;;) {
      std::uint32_t n = len(w);
      n -= n / 2;
      if (n == 0) {
        if (!take_next) return 0;
        g* nx = next_.load(std::memory_order_acquire);
        if (!nx) return 0;
        if (!next_.compare_exchange_strong(nx, nullptr, std::memory_order_acq_rel)) {
          w = ht_.load(std::memory_order_acquire);
          continue;
        }
        dst.buf_[dt % size].store(nx, std::memory_order_relaxed);
        return 1;
      }
      for (std::uint32_t i = 0; i < n; ++i) {
        g* gp = buf_[(head(w) + i) % size].load(std::memory_order_relaxed);
        dst.buf_[(dt + i) % size].store(gp, std::memory_order_relaxed);
      }
      if (ht_.compare_exchange_weak(w, make(tag(w) + 1, tail(w), (head(w) + n) & pos_mask),
                                    std::memory_order_acq_rel, std::memory_order_acquire))
        return n;
    }
  }

  // Owner only, after grab into this queue: takes the newest stolen G to run now and
  // publishes the rest.
  g* commit_steal(std::uint32_t n) noexcept {
    std::uint64_t w = ht_.load(std::memory_order_relaxed);
    g* gp = buf_[(tail(w) + n - 1) % size].load(std::memory_order_relaxed);
    if (n > 1) ht_.fetch_add(std::uint64_t{n - 1} * tail_one + tag_one, std::memory_order_release);
    return gp;
  }

  // Whether runnext holds a G (from another thread: a hint).
  bool has_next() const noexcept { return next_.load(std::memory_order_relaxed) != nullptr; }

  // Any thread: whether the ring is empty and only runnext holds a G (a hint).
  bool only_next() const noexcept {
    return len(ht_.load(std::memory_order_acquire)) == 0 &&
           next_.load(std::memory_order_acquire) != nullptr;
  }

  bool empty() const noexcept {
    // Go's runqempty: a G moving from runnext into the ring must not make the queue look
    // empty, so read the word, runnext, and the word again (any change bumps the tag).
    for (;;) {
      std::uint64_t w = ht_.load(std::memory_order_acquire);
      g* n = next_.load(std::memory_order_acquire);
      if (ht_.load(std::memory_order_acquire) == w) return len(w) == 0 && n == nullptr;
    }
  }

  std::uint32_t length() const noexcept {
    return len(ht_.load(std::memory_order_acquire)) + (next_.load(std::memory_order_relaxed) ? 1 : 0);
  }

  // Owner only: the G at the old end, left in place (a hint: a thief may take it meanwhile).
  g* peek_oldest() const noexcept {
    std::uint64_t w = ht_.load(std::memory_order_acquire);
    return len(w) ? buf_[head(w) % size].load(std::memory_order_relaxed) : nullptr;
  }

  bool full() const noexcept { return len(ht_.load(std::memory_order_acquire)) >= size; }
  std::uint32_t ring_length() const noexcept { return len(ht_.load(std::memory_order_acquire)); }

 private:
  static constexpr std::uint32_t pos_bits = 9;  // positions mod 512 tell full (256) from empty
  static constexpr std::uint32_t pos_mask = (1u << pos_bits) - 1;
  static constexpr std::uint64_t tail_one = std::uint64_t{1} << pos_bits;
  static constexpr std::uint64_t tag_one = std::uint64_t{1} << (2 * pos_bits);
  static_assert(size * 2 == 1u << pos_bits);

  static std::uint32_t head(std::uint64_t w) noexcept { return static_cast<std::uint32_t>(w) & pos_mask; }
  static std::uint32_t tail(std::uint64_t w) noexcept { return static_cast<std::uint32_t>(w >> pos_bits) & pos_mask; }
  static std::uint64_t tag(std::uint64_t w) noexcept { return w >> (2 * pos_bits); }
  static std::uint32_t len(std::uint64_t w) noexcept { return (tail(w) - head(w)) & pos_mask; }
  static std::uint64_t make(std::uint64_t tg, std::uint32_t t, std::uint32_t h) noexcept {
    return (tg << (2 * pos_bits)) | (std::uint64_t{t & pos_mask} << pos_bits) | (h & pos_mask);
  }

  alignas(64) std::atomic<std::uint64_t> ht_{0};
  std::atomic<g*> next_{nullptr};
  std::atomic<g*> buf_[size] = {};
};

}  // namespace gort::rt
