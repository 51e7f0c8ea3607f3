// gort: runtime allocation. A P's mimalloc heap is created by the first M that holds the P (its
// home) and used only by that M; any other M, or a thread that is no M, allocates from its own
// thread's default mimalloc heap. Freeing is allowed from any thread (mimalloc hands a block
// freed by another thread back to its owner).
#include "alloc.hpp"

#include <mimalloc.h>

#include <cstdlib>
#include <new>

#include "gort_build_config.h"
#include "san.hpp"

#if GORT_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#endif

namespace gort::rt {

namespace {
// Decided once per process, at load time, because rt::alloc may run before, between and after
// runtimes and every block must go back to the allocator it came from. Memcheck tracks malloc,
// not mimalloc's heap API, so under Valgrind the runtime uses malloc and its checks see every
// block; TSan intercepts malloc but not mimalloc, and would take a block freed by one G and
// reused by another for a race between them.
bool detect_system_alloc() noexcept {
#if GORT_TSAN
  return true;
#elif GORT_HAVE_VALGRIND
  return RUNNING_ON_VALGRIND != 0;
#else
  return false;
#endif
}
const bool system_alloc = detect_system_alloc();
}  // namespace

void* alloc(std::size_t n) {
  m* mp = getm();
  nopreempt_scope np(mp ? mp->curg : nullptr);
  p* pp = mp ? mp->curp : nullptr;
  void* r = system_alloc ? std::malloc(n)
            : (pp && pp->home == mp && pp->heap)
                ? mi_heap_malloc(reinterpret_cast<mi_heap_t*>(pp->heap), n)
                : mi_malloc(n);
  if (!r) throw std::bad_alloc();
  return r;
}

void free_mem(void* ptr) noexcept {
  if (system_alloc) std::free(ptr);
  else mi_free(ptr);
}

void heap_adopt(m* mp, p* pp) noexcept {
  if (pp->home || system_alloc) return;
  // Out of memory: no home yet; the P's allocations use the thread's default heap meanwhile
  // (rt::alloc), and a later acquirep tries again.
  mi_heap_t* h = mi_heap_new();
  if (!h) return;
  pp->home = mp;
  pp->heap = reinterpret_cast<mi_heap_s*>(h);
  mp->homes.push_back(pp);  // within the nprocs that newm reserved: no allocation
}

void heaps_release(m* mp) noexcept {
  // Heaps are owned by the thread that created them: this M deletes its Ps' heaps (their live
  // blocks migrate to the default heap and stay valid).
  for (p* pp : mp->homes) {
    mi_heap_delete(reinterpret_cast<mi_heap_t*>(pp->heap));
    pp->heap = nullptr;
  }
  mp->homes.clear();
}

}  // namespace gort::rt
