// gort: the pool of G stacks (see stack.hpp for the design).
#include "stack.hpp"

#include "env.hpp"
#include "fiber.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "gort_build_config.h"

#if GORT_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#endif

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102  // Linux 6.13 uapi; glibc headers may not know it yet
#endif

namespace gort::rt {

namespace {

std::size_t page_size() noexcept {
  static const std::size_t pg = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return pg;
}

// One line to stderr, ignoring failure: there is nobody left to tell.
void say(const char* msg) noexcept {
  std::size_t len = std::strlen(msg);
  while (len > 0) {
    ssize_t n = ::write(STDERR_FILENO, msg, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    msg += n;
    len -= static_cast<std::size_t>(n);
  }
}

// ---- The chunk registry ------------------------------------------------------------------
//
// Process-wide and shared by all pools, because the SIGSEGV handler must map a faulting
// address to a stack without knowing which pools exist. Entries live in blocks that are
// allocated once and never freed, so a reader can never touch freed memory; an entry is reused
// when its chunk is unmapped. Writers (chunk map/unmap) serialise on `mu`. The reader (the
// signal handler, which may interrupt a writer on the same thread and so can never take the
// lock) validates each entry with a sequence count: odd while the entry is being rewritten,
// and a reader that sees it change discards what it read. Everything a reader loads is a
// lock-free atomic, which is what makes it async-signal-safe.

struct entry {
  std::atomic<std::uint64_t> seq{0};
  std::atomic<std::uintptr_t> base{0};  // 0 while the entry is free
  std::atomic<std::size_t> slot_size{0};
  std::atomic<std::size_t> guard{0};    // 0 when the pool installs no guards
  std::atomic<std::size_t> stack_size{0};
  std::atomic<std::uint64_t> owner[stacks_per_chunk]{};
  entry* next_free = nullptr;  // under registry::mu
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uintptr_t>::is_always_lock_free);
static_assert(std::atomic<std::size_t>::is_always_lock_free);

constexpr std::size_t block_len = 256;      // entries per block: 16384 stacks
constexpr std::size_t max_blocks = 16384;  // 4M chunks, 256M stacks: past any real process

struct registry {
  std::mutex mu;
  entry* free = nullptr;
  std::size_t used = block_len;  // entries taken from the newest block
  std::atomic<std::size_t> nblocks{0};
  std::atomic<entry*> blocks[max_blocks]{};
};
constinit registry reg;

// Writer side of the sequence count: the release fence keeps the field stores from being seen
// before the odd count, the final release store publishes them with the even count.
template <class F>
void rewrite(entry& e, F&& f) noexcept {
  const std::uint64_t s = e.seq.load(std::memory_order_relaxed);
  e.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  f();
  e.seq.store(s + 2, std::memory_order_release);
}

entry* publish(std::uintptr_t base, std::size_t slot_size, std::size_t guard,
               std::size_t stack_size) {
  std::lock_guard lk(reg.mu);
  entry* e = reg.free;
  if (e) {
    reg.free = e->next_free;
  } else {
    if (reg.used == block_len) {
      const std::size_t n = reg.nblocks.load(std::memory_order_relaxed);
      if (n == max_blocks) throw std::bad_alloc();
      reg.blocks[n].store(new entry[block_len], std::memory_order_release);
      reg.nblocks.store(n + 1, std::memory_order_release);
      reg.used = 0;
    }
    e = &reg.blocks[reg.nblocks.load(std::memory_order_relaxed) - 1].load(
        std::memory_order_relaxed)[reg.used++];
  }
  rewrite(*e, [&] {
    for (auto& o : e->owner) o.store(0, std::memory_order_relaxed);
    e->slot_size.store(slot_size, std::memory_order_relaxed);
    e->guard.store(guard, std::memory_order_relaxed);
    e->stack_size.store(stack_size, std::memory_order_relaxed);
    e->base.store(base, std::memory_order_relaxed);
  });
  return e;
}

// Called before the chunk is unmapped, so no reader can match an address in a mapping that may
// be reused by someone else.
void retract(entry* e) noexcept {
  std::lock_guard lk(reg.mu);
  rewrite(*e, [&] { e->base.store(0, std::memory_order_relaxed); });
  e->next_free = reg.free;
  reg.free = e;
}

// ---- Guards ------------------------------------------------------------------------------

bool probe_madvise_guard() noexcept {
  const std::size_t pg = page_size();
  void* p = mmap(nullptr, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  bool works = false;
  int fds[2];
  // The kernel reads the buffer of write(2) itself and reports a guard as EFAULT instead of a
  // signal, so the probe needs no SIGSEGV handler. Under qemu-user madvise returns 0 without
  // doing anything and the write succeeds. The second write checks the probe itself works.
  if (::madvise(p, pg, MADV_GUARD_INSTALL) == 0 && pipe2(fds, O_CLOEXEC) == 0) {
    const bool faulted = ::write(fds[1], p, 1) < 0 && errno == EFAULT;
    const bool rest_ok = ::write(fds[1], static_cast<char*>(p) + pg, 1) == 1;
    works = faulted && rest_ok;
    ::close(fds[0]);
    ::close(fds[1]);
  }
  munmap(p, 2 * pg);
  return works;
}

std::size_t read_max_map_count() noexcept {
  std::size_t v = 65530;  // the kernel default, if /proc is unreadable
  int fd = ::open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return v;
  char buf[32];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n > 0) {
    buf[n] = 0;
    char* end = nullptr;
    unsigned long long x = std::strtoull(buf, &end, 10);
    if (end != buf && x > 0) v = static_cast<std::size_t>(x);
  }
  return v;
}

std::size_t max_map_count() noexcept {
  static const std::size_t n = read_max_map_count();
  return n;
}

// mprotect guards currently installed, over all pools.
std::atomic<std::size_t> mprotect_guards{0};
std::atomic<bool> budget_warned{false};

bool claim_guard() noexcept {
  if (mprotect_guards.fetch_add(1, std::memory_order_relaxed) < stack_pool::guard_budget())
    return true;
  mprotect_guards.fetch_sub(1, std::memory_order_relaxed);
  return false;
}

void release_guards(std::size_t n) noexcept {
  if (n != 0 && mprotect_guards.fetch_sub(n, std::memory_order_relaxed) == n)
    budget_warned.store(false, std::memory_order_relaxed);
}

void warn_budget() noexcept {
  if (budget_warned.exchange(true, std::memory_order_relaxed)) return;
  char msg[200];
  std::snprintf(msg, sizeof msg,
                "gort: warning: stack guard budget exhausted: vm.max_map_count = %zu allows %zu "
                "mprotect-guarded stacks; further stacks have no guard page\n",
                max_map_count(), stack_pool::guard_budget());
  say(msg);
}

guard_mode resolve(guard_mode m) noexcept {
  if (m == guard_mode::automatic) m = stack_guard_from_env();
  if (m == guard_mode::automatic || m == guard_mode::madvise)
    m = madvise_guard_works() ? guard_mode::madvise : guard_mode::mprotect;
  return m;
}

}  // namespace

namespace detail {

enum class guard_kind : std::uint8_t { none, madvise, mprotect };

struct slot {
  slot* prev = nullptr;  // free-list links
  slot* next = nullptr;
  chunk* home = nullptr;
  std::uint32_t index = 0;
  guard_kind guard = guard_kind::none;
  bool used = false;     // handed out now
  bool touched = false;  // handed out before: guard decided, Valgrind told
  unsigned vg_id = 0;
};

struct chunk {
  std::byte* base = nullptr;
  std::size_t bytes = 0;
  entry* reg = nullptr;
  const stack_pool* pool = nullptr;
  chunk* prev = nullptr;
  chunk* next = nullptr;
  std::size_t in_use = 0;
  std::size_t mprotect_guards = 0;
  bool kept = false;  // keep_mapped: never unmapped
  slot slots[stacks_per_chunk];
};

}  // namespace detail

using detail::chunk;
using detail::guard_kind;
using detail::slot;

namespace {
// Chunks left mapped by keep_mapped once their pool is gone, linked through chunk::next: held
// here so that they stay reachable (leak checkers), never touched again.
std::mutex kept_mu;
chunk* kept_chunks = nullptr;
}  // namespace

const char* to_string(guard_mode m) noexcept {
  switch (m) {
    case guard_mode::automatic: return "auto";
    case guard_mode::madvise: return "madvise";
    case guard_mode::mprotect: return "mprotect";
    case guard_mode::none: return "none";
  }
  return "?";
}

bool madvise_guard_works() noexcept {
  static const bool works = probe_madvise_guard();
  return works;
}

std::size_t stack_pool::guard_budget() noexcept { return max_map_count() / 8; }

stack_pool::stack_pool(std::size_t stack_size, guard_mode mode) : size_(stack_size) {
  const std::size_t pg = page_size();
  const std::size_t max = SIZE_MAX / stacks_per_chunk - stack_guard_size;
  if (stack_size < min_stack_size || stack_size % pg != 0 || stack_size > max)
    throw std::invalid_argument(
        "gort: invalid stack size " + std::to_string(stack_size) +
        " bytes: it must be a multiple of the page size (" + std::to_string(pg) +
        ") and at least min_stack_size (" + std::to_string(min_stack_size) + ")" +
        (stack_size > max ? ", and small enough to map" : ""));
  mode_ = resolve(mode);
}

stack_pool::~stack_pool() {
  while (chunk* c = chunks_) {
    if (!c->kept) {
      unmap(c);
      continue;
    }
    // Left as it is, mapping, registry entry and bookkeeping (the thread on it may fault into a
    // guard, and the overflow handler then reads the entry); only unlinked from this pool.
    chunks_ = c->next;
    if (chunks_) chunks_->prev = nullptr;
    c->prev = nullptr;
    std::lock_guard lk(kept_mu);
    c->next = kept_chunks;
    kept_chunks = c;
  }
}

void stack_pool::keep_mapped(const stack& s) noexcept {
  std::lock_guard lk(mu_);
  s.where->home->kept = true;
}

void stack_pool::grow() {
  const std::size_t slot_size = stack_guard_size + size_;
  const std::size_t bytes = slot_size * stacks_per_chunk;
  auto* c = new chunk;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    delete c;
    throw std::bad_alloc();
  }
  // With THP=always one touched byte would commit a 2 MiB page per stack. The flag is part of
  // the VMA, so chunks that all carry it still merge. Failure (no THP support) is harmless.
  ::madvise(p, bytes, MADV_NOHUGEPAGE);
  try {
    c->reg = publish(reinterpret_cast<std::uintptr_t>(p), slot_size,
                     mode_ == guard_mode::none ? 0 : stack_guard_size, size_);
  } catch (...) {
    munmap(p, bytes);
    delete c;
    throw;
  }
  c->base = static_cast<std::byte*>(p);
  c->bytes = bytes;
  c->pool = this;
  // Push in reverse so slot 0 comes out first: stacks are handed out in address order.
  for (std::size_t i = stacks_per_chunk; i-- > 0;) {
    slot& s = c->slots[i];
    s.home = c;
    s.index = static_cast<std::uint32_t>(i);
    s.next = free_;
    if (free_) free_->prev = &s;
    free_ = &s;
  }
  c->next = chunks_;
  if (chunks_) chunks_->prev = c;
  chunks_ = c;
  stats_.chunks++;
  stats_.cached += stacks_per_chunk;
  stats_.mapped_bytes += bytes;
}

// The guard goes in when a slot is first handed out, so slots that are never used cost no
// syscall and, with mprotect, no VMAs.
void stack_pool::first_use(slot* sl) noexcept {
  chunk* c = sl->home;
  std::byte* guard = c->base + sl->index * (stack_guard_size + size_);
  std::byte* lo = guard + stack_guard_size;
  sl->touched = true;
  if (mode_ == guard_mode::madvise && ::madvise(guard, stack_guard_size, MADV_GUARD_INSTALL) == 0)
    sl->guard = guard_kind::madvise;
  // An mprotect fallback for a failed MADV_GUARD_INSTALL too: the probe said it works, so a
  // failure here is a transient condition (e.g. ENOMEM for page tables), not a missing feature.
  if (mode_ != guard_mode::none && sl->guard == guard_kind::none) {
    if (claim_guard()) {
      if (mprotect(guard, stack_guard_size, PROT_NONE) == 0) {
        sl->guard = guard_kind::mprotect;
        c->mprotect_guards++;
      } else {
        release_guards(1);  // ENOMEM: the map count is used up by someone else
        warn_budget();
      }
    } else {
      warn_budget();
    }
  }
#if GORT_HAVE_VALGRIND
  sl->vg_id = VALGRIND_STACK_REGISTER(lo, lo + size_);
#else
  (void)lo;
#endif
}

stack stack_pool::get() {
  std::lock_guard lk(mu_);
  if (!free_) grow();
  slot* sl = free_;
  free_ = sl->next;
  if (free_) free_->prev = nullptr;
  sl->next = nullptr;
  sl->used = true;
  sl->home->in_use++;
  if (!sl->touched) first_use(sl);
  stats_.live++;
  stats_.cached--;
  if (sl->guard == guard_kind::none) stats_.unguarded++;
  std::byte* lo = sl->home->base + sl->index * (stack_guard_size + size_) + stack_guard_size;
  return stack{lo, size_, sl};
}

void stack_pool::put(const stack& s) noexcept {
  slot* sl = s.where;
  assert(sl && sl->used && sl->home->pool == this && "stack returned to the wrong pool");
  sl->home->reg->owner[sl->index].store(0, std::memory_order_relaxed);
  std::lock_guard lk(mu_);
  sl->used = false;
  sl->home->in_use--;
  sl->prev = nullptr;
  sl->next = free_;
  if (free_) free_->prev = sl;
  free_ = sl;
  stats_.live--;
  stats_.cached++;
  if (sl->guard == guard_kind::none) stats_.unguarded--;
}

void stack_pool::release(const stack& s) noexcept {
  ::madvise(s.lo, s.size, MADV_DONTNEED);  // cannot fail on a range we mapped
  put(s);
}

std::size_t stack_pool::trim() noexcept {
  std::lock_guard lk(mu_);
  std::size_t freed = 0;
  for (chunk* c = chunks_; c;) {
    chunk* next = c->next;
    if (c->in_use == 0) {
      for (slot& s : c->slots) {
        (s.prev ? s.prev->next : free_) = s.next;
        if (s.next) s.next->prev = s.prev;
      }
      stats_.cached -= stacks_per_chunk;
      freed += c->bytes;
      unmap(c);
    }
    c = next;
  }
  return freed;
}

void stack_pool::unmap(chunk* c) noexcept {
#if GORT_HAVE_VALGRIND
  for (slot& s : c->slots)
    if (s.touched) VALGRIND_STACK_DEREGISTER(s.vg_id);
#endif
  retract(c->reg);
  forget_stack_shadow(c->base, c->bytes);
  munmap(c->base, c->bytes);
  release_guards(c->mprotect_guards);
  (c->prev ? c->prev->next : chunks_) = c->next;
  if (c->next) c->next->prev = c->prev;
  stats_.chunks--;
  stats_.mapped_bytes -= c->bytes;
  delete c;
}

void stack_pool::set_owner(const stack& s, std::uint64_t gid) noexcept {
  s.where->home->reg->owner[s.where->index].store(gid, std::memory_order_relaxed);
}

std::uint64_t stack_pool::owner(const stack& s) noexcept {
  return s.where->home->reg->owner[s.where->index].load(std::memory_order_relaxed);
}

bool stack_pool::guarded(const stack& s) noexcept { return s.where->guard != guard_kind::none; }

pool_stats stack_pool::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

// Async-signal-safe: atomic loads over blocks that are never freed, no locks, no allocation.
guard_hit find_guard(const void* addr) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  const std::size_t nb = reg.nblocks.load(std::memory_order_acquire);
  for (std::size_t b = 0; b < nb; b++) {
    entry* blk = reg.blocks[b].load(std::memory_order_acquire);
    if (!blk) continue;
    for (std::size_t i = 0; i < block_len; i++) {
      entry& e = blk[i];
      const std::uint64_t s1 = e.seq.load(std::memory_order_acquire);
      if (s1 & 1) continue;
      const std::uintptr_t base = e.base.load(std::memory_order_relaxed);
      const std::size_t slot_size = e.slot_size.load(std::memory_order_relaxed);
      const std::size_t guard = e.guard.load(std::memory_order_relaxed);
      if (base == 0 || slot_size == 0 || a < base || a - base >= slot_size * stacks_per_chunk)
        continue;
      const std::size_t off = a - base;
      if (off % slot_size >= guard) continue;
      guard_hit h{true, e.owner[off / slot_size].load(std::memory_order_relaxed),
                  e.stack_size.load(std::memory_order_relaxed)};
      std::atomic_thread_fence(std::memory_order_acquire);
      if (e.seq.load(std::memory_order_relaxed) != s1) continue;
      return h;
    }
  }
  return {};
}

}  // namespace gort::rt
