/* gort context switch: x86-64, System V ABI, ELF, GNU as.
 *
 * A suspended context is the address of its saved frame: callee-saved rbx, rbp, r12-r15, MXCSR,
 * the x87 control word, and last the pc, laid out slot by slot in frame.h (the one definition;
 * every access below goes through its GORT_FRAME_* names). The pc slot holds the return address
 * that the caller's `call` of the stub pushed, so a suspended context is exactly "inside a call
 * to gort_jump / gort_jump_ret / gort_ontop", and the frame is built right below it.
 *
 * Returning: the resumed context receives struct transfer {from, data} in rax:rdx, as the SysV
 * ABI returns a two-word struct (after a gort_ontop, that struct is fn's result). A fresh
 * context instead starts in gort_entry, which moves rax:rdx to rdi:rsi and calls the entry
 * function with the same struct as its argument.
 *
 * Cost decisions (measured with bench/switch and a scratch harness of variants, Zen 4):
 *  - Two endings, one frame. The CPU predicts a `ret` from its return-stack buffer (RSB): the
 *    address pushed by the most recent unmatched `call`, here the caller's own `call gort_jump`.
 *    - gort_jump ends in an indirect `jmp` to the saved pc, predicted by the branch target
 *      buffer from recent history. Right when the two sides switch from different call sites
 *      (a generator and its consumer, bench/switch's asymmetric ping-pong), where a `ret` would
 *      mispredict every time (~8 ns here). The price: the caller's `call` is never matched, so
 *      the RSB is one entry off afterwards and the next few `ret`s up the stack mispredict.
 *    - gort_jump_ret ends in `ret`. Right when every context suspends through the same call
 *      site, as all of the scheduler's switches do (fiber::switch_to): the `ret` lands where the
 *      RSB says, and the RSB stays aligned for the returns above it. A procs = 1 yield loop
 *      measured 34.6 -> 18.3 ns per yield with it, and a channel ping-pong ~200 -> ~150 ns.
 *    A context saved by either resumes correctly through either.
 *  - The frame is written through rax (= the handle we return) while rsp stays put until the
 *    switch, instead of first moving rsp down and writing through it: one instruction fewer
 *    and measurably faster than moving rsp twice.
 *  - MXCSR and the x87 CW are saved by every stub, because the ABI makes them callee-saved. They
 *    cost ~40% of a bare switch (bench/switch with and without them: 5.4-5.6 vs 3.1-3.2 ns,
 *    27 vs 23 instructions), but only ~2.5 ns of a 31 ns scheduler yield.
 *  - They are reloaded unconditionally. Skipping ldmxcsr when the target's value equals the one
 *    just saved was tried and is ~25% slower: the compare must wait for the stmxcsr store.
 */
#include "frame.h"

#if defined(__CET__) && (__CET__ & 1)
#define ENTRY_BRANCH endbr64
#else
#define ENTRY_BRANCH
#endif

/* Save callee-saved state below the return address, without moving rsp: the frame is built
 * through rax, which is also the old context handle we return. Writing below rsp is safe: the
 * 128-byte red zone guarantees no signal frame lands there, and we are about to leave this stack. */
.macro SAVE_FRAME
    leaq    -GORT_FRAME_PC(%rsp), %rax
    stmxcsr GORT_FRAME_FPCSR(%rax)
    fnstcw  GORT_FRAME_FPCW(%rax)
    movq    %r12, GORT_FRAME_R12(%rax)
    movq    %r13, GORT_FRAME_R13(%rax)
    movq    %r14, GORT_FRAME_R14(%rax)
    movq    %r15, GORT_FRAME_R15(%rax)
    movq    %rbx, GORT_FRAME_RBX(%rax)
    movq    %rbp, GORT_FRAME_RBP(%rax)
.endm

/* Adopt the frame at rdi (rsp := rdi) and restore callee-saved registers, but not pc. */
.macro LOAD_FRAME
    movq    %rdi, %rsp
    ldmxcsr GORT_FRAME_FPCSR(%rsp)
    fldcw   GORT_FRAME_FPCW(%rsp)
    movq    GORT_FRAME_R12(%rsp), %r12
    movq    GORT_FRAME_R13(%rsp), %r13
    movq    GORT_FRAME_R14(%rsp), %r14
    movq    GORT_FRAME_R15(%rsp), %r15
    movq    GORT_FRAME_RBX(%rsp), %rbx
    movq    GORT_FRAME_RBP(%rsp), %rbp
.endm

.macro JUMP name, ending
    .text
    .globl  \name
    .hidden \name
    .type   \name, @function
    .p2align 4
\name:
    .cfi_startproc
    ENTRY_BRANCH
    SAVE_FRAME
    LOAD_FRAME
.ifc \ending, jmp
    movq    GORT_FRAME_PC(%rsp), %r8
    leaq    GORT_FRAME_SIZE(%rsp), %rsp
    movq    %rsi, %rdx                    /* transfer = {rax: from, rdx: data} */
    jmp     *%r8
.else
    leaq    GORT_FRAME_PC(%rsp), %rsp     /* pc is now the return address */
    movq    %rsi, %rdx                    /* transfer = {rax: from, rdx: data} */
    ret
.endif
    .cfi_endproc
    .size   \name, .-\name
.endm

/* transfer gort_jump(ctx to [rdi], void* data [rsi]) */
JUMP gort_jump, jmp
/* transfer gort_jump_ret(ctx to [rdi], void* data [rsi]) */
JUMP gort_jump_ret, ret

/* transfer gort_ontop(ctx to [rdi], void* data [rsi], ontop_fn fn [rdx])
 * Resumes `to` as if its pending gort_jump had called fn({from, data}): the target's pc stays
 * on the stack as fn's return address, so fn's result lands in rax:rdx at the resume point. */
    .text
    .globl  gort_ontop
    .hidden gort_ontop
    .type   gort_ontop, @function
    .p2align 4
gort_ontop:
    .cfi_startproc
    ENTRY_BRANCH
    movq    %rdx, %r8
    SAVE_FRAME
    LOAD_FRAME
    leaq    GORT_FRAME_PC(%rsp), %rsp     /* pc becomes fn's return address */
    movq    %rax, %rdi                    /* fn(transfer{from, data}) */
    jmp     *%r8
    .cfi_endproc
    .size   gort_ontop, .-gort_ontop

/* ctx gort_make(void* stack_top [rdi], entry_fn fn [rsi])
 * Builds a frame whose pc is gort_entry, with fn in rbx and a zero rbp (frame-pointer walkers
 * stop there). The frame sits so that gort_entry runs with rsp 16-byte aligned before its call. */
    .text
    .globl  gort_make
    .hidden gort_make
    .type   gort_make, @function
    .p2align 4
gort_make:
    .cfi_startproc
    ENTRY_BRANCH
    movq    %rdi, %rax
    andq    $-16, %rax
    subq    $(GORT_FRAME_SIZE + 16), %rax
    stmxcsr GORT_FRAME_FPCSR(%rax)
    fnstcw  GORT_FRAME_FPCW(%rax)
    movw    $0, GORT_FRAME_FPCW+2(%rax)
    xorl    %ecx, %ecx
    movq    %rcx, GORT_FRAME_R12(%rax)
    movq    %rcx, GORT_FRAME_R13(%rax)
    movq    %rcx, GORT_FRAME_R14(%rax)
    movq    %rcx, GORT_FRAME_R15(%rax)
    movq    %rsi, GORT_FRAME_RBX(%rax)
    movq    %rcx, GORT_FRAME_RBP(%rax)
    leaq    gort_entry(%rip), %rcx
    movq    %rcx, GORT_FRAME_PC(%rax)
    movq    $0, GORT_FRAME_SIZE(%rax)     /* a null "return address" above the entry frame */
    ret
    .cfi_endproc
    .size   gort_make, .-gort_make

/* First code a fresh context runs. rip is undefined in its CFI, so DWARF unwinders (gdb, perf,
 * C++ exception unwinding) treat it as the outermost frame instead of walking off the stack. */
    .text
    .type   gort_entry, @function
    .p2align 4
gort_entry:
    .cfi_startproc
    .cfi_undefined rip
    ENTRY_BRANCH
    movq    %rax, %rdi
    movq    %rdx, %rsi
    callq   *%rbx
    /* The entry function returned, which the contract forbids: there is no caller to go to. */
    callq   abort@PLT
    ud2
    .cfi_endproc
    .size   gort_entry, .-gort_entry

    .section .note.GNU-stack, "", @progbits

#if defined(__CET__) && (__CET__ & 1)
/* IBT only: the stubs switch stacks under the shadow stack's feet, so SHSTK is not claimed. */
    .section .note.gnu.property, "a"
    .p2align 3
    .long   4
    .long   16
    .long   5                   /* NT_GNU_PROPERTY_TYPE_0 */
    .asciz  "GNU"
    .long   0xc0000002          /* GNU_PROPERTY_X86_FEATURE_1_AND */
    .long   4
    .long   1                   /* IBT */
    .p2align 3
#endif
