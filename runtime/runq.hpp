// gort: a P's local run queue: an N-slot double-ended ring (N = 256 in the scheduler) plus a
// `runnext` slot, and the two views through which it is used: the owner's and the thieves'.
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
// The state. Head (old end), tail (new end) and a tag share one 64-bit word, `ht_`. With
// B = log2(N) + 1 position bits (9 for N = 256):
//   bits 0..B-1 head, B..2B-1 tail  (positions mod 2N; length = tail - head mod 2N, <= N)
//   bits 2B..63 tag, incremented by *every* change of the word
// so a thief never sees a word value come back while it holds it: that would take the tag
// wrapping, 2^46 changes at N = 256 (N <= 256 keeps at least 46 tag bits), days of nonstop
// locked RMWs while the thief stays stalled between its load and its CAS. Every change is one
// atomic RMW on the whole word, and so a compare-and-swap that succeeds proves nothing at all
// happened since its load: no owner push or pop at either end, no other thief. That is the
// whole concurrency argument, and it is why both ends can move without Go's and Tokio's
// finer reasoning (Go's ring only ever advances; Tokio splits head into steal/real):
//  - Slots are written only by the owner (and by a thief into its *own* ring, past its tail,
//    before publishing), and only outside [head, tail): a push checks length < N first, so
//    the slot it writes holds no queued G. A thief copying [head, head+n) may read a slot the
//    owner is overwriting only if the owner has since changed the word; its CAS then fails
//    and the copy is discarded. Slots are relaxed atomics so those racing reads are defined
//    (and TSan-clean); the word's release/acquire orders slot contents.
//  - Owner pops (either end) and thieves' grabs are CAS loops on the word; the owner's push at
//    the new end is a fetch_add (it alone moves tail forward, and the add carries out of the
//    tail field into the tag, which only has to grow).
//  - With a single P no thief exists, and the owner uses plain stores (`alone`); Ms without a
//    P read the word only to ask "empty?".
//  - "The owner" is one thread at a time: the M that holds the P. The type says so. The ring's
//    operations are private; the owner's are reachable only through `owner()`, an owner_view,
//    which only the M holding this P may call for; a thief gets a thief_view (`thief()`),
//    which can only grab into a queue it owns (an owner_view of its own P's queue) and read
//    the hints. The views are a reference each and compile to the same code as direct calls.
//    Debug builds also check that no two owner operations ever overlap (owner_busy_, relaxed,
//    so TSan still sees every real race); release builds store nothing for it.
//
// runnext holds the G most recently readied by the running G (a spawned child, a woken
// partner). It runs next (with a time slice of its own, as every schedule starts one), which
// keeps producer/consumer pairs on one P with their data in cache. The G it displaces goes to
// the new end. Thieves take runnext only as a last resort.
//
// Why 256: the same as Go and Tokio. Large enough that a spawn burst rarely spills to the
// global queue, small enough (2 KiB of pointers) that stealing half is a short copy. N is a
// template parameter so that test_runq can run the same code at N = 4 or 8, where full rings,
// spills and wrap-around happen every few operations.
#pragma once

#include <atomic>
#include <bit>
#include <cstdint>

#include "check.hpp"

namespace gort::rt {

struct g;

template <std::uint32_t N>
class basic_runq {
  static_assert(std::has_single_bit(N), "runq: N must be a power of two (positions wrap mod 2N)");
  static_assert(N >= 2, "runq: N must be at least 2 (a spill or steal moves half)");
  static_assert(N <= 256, "runq: N must be at most 256 (the tag keeps at least 46 bits)");

 public:
  static constexpr std::uint32_t size = N;

  class hint_view;
  class owner_view;
  class thief_view;

  // Only the M that holds this P (for a queue outside the scheduler: its one owning thread).
  // The operations that touch the ring's slots from the owner's side.
  owner_view owner() noexcept { return owner_view(*this); }
  // Any thread: steal from this queue, or read its hints.
  thief_view thief() noexcept { return thief_view(*this); }

  // Hints, safe from any thread and changing nothing: on both views, and here too for code
  // that only asks (sysmon, the deadlock check, an M without a P).

  // Whether runnext holds a G (from another thread: a hint).
  bool has_next() const noexcept { return next_.load(std::memory_order_relaxed) != nullptr; }

  // Whether the ring is empty and only runnext holds a G (a hint).
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

 private:
  // ---- owner operations (through owner_view) ----

  // At the new end (runs soon). False when full; the caller then spills.
  bool put(g* gp, bool alone) noexcept {
    GORT_ASSERT(gp, "runq: put of a null G");
    std::uint64_t w = ht_.load(std::memory_order_relaxed);
    if (len(w) >= size) return false;
    buf_[tail(w) % size].store(gp, std::memory_order_relaxed);
    if (alone) ht_.store(w + tail_one + tag_one, std::memory_order_release);
    else ht_.fetch_add(tail_one + tag_one, std::memory_order_release);
    return true;
  }

  // At the old end, the back of the line (yield, timers, requeues). False when full.
  bool put_back(g* gp, bool alone) noexcept {
    GORT_ASSERT(gp, "runq: put_back of a null G");
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

  // Puts gp into runnext and returns what was there (to be put in the ring). `alone` (a single
  // P, so no thief): two plain accesses instead of a locked exchange, which is a fifth of a
  // channel hand-off at procs = 1.
  g* put_next(g* gp, bool alone) noexcept {
    GORT_ASSERT(gp, "runq: put_next of a null G");
    if (alone) {
      g* old = next_.load(std::memory_order_relaxed);
      next_.store(gp, std::memory_order_relaxed);
      return old;
    }
    return next_.exchange(gp, std::memory_order_acq_rel);
  }

  // runnext first, then the newest G of the ring.
  g* get(bool alone) noexcept {
    g* n = next_.load(std::memory_order_relaxed);
    if (n && (alone ? (next_.store(nullptr, std::memory_order_relaxed), true)
                    : next_.compare_exchange_strong(n, nullptr, std::memory_order_acquire)))
      return n;
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

  // The oldest G of the ring, skipping runnext (fairness, see fast_next).
  g* get_oldest(bool alone) noexcept {
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

  // On a full ring: claims the oldest half for the global queue.
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

  // After grab into this queue: the newest stolen G, and publishes the rest.
  g* commit_steal(std::uint32_t n) noexcept {
    GORT_ASSERT(n >= 1 && n <= size / 2, "runq: commit_steal of %u Gs (1..%u)", n, size / 2);
    std::uint64_t w = ht_.load(std::memory_order_relaxed);
    g* gp = buf_[(tail(w) + n - 1) % size].load(std::memory_order_relaxed);
    if (n > 1) ht_.fetch_add(std::uint64_t{n - 1} * tail_one + tag_one, std::memory_order_release);
    return gp;
  }

  // The G at the old end, left in place (a hint: a thief may take it meanwhile).
  g* peek_oldest() const noexcept {
    std::uint64_t w = ht_.load(std::memory_order_acquire);
    return len(w) ? buf_[head(w) % size].load(std::memory_order_relaxed) : nullptr;
  }

  bool full() const noexcept { return len(ht_.load(std::memory_order_acquire)) >= size; }
  std::uint32_t ring_length() const noexcept { return len(ht_.load(std::memory_order_acquire)); }

  // ---- thief operation (through thief_view) ----

  // Moves the oldest half of this queue into dst's ring, past dst's tail, without publishing
  // them (dst's owner publishes with commit_steal). dst's ring must be empty.
  std::uint32_t grab(basic_runq& dst, bool take_next) noexcept {
    const std::uint64_t dw = dst.ht_.load(std::memory_order_relaxed);
    GORT_ASSERT(len(dw) == 0, "runq: grab into a ring holding %u Gs", len(dw));
    const std::uint32_t dt = tail(dw);
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

  // ---- the word ----

  static constexpr std::uint32_t pos_bits = std::countr_zero(N) + 1;  // positions mod 2N tell full from empty
  static constexpr std::uint32_t pos_mask = (1u << pos_bits) - 1;
  static constexpr std::uint64_t tail_one = std::uint64_t{1} << pos_bits;
  static constexpr std::uint64_t tag_one = std::uint64_t{1} << (2 * pos_bits);
  static_assert(size * 2 == 1u << pos_bits);
  static_assert(64 - 2 * pos_bits >= 46);

  static std::uint32_t head(std::uint64_t w) noexcept { return static_cast<std::uint32_t>(w) & pos_mask; }
  static std::uint32_t tail(std::uint64_t w) noexcept { return static_cast<std::uint32_t>(w >> pos_bits) & pos_mask; }
  static std::uint64_t tag(std::uint64_t w) noexcept { return w >> (2 * pos_bits); }
  static std::uint32_t len(std::uint64_t w) noexcept {
    const std::uint32_t l = (tail(w) - head(w)) & pos_mask;
    GORT_ASSERT(l <= size, "runq: ring length %u above %u", l, size);
    return l;
  }
  static std::uint64_t make(std::uint64_t tg, std::uint32_t t, std::uint32_t h) noexcept {
    return (tg << (2 * pos_bits)) | (std::uint64_t{t & pos_mask} << pos_bits) | (h & pos_mask);
  }

  // Debug builds: an owner operation is running. Two at once means two threads act as the
  // owner (a broken hand-off of the P, or owner() called from a thief).
#if GORT_DEBUG
  class owner_scope {
   public:
    explicit owner_scope(basic_runq& q) noexcept : busy_(q.owner_busy_) {
      const bool was = busy_.exchange(true, std::memory_order_relaxed);
      GORT_ASSERT(!was, "runq: two owner operations at once (owner() is only for the M holding the P)");
    }
    ~owner_scope() { busy_.store(false, std::memory_order_relaxed); }
    owner_scope(const owner_scope&) = delete;
    owner_scope& operator=(const owner_scope&) = delete;

   private:
    std::atomic<bool>& busy_;
  };
#else
  class owner_scope {
   public:
    explicit owner_scope(basic_runq&) noexcept {}
  };
#endif

  alignas(64) std::atomic<std::uint64_t> ht_{0};
  std::atomic<g*> next_{nullptr};
  // The owner's schedule number (p::schedtick) at its last spawn: a hint for thieves, on the
  // line they read anyway (steal_work exempts a P that is spawning from the short-ring grace).
  std::atomic<std::uint32_t> spawn_tick_{0};
  std::atomic<g*> buf_[size] = {};
#if GORT_DEBUG
  std::atomic<bool> owner_busy_{false};
#endif
};

// What any thread may read, through either handle: hints, each true at some moment.
template <std::uint32_t N>
class basic_runq<N>::hint_view {
 public:
  // The G at the old end, left in place (the owner: a thief may take it meanwhile).
  g* peek_oldest() const noexcept { return q_.peek_oldest(); }
  std::uint32_t ring_length() const noexcept { return q_.ring_length(); }
  bool has_next() const noexcept { return q_.has_next(); }
  bool only_next() const noexcept { return q_.only_next(); }
  bool empty() const noexcept { return q_.empty(); }
  std::uint32_t length() const noexcept { return q_.length(); }

 protected:
  explicit hint_view(basic_runq& q) noexcept : q_(q) {}
  basic_runq& q_;
};

// The owner's handle: every operation of the ring, plus the hints. Obtained only from
// basic_runq::owner(), by the M that holds the P. `alone`: the scheduler has a single P, so no
// thief exists and plain stores replace the RMWs.
template <std::uint32_t N>
class basic_runq<N>::owner_view : public hint_view {
  using hint_view::q_;

 public:
  // At the new end (runs soon). False when full; the caller then spills (grab_half_for_spill).
  bool put(g* gp, bool alone = false) const noexcept {
    owner_scope s(q_);
    return q_.put(gp, alone);
  }
  // At the old end, the back of the line (yield, timers, requeues). False when full.
  bool put_back(g* gp, bool alone = false) const noexcept {
    owner_scope s(q_);
    return q_.put_back(gp, alone);
  }
  // Puts gp into runnext and returns what was there (for the caller to put in the ring).
  g* put_next(g* gp, bool alone = false) const noexcept {
    owner_scope s(q_);
    return q_.put_next(gp, alone);
  }
  // runnext first, then the newest G of the ring; null when both are empty.
  g* get(bool alone = false) const noexcept {
    owner_scope s(q_);
    return q_.get(alone);
  }
  // The oldest G of the ring, skipping runnext (fairness, see fast_next).
  g* get_oldest(bool alone = false) const noexcept {
    owner_scope s(q_);
    return q_.get_oldest(alone);
  }
  // On a full ring: claims the oldest half for the global queue. Returns how many were copied
  // into out[0..n) (size / 2), or 0 if a thief made room (the caller retries its put).
  std::uint32_t grab_half_for_spill(g** out) const noexcept {
    owner_scope s(q_);
    return q_.grab_half_for_spill(out);
  }
  // After a thief_view's grab(n) into this queue: the newest stolen G, to run now; the other
  // n - 1 are published at the new end.
  g* commit_steal(std::uint32_t n) const noexcept {
    owner_scope s(q_);
    return q_.commit_steal(n);
  }
  // Records that the owner spawned a G at its schedule number `tick`.
  void note_spawn(std::uint32_t tick) const noexcept { q_.spawn_tick_.store(tick, std::memory_order_relaxed); }
  bool full() const noexcept { return q_.full(); }

 private:
  friend class basic_runq;
  friend class thief_view;  // grab writes into the thief's own ring
  explicit owner_view(basic_runq& q) noexcept : hint_view(q) {}
};

// A thief's handle: steal into a queue it owns, and the hints.
template <std::uint32_t N>
class basic_runq<N>::thief_view : public hint_view {
  using hint_view::q_;

 public:
  // Moves the oldest half of this queue into dst's ring, past its tail, without publishing
  // them: dst.commit_steal(n) does. dst's ring must be empty (a thief looks only when it has
  // nothing). Takes runnext only if `take_next` and the ring is empty. Returns the number of
  // Gs moved (at most size / 2).
  std::uint32_t grab(owner_view dst, bool take_next) const noexcept {
    owner_scope s(dst.q_);
    return q_.grab(dst.q_, take_next);
  }

  // The owner's schedule number at its last spawn (a hint).
  std::uint32_t spawn_tick() const noexcept { return q_.spawn_tick_.load(std::memory_order_relaxed); }

 private:
  friend class basic_runq;
  explicit thief_view(basic_runq& q) noexcept : hint_view(q) {}
};

// The scheduler's run queue.
using runq = basic_runq<256>;

}  // namespace gort::rt
