/* gort context switch: AArch64, AAPCS64, ELF, GNU as.
 *
 * A suspended context is the address of its saved frame: d8-d15, x19-x28, x29 (fp), x30 (lr)
 * and the pc, laid out slot by slot in frame.h (the one definition; every access below goes
 * through its GORT_FRAME_* names). d8-d15 are callee-saved under AAPCS64 (only their low 64
 * bits); forgetting them is the classic AArch64 coroutine bug, since x86-64 has no callee-saved
 * vector registers. The pc slot equals the saved x30 for a context suspended in a stub; a fresh
 * context has pc = gort_entry and x30 = 0. The frame keeps sp 16-byte aligned, as the
 * architecture requires at every access.
 *
 * Returning: the resumed context receives struct transfer {from, data} in x0:x1 (after a
 * gort_ontop, that struct is fn's result). A fresh context starts in gort_entry with the same
 * two registers, which are also the entry function's argument, so no shuffling is needed.
 *
 * FPCR (rounding mode, flush-to-zero) is not saved: AAPCS64 gives it thread-wide semantics
 * ("modified only by code that knows what it does"), unlike x86-64's callee-saved MXCSR.
 */
#include "frame.h"

#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
#define BTI_C hint #34
#else
#define BTI_C
#endif

/* One stp/ldp moves two slots, named by their frame.h offsets; this checks that frame.h keeps
 * them adjacent, in that order, as the single instruction requires. */
.macro PAIR op, ra, rb, base, slot_a, slot_b
.if (\slot_b) - (\slot_a) - 8
.error "frame.h: the slot of \rb must directly follow the slot of \ra"
.endif
    \op    \ra, \rb, [\base, #(\slot_a)]
.endm

.macro SAVE_FRAME
    sub     sp, sp, #GORT_FRAME_SIZE
    PAIR    stp, d8, d9, sp, GORT_FRAME_D8, GORT_FRAME_D9
    PAIR    stp, d10, d11, sp, GORT_FRAME_D10, GORT_FRAME_D11
    PAIR    stp, d12, d13, sp, GORT_FRAME_D12, GORT_FRAME_D13
    PAIR    stp, d14, d15, sp, GORT_FRAME_D14, GORT_FRAME_D15
    PAIR    stp, x19, x20, sp, GORT_FRAME_X19, GORT_FRAME_X20
    PAIR    stp, x21, x22, sp, GORT_FRAME_X21, GORT_FRAME_X22
    PAIR    stp, x23, x24, sp, GORT_FRAME_X23, GORT_FRAME_X24
    PAIR    stp, x25, x26, sp, GORT_FRAME_X25, GORT_FRAME_X26
    PAIR    stp, x27, x28, sp, GORT_FRAME_X27, GORT_FRAME_X28
    PAIR    stp, x29, x30, sp, GORT_FRAME_FP, GORT_FRAME_LR
    str     x30, [sp, #GORT_FRAME_PC]
    mov     x4, sp
.endm

/* sp := x0, then restore everything but pc (left in x5). */
.macro LOAD_FRAME
    mov     sp, x0
    PAIR    ldp, d8, d9, sp, GORT_FRAME_D8, GORT_FRAME_D9
    PAIR    ldp, d10, d11, sp, GORT_FRAME_D10, GORT_FRAME_D11
    PAIR    ldp, d12, d13, sp, GORT_FRAME_D12, GORT_FRAME_D13
    PAIR    ldp, d14, d15, sp, GORT_FRAME_D14, GORT_FRAME_D15
    PAIR    ldp, x19, x20, sp, GORT_FRAME_X19, GORT_FRAME_X20
    PAIR    ldp, x21, x22, sp, GORT_FRAME_X21, GORT_FRAME_X22
    PAIR    ldp, x23, x24, sp, GORT_FRAME_X23, GORT_FRAME_X24
    PAIR    ldp, x25, x26, sp, GORT_FRAME_X25, GORT_FRAME_X26
    PAIR    ldp, x27, x28, sp, GORT_FRAME_X27, GORT_FRAME_X28
    PAIR    ldp, x29, x30, sp, GORT_FRAME_FP, GORT_FRAME_LR
    ldr     x5, [sp, #GORT_FRAME_PC]
    add     sp, sp, #GORT_FRAME_SIZE
.endm

.macro FUNC name
    .text
    .globl  \name
    .hidden \name
    .type   \name, %function
    .p2align 4
\name:
.endm

/* transfer gort_jump(ctx to [x0], void* data [x1]); x1 passes through untouched as data. */
FUNC gort_jump
    .cfi_startproc
    BTI_C
    SAVE_FRAME
    LOAD_FRAME
    mov     x0, x4
    ret     x5          /* `ret`, not `br`: BTI needs no landing pad at return sites */
    .cfi_endproc
    .size   gort_jump, .-gort_jump

/* gort_jump already ends in `ret`, which keeps the return-address predictor aligned (see the
 * x86-64 stub for why that matters), so gort_jump_ret is the same code. */
    .globl  gort_jump_ret
    .hidden gort_jump_ret
    .set    gort_jump_ret, gort_jump

/* transfer gort_ontop(ctx to [x0], void* data [x1], ontop_fn fn [x2])
 * Resumes `to` as if its pending gort_jump had called fn({from, data}): x30 := the target's pc,
 * so fn's `ret` lands at the resume point with fn's result in x0:x1. */
FUNC gort_ontop
    .cfi_startproc
    BTI_C
    SAVE_FRAME
    LOAD_FRAME
    mov     x30, x5
    mov     x0, x4
    mov     x16, x2     /* x16: a `br` through x16/x17 is accepted by a `bti c` landing pad */
    br      x16
    .cfi_endproc
    .size   gort_ontop, .-gort_ontop

/* ctx gort_make(void* stack_top [x0], entry_fn fn [x1])
 * Zeroed frame with pc = gort_entry, fn in x19, x29 = x30 = 0 (frame-pointer walkers stop). */
FUNC gort_make
    .cfi_startproc
    BTI_C
    and     x0, x0, #~15
    sub     x0, x0, #(GORT_FRAME_SIZE + 16)
    PAIR    stp, xzr, xzr, x0, GORT_FRAME_D8, GORT_FRAME_D9
    PAIR    stp, xzr, xzr, x0, GORT_FRAME_D10, GORT_FRAME_D11
    PAIR    stp, xzr, xzr, x0, GORT_FRAME_D12, GORT_FRAME_D13
    PAIR    stp, xzr, xzr, x0, GORT_FRAME_D14, GORT_FRAME_D15
    PAIR    stp, x1, xzr, x0, GORT_FRAME_X19, GORT_FRAME_X20
    PAIR    stp, xzr, xzr, x0, GORT_FRAME_X21, GORT_FRAME_X22
    PAIR    stp, xzr, xzr, x0, GORT_FRAME_X23, GORT_FRAME_X24
    PAIR    stp, xzr, xzr, x0, GORT_FRAME_X25, GORT_FRAME_X26
    PAIR    stp, xzr, xzr, x0, GORT_FRAME_X27, GORT_FRAME_X28
    PAIR    stp, xzr, xzr, x0, GORT_FRAME_FP, GORT_FRAME_LR
    adr     x2, gort_entry
    stp     x2, xzr, [x0, #GORT_FRAME_PC]      /* pc, and zero the unused slot after it */
    stp     xzr, xzr, [x0, #GORT_FRAME_SIZE]   /* a null frame record above the entry frame */
    ret
    .cfi_endproc
    .size   gort_make, .-gort_make

/* First code a fresh context runs; x30 is undefined in its CFI, so DWARF unwinders (gdb, perf,
 * C++ exception unwinding) stop here instead of walking off the stack. */
    .text
    .type   gort_entry, %function
    .p2align 4
gort_entry:
    .cfi_startproc
    .cfi_undefined x30
    BTI_C
    blr     x19         /* fn(transfer{x0: from, x1: data}) */
    bl      abort       /* the entry function returned, which the contract forbids */
    brk     #0
    .cfi_endproc
    .size   gort_entry, .-gort_entry

    .section .note.GNU-stack, "", %progbits

#if defined(__ARM_FEATURE_BTI_DEFAULT) || defined(__ARM_FEATURE_PAC_DEFAULT)
/* GNU property note: BTI (bit 0) and PAC (bit 1) as the compiler was asked to produce. The
 * stubs never sign or authenticate lr themselves: they move it as an opaque value. */
    .section .note.gnu.property, "a"
    .p2align 3
    .long   4
    .long   16
    .long   5                   /* NT_GNU_PROPERTY_TYPE_0 */
    .asciz  "GNU"
    .long   0xc0000000          /* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
    .long   4
    .long   ((__ARM_FEATURE_BTI_DEFAULT + 0) | ((__ARM_FEATURE_PAC_DEFAULT + 0) != 0) << 1)
    .long   0
#endif
