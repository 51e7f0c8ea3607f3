/* Test helper: proves that a switch preserves every callee-saved register, MXCSR and the x87
 * control word, by setting them from asm (so no compiler spill can make the test pass).
 *
 * uint64_t gort_test_regs_roundtrip(void** peer [rdi], uint64_t seed [rsi],
 *                                   uint32_t mxcsr [edx], uint16_t fpcw [cx], jump_fn jump [r8])
 *
 * Loads value(K_i, seed) into rbx, rbp, r12-r15, installs mxcsr/fpcw, calls jump(*peer, 0),
 * stores the context it returns from into *peer, and returns a bitmask of what no longer holds
 * its value: bits 0-5 rbx rbp r12 r13 r14 r15, bit 6 MXCSR, bit 7 x87 CW. The caller's own
 * registers and FP control state are restored before returning. */
    .text
    .globl  gort_test_regs_roundtrip
    .type   gort_test_regs_roundtrip, @function
    .p2align 4
gort_test_regs_roundtrip:
    .cfi_startproc
    pushq   %rbp
    pushq   %rbx
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    subq    $40, %rsp                    /* 0: saved MXCSR, 4: saved CW, 8: peer, 16: seed,
                                            24: wanted MXCSR, 28: wanted CW */
    .cfi_def_cfa_offset 96
    stmxcsr 0(%rsp)
    fnstcw  4(%rsp)
    movq    %rdi, 8(%rsp)
    movq    %rsi, 16(%rsp)
    movl    %edx, 24(%rsp)
    movw    %cx, 28(%rsp)

.macro SETREG reg, k
    movabsq $\k, %rax
    addq    %rsi, %rax
    movq    %rax, \reg
.endm
    SETREG  %rbx, 0x1111111111111111
    SETREG  %rbp, 0x2222222222222222
    SETREG  %r12, 0x3333333333333333
    SETREG  %r13, 0x4444444444444444
    SETREG  %r14, 0x5555555555555555
    SETREG  %r15, 0x6666666666666666
    ldmxcsr 24(%rsp)
    fldcw   28(%rsp)

    movq    (%rdi), %rdi
    xorl    %esi, %esi
    callq   *%r8
    movq    8(%rsp), %rdi
    movq    %rax, (%rdi)

    xorl    %r11d, %r11d
    movq    16(%rsp), %rsi
.macro CHECKREG reg, k, bit
    movabsq $\k, %rax
    addq    %rsi, %rax
    cmpq    %rax, \reg
    je      1f
    orq     $\bit, %r11
1:
.endm
    CHECKREG %rbx, 0x1111111111111111, 0x01
    CHECKREG %rbp, 0x2222222222222222, 0x02
    CHECKREG %r12, 0x3333333333333333, 0x04
    CHECKREG %r13, 0x4444444444444444, 0x08
    CHECKREG %r14, 0x5555555555555555, 0x10
    CHECKREG %r15, 0x6666666666666666, 0x20
    stmxcsr 32(%rsp)
    movl    32(%rsp), %eax
    cmpl    24(%rsp), %eax
    je      1f
    orq     $0x40, %r11
1:
    fnstcw  32(%rsp)
    movzwl  32(%rsp), %eax
    movzwl  28(%rsp), %ecx
    cmpl    %ecx, %eax
    je      1f
    orq     $0x80, %r11
1:
    ldmxcsr 0(%rsp)
    fldcw   4(%rsp)
    movq    %r11, %rax
    addq    $40, %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbx
    popq    %rbp
    ret
    .cfi_endproc
    .size   gort_test_regs_roundtrip, .-gort_test_regs_roundtrip

    .section .note.GNU-stack, "", @progbits
