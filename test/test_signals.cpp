// The runtime and the program's signals: Ms unblock the signals gort needs whatever mask they
// inherit, gort's own SIGURGs never reach the program's handler while the program's always do,
// and run() puts back every signal action it installed, however it ends.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <gort/gort.hpp>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>

#include "child.hpp"
#include "sched.hpp"
#include "stack.hpp"
#include "probes.hpp"
#include "test_util.hpp"

using Catch::Matchers::ContainsSubstring;
using namespace std::chrono_literals;

namespace {

gort::config cfg(unsigned procs, std::chrono::nanoseconds slice = 10ms) {
  gort::config c;
  c.procs = procs;
  c.time_slice = slice;
  return c;
}


// The program's SIGURG handler: counts calls and keeps the last si_code.
std::atomic<int> urg_calls{0};
std::atomic<int> urg_last_code{INT_MIN};
static_assert(std::atomic<int>::is_always_lock_free);

void count_urg(int, siginfo_t* si, void*) {
  urg_last_code.store(si->si_code, std::memory_order_relaxed);
  urg_calls.fetch_add(1, std::memory_order_relaxed);
}

// Sets an action for the scope and puts back the one before.
struct scoped_action {
  int sig;
  struct sigaction old {};
  scoped_action(int s, const struct sigaction& sa) : sig(s) { REQUIRE(sigaction(s, &sa, &old) == 0); }
  ~scoped_action() { sigaction(sig, &old, nullptr); }
  scoped_action(const scoped_action&) = delete;
  scoped_action& operator=(const scoped_action&) = delete;
};

struct sigaction counting_urg_action() {
  struct sigaction sa {};
  sa.sa_sigaction = count_urg;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  return sa;
}

// Blocks signals in the calling thread for the scope.
struct scoped_block {
  sigset_t old;
  explicit scoped_block(const sigset_t& s) { REQUIRE(pthread_sigmask(SIG_BLOCK, &s, &old) == 0); }
  ~scoped_block() { pthread_sigmask(SIG_SETMASK, &old, nullptr); }
  scoped_block(const scoped_block&) = delete;
  scoped_block& operator=(const scoped_block&) = delete;
};

sigset_t all_signals() {
  sigset_t s;
  sigfillset(&s);
  return s;
}

// Waits up to `limit` for urg_calls to reach n, without any runtime call (the caller may hold
// a no_preempt region, and a wait through the scheduler would end its slice).
bool await_urg_calls(int n, std::chrono::seconds limit = 10s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (urg_calls.load(std::memory_order_relaxed) < n)
    if (std::chrono::steady_clock::now() > until) return false;
  return true;
}

// Runs f on a new thread that has every signal blocked, as a program that takes its signals
// with sigwait or a signalfd does before gort::run. The calling thread keeps its own mask (in
// run_in_child, SIGALRM unblocked: the child's timeout still works).
template <class F>
void on_thread_with_all_blocked(F f) {
  std::thread t([&f] {
    const sigset_t all = all_signals();
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    f();
  });
  t.join();
}

volatile int never = INT_MAX;
std::atomic<bool> never_set{false};  // not const: a loop on a constant may be assumed to end

[[gnu::noinline]] int deep(int depth) {
  volatile char pad[2048];
  for (std::size_t i = 0; i < sizeof pad; i += 64) pad[i] = static_cast<char>(depth);
  if (depth == never) return pad[0];
  return deep(depth + 1) + pad[64];
}

}  // namespace

TEST_CASE("with every signal blocked in run's caller, a spinning G is preempted and run returns",
          "[signals]") {
  clean_env env;
  const auto r = run_in_child(
      [] {
        on_thread_with_all_blocked([] {
          std::atomic<bool> flag{false};
          bool urg_blocked = true, segv_blocked = true, bus_blocked = true, usr1_blocked = false,
               term_blocked = false;
          const std::uint64_t before = gort::rt::sched.npreempted.load();
          gort::run(cfg(1, 1ms), [&] {
            // The M's mask: what gort needs unblocked, the rest as inherited.
            sigset_t cur;
            pthread_sigmask(SIG_SETMASK, nullptr, &cur);
            urg_blocked = sigismember(&cur, SIGURG);
            segv_blocked = sigismember(&cur, SIGSEGV);
            bus_blocked = sigismember(&cur, SIGBUS);
            usr1_blocked = sigismember(&cur, SIGUSR1);
            term_blocked = sigismember(&cur, SIGTERM);
            spin_until_preempted(flag);  // the setter runs only if the spinner is stopped
            // Left spinning at shutdown: only the signal can stop it there.
            std::atomic<bool> started{false};
            gort::go([&started] {
              started.store(true);
              SPIN(never_set);
            });
            while (!started.load()) gort::yield();
          });
          std::printf("flag=%d preempted=%d urg=%d segv=%d bus=%d usr1=%d term=%d\n",
                      flag.load() ? 1 : 0, gort::rt::sched.npreempted.load() > before ? 1 : 0,
                      urg_blocked ? 1 : 0, segv_blocked ? 1 : 0, bus_blocked ? 1 : 0,
                      usr1_blocked ? 1 : 0, term_blocked ? 1 : 0);
        });
      },
      120);
  INFO("child status " << r.status << ", output:\n" << r.out);
  REQUIRE(r.exited(0));  // a hang (the spinners never stopped) ends in SIGALRM
  CHECK_THAT(r.out, ContainsSubstring("flag=1 preempted=1 urg=0 segv=0 bus=0 usr1=1 term=1\n"));
}

TEST_CASE("with every signal blocked in run's caller, a G's stack overflow is reported",
          "[signals]") {
  clean_env env;
  const auto r = run_in_child([] {
    on_thread_with_all_blocked([] {
      gort::run(gort::config{.procs = 2, .stack_size = 64 * 1024}, [] {
        auto t = gort::spawn([] {
          std::printf("victim %llu\n", static_cast<unsigned long long>(gort::detail::current_g_id()));
          std::fflush(stdout);
          return deep(0);
        });
        t.join();
      });
    });
  });
  INFO("child status " << r.status << ", output:\n" << r.out);
  // Without the unblocked SIGSEGV the kernel kills the process with it, and nothing is printed.
  CHECK(r.died_by(SIGABRT));
  const auto at = r.out.find("victim ");
  REQUIRE(at != std::string::npos);
  const std::string id = r.out.substr(at + 7, r.out.find('\n', at) - at - 7);
  CHECK_THAT(r.out, ContainsSubstring("gort: stack overflow in G " + id + " (stack 65536 bytes)\n"));
}

TEST_CASE("the SIGURGs gort sends to preempt never reach the program's handler", "[signals]") {
  clean_env env;
  const scoped_action urg(SIGURG, counting_urg_action());
  urg_calls.store(0);
  const int rounds = static_cast<int>(std::max<long>(2, 10 / test_scale()));
  const long iters = std::max<long>(20, 300 / test_scale());
  const std::uint64_t before = gort::rt::sched.npreempted.load();
  long yields = 0;
  for (int r = 0; r < rounds; ++r) {
    yields += gort::run(cfg(2, 100us), [iters] {
      // Two Gs that never call into the runtime, stopped only by the signal, and three that
      // run for about one slice and then yield: requests that go stale between sysmon's look
      // and the signal's arrival, and signals that find their M on g0 or in another G.
      std::atomic<bool> stop{false};
      gort::wait_group spinners;
      for (int i = 0; i < 2; ++i) {
        spinners.add(1);
        gort::go([&] {
          SPIN(stop);
          spinners.done();
        });
      }
      std::atomic<long> done_yields{0};
      gort::wait_group workers;
      for (int k = 0; k < 3; ++k) {
        workers.add(1);
        gort::go([&, k] {
          for (long i = 0; i < iters; ++i) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50 + 50 * ((i + k) % 5));
            while (std::chrono::steady_clock::now() < until) {
            }
            gort::yield();
            done_yields.fetch_add(1, std::memory_order_relaxed);
          }
          workers.done();
        });
      }
      workers.wait();
      stop.store(true);
      spinners.wait();
      return done_yields.load();
    });
  }
  REQUIRE(yields == 3 * iters * rounds);
  INFO("Gs held for preemption: " << gort::rt::sched.npreempted.load() - before);
  CHECK(gort::rt::sched.npreempted.load() > before);  // the workload did preempt
  CHECK(urg_calls.load() == 0);
}

// sysmon sets a request for the G below once it overstays its slice, but with max_threads = 2
// (the M and the spare) never signals it (no thread to spare for holding the M): the request
// stays current for the whole no_preempt region and no SIGURG of gort's is in flight, so every
// SIGURG that arrives is the test's own, and a standard signal sent while another is pending
// cannot merge with one of gort's.
TEST_CASE("a SIGURG the program sends reaches its handler exactly once per send", "[signals]") {
  clean_env env;
  const scoped_action urg(SIGURG, counting_urg_action());
  // As in the sigwait pattern: the caller of run blocks SIGURG, so a SIGURG sent to the process
  // can only land on a thread of the runtime.
  sigset_t urg_only;
  sigemptyset(&urg_only);
  sigaddset(&urg_only, SIGURG);
  const scoped_block blocked(urg_only);
  urg_calls.store(0);
  const int sends = static_cast<int>(std::max<long>(5, 50 / test_scale()));
  gort::config c = cfg(1, 1ms);
  c.max_threads = 2;
  struct result {
    bool request_seen = false;
    int to_thread = 0, to_thread_code_ok = 0;
    int to_process = 0, to_process_code_ok = 0;
  };
  const result res = gort::run(c, [sends] {
    result out;
    gort::no_preempt np;
    gort::rt::p* pp = gort::rt::getm()->curp;
    const auto until = std::chrono::steady_clock::now() + 30s;
    while (pp->preempt_req.load() != pp->schedtick.load() && std::chrono::steady_clock::now() < until) {
    }
    out.request_seen = pp->preempt_req.load() == pp->schedtick.load();
    // To this thread: delivered before pthread_kill returns.
    for (int i = 0; i < sends; ++i) {
      const int n = urg_calls.load();
      pthread_kill(pthread_self(), SIGURG);
      if (!await_urg_calls(n + 1)) break;
      ++out.to_thread;
      if (urg_last_code.load() == SI_TKILL) ++out.to_thread_code_ok;
    }
#if !defined(__SANITIZE_THREAD__)
    // To the process: any M may take it, this one or the parked spare. (Not under TSan: it
    // defers a signal on a thread waiting in a raw futex until that thread wakes, which the
    // parked spare does only at shutdown.)
    for (int i = 0; i < sends; ++i) {
      const int n = urg_calls.load();
      kill(getpid(), SIGURG);
      if (!await_urg_calls(n + 1)) break;
      ++out.to_process;
      if (urg_last_code.load() == SI_USER) ++out.to_process_code_ok;
    }
#endif
    return out;
  });
  CHECK(res.request_seen);
  CHECK(res.to_thread == sends);
  CHECK(res.to_thread_code_ok == sends);
#if !defined(__SANITIZE_THREAD__)
  CHECK(res.to_process == sends);
  CHECK(res.to_process_code_ok == sends);
  CHECK(urg_calls.load() == 2 * sends);
#else
  CHECK(urg_calls.load() == sends);
#endif
}

namespace {

// A signal action as run() must leave it: the handler, the flags and the mask.
struct action_facts {
  std::uintptr_t handler = 0;
  int flags = 0;
  std::string mask;  // one character per signal, 1..NSIG-1
  bool operator==(const action_facts&) const = default;
};

action_facts facts(int sig) {
  struct sigaction sa {};
  REQUIRE(sigaction(sig, nullptr, &sa) == 0);
  action_facts f;
  f.handler = (sa.sa_flags & SA_SIGINFO) ? reinterpret_cast<std::uintptr_t>(sa.sa_sigaction)
                                         : reinterpret_cast<std::uintptr_t>(sa.sa_handler);
  f.flags = sa.sa_flags;
  for (int s = 1; s < NSIG; ++s) f.mask += sigismember(&sa.sa_mask, s) == 1 ? '1' : '0';
  return f;
}

struct all_facts {
  action_facts urg, segv, bus;
  bool operator==(const all_facts&) const = default;
};

all_facts snapshot() { return {facts(SIGURG), facts(SIGSEGV), facts(SIGBUS)}; }

void never_called(int) { _exit(99); }

}  // namespace

TEST_CASE("run puts back the SIGURG, SIGSEGV and SIGBUS actions it found, returning or throwing",
          "[signals]") {
  clean_env env;
  // Actions of each kind, with flags and masks of their own, set (and read back) before run.
  struct sigaction urg_sa = counting_urg_action();
  sigaddset(&urg_sa.sa_mask, SIGUSR2);
  struct sigaction segv_sa {};
  segv_sa.sa_handler = never_called;
  segv_sa.sa_flags = SA_NODEFER | SA_RESETHAND;
  sigemptyset(&segv_sa.sa_mask);
  struct sigaction bus_sa {};
  bus_sa.sa_handler = SIG_DFL;
  sigemptyset(&bus_sa.sa_mask);
  const scoped_action urg(SIGURG, urg_sa), segv(SIGSEGV, segv_sa), bus(SIGBUS, bus_sa);
  const all_facts before = snapshot();
  REQUIRE(before.urg.handler == reinterpret_cast<std::uintptr_t>(count_urg));
  REQUIRE(before.segv.handler == reinterpret_cast<std::uintptr_t>(never_called));

  SECTION("run returns") {
    all_facts during;
    gort::run(cfg(2), [&] { during = snapshot(); });
    // gort's handlers were in place while it ran...
    CHECK(during.urg.handler != before.urg.handler);
    CHECK(during.segv.handler != before.segv.handler);
    CHECK(during.bus.handler != before.bus.handler);
  }
  SECTION("run returns, without asynchronous preemption") {
    gort::config c = cfg(2);
    c.async_preempt = false;
    all_facts during;
    gort::run(c, [&] { during = snapshot(); });
    CHECK(during.urg == before.urg);
    CHECK(during.segv.handler != before.segv.handler);
  }
  SECTION("the main G throws") {
    CHECK_THROWS_AS(gort::run(cfg(2), [] { throw std::runtime_error("from main"); }),
                    std::runtime_error);
  }
  SECTION("the main G's stack cannot be mapped") {
    // Valid (page-aligned, addressable) but far more than any address space: mapping the first
    // chunk of stacks fails once the runtime has been set up.
    gort::config c = cfg(2);
    c.stack_size = std::size_t{1} << 52;
    REQUIRE(c.stack_size <= SIZE_MAX / gort::rt::stacks_per_chunk - gort::rt::stack_guard_size);
    CHECK_THROWS_AS(gort::run(c, [] {}), std::bad_alloc);
  }
  SECTION("the stack size is invalid") {
    gort::config c = cfg(2);
    c.stack_size = 12345;
    CHECK_THROWS_AS(gort::run(c, [] {}), std::invalid_argument);
  }
  SECTION("GORT_PROCS is invalid") {
    const scoped_env procs("GORT_PROCS", "lots");
    CHECK_THROWS_AS(gort::run(cfg(2), [] {}), std::invalid_argument);
  }
  // ...and the ones found are back, every way out.
  const all_facts after = snapshot();
  CHECK(after.urg == before.urg);
  CHECK(after.segv == before.segv);
  CHECK(after.bus == before.bus);
  // And the runtime is usable again.
  CHECK(gort::run(cfg(1), [] { return 7; }) == 7);
  CHECK(snapshot() == before);
}
