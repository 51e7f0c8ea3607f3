// gort: static_vec, a growable array with a trivial destructor, for the lists inside the global
// `sched` (Ms, Gs, Ps, steal strides).
//
// Why not std::vector: exit() (from a G, or from any thread while a runtime runs) destroys
// objects of static storage duration while the Ms keep running; a std::vector inside `sched`
// was freed under them (a SIGSEGV instead of the exit status asked for). A static_vec is never
// destroyed: boot.cpp's teardown frees its memory with reset(), after every M has exited.
// Elements are trivially copyable (pointers and integers), moved with memcpy on growth. Memory
// comes from the runtime's allocator (alloc.hpp).
#pragma once

#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "check.hpp"
#include "lock.hpp"

namespace gort::rt {

// alloc.hpp: the runtime's allocator (mimalloc, not the program's malloc, whose locks a G
// stopped for preemption may hold).
void* alloc(std::size_t n);
void free_mem(void* ptr) noexcept;

template <class T>
class static_vec {
  static_assert(std::is_trivially_copyable_v<T>, "static_vec holds pointers and integers");

 public:
  using iterator = T*;
  using const_iterator = const T*;

  std::size_t size() const noexcept { return n_; }
  bool empty() const noexcept { return n_ == 0; }
  T* begin() noexcept { return p_; }
  T* end() noexcept { return p_ + n_; }
  const T* begin() const noexcept { return p_; }
  const T* end() const noexcept { return p_ + n_; }
  T& operator[](std::size_t i) noexcept {
    GORT_ASSERT(i < n_, "static_vec: index %zu of %zu", i, n_);
    return p_[i];
  }
  const T& operator[](std::size_t i) const noexcept {
    GORT_ASSERT(i < n_, "static_vec: index %zu of %zu", i, n_);
    return p_[i];
  }
  T& back() noexcept { return (*this)[n_ - 1]; }

  // Throws std::bad_alloc when the array cannot grow (the caller's state is unchanged).
  void push_back(T v) {
    if (n_ == cap_) {
      const std::size_t cap = cap_ ? 2 * cap_ : 16;
      void* q = alloc(cap * sizeof(T));  // throws std::bad_alloc
      if (n_) std::memcpy(q, p_, n_ * sizeof(T));
      free_mem(p_);
      p_ = static_cast<T*>(q);
      cap_ = cap;
    }
    p_[n_++] = v;
  }
  // For an array guarded by a runtime spinlock `l`, which the caller holds: appends v and
  // returns its index, growing the array with `l` released, since no allocation may run under a
  // runtime lock (a G stopped for preemption inside malloc may hold the allocator's lock, and
  // everyone who then wants `l` would wait for that G: docs/design.md, "The M factory"). `l` is
  // held again on return, also when this throws std::bad_alloc (array unchanged).
  template <class Lock>
  std::size_t push_back_unlocked_growth(T v, Lock& l) GORT_NO_TSA {
    while (n_ == cap_) {
      const std::size_t cap = cap_ ? 2 * cap_ : 16;
      l.unlock();
      void* q;
      try {
        q = alloc(cap * sizeof(T));
      } catch (...) {
        l.lock();
        throw;
      }
      l.lock();
      void* old = q;
      if (cap_ < cap) {  // nobody grew it meanwhile
        if (n_) std::memcpy(q, p_, n_ * sizeof(T));
        old = p_;
        p_ = static_cast<T*>(q);
        cap_ = cap;
      }
      l.unlock();
      free_mem(old);
      l.lock();
    }
    p_[n_] = v;
    return n_++;
  }
  void pop_back() noexcept {
    GORT_ASSERT(n_ > 0, "static_vec: pop_back of an empty array");
    --n_;
  }
  // Removes the element at `at` (order kept).
  void erase(T* at) noexcept {
    GORT_ASSERT(at >= p_ && at < p_ + n_, "static_vec: erase outside the array");
    std::memmove(at, at + 1, static_cast<std::size_t>(p_ + n_ - (at + 1)) * sizeof(T));
    --n_;
  }
  void clear() noexcept { n_ = 0; }
  // Frees the memory (teardown).
  void reset() noexcept {
    free_mem(p_);
    p_ = nullptr;
    n_ = cap_ = 0;
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
  std::size_t cap_ = 0;
};

}  // namespace gort::rt
