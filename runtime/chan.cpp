// gort: channels and select (include/gort/chan.hpp), on top of wait_state (wait.hpp).
//
// A channel is one allocation: this core followed by the ring buffer. Everything in it is
// guarded by `lock`, a runtime spin lock held for a few loads, stores and one element move.
//
// Waiters. A blocked send or receive puts a chan_waiter, living on the blocked caller's stack
// (no allocation), on the channel's sendq or recvq and blocks on a wait_state, also on its
// stack. A select puts one chan_waiter per case on the case's channel, all pointing at one
// wait_state: whoever claim()s it takes the select (Go's selectDone), records its node in
// `winner` and finish()es it.
//
// The node protocol (the concurrency argument):
//  - A node is linked and unlinked only under its channel's lock, and `in_queue` says whether
//    it is linked; both are read and written only under that lock.
//  - A waker (a sender finding a parked receiver, or the reverse, or close) unlinks the head
//    node and claims its wait_state while still holding the lock. If the claim fails (another
//    case of the same select won, or the deadline passed) it simply drops the node: the node
//    is unlinked, and the waker never touches it again once it unlocks.
//  - If the claim succeeds the waker owns the node and its wait_state until finish(): the owner
//    cannot run (its wait_state left `pending`, so neither its deadline nor another waker can
//    release it). So the waker may unlock first and then move the element into (or out of) the
//    owner's memory, which keeps the copy out of the critical section, and finish() last.
//  - An owner that wakes (finished, timed out) relocks each of its channels and unlinks every
//    node of its own still marked in_queue. A waker that dequeued one of them before has
//    already let go (it did so under the lock the owner now holds), and no waker can find them
//    afterwards, so the nodes (and the wait_state) may die when the owner returns.
//  - Close takes the lock, marks the channel closed and claims every queued node; anything that
//    checks `closed` or queues a node does so under the same lock, so a send, receive or
//    select either sees the channel closed or is queued before close looks, and is then woken
//    by it: no lost wake-up. A select holds all of its channels' locks from its first look
//    until its nodes are queued and it is off its stack (block's unlock transition).
//
// A node whose wait_state can be released by nobody but a waker (a plain send/receive without
// deadline: one node, no timer) is `sole`: the dequeuer owns it outright and skips the claim's
// compare-and-swap.
#include "gort/chan.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>

#include "sched.hpp"
#include "wait.hpp"

namespace gort::detail {

namespace {

struct chan_waiter {
  chan_waiter* next = nullptr;
  chan_waiter* prev = nullptr;
  rt::wait_state* ws = nullptr;
  void* elem = nullptr;  // send: the value to move from; receive: where to construct it
  bool in_queue = false;
  bool sole = false;
  bool ok = false;  // written by the waker before finish: element moved (false: closed)
};

struct waitq {
  chan_waiter* head = nullptr;
  chan_waiter* tail = nullptr;

  void push(chan_waiter* w) noexcept {
    w->next = nullptr;
    w->prev = tail;
    if (tail) tail->next = w;
    else head = w;
    tail = w;
    w->in_queue = true;
  }
  void unlink(chan_waiter* w) noexcept {
    if (w->prev) w->prev->next = w->next;
    else head = w->next;
    if (w->next) w->next->prev = w->prev;
    else tail = w->prev;
    w->in_queue = false;
  }
  // The oldest waiter that can still be taken, claimed for the caller; stale select nodes
  // and timed-out waiters met on the way are dropped (their owners find them unlinked).
  chan_waiter* take() noexcept {
    while (chan_waiter* w = head) {
      head = w->next;
      if (head) head->prev = nullptr;
      else tail = nullptr;
      w->in_queue = false;
      if (w->sole || rt::claim(*w->ws)) {
        w->ws->winner = w;
        return w;
      }
    }
    return nullptr;
  }
};

}  // namespace

// Laid out for the hot path: everything an uncontended send or receive touches (lock, ring
// state, element size, queue heads) is in the first two cache lines, which start on a line
// boundary; the reference count, touched when handles are copied, is out of the way.
struct chan_core {
  rt::spinlock lock;
  bool closed = false;
  std::atomic<std::size_t> count{0};  // written under lock; size() reads it without
  std::size_t recvx = 0;              // next slot to receive from
  std::size_t sendx = 0;              // next slot to send into
  std::size_t cap = 0;
  char* buf = nullptr;
  std::size_t esize = 0;
  const elem_ops* ops = nullptr;
  waitq recvq, sendq;
  void* mem = nullptr;  // the allocation this core was placed in
  alignas(64) std::atomic<std::uint32_t> refs{1};

  char* at(std::size_t i) const noexcept { return buf + i * esize; }
};

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

// The party we handed a value to, or took one from, is ours after the claim: complete it.
inline void release(chan_waiter* w, bool ok) noexcept {
  w->ok = ok;
  rt::finish(*w->ws);
}

void unlock_one(rt::fiber*, void* c) noexcept { static_cast<chan_core*>(c)->lock.unlock(); }

// A send under c's lock on an open channel. True: done, and if *peer is set the caller must
// (after unlocking) move the value into (*peer)->elem and release it.
inline bool send_locked(chan_core* c, void* v, chan_waiter** peer) noexcept {
  if (chan_waiter* w = c->recvq.take()) {  // a parked receiver: hand the value over directly
    *peer = w;
    return true;
  }
  const std::size_t n = c->count.load(std::memory_order_relaxed);
  if (n < c->cap) {
    move_elem(c->ops, c->at(c->sendx), v);
    if (++c->sendx == c->cap) c->sendx = 0;
    c->count.store(n + 1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

// A receive under c's lock that found a value. True: *dst holds it, or *peer is set and the
// caller must (after unlocking) move (*peer)->elem into *dst and release it.
inline bool recv_locked(chan_core* c, void* dst, chan_waiter** peer) noexcept {
  const std::size_t n = c->count.load(std::memory_order_relaxed);
  if (n > 0) {
    char* slot = c->at(c->recvx);
    move_elem(c->ops, dst, slot);
    destroy_elem(c->ops, slot);
    if (++c->recvx == c->cap) c->recvx = 0;
    // A parked sender means the buffer was full: its value takes the slot just freed, which
    // is now the tail (FIFO: it queued behind everything buffered).
    if (chan_waiter* w = c->sendq.take()) {
      move_elem(c->ops, slot, w->elem);
      c->sendx = c->recvx;
      w->ok = true;
      *peer = w;  // already moved: the caller only releases
      return true;
    }
    c->count.store(n - 1, std::memory_order_relaxed);
    return true;
  }
  if (chan_waiter* w = c->sendq.take()) {  // unbuffered: take it straight from the sender
    *peer = w;
    return true;
  }
  return false;
}

// After the lock: complete a hand-off found by recv_locked.
inline void recv_finish(chan_core* c, void* dst, chan_waiter* w) noexcept {
  if (c->cap == 0) move_elem(c->ops, dst, w->elem);
  release(w, true);
}

[[noreturn]] void throw_closed(const char* what) { throw closed_channel(what); }

}  // namespace

chan_core* chan_make(const elem_ops* ops, std::size_t capacity) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  const std::size_t hdr = sizeof(chan_core);
  if (capacity > (std::size_t{1} << 40) / ops->size)
    throw std::length_error("gort::chan: capacity " + std::to_string(capacity) + " is too large");
  // One block: the core on a cache-line boundary, then the ring aligned for the element
  // (blocks are 16-aligned; the extra alignment is found in spare bytes).
  void* mem = rt::alloc(64 + hdr + ops->align + capacity * ops->size);
  auto a = (reinterpret_cast<std::uintptr_t>(mem) + 63) & ~std::uintptr_t{63};
  auto* c = ::new (reinterpret_cast<void*>(a)) chan_core;
  c->mem = mem;
  c->ops = ops;
  c->esize = ops->size;
  c->cap = capacity;
  auto b = a + hdr;
  b = (b + ops->align - 1) & ~(std::uintptr_t{ops->align} - 1);
  c->buf = reinterpret_cast<char*>(b);
  return c;
}

void chan_retain(chan_core* c) noexcept { c->refs.fetch_add(1, std::memory_order_relaxed); }

// The last handle is gone, so nobody is blocked on the channel (a blocked party holds a
// handle): destroy what is still buffered and free the block.
void chan_release(chan_core* c) noexcept {
  if (c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // Element destructors are user code: they run outside the no-preemption bracket.
  const std::size_t n = c->count.load(std::memory_order_relaxed);
  for (std::size_t i = 0, x = c->recvx; i < n; ++i) {
    destroy_elem(c->ops, c->at(x));
    if (++x == c->cap) x = 0;
  }
  void* mem = c->mem;
  c->~chan_core();
  rt::nopreempt_scope np;
  rt::free_mem(mem);
}

chan_status chan_send(chan_core* c, void* v, std::int64_t deadline_ns) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  c->lock.lock();
  if (c->closed) {
    c->lock.unlock();
    throw_closed("gort::chan::send: send on a closed channel");
  }
  chan_waiter* peer = nullptr;
  if (send_locked(c, v, &peer)) {
    c->lock.unlock();
    if (peer) {
      move_elem(c->ops, peer->elem, v);
      release(peer, true);
    }
    return chan_status::ok;
  }
  if (deadline_ns < 0 || (deadline_ns > 0 && rt::nanotime() >= deadline_ns)) {
    c->lock.unlock();
    return chan_status::would_block;
  }
  rt::wait_state ws;
  chan_waiter w;
  w.ws = &ws;
  w.elem = v;
  w.sole = deadline_ns == 0;
  c->sendq.push(&w);
  if (rt::block(ws, deadline_ns, "chan send", {unlock_one, c})) {
    if (w.ok) return chan_status::ok;
    throw_closed("gort::chan::send: channel closed while sending");
  }
  c->lock.lock();
  if (w.in_queue) c->sendq.unlink(&w);
  c->lock.unlock();
  return chan_status::would_block;
}

chan_status chan_recv(chan_core* c, void* dst, std::int64_t deadline_ns) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  c->lock.lock();
  chan_waiter* peer = nullptr;
  if (recv_locked(c, dst, &peer)) {
    c->lock.unlock();
    if (peer) recv_finish(c, dst, peer);
    return chan_status::ok;
  }
  if (c->closed) {
    c->lock.unlock();
    return chan_status::closed;
  }
  if (deadline_ns < 0 || (deadline_ns > 0 && rt::nanotime() >= deadline_ns)) {
    c->lock.unlock();
    return chan_status::would_block;
  }
  rt::wait_state ws;
  chan_waiter w;
  w.ws = &ws;
  w.elem = dst;
  w.sole = deadline_ns == 0;
  c->recvq.push(&w);
  if (rt::block(ws, deadline_ns, "chan receive", {unlock_one, c}))
    return w.ok ? chan_status::ok : chan_status::closed;
  c->lock.lock();
  if (w.in_queue) c->recvq.unlink(&w);
  c->lock.unlock();
  return chan_status::would_block;
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
  // Claim every waiter under the lock, wake them after it (oldest first). Receivers find
  // nothing to drain: they only park on an empty buffer.
  chan_waiter* first = nullptr;
  chan_waiter** tail = &first;
  for (waitq* q : {&c->recvq, &c->sendq}) {
    while (chan_waiter* w = q->take()) {
      *tail = w;
      tail = &w->next;
    }
  }
  *tail = nullptr;
  c->lock.unlock();
  for (chan_waiter* w = first; w;) {
    chan_waiter* next = w->next;  // read first: a released waiter's memory may vanish
    release(w, false);
    w = next;
  }
}

std::size_t chan_size(const chan_core* c) noexcept { return c->count.load(std::memory_order_relaxed); }
std::size_t chan_capacity(const chan_core* c) noexcept { return c->cap; }

void chan_null(const char* op) {
  throw std::logic_error(std::string("gort::chan::") + op +
                         ": the handle refers to no channel (moved-from or null)");
}

// ---- select ---------------------------------------------------------------------------------

namespace {

// Fills order[0..n) with a uniformly random permutation (inside-out Fisher-Yates), drawing
// from a per-thread xorshift64*. One call per select, with no switch inside, so the
// thread-local is never cached across a G's migration (docs/design.md "Thread-local state").
[[gnu::noinline]] void select_order(std::uint32_t* order, std::size_t n) noexcept {
  static thread_local std::uint64_t state = 0;
  std::uint64_t s = state;
  if (s == 0) s = (reinterpret_cast<std::uintptr_t>(&state) ^ static_cast<std::uint64_t>(rt::nanotime())) | 1;
  order[0] = 0;
  for (std::size_t i = 1; i < n; ++i) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    const std::uint64_t r = (s * 0x2545F4914F6CDD1Dull) >> 32;  // 32 good bits
    const std::size_t j = (r * (i + 1)) >> 32;                  // uniform in [0, i]
    order[i] = static_cast<std::uint32_t>(i);
    std::swap(order[i], order[j]);
  }
  state = s;
}

struct lockset {
  chan_core** c;
  std::size_t n;
  void lock() const noexcept {
    for (std::size_t i = 0; i < n; ++i) c[i]->lock.lock();
  }
  void unlock() const noexcept {
    for (std::size_t i = n; i-- > 0;) c[i]->lock.unlock();
  }
};

// The unlock transition of a parked select. The lockset and its array live in the parked
// G's frame, and the first unlock lets a waker ready the G, which may then run on another M
// while this loop still reads them. That is safe because the G's first act on waking is to
// lock the set again starting with c[0], which is released last: until then its frame, and
// the array in it, stay as they are, and after that this loop reads nothing.
void unlock_set(rt::fiber*, void* arg) noexcept { static_cast<lockset*>(arg)->unlock(); }

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
  // with equal probability. Lock order: channel addresses, each channel once.
  scratch<std::uint32_t, 16> order(n);
  scratch<chan_core*, 16> chans(n);
  select_order(order.p, n);
  // Insertion sort, dropping duplicates: n is small, and this beats std::sort's set-up.
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

  ls.lock();
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t i = order[k];
    chan_core* c = cs[i].c;
    chan_waiter* peer = nullptr;
    if (cs[i].send) {
      if (c->closed) {
        ls.unlock();
        throw_closed("gort::select: send on a closed channel");
      }
      if (send_locked(c, cs[i].elem, &peer)) {
        ls.unlock();
        if (peer) {
          move_elem(c->ops, peer->elem, cs[i].elem);
          release(peer, true);
        }
        *ok = true;
        return i;
      }
    } else {
      if (recv_locked(c, cs[i].elem, &peer)) {
        ls.unlock();
        if (peer) recv_finish(c, cs[i].elem, peer);
        *ok = true;
        return i;
      }
      if (c->closed) {
        ls.unlock();
        return i;  // *ok false: closed and drained
      }
    }
  }
  if (nonblocking || (deadline_ns > 0 && rt::nanotime() >= deadline_ns)) {
    ls.unlock();
    return n;
  }

  rt::wait_state ws;
  scratch<chan_waiter, 8> nodes(n);
  for (std::size_t i = 0; i < n; ++i) {
    chan_waiter& w = *::new (&nodes[i]) chan_waiter;
    w.ws = &ws;
    w.elem = cs[i].elem;
    (cs[i].send ? cs[i].c->sendq : cs[i].c->recvq).push(&w);
  }
  const bool woken = rt::block(ws, deadline_ns, "select", {unlock_set, &ls});

  // Take back whatever nodes are still queued (all but the winner's, unless a waker dropped
  // them already); after this no waker can reach them.
  ls.lock();
  for (std::size_t i = 0; i < n; ++i) {
    chan_waiter& w = nodes[i];
    if (w.in_queue) (cs[i].send ? cs[i].c->sendq : cs[i].c->recvq).unlink(&w);
  }
  ls.unlock();
  if (!woken) return n;
  const auto* win = static_cast<chan_waiter*>(ws.winner);
  const std::size_t i = static_cast<std::size_t>(win - &nodes[0]);
  if (cs[i].send && !win->ok) throw_closed("gort::select: channel closed while sending");
  *ok = win->ok;
  return i;
}

}  // namespace gort::detail
