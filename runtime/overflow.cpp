// gort: the SIGSEGV/SIGBUS handler that reports G stack overflows (see overflow.hpp).
#include "overflow.hpp"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <system_error>
#include <utility>

#include "stack.hpp"

namespace gort::rt {

namespace {

// Per signal: the action found when ours was installed, and whether ours is (or was, and has
// been replaced by a handler that may chain to it). `prev` is written only while `installed`
// is false, before the sigaction call that installs ours (which orders the stores for the
// handler), and only read while ours can run. Both under install_mu.
struct fault_action {
  struct sigaction prev;
  bool installed = false;
};
fault_action segv_action;
fault_action bus_action;
std::mutex install_mu;

const struct sigaction& prev_for(int sig) noexcept {
  return sig == SIGBUS ? bus_action.prev : segv_action.prev;
}

char* put_str(char* p, const char* s) noexcept {
  while (*s) *p++ = *s++;
  return p;
}

char* put_num(char* p, std::uint64_t v) noexcept {
  char digits[20];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) *p++ = digits[--n];
  return p;
}

std::atomic<bool> reporting{false};
static_assert(std::atomic<bool>::is_always_lock_free);

[[noreturn]] void report(const guard_hit& h) noexcept {
  // One line per process: if two Gs overflow at once, the second thread waits for the first
  // one's abort() to end the process.
  if (reporting.exchange(true, std::memory_order_relaxed))
    for (;;) pause();
  char line[96];  // 42 fixed characters and two numbers of at most 20 digits
  char* p = put_str(line, "gort: stack overflow in G ");
  p = put_num(p, h.gid);
  p = put_str(p, " (stack ");
  p = put_num(p, h.stack_size);
  p = put_str(p, " bytes)\n");
  const char* q = line;
  while (q < p) {
    const ssize_t n = ::write(STDERR_FILENO, q, static_cast<std::size_t>(p - q));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    q += n;
  }
  std::abort();
}

// Not a guard hit: hand the signal to whoever had it before us. A handler function is called
// directly, as if the kernel had invoked it, and ours stays installed, so a later overflow on
// another thread is still reported even if that handler survives this fault. The default
// action (or "ignore", which the kernel overrides for faults) is put back and the faulting
// instruction runs again on return, so the process dies exactly as it would have without us:
// same signal, same core dump.
void chain(int sig, siginfo_t* si, void* uc) noexcept {
  const struct sigaction& p = prev_for(sig);
  if (p.sa_handler == SIG_DFL || p.sa_handler == SIG_IGN) {
    sigaction(sig, &p, nullptr);
    // A signal sent with kill() is not re-raised by returning; send it again. It is blocked
    // until this handler returns, and then meets the restored action.
    if (si->si_code <= 0) raise(sig);
    return;
  }
  if (p.sa_flags & SA_SIGINFO)
    p.sa_sigaction(sig, si, uc);
  else
    p.sa_handler(sig);
}

// Async-signal-safety: this runs on the thread's alternate stack at any point of the program,
// possibly while the same thread holds the pool or registry mutex, or is halfway through
// rewriting a registry entry. So it takes no lock and allocates nothing: find_guard() only
// loads lock-free atomics from registry blocks that are never freed, and validates what it
// read with the entry's sequence count; a chunk being created or retracted at this moment is
// skipped, which is safe because the faulting G's own chunk cannot be either while the G runs
// on it. write(2), abort(), sigaction() and raise() are async-signal-safe; errno is restored
// for the handlers we chain to and the interrupted code.
void on_fault(int sig, siginfo_t* si, void* uc) {
  const int saved_errno = errno;
  // si_code > 0: raised by the kernel for a fault, so si_addr is the faulting address.
  if (si->si_code > 0) {
    const guard_hit h = find_guard(si->si_addr);
    if (h.hit) report(h);
  }
  chain(sig, si, uc);
  errno = saved_errno;
}

// The alternate stack this thread mapped, if it did, and the one it replaced.
struct altstack {
  void* map = nullptr;
  std::size_t len = 0;
  stack_t prev{};

  ~altstack() {
    if (!map) return;
    const auto pg = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    stack_t cur{};
    // Only unmap what is still ours and unused, and hand the thread back the stack we replaced
    // (whose owner may unmap it when the thread ends: ASan unmaps whatever altstack a thread
    // has then). If someone replaced ours in turn, they may have unmapped it already: leaking
    // 64 KiB is better than unmapping memory that is no longer ours.
    if (sigaltstack(nullptr, &cur) == 0 && cur.ss_sp == static_cast<char*>(map) + pg &&
        !(cur.ss_flags & SS_ONSTACK)) {
      stack_t off{};
      off.ss_flags = SS_DISABLE;
      if (sigaltstack(prev.ss_flags & SS_DISABLE ? &off : &prev, nullptr) == 0) munmap(map, len);
    }
  }
};
thread_local altstack alt;

constexpr std::size_t min_foreign_altstack = 16 * 1024;

}  // namespace

bool install_overflow_handler() {
  std::lock_guard<std::mutex> l(install_mu);
  struct sigaction sa {};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_ONSTACK | SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  bool did = false;
  for (auto [sig, a] : {std::pair{SIGSEGV, &segv_action}, std::pair{SIGBUS, &bus_action}}) {
    if (a->installed) continue;
    // Save the old action first: another thread may fault the moment ours is in place.
    sigaction(sig, nullptr, &a->prev);
    if (sigaction(sig, &sa, nullptr) != 0) continue;
    a->installed = true;
    did = true;
  }
  return did;
}

void uninstall_overflow_handler() {
  std::lock_guard<std::mutex> l(install_mu);
  for (auto [sig, a] : {std::pair{SIGSEGV, &segv_action}, std::pair{SIGBUS, &bus_action}}) {
    if (!a->installed) continue;
    struct sigaction cur {};
    if (sigaction(sig, nullptr, &cur) != 0 || !(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != on_fault)
      continue;  // replaced: the new handler may chain to ours, which therefore stays usable
    if (sigaction(sig, &a->prev, nullptr) == 0) a->installed = false;
  }
}

void unblock_fault_signals() noexcept {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGSEGV);
  sigaddset(&s, SIGBUS);
  pthread_sigmask(SIG_UNBLOCK, &s, nullptr);
}

void ensure_altstack() {
  // Asked every time rather than remembered: whoever lent the thread its current alternate
  // stack (a test framework, for one) may take it back. One syscall per thread start is cheap.
  stack_t cur{};
  if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE) &&
      cur.ss_size >= min_foreign_altstack)
    return;
  const auto pg = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  if (!alt.map) {
    const std::size_t len = altstack_size + pg;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    // A page of PROT_NONE below: a handler that overflows the alternate stack faults (and the
    // kernel kills the thread) instead of silently overwriting whatever is mapped below.
    mprotect(p, pg, PROT_NONE);
    alt.map = p;
    alt.len = len;
  }
  stack_t ss{};
  ss.ss_sp = static_cast<char*>(alt.map) + pg;
  ss.ss_size = altstack_size;
  if (sigaltstack(&ss, &alt.prev) != 0)
    throw std::system_error(errno, std::generic_category(), "gort: sigaltstack");
}

}  // namespace gort::rt
