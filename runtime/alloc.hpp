// gort: runtime allocation (alloc.cpp). Each P has a mimalloc heap, created by and owned by its
// home M (mimalloc 2.0.9: a heap may only allocate on the thread that created it); an M that
// holds a P it is not the home of uses its thread's default heap. Under Valgrind and TSan the
// runtime uses malloc instead (alloc.cpp says why).
#pragma once

#include <cstddef>

#include "sched.hpp"

namespace gort::rt {

void* alloc(std::size_t n);  // the P's heap when on its home M; throws std::bad_alloc
void free_mem(void* ptr) noexcept;

// mp just acquired pp the ordinary way: the first M to hold pp becomes its home and creates
// its heap.
void heap_adopt(m* mp, p* pp) noexcept;
// mp is exiting: deletes the heaps it created (their live blocks stay valid).
void heaps_release(m* mp) noexcept;

}  // namespace gort::rt
