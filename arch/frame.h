/* gort: layout of a suspended context's saved frame, shared by the asm stubs and C++.
 *
 * A suspended context is nothing but a stack pointer: the stub pushed the callee-saved state
 * onto the context's own stack, and the resulting `sp` is the context handle. These offsets are
 * the single definition of that frame; arch/context.hpp static_asserts a C++ mirror against them,
 * so the stubs and the code that builds or inspects frames (make, the gdb extension, tests)
 * cannot drift apart. Plain #defines only: this file is included by the assembler. */
#ifndef GORT_ARCH_FRAME_H
#define GORT_ARCH_FRAME_H

#if defined(__x86_64__)
/* x86-64 SysV: callee-saved rbx, rbp, r12-r15, plus the MXCSR control bits and the x87 control
 * word, which the ABI also makes callee-saved ("preserved across calls"). */
#define GORT_FRAME_FPCSR  0x00 /* MXCSR (4 bytes), then x87 CW (2 bytes), then 2 unused bytes */
#define GORT_FRAME_FPCW   0x04
#define GORT_FRAME_R12    0x08
#define GORT_FRAME_R13    0x10
#define GORT_FRAME_R14    0x18
#define GORT_FRAME_R15    0x20
#define GORT_FRAME_RBX    0x28
#define GORT_FRAME_RBP    0x30
#define GORT_FRAME_PC     0x38 /* the return address pushed by `call gort_jump` */
#define GORT_FRAME_SIZE   0x40

#elif defined(__aarch64__)
/* AAPCS64: callee-saved x19-x28, fp (x29), lr (x30), and the low 64 bits of v8-v15 (d8-d15). */
#define GORT_FRAME_D8     0x00 /* d8..d15 at 0x00..0x38 */
#define GORT_FRAME_X19    0x40 /* x19..x28 at 0x40..0x88 */
#define GORT_FRAME_FP     0x90
#define GORT_FRAME_LR     0x98
#define GORT_FRAME_PC     0xa0 /* where the context resumes; equals LR except in a fresh frame */
#define GORT_FRAME_SIZE   0xb0 /* 0xa8 is padding: sp stays 16-byte aligned */

#else
#error "gort: no context-switch stub for this architecture (x86-64 and AArch64 are supported)"
#endif

#endif
