// gort: static_vec, a growable array with a trivial destructor, for the lists inside the global
// `sched` (Ms, Gs, Ps, steal strides).
//
// Why not std::vector: exit() (from a G, or from any thread while a runtime runs) destroys
// objects of static storage duration while the Ms keep running; a std::vector inside `sched`
// was freed under them (a SIGSEGV instead of the exit status asked for). A static_vec is never
// destroyed: boot.cpp's teardown frees its memory with reset(), after every M has exited.
// Elements are trivially copyable (pointers and integers), moved with memcpy on growth.
#pragma once

#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "check.hpp"

namespace gort::rt {

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
      void* q = std::realloc(p_, cap * sizeof(T));
      if (!q) throw std::bad_alloc();
      p_ = static_cast<T*>(q);
      cap_ = cap;
    }
    p_[n_++] = v;
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
    std::free(p_);
    p_ = nullptr;
    n_ = cap_ = 0;
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
  std::size_t cap_ = 0;
};

}  // namespace gort::rt
