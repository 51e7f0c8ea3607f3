/* Test helper: proves that a switch preserves x19-x29 and d8-d15, by setting them from asm
 * (so no compiler spill can make the test pass).
 *
 * uint64_t gort_test_regs_roundtrip(void** peer [x0], uint64_t seed [x1],
 *                                   uint32_t unused [w2], uint16_t unused [w3], jump_fn jump [x4])
 *
 * Loads value(K_i, seed) into x19-x29 and d8-d15, calls jump(*peer, 0), stores the context it
 * returns from into *peer, and returns a bitmask of what no longer holds its value: bits 0-10
 * x19..x29, bits 11-18 d8..d15. The caller's registers are restored before returning. */
    .text
    .globl  gort_test_regs_roundtrip
    .type   gort_test_regs_roundtrip, %function
    .p2align 4
gort_test_regs_roundtrip:
    .cfi_startproc
    stp     x29, x30, [sp, #-192]!
    .cfi_def_cfa_offset 192
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    stp     x0, x1, [sp, #160]            /* peer, seed */

.macro SETX reg, k
    ldr     x9, =\k
    add     \reg, x9, x1
.endm
.macro SETD reg, k
    ldr     x9, =\k
    add     x9, x9, x1
    fmov    \reg, x9
.endm
    SETX    x19, 0x1919191919191919
    SETX    x20, 0x2020202020202020
    SETX    x21, 0x2121212121212121
    SETX    x22, 0x2222222222222222
    SETX    x23, 0x2323232323232323
    SETX    x24, 0x2424242424242424
    SETX    x25, 0x2525252525252525
    SETX    x26, 0x2626262626262626
    SETX    x27, 0x2727272727272727
    SETX    x28, 0x2828282828282828
    SETD    d8,  0x0808080808080808
    SETD    d9,  0x0909090909090909
    SETD    d10, 0x1010101010101010
    SETD    d11, 0x1111111111111111
    SETD    d12, 0x1212121212121212
    SETD    d13, 0x1313131313131313
    SETD    d14, 0x1414141414141414
    SETD    d15, 0x1515151515151515
    SETX    x29, 0x2929292929292929   /* last: x29 was our frame pointer until here */

    ldr     x0, [x0]
    mov     x1, #0
    blr     x4
    ldr     x9, [sp, #160]
    str     x0, [x9]

    mov     x10, #0
    ldr     x1, [sp, #168]
.macro CHECKX reg, k, bit
    ldr     x9, =\k
    add     x9, x9, x1
    cmp     \reg, x9
    b.eq    1f
    orr     x10, x10, #\bit
1:
.endm
.macro CHECKD reg, k, bit
    ldr     x9, =\k
    add     x9, x9, x1
    fmov    x11, \reg
    cmp     x11, x9
    b.eq    1f
    orr     x10, x10, #\bit
1:
.endm
    CHECKX  x19, 0x1919191919191919, 0x1
    CHECKX  x20, 0x2020202020202020, 0x2
    CHECKX  x21, 0x2121212121212121, 0x4
    CHECKX  x22, 0x2222222222222222, 0x8
    CHECKX  x23, 0x2323232323232323, 0x10
    CHECKX  x24, 0x2424242424242424, 0x20
    CHECKX  x25, 0x2525252525252525, 0x40
    CHECKX  x26, 0x2626262626262626, 0x80
    CHECKX  x27, 0x2727272727272727, 0x100
    CHECKX  x28, 0x2828282828282828, 0x200
    CHECKX  x29, 0x2929292929292929, 0x400
    CHECKD  d8,  0x0808080808080808, 0x800
    CHECKD  d9,  0x0909090909090909, 0x1000
    CHECKD  d10, 0x1010101010101010, 0x2000
    CHECKD  d11, 0x1111111111111111, 0x4000
    CHECKD  d12, 0x1212121212121212, 0x8000
    CHECKD  d13, 0x1313131313131313, 0x10000
    CHECKD  d14, 0x1414141414141414, 0x20000
    CHECKD  d15, 0x1515151515151515, 0x40000

    mov     x0, x10
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    ldp     x29, x30, [sp], #192
    ret
    .ltorg
    .cfi_endproc
    .size   gort_test_regs_roundtrip, .-gort_test_regs_roundtrip

    .section .note.GNU-stack, "", %progbits
