// gort: the intrusive FIFO of blocked parties, shared by channels (chan.cpp), the sync types
// (sync.cpp) and wait_group (api.cpp).
//
// A node lives on its blocked owner's stack and carries `next`, `prev` and `queued`. All
// operations run under the lock of the object the queue belongs to; the queue itself holds no
// lock and knows nothing of G or threads. Invariants (checked in debug builds):
//  - `queued` is true exactly while the node is linked into some queue;
//  - push requires an unqueued node, unlink a queued one (unlinking twice is a bug: the owner
//    checks `queued` under the lock, because a waker may have popped its node first);
//  - an unqueued node's `next` and `prev` belong to whoever popped it (a waker may chain popped
//    nodes through `next` to release them after unlocking).
//
// Where the ends live is a parameter: `waitq_ends` holds them (chan.cpp), `waitq_words` refers
// to two void* words a public header keeps without seeing the node type (sync.hpp, gort.hpp).
#pragma once

#include "check.hpp"
#include "wait.hpp"

namespace gort::rt {

template <class Node>
struct waitq_ends {
  Node* head = nullptr;
  Node* tail = nullptr;
};

template <class Node>
struct waitq_words {
  void*& head;
  void*& tail;
};

// The operations over either kind of ends. The ends (`head`, `tail`) are public for reading
// (an emptiness test); only these operations write them.
template <class Node, class Ends = waitq_ends<Node>>
struct waitq : Ends {
  static Node* node(Node* p) noexcept { return p; }
  static Node* node(void* p) noexcept { return static_cast<Node*>(p); }

  Node* first() const noexcept { return node(this->head); }
  bool empty() const noexcept { return this->head == nullptr; }

  void push_back(Node* n) noexcept {
    GORT_ASSERT(!n->queued, "waitq: push of a node that is already queued");
    n->next = nullptr;
    n->prev = node(this->tail);
    if (n->prev) n->prev->next = n;
    else this->head = n;
    this->tail = n;
    n->queued = true;
  }
  void push_front(Node* n) noexcept {
    GORT_ASSERT(!n->queued, "waitq: push of a node that is already queued");
    n->prev = nullptr;
    n->next = node(this->head);
    if (n->next) n->next->prev = n;
    else this->tail = n;
    this->head = n;
    n->queued = true;
  }
  void unlink(Node* n) noexcept {
    GORT_ASSERT(n->queued, "waitq: unlink of a node that is not queued");
    GORT_ASSERT(n->prev ? n->prev->next == n : first() == n, "waitq: node not linked where it says");
    if (n->prev) n->prev->next = n->next;
    else this->head = n->next;
    if (n->next) n->next->prev = n->prev;
    else this->tail = n->prev;
    n->next = n->prev = nullptr;
    n->queued = false;
  }
  Node* pop() noexcept {
    Node* n = first();
    if (!n) return nullptr;
    GORT_ASSERT(n->queued && !n->prev, "waitq: head node not marked queued, or not first");
    this->head = n->next;
    if (n->next) n->next->prev = nullptr;
    else this->tail = nullptr;
    n->queued = false;
    return n;
  }
  // Empties the queue in O(1) and hands the whole chain, oldest first through `next`, to the
  // caller, which then owns the nodes: they stay marked queued until it clears each one (for
  // waiters with no deadline, whose owners never look at `queued`, this may be after unlocking).
  Node* detach_all() noexcept {
    Node* n = first();
    this->head = nullptr;
    this->tail = nullptr;
    return n;
  }
  // The oldest node that `take(n)` accepts, unlinked; the rejected ones met on the way are
  // dropped too (their owners find them unqueued and leave). Null if none.
  template <class Take>
  Node* pop_if(Take take) noexcept {
    while (Node* n = pop())
      if (take(n)) return n;
    return nullptr;
  }
  // pop_if for nodes carrying a wait_state `ws`: the oldest one this waker could claim.
  Node* pop_claim() noexcept {
    return pop_if([](Node* n) { return claim(n->ws); });
  }
};

// Nodes claimed under a queue lock and woken after it is released. A woken party may destroy the
// object the queue belongs to at once (a semaphore freed by the waiter its release let in), so
// a waker gathers the nodes under the lock, finishes the object's business, unlocks, and only
// then calls release(): from the first finish on it touches nothing but the chain, reading each
// node's `next` before waking it.
// A node's wait_state is its `ws` member, held in place or by pointer.
inline wait_state& state_of(wait_state& ws) noexcept { return ws; }
inline wait_state& state_of(wait_state* ws) noexcept { return *ws; }

template <class Node>
struct wake_chain {
  Node* first = nullptr;
  Node** last = &first;

  void add(Node* n) noexcept {
    n->next = nullptr;
    *last = n;
    last = &n->next;
  }
  bool empty() const noexcept { return first == nullptr; }
  void release() noexcept {
    for (Node* n = first; n;) {
      Node* next = n->next;
      finish(state_of(n->ws));
      n = next;
    }
    first = nullptr;
    last = &first;
  }
};

}  // namespace gort::rt
