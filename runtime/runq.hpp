// gort: a P's local run queue: a 256-slot ring plus a `runnext` slot (Go's runq, in C++).
//
// Concurrency: one producer, many consumers. Only the owning P puts (it alone writes `tail`
// and the slots past it); the owner and thieves take by CAS on `head`. That makes put and the
// owner's get lock-free and cheap, and lets idle Ps steal half a queue in one CAS.
//
//  - put: the slot at `tail` is free (tail - head < 256), so the owner writes it, then
//    publishes it with a release store of tail. A full ring moves half of itself plus the new
//    G to the global queue in one batch (runq_put_slow, in the scheduler), which both bounds
//    the ring and hands work to Ps that look there.
//  - get/grab: read head (acquire) and tail (acquire: pairs with the owner's release, so the
//    slots below tail are visible), read the slots, then claim them with one CAS on head. A
//    slot read before a failed CAS may have been overwritten by a wrapped-around put; the
//    failed CAS discards it. A successful CAS proves the slots were not reused: the owner only
//    writes slot i + 256 after head has passed i.
//  - Slots and runnext are atomics (relaxed) so that racing reads are defined behaviour (and
//    TSan-clean); the ordering comes from head and tail.
//
// runnext holds the G most recently readied by the running G (a spawned child, a woken
// partner). It runs next, inheriting the rest of the time slice, which keeps producer/consumer
// pairs on one P with their data in cache. Thieves take it only as a last resort.
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

  // Owner only. Returns false when full; the caller then spills (see runq_put_slow).
  bool put(g* gp) noexcept {
    std::uint32_t h = head_.load(std::memory_order_acquire);
    std::uint32_t t = tail_.load(std::memory_order_relaxed);
    if (t - h >= size) return false;
    buf_[t % size].store(gp, std::memory_order_relaxed);
    tail_.store(t + 1, std::memory_order_release);
    return true;
  }

  // Owner only: puts gp into runnext and returns what was there (to be put in the ring).
  g* put_next(g* gp) noexcept { return next_.exchange(gp, std::memory_order_acq_rel); }

  // Owner only. Takes runnext first (inherit_time = true), then the ring's head.
  g* get(bool& inherit_time, bool alone = false) noexcept {
    g* n = next_.load(std::memory_order_relaxed);
    if (n && next_.compare_exchange_strong(n, nullptr, std::memory_order_acquire)) {
      inherit_time = true;
      return n;
    }
    inherit_time = false;
    return get_ring(alone);
  }

  // Owner only: the ring's head, skipping runnext (fairness, see fast_next). With `alone`
  // (the runtime has a single P, so no thief can exist) the claim is a plain store instead of a
  // CAS: the only other readers are Ms without a P checking emptiness.
  g* get_ring(bool alone = false) noexcept {
    if (alone) {
      std::uint32_t h = head_.load(std::memory_order_relaxed);
      if (tail_.load(std::memory_order_relaxed) == h) return nullptr;
      g* gp = buf_[h % size].load(std::memory_order_relaxed);
      head_.store(h + 1, std::memory_order_release);
      return gp;
    }
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t t = tail_.load(std::memory_order_relaxed);
      if (t == h) return nullptr;
      g* gp = buf_[h % size].load(std::memory_order_relaxed);
      if (head_.compare_exchange_weak(h, h + 1, std::memory_order_release)) return gp;
    }
  }

  // Owner only: claims half of the ring (for the global queue). Returns how many were copied
  // into out[0..n), 0 if a thief got in the way (the caller retries put).
  std::uint32_t grab_half_for_spill(g** out, std::uint32_t h, std::uint32_t t) noexcept {
    std::uint32_t n = (t - h) / 2;
    for (std::uint32_t i = 0; i < n; ++i) out[i] = buf_[(h + i) % size].load(std::memory_order_relaxed);
    if (!head_.compare_exchange_strong(h, h + n, std::memory_order_release)) return 0;
    return n;
  }

  // Any thread: moves half of this queue into `dst`'s ring, starting at dst's tail, without
  // publishing them (the stealing owner publishes with commit_steal). Takes runnext only if
  // `take_next` and the ring is empty. Returns the number of Gs moved.
  std::uint32_t grab(runq& dst, bool take_next) noexcept {
    std::uint32_t dt = dst.tail_.load(std::memory_order_relaxed);
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t t = tail_.load(std::memory_order_acquire);
      std::uint32_t n = t - h;
      n -= n / 2;
      if (n == 0) {
        if (!take_next) return 0;
        g* nx = next_.load(std::memory_order_acquire);
        if (!nx) return 0;
        if (!next_.compare_exchange_strong(nx, nullptr, std::memory_order_acq_rel)) continue;
        dst.buf_[dt % size].store(nx, std::memory_order_relaxed);
        return 1;
      }
      if (n > size / 2) continue;  // read h and t at different times; the snapshot is torn
      for (std::uint32_t i = 0; i < n; ++i) {
        g* gp = buf_[(h + i) % size].load(std::memory_order_relaxed);
        dst.buf_[(dt + i) % size].store(gp, std::memory_order_relaxed);
      }
      if (head_.compare_exchange_strong(h, h + n, std::memory_order_acq_rel)) return n;
    }
  }

  // Owner only, after grab into this queue: takes the last stolen G to run now and publishes
  // the rest.
  g* commit_steal(std::uint32_t n) noexcept {
    std::uint32_t t = tail_.load(std::memory_order_relaxed);
    g* gp = buf_[(t + n - 1) % size].load(std::memory_order_relaxed);
    if (n > 1) tail_.store(t + n - 1, std::memory_order_release);
    return gp;
  }

  // Any thread: whether the ring is empty and only runnext holds a G (a hint).
  bool only_next() const noexcept {
    return head_.load(std::memory_order_acquire) == tail_.load(std::memory_order_acquire) &&
           next_.load(std::memory_order_acquire) != nullptr;
  }

  bool empty() const noexcept {
    // Go's runqempty: a G moving between runnext and the ring must not make the queue look
    // empty, so read head/tail/runnext and re-check tail.
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t t = tail_.load(std::memory_order_acquire);
      g* n = next_.load(std::memory_order_acquire);
      if (tail_.load(std::memory_order_acquire) == t) return h == t && n == nullptr;
    }
  }

  std::uint32_t length() const noexcept {
    std::uint32_t h = head_.load(std::memory_order_acquire);
    std::uint32_t t = tail_.load(std::memory_order_acquire);
    return (t - h) + (next_.load(std::memory_order_relaxed) ? 1 : 0);
  }

  std::uint32_t head() const noexcept { return head_.load(std::memory_order_acquire); }
  std::uint32_t tail() const noexcept { return tail_.load(std::memory_order_relaxed); }

 private:
  alignas(64) std::atomic<std::uint32_t> head_{0};
  alignas(64) std::atomic<std::uint32_t> tail_{0};
  std::atomic<g*> next_{nullptr};
  std::atomic<g*> buf_[size] = {};
};

}  // namespace gort::rt
