// gort: channels and select (include/gort/chan.hpp), on top of wait_state (wait.hpp).
//
// A channel is one allocation: this core, then (buffered channels) the ring of slots
// (chan_ring.hpp). Waiters, closing and unbuffered hand-offs are guarded by `lock`, a runtime
// spin lock held for a few loads, stores and element moves. A buffered send or receive that
// finds nobody waiting does not take it: it claims a slot of the ring with one CAS.
//
// Waiters. A blocked send or receive puts a chan_waiter, living on the blocked caller's stack
// (no allocation), on the channel's sendq or recvq and blocks on a wait_state, also on its
// stack. A select puts one chan_waiter per case on the case's channel, all pointing at one
// wait_state: whoever claim()s it takes the select (Go's selectDone), records its node in
// `winner` and finish()es it.
//
// The node protocol:
//  - A node is linked and unlinked only under its channel's lock, and `queued` says whether
//    it is linked; both are read and written only under that lock.
//  - A waker (a party serving a queue, or close) unlinks the head node and claims its
//    wait_state while holding the lock. If the claim fails (another case of the same select
//    won, or the deadline passed) it simply drops the node: the node is unlinked, and the waker
//    never touches it again once it unlocks.
//  - If the claim succeeds the waker owns the node and its wait_state until finish(): the owner
//    cannot run (its wait_state left `pending`, so neither its deadline nor another waker can
//    release it). So the waker may unlock first and finish() after (unbuffered hand-offs also
//    move the element then, outside the critical section).
//  - An owner that wakes (finished, timed out) relocks each of its channels and unlinks every
//    node of its own still marked queued. A waker that dequeued one of them before has
//    already let go (it did so under the lock the owner now holds), and no waker can find them
//    afterwards, so the nodes (and the wait_state) may die when the owner returns.
//  - A node whose wait_state can be released by nobody but a waker (a plain send/receive
//    without deadline: one node, no timer) is `sole`: the dequeuer owns it outright and skips
//    the claim's compare-and-swap.
//
// Unbuffered channels work entirely under the lock: a sender finding a parked receiver moves
// its value straight into the receiver's destination (and the reverse), else it parks.
//
// Buffered channels: the lock-free path and the waiters (the concurrency argument).
//  The ring's tail word carries `wait_flag` (senders wait) and `closed_flag`, the head word
//  `wait_flag` (receivers wait); `waiting` mirrors the two wait flags (rwait, swait) in a word
//  that is rarely written, so every operation can read it without a cache miss.
//  Invariants, all maintained under the lock:
//   F1. A queue's flag is set (on head/tail and in `waiting`) whenever that queue holds nodes
//       (and from a first waiter's arm() until its node is queued), and is cleared only by a
//       lock holder who sees the queue empty (sync_flags).
//   F2. While the head's wait flag is set, only lock holders pop; while the tail's is set, only
//       lock holders push (a lock-free claim CAS expects the flag clear; setting it is an RMW,
//       so a claim racing with it fails). So, holding the lock, "there is a value at the head"
//       (or "room at the tail") stays true until the holder itself acts on it, and a lock
//       holder serving a queue checks the ring, then claims a node, then moves the element.
//   F3. FIFO: a lock-free push runs only while no sender is queued, a lock-free pop only while
//       no receiver is (the flag turns it away), and under the lock parked parties are served
//       (pump) before the caller's own attempt; a caller queues behind existing nodes without
//       trying the ring.
//  Lock-free send: claim a slot, load `waiting`, move the element in and publish the slot; if
//  rwait was set, take the lock and pump (move ring values into parked receivers, oldest
//  first). Lock-free receive: symmetric, with swait (move parked senders' values into the
//  freed slots). The load comes before the publish: once its slot is published, a party that
//  saw no flag does not touch the channel again, so whoever takes the value may drop the last
//  handle at once (as with the lock, whose unlock was the last touch). One that saw a flag
//  takes the lock after publishing: the handle it called through must still be alive, as for
//  any call on any object.
//  The first party to wait in a direction (its queue empty), holding the lock: sets the flags
//  (F1), then looks at the ring once more (a value at the head / room at the tail) and only
//  then queues its node and blocks. No wake-up is lost. Take a receiver (senders are
//  symmetric, with head and tail swapped). Its flag store (seq_cst) precedes its last look,
//  which ends in a seq_cst load of the tail word unless it finds a published value
//  (chan_ring.hpp: "empty" is decided by reading tail == head). A push claims its position with
//  a seq_cst CAS on the tail word and then loads `waiting` (seq_cst). In the single total order
//  of seq_cst operations either the look's load of the tail comes after the claim: then it
//  sees the position claimed and waits for the value (the ring's answers are exact), and takes
//  it; or it comes before the claim: then the flag store precedes the claim, which precedes
//  the pusher's load, which therefore sees the flag, and the pusher pumps once its value is
//  published. A pump that stops because the head holds no value is such a look too
//  (the flag is set while it runs, by F1), so the next pusher pumps after it; a party joining
//  a non-empty queue relies on the same chain. (The pair is made of the claim rather than the
//  publish because the claim is a locked instruction on x86 anyway: a seq_cst publish would
//  add an xchg to every operation.)
//  Close, holding the lock: sets closed_flag (no push can claim after it), releases the
//  senders (closed), pumps what is buffered into parked receivers (the pump's exact look waits
//  for a push that claimed a slot before the flag: that send counts), then releases the
//  remaining receivers (closed): the ring is exactly empty and stays so. Any receive reports
//  closed only on an exactly empty ring, so every value is drained first.
//  A lock holder finishes the parties it served after unlocking (wake_list); a party that
//  served someone and would then block itself unlocks, finishes them and starts over.
//
// Select first walks its cases in a random order without locking anything, taking the first
// buffered case that the ring serves lock-free; it stops at the first case that needs the lock
// (unbuffered, waiters or closed flagged, a closed empty ring), which keeps the choice uniform
// among ready cases. Then it locks all of its channels (address order, each once) from its
// poll until its nodes are queued and it is off its stack (block's unlock transition). It
// polls the cases in the same order; if none is ready it arms the buffered channels whose
// queue (in the case's direction) is empty, as the first waiter above does, looks at those
// rings once more, and then queues one node per case, in the poll order (several cases on one
// channel thus wait in random order). A close is either seen by the poll or finds the nodes
// queued.
#include "gort/chan.hpp"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstring>
#include <string>
#include <type_traits>

#include "chan_ring.hpp"
#include "g.hpp"
#include "m.hpp"
#include "alloc.hpp"
#include "proc.hpp"
#include "wait.hpp"
#include "waitq.hpp"

namespace gort::detail {

namespace {

struct chan_waiter {
  chan_waiter* next = nullptr;
  chan_waiter* prev = nullptr;
  rt::wait_state* ws = nullptr;
  void* elem = nullptr;  // send: the value to move from; receive: where to construct it
  bool queued = false;
  bool sole = false;
  bool ok = false;  // written by the waker before finish: element moved (false: closed)
};

struct waitq : rt::waitq<chan_waiter> {
  // The oldest waiter that can still be taken, claimed for the caller; stale select nodes
  // and timed-out waiters met on the way are dropped (their owners find them unlinked). A
  // sole waiter (no deadline, not a select) is taken without a claim: nobody else can race.
  chan_waiter* take() noexcept {
    chan_waiter* w = pop_if([](chan_waiter* x) {
      if (!x->sole) return rt::claim(*x->ws);
      rt::take_sole(*x->ws);
      return true;
    });
    if (w) w->ws->winner = w;
    return w;
  }
};

// Parties served under the lock, finished after it: claimed nodes, linked through `next`.
struct wake_list : rt::wake_chain<chan_waiter> {
  void add(chan_waiter* w, bool ok) noexcept {
    w->ok = ok;
    wake_chain::add(w);
  }
};

constexpr std::uint32_t rwait = 1, swait = 2;  // bits of chan_core::waiting

}  // namespace

// Laid out for the lock-free path: what every operation reads and almost nobody writes, the
// lock and queues (waiters), and the reference count (handle copies), each on its own cache
// line. A buffered channel's block continues with the ring's claim words (ring::ends, a line
// each, so that pushers on one core and poppers on another do not take each other's lines)
// and its slots; an unbuffered channel has neither.
struct chan_core {
  const elem_ops* ops = nullptr;
  ring::geometry rg;  // rg.cap == 0: unbuffered
  std::atomic<std::uint32_t> waiting{0};  // rwait | swait; written under lock (F1)
  alignas(64) rt::spinlock lock;
  bool closed = false;
  waitq recvq, sendq;
  void* mem = nullptr;  // the allocation this core was placed in
  alignas(64) std::atomic<std::uint32_t> refs{1};
};
static_assert(offsetof(chan_core, waiting) < 64 && offsetof(chan_core, lock) == 64);
static_assert(sizeof(chan_core) == 3 * 64);

namespace {

// Element moves. Small trivially copyable elements (ints, pointers) are copied inline.
inline void move_elem(const elem_ops* o, void* d, void* s) noexcept {
  if (o->move) {
    o->move(d, s);
    return;
  }
  switch (o->size) {
    case 1: std::memcpy(d, s, 1); break;
    case 2: std::memcpy(d, s, 2); break;
    case 4: std::memcpy(d, s, 4); break;
    case 8: std::memcpy(d, s, 8); break;
    case 16: std::memcpy(d, s, 16); break;
    default: std::memcpy(d, s, o->size);
  }
}
inline void destroy_elem(const elem_ops* o, void* p) noexcept {
  if (o->destroy) o->destroy(p);
}

// ---- the ring, as the channel uses it ----

inline ring::result ring_push(chan_core* c, void* v, std::uint64_t allow) noexcept {
  const elem_ops* o = c->ops;
  return ring::push(c->rg, allow, [o, v](void* slot) { move_elem(o, slot, v); });
}
inline ring::result ring_pop(chan_core* c, void* dst, std::uint64_t allow) noexcept {
  const elem_ops* o = c->ops;
  return ring::pop(c->rg, allow, [o, dst](void* slot) {
    move_elem(o, dst, slot);
    destroy_elem(o, slot);
  });
}

// Under lock: make the flags say which queues hold nodes (F1).
void sync_flags(chan_core* c) noexcept {
  const std::uint32_t want = (c->recvq.head ? rwait : 0) | (c->sendq.head ? swait : 0);
  const std::uint32_t have = c->waiting.load(std::memory_order_relaxed);
  if (want == have) return;
  if ((want ^ have) & rwait) {
    if (want & rwait) c->rg.e->head.fetch_or(ring::wait_flag);
    else c->rg.e->head.fetch_and(~ring::wait_flag);
  }
  if ((want ^ have) & swait) {
    if (want & swait) c->rg.e->tail.fetch_or(ring::wait_flag);
    else c->rg.e->tail.fetch_and(~ring::wait_flag);
  }
  c->waiting.store(want, std::memory_order_seq_cst);
}

// Under lock, by the first party about to wait in a direction (its queue empty): set the flags
// before the last look at the ring (the store half of the no-lost-wake-up argument).
void arm(chan_core* c, std::uint32_t dir) noexcept {
  const std::uint32_t have = c->waiting.load(std::memory_order_relaxed);
  if (have & dir) return;
  (dir == rwait ? c->rg.e->head : c->rg.e->tail).fetch_or(ring::wait_flag);
  c->waiting.store(have | dir, std::memory_order_seq_cst);
}

// Under lock: serve parked parties, oldest first, for as long as the ring allows: parked
// senders' values into free slots, values at the head into parked receivers. The served are
// appended to wl, to be finished after unlocking. Leaves the flags in step with the queues.
void pump(chan_core* c, wake_list& wl) noexcept {
  const ring::geometry& g = c->rg;
  for (bool moved = c->sendq.head || c->recvq.head; moved;) {
    moved = false;
    // The tail is frozen while sendq has nodes (F2): room seen here stays until we push.
    while (c->sendq.head && ring::can_push(g)) {
      chan_waiter* w = c->sendq.take();
      if (!w) break;
      ring_push(c, w->elem, ring::wait_flag);
      wl.add(w, true);
      moved = true;
    }
    while (c->recvq.head && ring::can_pop(g)) {
      chan_waiter* w = c->recvq.take();
      if (!w) break;
      ring_pop(c, w->elem, ring::wait_flag);
      wl.add(w, true);
      moved = true;
    }
  }
  sync_flags(c);
}

// After a lock-free push or pop: the load half of the no-lost-wake-up argument. The flag seen
// means a waiter in the other direction may depend on this operation: serve it under the lock.
[[gnu::noinline]] void serve(chan_core* c) noexcept {
  wake_list wl;
  c->lock.lock();
  pump(c, wl);
  c->lock.unlock();
  wl.release();
}

// Under lock, buffered, open: a send that needs no waiting. Parked senders go first (they hold
// older values), so with any left the ring is full for us.
bool try_send_locked(chan_core* c, void* v, wake_list& wl) noexcept {
  pump(c, wl);
  if (c->sendq.head || ring_push(c, v, 0) != ring::result::done) return false;
  pump(c, wl);  // a parked receiver takes it
  return true;
}

// Under lock, buffered: a receive that needs no waiting. Parked receivers go first, so with
// any left the ring is empty for us.
bool try_recv_locked(chan_core* c, void* dst, wake_list& wl) noexcept {
  pump(c, wl);
  if (c->recvq.head || ring_pop(c, dst, 0) != ring::result::done) return false;
  pump(c, wl);  // a parked sender's value takes the freed slot
  return true;
}

// Under lock, unbuffered: a parked partner to hand over to, claimed. The element moves after
// unlocking (into the receiver's destination, or out of the sender's value), then release.
inline chan_waiter* partner(waitq& q) noexcept { return q.take(); }
inline void hand_over(chan_core* c, void* dst, void* src, chan_waiter* w) noexcept {
  move_elem(c->ops, dst, src);
  w->ok = true;
  rt::finish(*w->ws);
}

// Holding c's lock: queue w (already pointing at its value or destination) on q and block until
// a waker finishes it (true) or the deadline passes (false: w is taken off the queue again).
// Returns without the lock.
// The abandon_hook of a parked send or receive (g.hpp): shutdown takes the node off the queue.
struct park_hook : rt::abandon_hook {
  chan_core* c;
  waitq* q;
  chan_waiter* w;
};
void park_detach(rt::abandon_hook* h) noexcept;

[[gnu::always_inline]] inline bool park_on(chan_core* c, waitq& q, chan_waiter& w, std::int64_t deadline_ns,
                                            const char* reason) GORT_RELEASE(c->lock) GORT_NO_TSA {
  rt::wait_state ws;
  w.ws = &ws;
  w.sole = deadline_ns == 0;
  q.push_back(&w);
  bool woken;
  {
    park_hook h{{park_detach, c}, c, &q, &w};
    rt::queued_scope qs(&h);
    woken = rt::block(ws, deadline_ns, reason, rt::unlocking(c->lock));
  }
  if (woken) return true;
  c->lock.lock();
  if (w.queued) q.unlink(&w);
  if (c->rg.cap) sync_flags(c);
  c->lock.unlock();
  return false;
}

void park_detach(rt::abandon_hook* h) noexcept {
  auto* ph = static_cast<park_hook*>(h);
  chan_core* c = ph->c;
  c->lock.lock();
  if (ph->w->queued) ph->q->unlink(ph->w);
  if (c->rg.cap) sync_flags(c);
  c->lock.unlock();
}

inline bool past(std::int64_t deadline_ns) noexcept {
  return deadline_ns < 0 || (deadline_ns > 0 && rt::nanotime() >= deadline_ns);
}

[[noreturn]] void throw_closed(const char* what) { throw closed_channel(what); }

}  // namespace

chan_core* chan_make(const elem_ops* ops, std::size_t capacity) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  const std::size_t hdr = sizeof(chan_core);
  // A slot: the stamp, then the element at its alignment; slots are a multiple of both.
  const std::size_t ealign = std::max<std::size_t>(ops->align, alignof(std::uint64_t));
  const std::size_t off = ealign;
  const std::size_t stride = (off + ops->size + ealign - 1) & ~(ealign - 1);
  if (capacity > (std::size_t{1} << 40) / stride)
    throw std::length_error("gort::chan: capacity " + std::to_string(capacity) + " is too large");
  // One block: the core on a cache-line boundary, then (buffered) the claim words, two lines,
  // and the slots.
  void* mem = rt::alloc(64 + hdr + (capacity ? sizeof(ring::ends) + capacity * stride : 0));
  auto a = (reinterpret_cast<std::uintptr_t>(mem) + 63) & ~std::uintptr_t{63};
  auto* c = ::new (reinterpret_cast<void*>(a)) chan_core;
  c->mem = mem;
  c->ops = ops;
  if (capacity) {
    ring::geometry& g = c->rg;
    g.e = ::new (reinterpret_cast<void*>(a + hdr)) ring::ends;
    g.base = reinterpret_cast<char*>(a + hdr + sizeof(ring::ends));
    g.stride = stride;
    g.off = static_cast<std::uint32_t>(off);
    g.cap = capacity;
    g.lap = std::bit_ceil(std::uint64_t{capacity} + 1);
    g.lap_shift = static_cast<std::uint32_t>(std::countr_zero(g.lap));
    for (std::size_t i = 0; i < capacity; ++i)
      ::new (g.base + i * stride) std::atomic<std::uint64_t>(i);
  }
  return c;
}

void chan_retain(chan_core* c) noexcept { c->refs.fetch_add(1, std::memory_order_relaxed); }

// The last handle is gone, so nobody is blocked on the channel or inside an operation on it
// (a party holds a handle): destroy what is still buffered and free the block.
void chan_release(chan_core* c) noexcept {
  if (c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // Element destructors are user code: they run outside the no-preemption bracket.
  if (c->rg.cap) {
    const std::uint64_t end = ring::stamp_of(c->rg.e->tail.load(std::memory_order_relaxed));
    for (std::uint64_t st = ring::stamp_of(c->rg.e->head.load(std::memory_order_relaxed)); st != end;
         st = c->rg.next(st))
      destroy_elem(c->ops, c->rg.elem(st));
  }
  void* mem = c->mem;
  c->~chan_core();
  rt::nopreempt_scope np;
  rt::free_mem(mem);
}

namespace {

// Buffered, after the lock-free attempt found the ring full or turned away: under the lock.
[[gnu::noinline]] chan_status send_buffered_slow(chan_core* c, void* v, std::int64_t deadline_ns) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  for (;;) {
    c->lock.lock();
    if (c->closed) {
      c->lock.unlock();
      throw_closed("gort::chan::send: send on a closed channel");
    }
    wake_list wl;
    const bool sent = try_send_locked(c, v, wl);
    if (sent || !wl.empty()) {
      c->lock.unlock();
      wl.release();
      if (sent) return chan_status::ok;
      continue;  // served others first: not to be held up while we wait, so look again
    }
    if (past(deadline_ns)) {
      c->lock.unlock();
      return chan_status::would_block;
    }
    if (!c->sendq.head) {  // the first sender to wait: arm, then the last look
      arm(c, swait);
      if (ring_push(c, v, ring::wait_flag) == ring::result::done) {
        pump(c, wl);
        c->lock.unlock();
        wl.release();
        return chan_status::ok;
      }
    }
    chan_waiter w;
    w.elem = v;
    if (!park_on(c, c->sendq, w, deadline_ns, "chan send")) return chan_status::would_block;
    if (w.ok) return chan_status::ok;
    throw_closed("gort::chan::send: channel closed while sending");
  }
}

[[gnu::noinline]] chan_status recv_buffered_slow(chan_core* c, void* dst, std::int64_t deadline_ns) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  for (;;) {
    c->lock.lock();
    wake_list wl;
    const bool got = try_recv_locked(c, dst, wl);
    if (got || !wl.empty()) {
      c->lock.unlock();
      wl.release();
      if (got) return chan_status::ok;
      continue;
    }
    if (c->closed) {  // and the ring exactly empty: drained
      c->lock.unlock();
      return chan_status::closed;
    }
    if (past(deadline_ns)) {
      c->lock.unlock();
      return chan_status::would_block;
    }
    if (!c->recvq.head) {  // the first receiver to wait: arm, then the last look
      arm(c, rwait);
      if (ring_pop(c, dst, ring::wait_flag) == ring::result::done) {
        pump(c, wl);
        c->lock.unlock();
        wl.release();
        return chan_status::ok;
      }
    }
    chan_waiter w;
    w.elem = dst;
    if (!park_on(c, c->recvq, w, deadline_ns, "chan receive")) return chan_status::would_block;
    return w.ok ? chan_status::ok : chan_status::closed;
  }
}

// Lock-free attempts for send_fast, recv_fast and select: `*seen` gets `waiting` as loaded
// between the claim and the publish (see the top of the file for why there).
inline ring::result push_fast(chan_core* c, void* v, std::uint32_t* seen) noexcept {
  const elem_ops* o = c->ops;
  return ring::push(c->rg, 0, [c, o, v, seen](void* slot) {
    *seen = c->waiting.load(std::memory_order_seq_cst);
    move_elem(o, slot, v);
  });
}
inline ring::result pop_fast(chan_core* c, void* dst, std::uint32_t* seen) noexcept {
  const elem_ops* o = c->ops;
  return ring::pop(c->rg, 0, [c, o, dst, seen](void* slot) {
    *seen = c->waiting.load(std::memory_order_seq_cst);
    move_elem(o, dst, slot);
    destroy_elem(o, slot);
  });
}

// The lock-free attempt. It and the slow paths each do the preemption check and hold
// preemption off for themselves, so the public entry points below only dispatch (a tail call,
// no frame), and the lock-free attempt keeps a small frame. A failed attempt checks preemption
// twice: cheap, and rare.
[[gnu::noinline]] chan_status send_fast(chan_core* c, void* v, std::int64_t deadline_ns) {
  rt::preempt_check();
  {
    rt::nopreempt_scope np;
    std::uint32_t seen;
    if (push_fast(c, v, &seen) == ring::result::done) [[likely]] {
      if (seen & rwait) [[unlikely]] serve(c);
      return chan_status::ok;
    }
  }
  return send_buffered_slow(c, v, deadline_ns);
}

[[gnu::noinline]] chan_status recv_fast(chan_core* c, void* dst, std::int64_t deadline_ns) {
  rt::preempt_check();
  {
    rt::nopreempt_scope np;
    std::uint32_t seen;
    if (pop_fast(c, dst, &seen) == ring::result::done) [[likely]] {
      if (seen & swait) [[unlikely]] serve(c);
      return chan_status::ok;
    }
  }
  return recv_buffered_slow(c, dst, deadline_ns);
}

// Unbuffered: everything under the lock; the element moves straight between the parties.
[[gnu::noinline]] chan_status send_unbuffered(chan_core* c, void* v, std::int64_t deadline_ns) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  c->lock.lock();
  if (c->closed) {
    c->lock.unlock();
    throw_closed("gort::chan::send: send on a closed channel");
  }
  if (chan_waiter* w = partner(c->recvq)) {
    c->lock.unlock();
    hand_over(c, w->elem, v, w);
    return chan_status::ok;
  }
  if (past(deadline_ns)) {
    c->lock.unlock();
    return chan_status::would_block;
  }
  chan_waiter w;
  w.elem = v;
  if (!park_on(c, c->sendq, w, deadline_ns, "chan send")) return chan_status::would_block;
  if (w.ok) return chan_status::ok;
  throw_closed("gort::chan::send: channel closed while sending");
}

[[gnu::noinline]] chan_status recv_unbuffered(chan_core* c, void* dst, std::int64_t deadline_ns) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  c->lock.lock();
  if (chan_waiter* w = partner(c->sendq)) {
    c->lock.unlock();
    hand_over(c, dst, w->elem, w);
    return chan_status::ok;
  }
  if (c->closed) {
    c->lock.unlock();
    return chan_status::closed;
  }
  if (past(deadline_ns)) {
    c->lock.unlock();
    return chan_status::would_block;
  }
  chan_waiter w;
  w.elem = dst;
  if (!park_on(c, c->recvq, w, deadline_ns, "chan receive")) return chan_status::would_block;
  return w.ok ? chan_status::ok : chan_status::closed;
}

}  // namespace

chan_status chan_send(chan_core* c, void* v, std::int64_t deadline_ns) {
  return c->rg.cap ? send_fast(c, v, deadline_ns) : send_unbuffered(c, v, deadline_ns);
}

chan_status chan_recv(chan_core* c, void* dst, std::int64_t deadline_ns) {
  return c->rg.cap ? recv_fast(c, dst, deadline_ns) : recv_unbuffered(c, dst, deadline_ns);
}

void chan_close(chan_core* c) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  c->lock.lock();
  if (c->closed) {
    c->lock.unlock();
    throw_closed("gort::chan::close: close of a closed channel");
  }
  c->closed = true;
  wake_list wl;
  // No push claims a slot after the flag; one that claimed before has sent, and its value is
  // drained before anyone sees the close: pump's exact look waits for it.
  if (c->rg.cap) c->rg.e->tail.fetch_or(ring::closed_flag);
  while (chan_waiter* w = c->sendq.take()) wl.add(w, false);
  if (c->rg.cap) pump(c, wl);  // parked receivers get what is buffered, or being pushed
  // The ring is now exactly empty, and stays so: the rest see the close.
  while (chan_waiter* w = c->recvq.take()) wl.add(w, false);
  if (c->rg.cap) sync_flags(c);
  c->lock.unlock();
  wl.release();
}

std::size_t chan_size(const chan_core* c) noexcept {
  if (!c->rg.cap) return 0;
  const std::uint64_t h = c->rg.position(ring::stamp_of(c->rg.e->head.load(std::memory_order_acquire)));
  const std::uint64_t t = c->rg.position(ring::stamp_of(c->rg.e->tail.load(std::memory_order_acquire)));
  return t <= h ? 0 : std::min<std::uint64_t>(t - h, c->rg.cap);
}
std::size_t chan_capacity(const chan_core* c) noexcept { return c->rg.cap; }

void chan_null(const char* op) {
  throw std::logic_error(std::string("gort::chan::") + op +
                         ": the handle refers to no channel (moved-from or null)");
}

// ---- select ---------------------------------------------------------------------------------

namespace {

// Fills order[0..n) with a uniformly random permutation (inside-out Fisher-Yates), drawing
// from the runtime's PRNG. fastrand_any() finds its state (the M's, or a plain thread's) on
// every call, out of line, so nothing thread-local is cached here across a G's migration.
void select_order(std::uint32_t* order, std::size_t n) noexcept {
  order[0] = 0;
  for (std::size_t i = 1; i < n; ++i) {
    const std::uint64_t r = rt::fastrand_any() >> 32;  // the 32 best bits of xorshift64*
    const std::size_t j = (r * (i + 1)) >> 32;        // uniform in [0, i]
    order[i] = static_cast<std::uint32_t>(i);
    std::swap(order[i], order[j]);
  }
}

struct lockset {
  chan_core** c;
  std::size_t n;
  // A set of locks the analysis cannot name: taken and released as a whole.
  void lock() const noexcept GORT_NO_TSA {
    for (std::size_t i = 0; i < n; ++i) c[i]->lock.lock();
  }
  void unlock() const noexcept GORT_NO_TSA {
    for (std::size_t i = n; i-- > 0;) c[i]->lock.unlock();
  }
};

// The unlock transition of a parked select. The lockset and its array live in the parked
// G's frame, and the first unlock lets a waker ready the G, which may then run on another M
// while this loop still reads them. That is safe because the G's first act on waking is to
// lock the set again starting with c[0], which is released last: until then its frame, and
// the array in it, stay as they are, and after that this loop reads nothing.
void unlock_set(rt::fiber*, void* arg) noexcept { static_cast<lockset*>(arg)->unlock(); }

// The abandon_hook of a parked select (g.hpp): shutdown takes its nodes off every queue.
struct select_hook : rt::abandon_hook {
  select_case* cs;
  std::size_t n;
  chan_waiter* nodes;
  lockset* ls;
};
void select_detach(rt::abandon_hook* h) noexcept {
  auto* sh = static_cast<select_hook*>(h);
  sh->ls->lock();
  for (std::size_t i = 0; i < sh->n; ++i) {
    chan_waiter& w = sh->nodes[i];
    select_case& k = sh->cs[i];
    if (w.queued) (k.send ? k.c->sendq : k.c->recvq).unlink(&w);
  }
  for (std::size_t j = 0; j < sh->ls->n; ++j)
    if (sh->ls->c[j]->rg.cap) sync_flags(sh->ls->c[j]);
  sh->ls->unlock();
}

// Scratch arrays for a select: on the stack for the usual handful of cases, left
// uninitialised (the select writes each element before reading it).
template <class T, std::size_t N>
struct scratch {
  static_assert(std::is_trivially_destructible_v<T>);
  alignas(T) unsigned char inline_[N * sizeof(T)];
  T* p;
  explicit scratch(std::size_t n)
      : p(n <= N ? reinterpret_cast<T*>(inline_) : static_cast<T*>(rt::alloc(n * sizeof(T)))) {}
  ~scratch() {
    if (p != reinterpret_cast<T*>(inline_)) rt::free_mem(p);
  }
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;
  T& operator[](std::size_t i) noexcept { return p[i]; }
};

}  // namespace

std::size_t chan_select(select_case* cs, std::size_t n, std::int64_t deadline_ns, bool nonblocking,
                        bool* ok) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  *ok = false;
  if (n == 0) {  // only a timeout (or a default): nothing to wait for but the clock
    if (!nonblocking) {
      rt::wait_state ws;
      rt::block(ws, deadline_ns, "select (no channel cases)", {});
    }
    return 0;
  }

  // Poll order: a uniformly random permutation, so that among the ready cases each is taken
  // with equal probability.
  scratch<std::uint32_t, 16> order(n);
  select_order(order.p, n);

  for (std::size_t k = 0; k < n; ++k) {  // the lock-free first look
    const std::size_t i = order[k];
    chan_core* c = cs[i].c;
    if (!c->rg.cap) break;
    std::uint32_t seen;
    const ring::result r =
        cs[i].send ? push_fast(c, cs[i].elem, &seen) : pop_fast(c, cs[i].elem, &seen);
    if (r == ring::result::done) {
      if (seen & (cs[i].send ? rwait : swait)) serve(c);
      *ok = true;
      return i;
    }
    if (r == ring::result::stopped ||
        (!cs[i].send && (c->rg.e->tail.load(std::memory_order_relaxed) & ring::closed_flag)))
      break;
  }

  // Lock order: channel addresses, each channel once. Insertion sort, dropping duplicates: n is
  // small, and this beats std::sort's set-up.
  scratch<chan_core*, 16> chans(n);
  std::size_t nlocks = 0;
  for (std::size_t i = 0; i < n; ++i) {
    chan_core* c = cs[i].c;
    std::size_t j = nlocks;
    while (j > 0 && std::less<chan_core*>()(c, chans[j - 1])) --j;
    if (j > 0 && chans[j - 1] == c) continue;
    for (std::size_t k = nlocks; k > j; --k) chans[k] = chans[k - 1];
    chans[j] = c;
    ++nlocks;
  }
  lockset ls{chans.p, nlocks};

  // Done under the set's locks: pump every buffered channel (flags in step), unlock, finish
  // the parties served.
  auto leave = [&](wake_list& wl) {
    for (std::size_t j = 0; j < nlocks; ++j)
      if (chans[j]->rg.cap) pump(chans[j], wl);
    ls.unlock();
    wl.release();
  };

  for (;;) {
    ls.lock();
    wake_list wl;
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = order[k];
      chan_core* c = cs[i].c;
      if (cs[i].send) {
        if (c->closed) {
          leave(wl);
          throw_closed("gort::select: send on a closed channel");
        }
        if (c->rg.cap) {
          if (try_send_locked(c, cs[i].elem, wl)) {
            leave(wl);
            *ok = true;
            return i;
          }
        } else if (chan_waiter* w = partner(c->recvq)) {
          ls.unlock();
          wl.release();
          hand_over(c, w->elem, cs[i].elem, w);
          *ok = true;
          return i;
        }
      } else {
        if (c->rg.cap) {
          if (try_recv_locked(c, cs[i].elem, wl)) {
            leave(wl);
            *ok = true;
            return i;
          }
        } else if (chan_waiter* w = partner(c->sendq)) {
          ls.unlock();
          wl.release();
          hand_over(c, cs[i].elem, w->elem, w);
          *ok = true;
          return i;
        }
        if (c->closed) {
          leave(wl);
          return i;  // *ok false: closed and drained
        }
      }
    }
    if (!wl.empty()) {  // served others: finish them before we might block, then look again
      leave(wl);
      continue;
    }
    if (nonblocking || (deadline_ns > 0 && rt::nanotime() >= deadline_ns)) {
      ls.unlock();
      return n;
    }

    // Arm the buffered channels this select would be the first to wait on, then look at
    // those rings once more (the no-lost-wake-up check), in the same random order.
    for (std::size_t i = 0; i < n; ++i) {
      chan_core* c = cs[i].c;
      if (c->rg.cap && !(cs[i].send ? c->sendq.head : c->recvq.head)) arm(c, cs[i].send ? swait : rwait);
    }
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = order[k];
      chan_core* c = cs[i].c;
      if (!c->rg.cap) continue;
      const bool done = cs[i].send
                            ? !c->sendq.head && ring_push(c, cs[i].elem, ring::wait_flag) == ring::result::done
                            : !c->recvq.head && ring_pop(c, cs[i].elem, ring::wait_flag) == ring::result::done;
      if (done) {
        leave(wl);
        *ok = true;
        return i;
      }
    }
    break;
  }

  // Queued in the poll order: cases on the same channel then sit in its queue in random order,
  // so a party arriving later serves each of them with equal probability (as in Go, which
  // permutes them too).
  rt::wait_state ws;
  scratch<chan_waiter, 8> nodes(n);
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t i = order[k];
    chan_waiter& w = *::new (&nodes[i]) chan_waiter;
    w.ws = &ws;
    w.elem = cs[i].elem;
    (cs[i].send ? cs[i].c->sendq : cs[i].c->recvq).push_back(&w);
  }
  select_hook hook{{select_detach, chans[0]}, cs, n, nodes.p, &ls};
  bool woken;
  {
    rt::queued_scope qs(&hook);
    woken = rt::block(ws, deadline_ns, "select", {unlock_set, &ls});
  }

  // Take back whatever nodes are still queued (all but the winner's, unless a waker dropped
  // them already); after this no waker can reach them.
  ls.lock();
  for (std::size_t i = 0; i < n; ++i) {
    chan_waiter& w = nodes[i];
    if (w.queued) (cs[i].send ? cs[i].c->sendq : cs[i].c->recvq).unlink(&w);
  }
  for (std::size_t j = 0; j < nlocks; ++j)
    if (chans[j]->rg.cap) sync_flags(chans[j]);
  ls.unlock();
  if (!woken) return n;
  const auto* win = static_cast<chan_waiter*>(ws.winner);
  const std::size_t i = static_cast<std::size_t>(win - &nodes[0]);
  if (cs[i].send && !win->ok) throw_closed("gort::select: channel closed while sending");
  *ok = win->ok;
  return i;
}

}  // namespace gort::detail
