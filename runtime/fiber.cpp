// gort: fiber::switch_to and what travels with a context: the exception globals, the
// sanitizer fiber annotations and the Valgrind stack registration (see fiber.hpp).
#include "fiber.hpp"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cxxabi.h>

#include "san.hpp"

#if GORT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if GORT_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace gort::rt {

namespace {

// Carried by the data word of every switch; lives on the leaving fiber's stack and is read
// by the arriving side before the leaving fiber can possibly be resumed.
struct hop {
  fiber* from;
  fiber* to;
};

inline void before_jump([[maybe_unused]] fiber& self, fiber& to, eh_globals* teh,
                        [[maybe_unused]] bool final) noexcept {
  self.eh = *teh;
  *teh = to.eh;
#if GORT_ASAN
  __sanitizer_start_switch_fiber(final ? nullptr : &self.asan_fake_stack, to.stack_lo,
                                 to.stack_size);
#endif
#if GORT_TSAN
  __tsan_switch_to_fiber(to.tsan, 0);
#endif
}

// Runs on the arriving fiber right after a switch lands on it (possibly on another thread
// than the one it left from).
inline void arrive([[maybe_unused]] fiber& self, arch::transfer t) noexcept {
  fiber* left = static_cast<hop*>(t.data)->from;
#if GORT_ASAN
  const void* old_lo = nullptr;
  std::size_t old_size = 0;
  __sanitizer_finish_switch_fiber(self.asan_fake_stack, &old_lo, &old_size);
  if (left->stack_lo == nullptr) {  // a thread fiber learns its bounds when it first leaves
    left->stack_lo = old_lo;
    left->stack_size = old_size;
  }
#endif
  left->ctx = t.from;
  if (after_fn f = left->after) {
    left->after = nullptr;
    f(left, left->after_arg);
  }
}

void fresh_entry(arch::transfer t) {
  fiber* self = static_cast<hop*>(t.data)->to;
  arrive(*self, t);
  self->entry(self, self->entry_arg);
  // An entry must leave with a final switch; there is no caller to return to.
  std::abort();
}

}  // namespace

eh_globals* thread_eh_globals() noexcept {
  return reinterpret_cast<eh_globals*>(abi::__cxa_get_globals());
}

void forget_stack_shadow([[maybe_unused]] void* lo, [[maybe_unused]] std::size_t size) noexcept {
#if GORT_ASAN
  std::size_t scale = 0, offset = 0;
  __asan_get_shadow_mapping(&scale, &offset);
  const auto pg = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto a = reinterpret_cast<std::uintptr_t>(lo);
  const std::uintptr_t sb = (a >> scale) + offset, se = ((a + size) >> scale) + offset;
  const std::uintptr_t ib = (sb + pg - 1) & ~(pg - 1), ie = se & ~(pg - 1);
  if (ib >= ie) {
    ASAN_UNPOISON_MEMORY_REGION(lo, size);
    return;
  }
  // The partial shadow pages at either end through ASan; the whole ones in between dropped.
  const auto app = [&](std::uintptr_t shadow) { return (shadow - offset) << scale; };
  ASAN_UNPOISON_MEMORY_REGION(lo, app(ib) - a);
  ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<void*>(app(ie)), a + size - app(ie));
  madvise(reinterpret_cast<void*>(ib), ie - ib, MADV_DONTNEED);
#endif
}

void fiber::init(void* lo, std::size_t size, void (*fn)(fiber*, void*), void* arg) {
  stack_lo = lo;
  stack_size = size;
  eh = {};
  after = nullptr;
  asan_fake_stack = nullptr;
  entry = fn;
  entry_arg = arg;
#if GORT_ASAN
  // A reused stack still carries the shadow of the frames of whatever last ran on it (a
  // finished fiber never unwinds them); the new fiber starts clean.
  ASAN_UNPOISON_MEMORY_REGION(lo, size);
#endif
  ctx = arch::gort_make(static_cast<char*>(lo) + size, fresh_entry);
#if GORT_TSAN
  if (!tsan) {
    tsan = __tsan_create_fiber(0);
    owns_tsan = true;
  }
#endif
}

void fiber::init_thread() noexcept {
  ctx = nullptr;
  eh = {};
  after = nullptr;
  stack_lo = nullptr;  // learnt on the first switch away (ASan reports it)
  stack_size = 0;
  asan_fake_stack = nullptr;
#if GORT_TSAN
  tsan = __tsan_get_current_fiber();
  owns_tsan = false;
#endif
}

void fiber::destroy() noexcept {
#if GORT_TSAN
  if (owns_tsan && tsan) __tsan_destroy_fiber(tsan);
#endif
  tsan = nullptr;
  owns_tsan = false;
}

void fiber::switch_to(fiber& to, eh_globals* teh, bool final) noexcept {
  hop h{this, &to};
  before_jump(*this, to, teh, final);
  arch::transfer t = arch::gort_jump_ret(to.ctx, &h);
  arrive(*this, t);
}

void fiber::exit_to(fiber& to, eh_globals* teh) noexcept {
  switch_to(to, teh, true);
  std::abort();  // a finished fiber is never resumed
}

}  // namespace gort::rt
