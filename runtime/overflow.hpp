// gort: reporting G stack overflows.
//
// A G that overflows its stack runs into the guard region below it (stack.hpp) and takes a
// SIGSEGV. Without help the process just dies with "Segmentation fault", and the kernel cannot
// even deliver a handler on the overflowed stack. So every thread that runs Gs gets an
// alternate signal stack, and a process-wide handler looks the faulting address up in the
// stack pools' chunk registry: a hit prints
//
//   gort: stack overflow in G <id> (stack <size> bytes)
//
// (the id is the one given to stack_pool::set_owner, 0 if none was) and aborts. Any other
// fault goes to whatever handled SIGSEGV before us, or gets the default action.
//
// A fault the thread has blocked is not delivered: the kernel resets the action to the default
// and kills the process with a plain SIGSEGV. So every M unblocks SIGSEGV and SIGBUS when it
// starts (unblock_fault_signals), whatever mask it inherited from the thread that created it.
#pragma once

#include <cstddef>

namespace gort::rt {

// Size of the alternate signal stacks ensure_altstack() maps. Signal frames with AVX-512 or SVE
// state take several KiB on their own; the handler itself needs little more, but a previous
// handler we chain to (ASan's, say) runs on the same stack.
inline constexpr std::size_t altstack_size = 64 * 1024;

// Installs the SIGSEGV and SIGBUS handler (SA_ONSTACK | SA_SIGINFO). Process-wide, idempotent,
// thread-safe. The actions installed before it are kept and chained to. Returns whether this
// call installed it on either signal (false: it already was).
bool install_overflow_handler();

// Puts back, on each signal, the action install_overflow_handler found, unless a handler
// installed since has replaced ours (then both stay, and the next install does nothing there:
// that handler may chain to ours). Thread-safe; call it when no G can overflow any more.
void uninstall_overflow_handler();

// Unblocks SIGSEGV and SIGBUS in the calling thread, leaving the rest of its mask alone.
void unblock_fault_signals() noexcept;

// Gives the calling thread an alternate signal stack unless it already has one of at least
// 16 KiB (a sanitizer's, say, which is then used as is). Idempotent; a thread maps at most one
// stack here, unmapped when the thread exits. Every thread that runs Gs must call it. Throws
// std::bad_alloc if the stack cannot be mapped.
void ensure_altstack();

}  // namespace gort::rt
