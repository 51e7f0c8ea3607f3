// gort: the pool of G stacks.
//
// C++ frames cannot be moved, so unlike Go's copied stacks every G gets a fixed-size stack that
// is reserved as address space and committed lazily by the kernel, page by page, as it is
// touched. What makes a million of them affordable is the shape of the reservation:
//
//  - Stacks are carved from chunks of `stacks_per_chunk` slots, one slot being a guard region
//    followed (upwards) by the stack. Chunks are plain anonymous mappings with equal flags, so
//    the kernel merges neighbouring chunks into one VMA; a million stacks cost a handful of
//    entries in /proc/self/maps instead of a million (vm.max_map_count is 65530 by default).
//  - The guard is installed with MADV_GUARD_INSTALL where that really works (Linux >= 6.13): it
//    lives in the page tables and splits no VMA. Elsewhere (older kernels, qemu-user, which
//    returns 0 but installs nothing) the guard is mprotect(PROT_NONE), which costs two VMAs per
//    stack, so those guards are rationed (see stack_pool::guard_budget) and stacks past the
//    ration are handed out unguarded rather than failing.
//  - Returned stacks go on a LIFO free list and come back without a syscall, their top pages
//    still warm.
//
// Every chunk is also published in a process-wide registry that the SIGSEGV handler
// (overflow.hpp) reads without locks to tell a stack overflow from any other fault.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>

#include "gort/config.hpp"

namespace gort::rt {

using gort::default_stack_size;  // one definition, in gort/config.hpp
inline constexpr std::size_t min_stack_size = 16 * 1024;

// Below every stack. A guard costs address space only (neither memory nor extra VMAs, whatever
// its size), and a frame larger than the guard could step over it into the neighbouring stack
// without faulting: code built without -fstack-clash-protection does not probe big frames. So
// the guard is generous, 64 KiB, which is also a whole number of pages for 4, 16 and 64 KiB
// pages. It must stay at least 64 KiB: with -fstack-clash-protection (which gort builds with
// and passes on in gort.pc), GCC's AArch64 code probes large frames every 64 KiB, so only a
// guard that large is sure to catch a probe. A slot of the default size is 320 KiB of address
// space: 1M stacks take 320 GiB of the 128 TiB a process has.
inline constexpr std::size_t stack_guard_size = 64 * 1024;

// Slots per mapping. Bigger chunks mean fewer mmap calls; smaller ones let trim() give memory
// back at a finer grain. Adjacent chunks merge into one VMA anyway.
inline constexpr std::size_t stacks_per_chunk = 64;

enum class guard_mode {
  automatic,  // GORT_STACK_GUARD if set, else madvise if it verifiably works, else mprotect
  madvise,    // MADV_GUARD_INSTALL; falls back to mprotect where it does not really fault
  mprotect,   // PROT_NONE guards, two VMAs each, within a process-wide budget
  none,       // no guards (tests, or callers that prefer the VMAs)
};

const char* to_string(guard_mode m) noexcept;

// Whether MADV_GUARD_INSTALL really installs a faulting guard in this process. Probed once, by
// letting the kernel read a guarded page on our behalf (write(2) into a pipe) and expecting
// EFAULT; the return value of madvise itself is not trusted.
bool madvise_guard_works() noexcept;

namespace detail {
struct slot;
struct chunk;
}

// A stack handed out by a pool. [lo, top()) is usable; the guard region lies just below lo.
struct stack {
  void* lo = nullptr;
  std::size_t size = 0;
  detail::slot* where = nullptr;  // the pool's bookkeeping for this stack

  void* top() const noexcept { return static_cast<std::byte*>(lo) + size; }
  explicit operator bool() const noexcept { return lo != nullptr; }
};

struct pool_stats {
  std::size_t live = 0;          // handed out and not returned
  std::size_t cached = 0;        // mapped slots ready to be handed out (returned or never used)
  std::size_t mapped_bytes = 0;  // address space reserved by the pool, guards included
  std::size_t chunks = 0;
  std::size_t unguarded = 0;     // live stacks without a guard (budget exhausted, or mode none)
};

// Thread-safe: one mutex around the free list (per-P caches are meant to sit in front of it).
//
// The guard mode of a pool is fixed at construction. With guard_mode::automatic the environment
// variable GORT_STACK_GUARD=madvise|mprotect|none picks it; otherwise madvise is used if
// madvise_guard_works(), else mprotect. An explicit or GORT_STACK_GUARD=madvise request on a
// system where MADV_GUARD_INSTALL does not work gets mprotect guards; mode() says which.
class stack_pool {
 public:
  // Throws std::invalid_argument, naming the size and the minimum, if stack_size is below
  // min_stack_size or not a multiple of the page size (or too large to address a chunk of).
  // Maps nothing yet.
  explicit stack_pool(std::size_t stack_size = default_stack_size,
                      guard_mode mode = guard_mode::automatic);
  // Unmaps every chunk, including stacks still handed out, except those holding a stack passed
  // to keep_mapped.
  ~stack_pool();
  stack_pool(const stack_pool&) = delete;
  stack_pool& operator=(const stack_pool&) = delete;

  // The most recently returned stack if there is one, else a fresh slot (mapping a new chunk
  // when all are in use). Throws std::bad_alloc if the kernel refuses the mapping.
  stack get();
  // Takes back a stack this pool handed out. Its memory stays committed for the next get().
  void put(const stack& s) noexcept;
  // Takes back a stack and gives its memory to the kernel (MADV_DONTNEED): the slot and its
  // guard stay, and its pages are faulted in afresh when it is next used.
  void release(const stack& s) noexcept;
  // Leaves the chunk holding s mapped, and registered, for ever: the pool's destructor skips it
  // (a thread may still run on s: a G that shutdown left inside a blocking call). Leaks the
  // chunk: stacks_per_chunk slots of address space, and the pages its Gs touched.
  void keep_mapped(const stack& s) noexcept;
  // Unmaps the chunks none of whose stacks is handed out. Returns the bytes unmapped.
  std::size_t trim() noexcept;

  // The G running on s, for the overflow report. Lock-free; cleared when s is returned.
  static void set_owner(const stack& s, std::uint64_t gid) noexcept;
  static std::uint64_t owner(const stack& s) noexcept;
  // Whether a guard region that really faults lies below s.lo.
  static bool guarded(const stack& s) noexcept;

  std::size_t stack_size() const noexcept { return size_; }
  guard_mode mode() const noexcept { return mode_; }
  pool_stats stats() const;

  // How many stacks may carry mprotect guards at once in this process, counting all pools:
  // an eighth of vm.max_map_count (each guard splits off two VMAs, so guards take at most a
  // quarter of the map count, leaving the rest to malloc, thread stacks, libraries and the
  // application). Past it, stacks are handed out unguarded and one warning line is printed;
  // the warning is re-armed once every mprotect guard has been unmapped again.
  static std::size_t guard_budget() noexcept;

 private:
  void grow();
  void first_use(detail::slot* sl) noexcept;
  void unmap(detail::chunk* c) noexcept;

  std::size_t size_;
  guard_mode mode_;
  mutable std::mutex mu_;
  detail::slot* free_ = nullptr;  // LIFO, doubly linked through the slots
  detail::chunk* chunks_ = nullptr;
  pool_stats stats_;
};

// What the overflow handler needs to know about a faulting address. Async-signal-safe: reads
// the chunk registry with atomic loads only.
struct guard_hit {
  bool hit = false;          // addr lies in the guard region below some pool's stack
  std::uint64_t gid = 0;     // that stack's owner (0 if none was set)
  std::size_t stack_size = 0;
};
guard_hit find_guard(const void* addr) noexcept;

}  // namespace gort::rt
