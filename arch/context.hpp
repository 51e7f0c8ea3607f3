// gort: the context-switch primitives (hand-written asm in arch/*.S).
//
// This layer knows registers and stacks, nothing about Gs, Ps or schedulers. A context is the
// stack pointer of a suspended execution; switching saves the callee-saved state on the current
// stack, adopts the target's stack and returns into it. Everything else that must travel with a
// coroutine (exception globals, sanitizer fiber state) is the runtime's job: runtime/fiber.hpp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "frame.h"

namespace gort::arch {

using ctx = void*;  // a suspended context: its saved frame (see frame.h)

// What a switch delivers to the context that resumes: the context that was left (so it can be
// resumed later) and one word of data from whoever switched.
struct transfer {
  ctx from;
  void* data;
};

using entry_fn = void (*)(transfer);
using ontop_fn = transfer (*)(transfer);

extern "C" {
// Saves the current context and resumes `to`, handing it `data`. Returns when some context
// jumps back here; the result names that context and the data it passed.
transfer gort_jump(ctx to, void* data);

// Like gort_jump, but on arrival runs fn({from, data}) on `to`'s stack before `to` resumes;
// fn's result is what `to` sees as the result of its own switch. Lets the caller publish
// "I am off my stack" (park) only once it is true.
transfer gort_ontop(ctx to, void* data, ontop_fn fn);

// Prepares a fresh context on the stack whose highest address is `stack_top`; the first switch
// into it calls fn({from, data}) with a frame that stops unwinders (no caller above it). fn must
// never return: it ends by switching away for good. On x86-64 the context inherits the calling
// thread's FP control state (MXCSR, x87 CW), as a new thread inherits its creator's.
ctx gort_make(void* stack_top, entry_fn fn);

// gort_jump's twin, with the same frame and contract (a context saved by either resumes through
// either), for code where every context suspends through one call site, as a scheduler's single
// switch function does. It returns into the target with `ret` instead of an indirect `jmp`, so
// the CPU's return-address predictor stays in step: measured 34.6 -> 18.3 ns per yield on a
// procs = 1 yield loop. gort_jump stays the better choice for asymmetric pairs (a generator and
// its consumer switching from different call sites), where that `ret` would mispredict every
// time. See the x86-64 stub's header; on AArch64 both are the same code.
transfer gort_jump_ret(ctx to, void* data);
}

// A C++ mirror of the saved frame, one member per slot of frame.h, each checked against its
// #define so neither side drifts.
#if defined(__x86_64__)
struct frame {
  std::uint32_t mxcsr;
  std::uint16_t fpcw;
  std::uint16_t unused;
  std::uint64_t r12, r13, r14, r15, rbx, rbp;
  void* pc;
};
static_assert(offsetof(frame, mxcsr) == GORT_FRAME_FPCSR);
static_assert(offsetof(frame, fpcw) == GORT_FRAME_FPCW);
static_assert(offsetof(frame, r12) == GORT_FRAME_R12);
static_assert(offsetof(frame, r13) == GORT_FRAME_R13);
static_assert(offsetof(frame, r14) == GORT_FRAME_R14);
static_assert(offsetof(frame, r15) == GORT_FRAME_R15);
static_assert(offsetof(frame, rbx) == GORT_FRAME_RBX);
static_assert(offsetof(frame, rbp) == GORT_FRAME_RBP);
static_assert(offsetof(frame, pc) == GORT_FRAME_PC);
static_assert(sizeof(frame) == GORT_FRAME_SIZE);
static_assert(GORT_FRAME_PC + 8 == GORT_FRAME_SIZE,
              "pc is the return address of the call of the stub: the frame's last slot");
#elif defined(__aarch64__)
struct frame {
  std::uint64_t d8, d9, d10, d11, d12, d13, d14, d15;  // low 64 bits of v8..v15
  std::uint64_t x19, x20, x21, x22, x23, x24, x25, x26, x27, x28;
  std::uint64_t fp, lr;  // x29, x30
  void* pc;
  std::uint64_t unused;
};
static_assert(offsetof(frame, d8) == GORT_FRAME_D8);
static_assert(offsetof(frame, d9) == GORT_FRAME_D9);
static_assert(offsetof(frame, d10) == GORT_FRAME_D10);
static_assert(offsetof(frame, d11) == GORT_FRAME_D11);
static_assert(offsetof(frame, d12) == GORT_FRAME_D12);
static_assert(offsetof(frame, d13) == GORT_FRAME_D13);
static_assert(offsetof(frame, d14) == GORT_FRAME_D14);
static_assert(offsetof(frame, d15) == GORT_FRAME_D15);
static_assert(offsetof(frame, x19) == GORT_FRAME_X19);
static_assert(offsetof(frame, x20) == GORT_FRAME_X20);
static_assert(offsetof(frame, x21) == GORT_FRAME_X21);
static_assert(offsetof(frame, x22) == GORT_FRAME_X22);
static_assert(offsetof(frame, x23) == GORT_FRAME_X23);
static_assert(offsetof(frame, x24) == GORT_FRAME_X24);
static_assert(offsetof(frame, x25) == GORT_FRAME_X25);
static_assert(offsetof(frame, x26) == GORT_FRAME_X26);
static_assert(offsetof(frame, x27) == GORT_FRAME_X27);
static_assert(offsetof(frame, x28) == GORT_FRAME_X28);
static_assert(offsetof(frame, fp) == GORT_FRAME_FP);
static_assert(offsetof(frame, lr) == GORT_FRAME_LR);
static_assert(offsetof(frame, pc) == GORT_FRAME_PC);
static_assert(sizeof(frame) == GORT_FRAME_SIZE);
#endif
static_assert(GORT_FRAME_SIZE % 16 == 0, "frames keep the stack 16-byte aligned");

// The saved frame of a suspended context, for code that reads or checks saved registers
// (test_context).
inline frame* frame_of(ctx c) { return static_cast<frame*>(c); }

}  // namespace gort::arch
