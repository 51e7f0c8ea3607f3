// runtime/overflow: a G that overflows its stack is reported as such; other faults are not.
//
// Every test that installs the handler does so in a forked child, so the test process itself
// keeps its default (or sanitizer) actions and each child starts from a known state.
#include <catch2/catch_test_macros.hpp>

#include <alloca.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "child.hpp"
#include "probes.hpp"
#include "context.hpp"
#include "overflow.hpp"
#include "stack.hpp"

using gort::rt::guard_mode;
using gort::rt::stack;
using gort::rt::stack_pool;

namespace {

const std::string expected_line = "gort: stack overflow in G 42 (stack 262144 bytes)";

// The lines of stderr that are overflow reports (qemu and sanitizers add lines of their own).
std::vector<std::string> reports(const std::string& err) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < err.size()) {
    std::size_t end = err.find('\n', pos);
    if (end == std::string::npos) end = err.size();
    std::string line = err.substr(pos, end - pos);
    if (line.find("stack overflow") != std::string::npos) out.push_back(line);
    pos = end + 1;
  }
  return out;
}

volatile int stop_depth = INT_MAX;  // never reached; keeps the recursion formally finite

// 4 KiB frames, well under the 64 KiB guard, touched from their lowest byte up, so the first
// access past the stack lands inside the guard. The array is used after the recursive call,
// which keeps the compiler from turning the recursion into a loop.
[[gnu::noinline]] int recurse(int depth) {
  volatile char pad[4096];
  for (std::size_t i = 0; i < sizeof pad; i += 64) pad[i] = static_cast<char>(depth);
  if (depth == stop_depth) return pad[0];
  const int r = recurse(depth + 1);
  return r + pad[static_cast<std::size_t>(depth) % sizeof pad];
}

void overflow_entry(gort::arch::transfer) {
  recurse(0);
  _exit(5);  // unreachable: the recursion only ends in the guard
}

// Child body: run a G with id 42 that recurses until it hits its guard.
[[noreturn]] void overflow_in_child(guard_mode m) {
  gort::rt::install_overflow_handler();
  gort::rt::ensure_altstack();
  stack_pool p(gort::rt::default_stack_size, m);
  if (m != guard_mode::automatic && p.mode() != m) _exit(3);
  stack s = p.get();
  if (!stack_pool::guarded(s)) _exit(4);
  stack_pool::set_owner(s, 42);
  gort::arch::ctx c = gort::arch::gort_make(s.top(), overflow_entry);
  gort::arch::gort_jump(c, nullptr);
  _exit(6);
}

void check_overflow_report(const child_result& r) {
  INFO("child status " << r.status << ", stderr:\n" << r.out);
  CHECK(r.died_by(SIGABRT));
  const auto lines = reports(r.out);
  REQUIRE(lines.size() == 1);
  CHECK(lines[0] == expected_line);
}

// ---- Stack clash ---------------------------------------------------------------------------
//
// A frame larger than the guard. Compiled without -fstack-clash-protection (meson.build builds
// the tests with it, as gort.pc asks of every program), the stack pointer moves past the guard in
// one step, and a function that then uses the low end of its frame (its callees' frames, the
// start of its buffer) writes into the stack below without a fault. With the flag the compiler
// touches the frame's pages on the way down, at most 4 KiB (x86-64) or 64 KiB (AArch64) apart,
// and no more than the guard's 64 KiB, so a touch lands in the guard.

constexpr std::size_t clash_stack_size = 1024 * 1024;  // a 1 MiB frame still ends in the next stack
const std::string clash_line = "gort: stack overflow in G 42 (stack 1048576 bytes)";

enum class frame_kind { array, alloca_ };

struct clash_plan {
  char* lo = nullptr;         // the victim stack's lowest byte
  std::size_t keep = 0;       // stack left free below the frame that calls the big one
  std::size_t bytes = 0;      // the big frame
  frame_kind kind = frame_kind::array;
  char* neighbour_lo = nullptr;
  char* neighbour_hi = nullptr;
};
clash_plan plan;

constexpr unsigned char neighbour_fill = 0xA5;

[[gnu::noinline]] int big_frame() {
  if (plan.kind == frame_kind::alloca_) return big_alloca(plan.bytes);
  return plan.bytes == 100 * 1024 ? big_array<100 * 1024>() : big_array<1024 * 1024>();
}

// Takes the stack down to plan.keep bytes above lo, then calls the big frame from there: deep in
// the G, so that the big frame's low end lies below the guard.
[[gnu::noinline]] int descend_then_big_frame() {
  char* sp = static_cast<char*>(__builtin_frame_address(0));
  const std::size_t used = static_cast<std::size_t>(sp - plan.lo) - plan.keep;
  char* burnt = static_cast<char*>(alloca(used));
  asm volatile("" : : "r"(burnt) : "memory");
  return big_frame();
}

void clash_entry(gort::arch::transfer) {
  const int r = descend_then_big_frame();
  // Reached only if the big frame did not fault: say what it did to the stack below.
  std::size_t changed = 0;
  for (char* p = plan.neighbour_lo; p < plan.neighbour_hi; ++p)
    changed += static_cast<unsigned char>(*p) != neighbour_fill;
  std::printf("survived (%d): %zu bytes of the neighbouring stack overwritten\n", r, changed);
  std::fflush(stdout);
  _exit(20);
}

// Child body: two adjacent stacks of one pool; the victim (G 42) is the upper one, so its guard
// lies between it and the neighbour's top (G 41's).
[[noreturn]] void clash_in_child(frame_kind kind, std::size_t bytes, std::size_t keep) {
  gort::rt::install_overflow_handler();
  gort::rt::ensure_altstack();
  const guard_mode m = gort::rt::madvise_guard_works() ? guard_mode::madvise : guard_mode::mprotect;
  stack_pool p(clash_stack_size, m);
  stack below = p.get();
  stack victim = p.get();
  if (static_cast<char*>(victim.lo) - gort::rt::stack_guard_size != below.top()) _exit(3);
  if (!stack_pool::guarded(victim)) _exit(4);
  stack_pool::set_owner(below, 41);
  stack_pool::set_owner(victim, 42);
  std::memset(below.lo, neighbour_fill, below.size);
  plan = {static_cast<char*>(victim.lo), keep, bytes, kind, static_cast<char*>(below.lo),
          static_cast<char*>(below.top())};
  gort::arch::ctx c = gort::arch::gort_make(victim.top(), clash_entry);
  gort::arch::gort_jump(c, nullptr);
  _exit(6);
}

}  // namespace

TEST_CASE("a frame larger than the guard faults in the guard, not in the stack below", "[overflow]") {
  // keep: how much stack is left where the big frame starts, which moves the probes' phase
  // against the guard. With 100 KiB and keep = 32 KiB the frame's low end is 4 KiB below the
  // guard; with 1 MiB, about 1 MiB below, near the bottom of the neighbouring stack.
  for (frame_kind kind : {frame_kind::array, frame_kind::alloca_}) {
    for (std::size_t bytes : {std::size_t{100 * 1024}, std::size_t{1024 * 1024}}) {
      for (std::size_t keep : {std::size_t{2 * 1024}, std::size_t{13 * 1024}, std::size_t{32 * 1024}}) {
        const char* frame = kind == frame_kind::array ? "array" : "alloca";
        CAPTURE(frame, bytes, keep);
        const auto r = run_in_child([&] { clash_in_child(kind, bytes, keep); });
        INFO("child status " << r.status << ", stderr:\n" << r.out);
        CHECK(r.died_by(SIGABRT));
        CHECK(reports(r.out) == std::vector<std::string>{clash_line});
      }
    }
  }
}

TEST_CASE("an overflow into a MADV_GUARD_INSTALL guard is reported", "[overflow]") {
  if (!gort::rt::madvise_guard_works())
    SKIP("MADV_GUARD_INSTALL installs no faulting guard here (qemu-user, or Linux < 6.13)");
  check_overflow_report(run_in_child([] { overflow_in_child(guard_mode::madvise); }));
}

TEST_CASE("an overflow into an mprotect guard is reported", "[overflow]") {
  check_overflow_report(run_in_child([] { overflow_in_child(guard_mode::mprotect); }));
}

TEST_CASE("an overflow on another thread is reported", "[overflow]") {
  check_overflow_report(run_in_child([] {
    const guard_mode m = gort::rt::madvise_guard_works() ? guard_mode::madvise : guard_mode::mprotect;
    std::thread t([m] { overflow_in_child(m); });
    t.join();
    _exit(7);
  }));
}

TEST_CASE("an overflow is reported when another SIGSEGV handler was installed first", "[overflow]") {
  check_overflow_report(run_in_child([] {
    struct sigaction sa {};
    sa.sa_handler = [](int) { _exit(8); };
    sigaction(SIGSEGV, &sa, nullptr);
    overflow_in_child(guard_mode::mprotect);
  }));
}

TEST_CASE("a fault outside any guard is not reported as an overflow", "[overflow]") {
  const auto r = run_in_child([] {
    gort::rt::install_overflow_handler();
    gort::rt::ensure_altstack();
    // A live pool with guards, so the registry is not empty.
    stack_pool p(gort::rt::default_stack_size, guard_mode::mprotect);
    stack s = p.get();
    stack_pool::set_owner(s, 42);
    const auto pg = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    void* q = mmap(nullptr, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED) _exit(3);
    *static_cast<volatile char*>(q) = 1;
    _exit(0);
  });
  INFO("child status " << r.status << ", stderr:\n" << r.out);
  CHECK(r.died_by(SIGSEGV));
  CHECK(reports(r.out).empty());
}

TEST_CASE("other faults go to the handler that was there before", "[overflow]") {
  const auto r = run_in_child([] {
    struct sigaction sa {};
    sa.sa_sigaction = [](int sig, siginfo_t* si, void*) {
      const bool ok = sig == SIGSEGV && si->si_code > 0;
      _exit(ok ? 9 : 10);
    };
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, nullptr);
    gort::rt::install_overflow_handler();
    gort::rt::install_overflow_handler();  // idempotent: must not chain to itself
    gort::rt::ensure_altstack();
    const auto pg = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    void* q = mmap(nullptr, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED) _exit(3);
    *static_cast<volatile char*>(q) = 1;
    _exit(0);
  });
  INFO("child status " << r.status << ", stderr:\n" << r.out);
  CHECK(r.exited(9));
  CHECK(reports(r.out).empty());
}

TEST_CASE("the handler is installed once, on the alternate stack, with siginfo", "[overflow]") {
  const auto r = run_in_child([] {
    gort::rt::install_overflow_handler();
    struct sigaction a {}, b {};
    sigaction(SIGSEGV, nullptr, &a);
    gort::rt::install_overflow_handler();
    sigaction(SIGSEGV, nullptr, &b);
    if (a.sa_sigaction != b.sa_sigaction) _exit(3);
    if (!(a.sa_flags & SA_ONSTACK) || !(a.sa_flags & SA_SIGINFO)) _exit(4);
    struct sigaction bus {};
    sigaction(SIGBUS, nullptr, &bus);
    if (bus.sa_sigaction != a.sa_sigaction) _exit(5);
    // A SIGSEGV sent rather than faulted still gets the action from before (re-raised, since
    // returning from the handler does not repeat it), and the handler did not chain to itself.
    raise(SIGSEGV);
    _exit(0);
  });
  INFO("child status " << r.status << ", stderr:\n" << r.out);
  CHECK(r.died_by(SIGSEGV));
  CHECK(reports(r.out).empty());
}

TEST_CASE("every thread gets its own alternate stack, freed at exit", "[overflow]") {
  gort::rt::ensure_altstack();
  stack_t main_ss{};
  REQUIRE(sigaltstack(nullptr, &main_ss) == 0);
  CHECK_FALSE(main_ss.ss_flags & SS_DISABLE);
  CHECK(main_ss.ss_size >= 16 * 1024);
  gort::rt::ensure_altstack();
  stack_t again{};
  REQUIRE(sigaltstack(nullptr, &again) == 0);
  CHECK(again.ss_sp == main_ss.ss_sp);

  stack_t thread_ss{};
  bool had_one = false;
  std::thread t([&] {
    stack_t before{};
    sigaltstack(nullptr, &before);
    had_one = !(before.ss_flags & SS_DISABLE);
    gort::rt::ensure_altstack();
    sigaltstack(nullptr, &thread_ss);
  });
  t.join();
  CHECK_FALSE(thread_ss.ss_flags & SS_DISABLE);
  CHECK(thread_ss.ss_sp != main_ss.ss_sp);
  if (!had_one) {
    // Ours: the exact size, and unmapped once the thread is gone.
    CHECK(thread_ss.ss_size == gort::rt::altstack_size);
    const auto pg = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    CHECK(msync(thread_ss.ss_sp, pg, MS_ASYNC) == -1);
    CHECK(errno == ENOMEM);
  }
}
