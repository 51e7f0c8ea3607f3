// gort: the buffer of a buffered channel, a bounded multi-producer multi-consumer ring with a
// stamp per slot (after Dmitry Vyukov's bounded MPMC queue), whose head and tail words also
// carry flags that turn lock-free callers away. Who sets the flags, and why no wake-up is lost,
// is the channel's business: see the top of runtime/chan.cpp.
//
// Positions are stamps, lap * `lap` + index, where `lap` is a power of two above the capacity
// (so index + 1 never reads as the next lap's index 0). The slot of index i holds an atomic
// stamp and an element; for the position p it serves this lap:
//   stamp == p          free: the push of p may write it
//   stamp == p + 1      holds the value pushed at p, for the pop of p
//   stamp == p + lap    popped: free for the push of the next lap (that stamp is the next p)
// A push claims p by moving the tail word from p to next(p) with a CAS, writes the element and
// publishes stamp p + 1; a pop claims p by moving the head word, moves the element out and
// stores p + lap. Claims happen in position order; publishing may complete out of order.
//
// The head and tail words are `stamp << flag_bits | flags`. A caller passes the flags it may
// ignore (`allow`); any other flag set makes it return `stopped` without touching the ring.
// Setting a flag is an atomic RMW on the word, so a claim CAS racing with it fails and sees it.
//
// Exact answers. Vyukov's queue reports full when the next slot still holds last lap's value
// although that value's pop already claimed it and is copying it out, and empty when the next
// position is claimed by a push that has not published yet. A channel needs the exact answer
// (try_send fails only on a full buffer; a receive sees "closed" only when nothing is left), so
// here those two cases wait for the other party to finish: a copy of one element by code that
// runs with preemption held off, takes no lock and never switches G, so it is running (or its
// thread is merely descheduled by the OS) and finishes. `none` therefore means, exactly: the head
// word was a whole lap behind the tail (full), or equal to it (empty), when it was read.
//
// Memory order. Stamps publish elements (release / acquire). Claims, and the loads of the head
// and tail words that decide "full" or "empty", are seq_cst: a claim and the channel's later
// load of its waiter flags form one half of a store-load pair whose other half is a waiter's
// flag store and its last look at the ring (runtime/chan.cpp). On x86 the claim is a locked
// instruction anyway, so the pair costs nothing more; a seq_cst publish would cost an xchg.
#pragma once

#include <sched.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "lock.hpp"

namespace gort::detail::ring {

inline constexpr unsigned flag_bits = 2;
inline constexpr std::uint64_t wait_flag = 1;    // head: receivers wait; tail: senders wait
inline constexpr std::uint64_t closed_flag = 2;  // tail only: the channel is closed
inline constexpr std::uint64_t flag_mask = 3;

enum class result { done, none, stopped };

// The claim words, each on its own cache line: pushers share the tail's, poppers the head's.
struct ends {
  alignas(64) std::atomic<std::uint64_t> tail{0};
  alignas(64) std::atomic<std::uint64_t> head{0};
};

// Where the slots and claim words are and how positions advance; fixed when the channel is
// made. Small enough to share a cache line with what else every operation reads.
struct geometry {
  char* base = nullptr;      // slot 0; each slot: stamp, then the element at `off`
  ends* e = nullptr;         // the claim words
  std::size_t stride = 0;    // bytes per slot
  std::size_t cap = 0;       // 0: unbuffered, no ring
  std::uint64_t lap = 0;     // power of two > cap
  std::uint32_t off = 0;     // element offset within a slot
  std::uint32_t lap_shift = 0;  // log2(lap)

  char* slot(std::uint64_t st) const noexcept { return base + (st & (lap - 1)) * stride; }
  static std::atomic<std::uint64_t>& stamp_at(char* slot) noexcept {
    return *reinterpret_cast<std::atomic<std::uint64_t>*>(slot);
  }
  std::atomic<std::uint64_t>& stamp(std::uint64_t st) const noexcept { return stamp_at(slot(st)); }
  void* elem(std::uint64_t st) const noexcept { return slot(st) + off; }
  std::uint64_t next(std::uint64_t st) const noexcept {
    return (st & (lap - 1)) + 1 < cap ? st + 1 : (st & ~(lap - 1)) + lap;
  }
  // Positions since the start: differences count elements.
  std::uint64_t position(std::uint64_t st) const noexcept {
    return (st >> lap_shift) * cap + (st & (lap - 1));
  }
};

inline std::uint64_t stamp_of(std::uint64_t word) noexcept { return word >> flag_bits; }

// Waiting for another thread's copy of one element: spin briefly, then give the CPU away (its
// thread may have been descheduled by the OS).
inline void backoff(int& spins) noexcept {
  if (spins++ < 64) rt::cpu_relax();
  else sched_yield();
}

// Pushes one element, constructed by put(slot_elem). `none`: the ring is full.
template <class Put>
inline result push(const geometry& g, std::uint64_t allow, Put&& put) noexcept {
  std::atomic<std::uint64_t>& tail = g.e->tail;
  const std::atomic<std::uint64_t>& head = g.e->head;
  std::uint64_t t = tail.load(std::memory_order_relaxed);
  for (int spins = 0;;) {
    if (t & flag_mask & ~allow) return result::stopped;
    const std::uint64_t st = stamp_of(t);
    char* const slot = g.slot(st);
    std::atomic<std::uint64_t>& s = geometry::stamp_at(slot);
    const std::uint64_t v = s.load(std::memory_order_acquire);
    if (v == st) {
      if (tail.compare_exchange_weak(t, (g.next(st) << flag_bits) | (t & flag_mask),
                                     std::memory_order_seq_cst, std::memory_order_relaxed)) {
        put(slot + g.off);
        s.store(st + 1, std::memory_order_release);
        return result::done;
      }
      continue;  // t reloaded by the failed CAS
    }
    if (static_cast<std::int64_t>(v - st) < 0) {
      // Last lap's value is still here: full, unless its pop claimed it and is copying it out.
      if (stamp_of(head.load(std::memory_order_seq_cst)) + g.lap == st) return result::none;
      backoff(spins);
    }
    t = tail.load(std::memory_order_relaxed);  // (v ahead: another push took st)
  }
}

// Pops one element, moved out by take(slot_elem) (which also destroys the slot's copy).
// `none`: the ring is empty.
template <class Take>
inline result pop(const geometry& g, std::uint64_t allow, Take&& take) noexcept {
  std::atomic<std::uint64_t>& head = g.e->head;
  const std::atomic<std::uint64_t>& tail = g.e->tail;
  std::uint64_t h = head.load(std::memory_order_relaxed);
  for (int spins = 0;;) {
    if (h & flag_mask & ~allow) return result::stopped;
    const std::uint64_t st = stamp_of(h);
    char* const slot = g.slot(st);
    std::atomic<std::uint64_t>& s = geometry::stamp_at(slot);
    const std::uint64_t v = s.load(std::memory_order_acquire);
    if (v == st + 1) {
      if (head.compare_exchange_weak(h, (g.next(st) << flag_bits) | (h & flag_mask),
                                     std::memory_order_seq_cst, std::memory_order_relaxed)) {
        take(slot + g.off);
        s.store(st + g.lap, std::memory_order_release);
        return result::done;
      }
      continue;
    }
    if (static_cast<std::int64_t>(v - (st + 1)) < 0) {
      // Nothing published at st: empty, unless a push claimed st and is copying its value in.
      if (stamp_of(tail.load(std::memory_order_seq_cst)) == st) return result::none;
      backoff(spins);
    }
    h = head.load(std::memory_order_relaxed);  // (v ahead: another pop took st)
  }
}

// With the tail frozen (its wait flag set: only the lock holder pushes), whether the slot at the
// tail is free, exactly: waits out a pop still copying last lap's value out.
inline bool can_push(const geometry& g) noexcept {
  const std::atomic<std::uint64_t>& head = g.e->head;
  const std::uint64_t st = stamp_of(g.e->tail.load(std::memory_order_relaxed));
  for (int spins = 0;;) {
    if (g.stamp(st).load(std::memory_order_acquire) == st) return true;
    if (stamp_of(head.load(std::memory_order_seq_cst)) + g.lap == st) return false;
    backoff(spins);
  }
}

// With the head frozen, whether the slot at the head holds a value, exactly: waits out a push
// that claimed it and is still copying its value in.
inline bool can_pop(const geometry& g) noexcept {
  const std::atomic<std::uint64_t>& tail = g.e->tail;
  const std::uint64_t st = stamp_of(g.e->head.load(std::memory_order_relaxed));
  for (int spins = 0;;) {
    if (g.stamp(st).load(std::memory_order_acquire) == st + 1) return true;
    if (stamp_of(tail.load(std::memory_order_seq_cst)) == st) return false;
    backoff(spins);
  }
}

}  // namespace gort::detail::ring
