// gort: the out-of-line half of include/gort/sync.hpp — mutex, shared_mutex,
// condition_variable, semaphore, once_flag, latch, barrier.
//
// Every type keeps a FIFO of waiter nodes guarded by its own spin lock (`qlock_`). A node lives
// on the blocked caller's stack (no allocation) and carries an rt::wait_state: the waker claims
// it (under qlock_), the deadline may time it out, exactly one wins. The common park protocol:
//
//   spin_lock(qlock_); re-check the condition; publish intent in the state word; enqueue node;
//   rt::block(node.ws, deadline, reason, unlock qlock_)   // released once we are off our stack
//
// so a waker, which takes qlock_ to find the node, never sees a G that is still running. A
// waiter whose deadline won is still queued unless a waker popped it first and lost the claim;
// wakers pop under qlock_ and clear `queued`, so the timed-out owner takes qlock_ and unlinks
// itself only if still queued. A waker that loses a claim just moves on to the next node.
#include "gort/sync.hpp"

#include <exception>
#include <thread>

#include "g.hpp"
#include "sched.hpp"
#include "proc.hpp"
#include "wait.hpp"
#include "waitq.hpp"

namespace gort {

namespace {

struct wnode {
  rt::wait_state ws;
  wnode* next = nullptr;
  wnode* prev = nullptr;
  bool queued = false;
  bool writer = false;  // shared_mutex: a writer (else a reader)
};

// The FIFO over a type's head_/tail_ words (kept as void* in the public header). All calls
// under the owner's qlock_.
using wqueue = rt::waitq<wnode, rt::waitq_words<wnode>>;

// The abandon_hook (g.hpp) of a G parked through park_on: shutdown takes its node off the
// queue and then, still under the queue lock, lets `unlinked` undo what the wait meant to the
// type's state word (a registered waiter count, a pending bit).
struct park_hook : rt::abandon_hook {
  std::atomic<std::uint32_t>* ql;
  wqueue q;
  wnode* n;
  void (*unlinked)(park_hook*) noexcept;
  void* state;
};
void park_detach(rt::abandon_hook* h) noexcept {
  auto* ph = static_cast<park_hook*>(h);
  rt::spin_lock(*ph->ql);
  if (ph->n->queued) {
    ph->q.unlink(ph->n);
    if (ph->unlinked) ph->unlinked(ph);
  }
  rt::spin_unlock(*ph->ql);
}

// Blocks on n (queued on q under ql, which the caller holds, in the object at `obj`); ql is
// released once committed.
bool park_on(wnode& n, std::atomic<std::uint32_t>& ql, wqueue q, const void* obj, std::int64_t deadline,
             const char* reason, void (*unlinked)(park_hook*) noexcept = nullptr, void* state = nullptr) {
  park_hook h{{park_detach, obj}, &ql, q, &n, unlinked, state};
  rt::queued_scope qs(&h);
  return rt::block(n.ws, deadline, reason, rt::unlocking(ql));
}

struct qguard {
  std::atomic<std::uint32_t>& l;
  explicit qguard(std::atomic<std::uint32_t>& x) noexcept : l(x) { rt::spin_lock(l); }
  ~qguard() { rt::spin_unlock(l); }
  qguard(const qguard&) = delete;
  qguard& operator=(const qguard&) = delete;
};

[[noreturn]] void not_permitted(const char* what) {
  throw std::system_error(std::make_error_code(std::errc::operation_not_permitted), what);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// mutex: Go's sync.Mutex protocol on one word, with our own wait queue in place of Go's
// semaphore.
//
//   locked   owned by someone
//   woken    a waiter has been woken (or a spinner announced itself) and will retry: unlock
//            need not wake another. Whoever holds the bit clears it in its next state CAS.
//   starving unlock hands the lock to the queue's head; nobody else may take it
//   waiters  the queue is not empty (changed only under the queue lock)
//   qlock    the queue lock: guards head_/tail_ and the nodes' links
//
// The queue lock is a bit of the same word, so that releasing the mutex is always the last
// touch of its memory: an unlock that must wake someone takes qlock while still holding
// `locked`, picks the waiter, and then clears `locked` and `qlock` in one CAS; it wakes the
// waiter through the node on the waiter's stack, never through the mutex. So, as with
// std::mutex, a mutex may be destroyed by whoever locks it last as soon as it unlocks, even
// while the previous owner is still returning from unlock(). (A spinner sets `woken` only
// while qlock is clear, so `woken` cannot change under an unlocker's qlock.)
//
// Lost wake-ups: a locker sets `waiters` with a CAS that requires `locked` (or `starving`),
// under qlock, and keeps qlock until parked; an unlocker clears `locked` with a CAS, and wakes
// if it saw `waiters` (and no `woken`). The CASes on the word are totally ordered, so either
// the unlocker sees `waiters` (and then finds the node, since it takes qlock), or the locker's
// CAS fails and it re-reads an unlocked mutex and takes it.
//
// Starvation: a waiter woken in normal mode competes with running lockers, which usually win
// (they are on CPU). One that has waited more than 1 ms re-queues at the head and sets
// `starving`; from then on unlock keeps `locked` set and hands ownership to the head waiter
// directly (FIFO, the winner marked by ws.winner), and new lockers queue at the tail. The
// mode ends when the queue drains or a handed-off waiter had waited less than 1 ms. `starving`
// is only ever set together with `locked`, and every path that clears `locked` in starving mode
// also clears `starving`, so the mutex is never "starving, unlocked, with no one to hand it on".

namespace {
constexpr std::uint32_t m_locked = 1, m_woken = 2, m_starving = 4, m_waiters = 8, m_qlock = 16;
constexpr std::int64_t starve_ns = 1'000'000;
char handoff_tag;  // ws.winner of a waiter that was handed the lock

void spin_pause() noexcept {
  for (int i = 0; i < 30; ++i) rt::cpu_relax();
}

// Takes the queue lock bit; returns the state word with it set.
std::uint32_t qlock_bit(std::atomic<std::uint32_t>& st) noexcept {
  std::uint32_t old = st.load(std::memory_order_relaxed);
  for (;;) {
    if (old & m_qlock) {
      rt::cpu_relax();
      old = st.load(std::memory_order_relaxed);
      continue;
    }
    if (st.compare_exchange_weak(old, old | m_qlock, std::memory_order_acquire, std::memory_order_relaxed))
      return old | m_qlock;
  }
}
void qunlock_commit(rt::fiber*, void* st) {
  static_cast<std::atomic<std::uint32_t>*>(st)->fetch_and(~m_qlock, std::memory_order_release);
}

// The abandon_hook of a G parked in lock (g.hpp). Shutdown takes its node off the queue; a G
// that an unlock had already woken, but that never ran again, gives back the `woken` bit that
// unlock set for it (else later unlocks would wait for its retry and wake nobody), and one that
// was handed the lock (starvation mode) keeps it: the mutex stays locked, by an abandoned G,
// until someone unlocks it.
struct mutex_hook : rt::abandon_hook {
  std::atomic<std::uint32_t>* st;
  wnode* n;
  wqueue q;
};
void mutex_detach(rt::abandon_hook* h) noexcept {
  auto* mh = static_cast<mutex_hook*>(h);
  qlock_bit(*mh->st);
  std::uint32_t clear = m_qlock;
  if (mh->n->queued) mh->q.unlink(mh->n);
  else if (mh->n->ws.v.load(std::memory_order_acquire) == rt::wait_state::done && mh->n->ws.winner != &handoff_tag)
    clear |= m_woken;
  if (mh->q.empty()) clear |= m_waiters | m_starving;
  mh->st->fetch_and(~clear, std::memory_order_release);
}
}  // namespace

bool mutex::lock_slow(std::int64_t deadline) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  std::int64_t wait_start = 0;
  bool starving = false, awoke = false;
  int iter = 0;
  std::uint32_t old = state_.load(std::memory_order_relaxed);
  for (;;) {
    if ((old & (m_locked | m_starving)) == m_locked && rt::can_spin(iter)) {
      // Tell unlock not to wake a waiter: we are about to take it ourselves.
      if (!awoke && !(old & (m_woken | m_qlock)) && (old & m_waiters) &&
          state_.compare_exchange_weak(old, old | m_woken, std::memory_order_relaxed))
        awoke = true;
      spin_pause();
      ++iter;
      old = state_.load(std::memory_order_relaxed);
      continue;
    }
    if (!(old & (m_locked | m_starving))) {
      const std::uint32_t nw = (old | m_locked) & ~(awoke ? m_woken : 0u);
      if (state_.compare_exchange_weak(old, nw, std::memory_order_acquire, std::memory_order_relaxed))
        return true;
      continue;
    }
    if (deadline && rt::nanotime() >= deadline) {
      if (awoke) state_.fetch_and(~m_woken, std::memory_order_relaxed);
      return false;
    }
    old = qlock_bit(state_);
    bool free_now = false;
    for (;;) {
      if (!(old & (m_locked | m_starving))) {
        free_now = true;
        break;
      }
      std::uint32_t nw = old | m_waiters;
      if (awoke) nw &= ~m_woken;
      if (starving && (old & m_locked)) nw |= m_starving;
      if (state_.compare_exchange_weak(old, nw, std::memory_order_relaxed)) break;
    }
    if (free_now) {
      // Still owning `woken` if awoke (cleared when we take the lock).
      old = state_.fetch_and(~m_qlock, std::memory_order_release) & ~m_qlock;
      continue;
    }
    awoke = false;  // the CAS above gave `woken` back
    wnode n;
    // A waiter that was woken and lost the race goes back to the front (Go's LIFO requeue):
    // it has waited longest.
    if (wait_start) q.push_front(&n);
    else q.push_back(&n);
    if (!wait_start) wait_start = rt::nanotime();
    bool woken;
    {
      mutex_hook h{{mutex_detach, this}, &state_, &n, {{head_, tail_}}};
      rt::queued_scope qs(&h);
      woken = rt::block(n.ws, deadline, "mutex", {qunlock_commit, &state_});
    }
    if (!woken) {
      qlock_bit(state_);
      std::uint32_t clear = m_qlock;
      if (n.queued) {
        q.unlink(&n);
        if (q.empty()) clear |= m_waiters | m_starving;
      }
      state_.fetch_and(~clear, std::memory_order_release);
      return false;
    }
    starving = starving || rt::nanotime() - wait_start > starve_ns;
    if (n.ws.winner == &handoff_tag) {
      // Handed off: `locked` was kept set for us. Leave starvation mode if we did not starve.
      if (!starving) state_.fetch_and(~m_starving, std::memory_order_relaxed);
      return true;
    }
    awoke = true;  // unlock set `woken` for us
    iter = 0;
    old = state_.load(std::memory_order_relaxed);
  }
}

bool mutex::unlock_quiet() {
  wqueue q{{head_, tail_}};
  std::uint32_t old = state_.load(std::memory_order_relaxed);
  for (;;) {
    if (!(old & m_locked)) not_permitted("gort::mutex::unlock: the mutex is not locked");
    const bool starving = old & m_starving;
    if (!starving && (!(old & m_waiters) || (old & m_woken))) {
      // Nobody to wake: the release is all.
      if (state_.compare_exchange_weak(old, old & ~m_locked, std::memory_order_release, std::memory_order_relaxed))
        return false;
      continue;
    }
    // Someone to wake or hand the lock to: take the queue lock first, still holding `locked`.
    if (old & m_qlock) {
      rt::cpu_relax();
      old = state_.load(std::memory_order_relaxed);
      continue;
    }
    if (!state_.compare_exchange_weak(old, old | m_qlock, std::memory_order_acquire, std::memory_order_relaxed))
      continue;
    wnode* n = q.pop_claim();
    if (n && starving) n->ws.winner = &handoff_tag;
    // One CAS releases what must go (the queue lock; `locked` unless handed off), and is our
    // last touch of the mutex. Nobody else changes `woken` while we hold the queue lock, and
    // `starving` stays (the lock stays held) unless the queue is empty.
    old |= m_qlock;
    std::uint32_t nw;
    do {
      nw = old & ~m_qlock;
      if (!(n && starving)) nw &= ~m_locked;
      if (n && !starving) nw |= m_woken;  // it retries the lock (normal mode)
      if (q.empty()) nw &= ~(m_waiters | m_starving);
    } while (!state_.compare_exchange_weak(old, nw, std::memory_order_release, std::memory_order_relaxed));
    if (n) rt::finish(n->ws);  // handed off: our critical section happens-before its
    return n && starving;
  }
}

void mutex::unlock_slow() {
  bool handed;
  {
    rt::nopreempt_scope np;
    handed = unlock_quiet();
  }
  // As Go: let the new owner run now rather than after our time slice (it is in our runnext).
  if (handed && rt::getg()) rt::yield_g();
}

// ---------------------------------------------------------------------------------------------
// shared_mutex. state_: writer bit, pending bit (queue not empty), reader count from bit 2.
//
// Fast paths never take a queued mutex: they require !pending (and a writer needs state 0).
// So while the queue is non-empty, the state changes only under qlock_ or by releases
// (readers leaving, a writer leaving), and grant() — run under qlock_ by whoever releases
// with `pending` seen, and after a timeout — decides who goes next. After every grant the
// queue is empty or someone holds the lock, whose release will grant again; a release that
// made the lock free and saw `pending` always goes on to grant.

namespace {
constexpr std::uint64_t rw_writer = 1, rw_pending = 2, rw_reader = 4;

// Lets in whoever may go now; the caller finishes `woken` after releasing the queue lock.
void rw_grant(std::atomic<std::uint64_t>& st, wqueue& q, rt::wake_chain<wnode>& woken) noexcept {
  while (wnode* n = q.first()) {
    const std::uint64_t s = st.load(std::memory_order_relaxed);
    if (n->writer) {
      if (s & ~rw_pending) break;  // held: its release grants
      q.pop();
      if (!rt::claim(n->ws)) continue;
      st.fetch_or(rw_writer, std::memory_order_acquire);
      woken.add(n);
      break;
    }
    if (s & rw_writer) break;
    q.pop();
    if (!rt::claim(n->ws)) continue;
    st.fetch_add(rw_reader, std::memory_order_acquire);  // readers at the front go in together
    woken.add(n);
  }
  if (q.empty()) st.fetch_and(~rw_pending, std::memory_order_release);
}
}  // namespace

namespace {
// An abandoned waiter left the queue (park_detach): with nobody queued, nobody is pending.
void rw_unlinked(park_hook* h) noexcept {
  if (h->q.empty()) static_cast<std::atomic<std::uint64_t>*>(h->state)->fetch_and(~rw_pending, std::memory_order_relaxed);
}

// The slow path of both lock kinds. A writer needs the lock free, a reader only no writer; and
// either waits if anyone is queued (FIFO, so a writer never starves behind a stream of
// readers). Queued with `pending` set, it is let in by rw_grant.
bool rw_lock_slow(std::atomic<std::uint64_t>& st, wqueue q, std::atomic<std::uint32_t>& ql, bool writer,
                  std::int64_t deadline) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  const std::uint64_t in_the_way = writer ? ~rw_pending : rw_writer;
  const std::uint64_t mine = writer ? rw_writer : rw_reader;
  rt::spin_lock(ql);
  std::uint64_t s = st.load(std::memory_order_relaxed);
  for (;;) {
    if (!(s & in_the_way) && q.empty()) {
      if (st.compare_exchange_weak(s, (s + mine) & ~rw_pending, std::memory_order_acquire,
                                   std::memory_order_relaxed)) {
        rt::spin_unlock(ql);
        return true;
      }
      continue;
    }
    if (st.compare_exchange_weak(s, s | rw_pending, std::memory_order_relaxed)) break;
  }
  if (deadline && rt::nanotime() >= deadline) {
    if (q.empty()) st.fetch_and(~rw_pending, std::memory_order_relaxed);
    rt::spin_unlock(ql);
    return false;
  }
  wnode n;
  n.writer = writer;
  q.push_back(&n);
  if (park_on(n, ql, q, &st, deadline, "rwmutex", rw_unlinked, &st)) return true;  // granted: rw_grant added us to state
  rt::wake_chain<wnode> woken;
  {
    qguard g(ql);
    if (n.queued) {
      q.unlink(&n);
      rw_grant(st, q, woken);  // those queued behind us may be free to go now
    }
  }
  woken.release();
  return false;
}
}  // namespace

bool shared_mutex::lock_slow(std::int64_t deadline) {
  return rw_lock_slow(state_, wqueue{{head_, tail_}}, qlock_, true, deadline);
}

bool shared_mutex::lock_shared_slow(std::int64_t deadline) {
  return rw_lock_slow(state_, wqueue{{head_, tail_}}, qlock_, false, deadline);
}

void shared_mutex::unlock() {
  std::uint64_t s = state_.load(std::memory_order_relaxed);
  do {
    if (!(s & rw_writer)) not_permitted("gort::shared_mutex::unlock: not locked for writing");
  } while (!state_.compare_exchange_weak(s, s & ~rw_writer, std::memory_order_release,
                                         std::memory_order_relaxed));
  if (!(s & rw_pending)) return;
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  rt::wake_chain<wnode> woken;
  {
    qguard g(qlock_);
    rw_grant(state_, q, woken);
  }
  woken.release();  // after the unlock: one let in may destroy the mutex at once
}

void shared_mutex::unlock_shared() {
  std::uint64_t s = state_.load(std::memory_order_relaxed);
  do {
    if (s < rw_reader) not_permitted("gort::shared_mutex::unlock_shared: not locked for reading");
  } while (!state_.compare_exchange_weak(s, s - rw_reader, std::memory_order_release,
                                         std::memory_order_relaxed));
  s -= rw_reader;
  if (s >= rw_reader || !(s & rw_pending)) return;
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  rt::wake_chain<wnode> woken;
  {
    qguard g(qlock_);
    rw_grant(state_, q, woken);
  }
  woken.release();  // after the unlock: one let in may destroy the mutex at once
}

// ---------------------------------------------------------------------------------------------
// condition_variable. The waiter enqueues before it unlocks the mutex (a notify after the
// unlock must find it), but it cannot block until the mutex is unlocked, and unlocking under
// qlock_ would nest the mutex's queue lock and wakes inside ours. So it waits in two steps:
// enqueue (node published with no G yet); unlock the mutex; take qlock_ again and, if no notify
// claimed the node meanwhile, block. rt::block records the G before qlock_ is released and
// notifiers claim only under qlock_, so a notifier either claims a node whose G is recorded, or
// one with no G, which the waiter then finds claimed under qlock_; notifiers finish after
// unlocking (wake_chain), so that waiter stays until finish() has stored `done` (await_finish).

bool condition_variable::wait_impl(std::unique_lock<mutex>& lk, std::int64_t deadline) {
  if (!lk.owns_lock())
    not_permitted("gort::condition_variable::wait: the unique_lock does not hold its mutex");
  rt::preempt_check();
  mutex* mu = lk.mutex();
  bool woke;
  {
    rt::nopreempt_scope np;
    wqueue q{{head_, tail_}};
    wnode n;
    rt::spin_lock(qlock_);
    q.push_back(&n);
    rt::spin_unlock(qlock_);
    try {
      mu->unlock_quiet();
    } catch (...) {
      qguard g(qlock_);
      if (n.queued) q.unlink(&n);
      throw;
    }
    rt::spin_lock(qlock_);
    if (n.ws.v.load(std::memory_order_acquire) == rt::wait_state::pending) {
      woke = park_on(n, qlock_, q, this, deadline, "condition_variable");
      if (!woke) {
        qguard g(qlock_);
        if (n.queued) q.unlink(&n);
      }
    } else {
      rt::spin_unlock(qlock_);
      rt::await_finish(n.ws);  // the notifier may still be walking its chain through n
      woke = true;
    }
  }
  mu->lock();
  return woke;
}

// The woken are finished after qlock_ is released (wake_chain): one may destroy the condition
// variable as soon as it runs.
void condition_variable::notify_one() noexcept {
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  rt::wake_chain<wnode> woken;
  {
    qguard g(qlock_);
    if (wnode* n = q.pop_claim()) woken.add(n);
  }
  woken.release();
}

void condition_variable::notify_all() noexcept {
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  rt::wake_chain<wnode> woken;
  {
    qguard g(qlock_);
    while (wnode* n = q.pop_claim()) woken.add(n);
  }
  woken.release();
}

// ---------------------------------------------------------------------------------------------
// semaphore. state_: queued waiters (high 32 bits) | units (low 32). A waiter registers in
// the high half with a CAS that requires zero units, under qlock_, and stays under qlock_ until
// parked; a fast release adds units with a CAS that requires zero waiters. So a release either
// adds units no waiter is about to miss, or sees waiters and takes qlock_ to hand units to the
// queue (FIFO) first. The waiter count is the queue length: whoever unlinks a node drops it.

namespace {
constexpr std::uint64_t sem_waiter = std::uint64_t{1} << 32;
// An abandoned waiter left the queue (park_detach): it is no longer counted.
void sem_unlinked(park_hook* h) noexcept {
  static_cast<std::atomic<std::uint64_t>*>(h->state)->fetch_sub(sem_waiter, std::memory_order_relaxed);
}
}

bool semaphore::acquire_slow(std::int64_t deadline) {
  rt::preempt_check();
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  rt::spin_lock(qlock_);
  std::uint64_t s = state_.load(std::memory_order_relaxed);
  for (;;) {
    if (s & count_mask) {
      if (state_.compare_exchange_weak(s, s - 1, std::memory_order_acquire, std::memory_order_relaxed)) {
        rt::spin_unlock(qlock_);
        return true;
      }
      continue;
    }
    if (deadline && rt::nanotime() >= deadline) {
      rt::spin_unlock(qlock_);
      return false;
    }
    if (state_.compare_exchange_weak(s, s + sem_waiter, std::memory_order_relaxed)) break;
  }
  wnode n;
  q.push_back(&n);
  if (park_on(n, qlock_, q, this, deadline, "semaphore", sem_unlinked, &state_)) return true;  // a unit was handed to us
  qguard g(qlock_);
  if (n.queued) {
    q.unlink(&n);
    state_.fetch_sub(sem_waiter, std::memory_order_relaxed);
  }
  return false;
}

void semaphore::release(std::ptrdiff_t n) {
  if (n < 0 || n > max()) throw std::invalid_argument("gort::semaphore::release: count out of range [0, max()]");
  if (n == 0) return;
  rt::preempt_check();
  const auto add = static_cast<std::uint64_t>(n);
  auto add_units = [this](std::uint64_t k, bool need_no_waiters) {
    std::uint64_t s = state_.load(std::memory_order_relaxed);
    for (;;) {
      if (need_no_waiters && s >= sem_waiter) return false;
      if ((s & count_mask) + k > static_cast<std::uint64_t>(max()))
        throw std::invalid_argument("gort::semaphore::release: count would exceed max()");
      if (state_.compare_exchange_weak(s, s + k, std::memory_order_release, std::memory_order_relaxed))
        return true;
    }
  };
  if (add_units(add, true)) return;
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  std::uint64_t left = add;
  // Waiters handed a unit are finished only after everything else is done (wake_chain).
  rt::wake_chain<wnode> woken;
  std::exception_ptr err;
  {
    qguard g(qlock_);
    while (left) {
      wnode* w = q.pop();
      if (!w) break;
      state_.fetch_sub(sem_waiter, std::memory_order_relaxed);
      if (!rt::claim(w->ws)) continue;  // timed out: it leaves without a unit
      woken.add(w);
      --left;
    }
    if (left) {
      try {
        add_units(left, false);
      } catch (...) {
        err = std::current_exception();  // the waiters claimed above still get their units
      }
    }
  }
  woken.release();
  if (err) std::rethrow_exception(err);
}

// ---------------------------------------------------------------------------------------------
// once_flag. state_ 0 -> 1 (a caller runs f) -> 2 (done) or back to 0 (f threw). Waiters park
// while it is 1; the runner's finish() changes the state and wakes them under qlock_, and a
// waiter re-checks the state under qlock_ before parking, so none sleeps through the finish.

bool once_flag::begin() {
  rt::preempt_check();
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  for (;;) {
    std::uint32_t s = state_.load(std::memory_order_acquire);
    if (s == 2) return false;
    if (s == 0) {
      if (state_.compare_exchange_strong(s, 1, std::memory_order_acquire, std::memory_order_relaxed))
        return true;
      continue;
    }
    rt::spin_lock(qlock_);
    if (state_.load(std::memory_order_acquire) != 1) {
      rt::spin_unlock(qlock_);
      continue;
    }
    wnode n;
    q.push_back(&n);
    park_on(n, qlock_, q, this, 0, "once");
  }
}

void once_flag::finish(bool ok) noexcept {
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  rt::wake_chain<wnode> woken;
  {
    qguard g(qlock_);
    state_.store(ok ? 2 : 0, std::memory_order_release);
    // All of them: after a failure they race to run f again, one wins, the rest wait again.
    while (wnode* n = q.pop_claim()) woken.add(n);
  }
  woken.release();  // after the unlock: a woken caller may destroy the flag at once
}

// ---------------------------------------------------------------------------------------------
// latch. state_: count (high 32) | registered waiters (low 32), as wait_group. A waiter
// registers with a CAS that requires count > 0, under qlock_, and stays under qlock_ until
// parked. The count_down that reaches zero learns how many registered: with none it is done
// and never touches the latch again; with w it takes the w nodes off the queue, and only then
// subtracts w, its last touch of the latch, before waking them. A wait() that finds count 0
// with waiters still registered spins until they are subtracted, so it cannot return (and let
// its caller destroy the latch) while that count_down still uses it.

namespace {
// An abandoned waiter left the queue (park_detach): it is no longer registered.
void latch_unlinked(park_hook* h) noexcept {
  static_cast<std::atomic<std::uint64_t>*>(h->state)->fetch_sub(1, std::memory_order_release);
}
}  // namespace

void latch::count_down(std::ptrdiff_t n) {
  if (n < 0 || n > max()) throw std::invalid_argument("gort::latch::count_down: update out of range [0, max()]");
  const std::uint64_t d = static_cast<std::uint64_t>(n) << 32;
  std::uint64_t s = state_.load(std::memory_order_relaxed);
  do {
    if ((s >> 32) < static_cast<std::uint64_t>(n))
      throw std::invalid_argument("gort::latch::count_down: the count would go below zero");
  } while (!state_.compare_exchange_weak(s, s - d, std::memory_order_acq_rel, std::memory_order_relaxed));
  s -= d;
  const auto w = static_cast<std::uint32_t>(s);
  if ((s >> 32) != 0 || w == 0 || n == 0) return;
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  wnode* list;
  {
    qguard g(qlock_);
    list = q.detach_all();  // all w registered waiters are queued: each held qlock_ from its CAS to its park
  }
  state_.fetch_sub(w, std::memory_order_release);
  for (wnode* x = list; x;) {
    wnode* next = x->next;  // x's memory may vanish once it is finished
    x->queued = false;
    if (rt::claim(x->ws)) rt::finish(x->ws);
    x = next;
  }
}

void latch::wait() const {
  std::uint64_t s = state_.load(std::memory_order_acquire);
  if ((s >> 32) != 0) {
    rt::preempt_check();
    rt::nopreempt_scope np;
    wqueue q{{head_, tail_}};
    rt::spin_lock(qlock_);
    s = state_.load(std::memory_order_acquire);
    while ((s >> 32) != 0) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        wnode n;
        q.push_back(&n);
        park_on(n, qlock_, q, this, 0, "latch", latch_unlinked, &state_);
        return;
      }
    }
    rt::spin_unlock(qlock_);
  }
  // Count is zero: wait out a count_down still waking registered waiters (see above).
  for (int i = 0; static_cast<std::uint32_t>(state_.load(std::memory_order_acquire)) != 0; ++i) {
    if (i < 64) rt::cpu_relax();
    else gort::yield();
  }
}

// ---------------------------------------------------------------------------------------------
// barrier. Everything under qlock_: remaining arrivals this phase, the phase number, and the
// waiters of the current phase. The last arrival runs the completion without the lock (it may
// take long, even block), then advances the phase and wakes the waiters after releasing the
// lock; a waiter checks the phase under the lock before parking, so none misses the advance.
// The lock release is the last touch of the barrier, and waiters wake only after it.

namespace detail {

barrier_core::barrier_core(std::ptrdiff_t expected) {
  if (expected < 0 || expected > 0x7fffffff)
    throw std::invalid_argument("gort::barrier: expected count out of range [0, max()]");
  expected_ = remaining_ = expected;
}

std::uint64_t barrier_core::arrive(std::ptrdiff_t n, bool drop, void (*complete)(void*), void* ctx) {
  if (n <= 0) throw std::invalid_argument("gort::barrier::arrive: update must be positive");
  rt::preempt_check();
  std::uint64_t phase;
  bool last;
  {
    rt::nopreempt_scope np;
    qguard g(qlock_);
    if (n > remaining_)
      throw std::invalid_argument("gort::barrier::arrive: more arrivals than expected in this phase");
    phase = phase_;
    remaining_ -= n;
    if (drop) expected_ -= n;
    last = remaining_ == 0;
  }
  if (!last) return phase;
  auto advance = [this] {
    rt::nopreempt_scope np;
    wnode* list;
    {
      qguard g(qlock_);
      remaining_ = expected_;
      ++phase_;
      list = wqueue{{head_, tail_}}.detach_all();
    }
    for (wnode* x = list; x;) {
      wnode* next = x->next;
      x->queued = false;
      if (rt::claim(x->ws)) rt::finish(x->ws);
      x = next;
    }
  };
  try {
    complete(ctx);
  } catch (...) {
    advance();  // release the waiters anyway; the exception goes to the last arriver
    throw;
  }
  advance();
  return phase;
}

void barrier_core::wait(std::uint64_t phase) const {
  rt::preempt_check();
  rt::nopreempt_scope np;
  wqueue q{{head_, tail_}};
  rt::spin_lock(qlock_);
  if (phase_ != phase) {
    rt::spin_unlock(qlock_);
    return;
  }
  wnode n;
  q.push_back(&n);
  park_on(n, qlock_, q, this, 0, "barrier");
}

}  // namespace detail

}  // namespace gort
