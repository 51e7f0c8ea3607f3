/* gort: layout of a suspended context's saved frame, shared by the asm stubs and C++.
 *
 * A suspended context is nothing but a stack pointer: the stub stored the callee-saved state
 * on the context's own stack, and the address of that frame is the context handle. The
 * #defines below are the frame's one definition, one line per slot: the stubs address every
 * slot through them, and arch/context.hpp static_asserts a C++ mirror (struct frame) against
 * each of them, for the C++ code that builds or reads frames (tests). Plain #defines only:
 * this file is included by the assembler. */
#ifndef GORT_ARCH_FRAME_H
#define GORT_ARCH_FRAME_H

#if defined(__x86_64__)
/* x86-64 SysV: callee-saved rbx, rbp, r12-r15, plus the MXCSR control bits and the x87 control
 * word, which the ABI also makes callee-saved ("preserved across calls"). */
#define GORT_FRAME_FPCSR  0x00 /* MXCSR, 4 bytes */
#define GORT_FRAME_FPCW   0x04 /* x87 control word, 2 bytes; 0x06-0x07 unused */
#define GORT_FRAME_R12    0x08
#define GORT_FRAME_R13    0x10
#define GORT_FRAME_R14    0x18
#define GORT_FRAME_R15    0x20
#define GORT_FRAME_RBX    0x28
#define GORT_FRAME_RBP    0x30
#define GORT_FRAME_PC     0x38 /* where the context resumes: the return address pushed by the
                                  `call` of the stub, so it is the frame's last slot */
#define GORT_FRAME_SIZE   0x40

#elif defined(__aarch64__)
/* AAPCS64: callee-saved x19-x28, fp (x29), lr (x30), and the low 64 bits of v8-v15 (d8-d15).
 * The stubs move two adjacent slots with one stp/ldp (and check the adjacency they rely on). */
#define GORT_FRAME_D8     0x00
#define GORT_FRAME_D9     0x08
#define GORT_FRAME_D10    0x10
#define GORT_FRAME_D11    0x18
#define GORT_FRAME_D12    0x20
#define GORT_FRAME_D13    0x28
#define GORT_FRAME_D14    0x30
#define GORT_FRAME_D15    0x38
#define GORT_FRAME_X19    0x40
#define GORT_FRAME_X20    0x48
#define GORT_FRAME_X21    0x50
#define GORT_FRAME_X22    0x58
#define GORT_FRAME_X23    0x60
#define GORT_FRAME_X24    0x68
#define GORT_FRAME_X25    0x70
#define GORT_FRAME_X26    0x78
#define GORT_FRAME_X27    0x80
#define GORT_FRAME_X28    0x88
#define GORT_FRAME_FP     0x90 /* x29 */
#define GORT_FRAME_LR     0x98 /* x30 */
#define GORT_FRAME_PC     0xa0 /* where the context resumes: equals LR in a context suspended in
                                  a stub; gort_entry in a fresh one, whose LR is 0 */
#define GORT_FRAME_SIZE   0xb0 /* 0xa8-0xaf unused: sp stays 16-byte aligned */

#else
#error "gort: no context-switch stub for this architecture (x86-64 and AArch64 are supported)"
#endif

#endif
