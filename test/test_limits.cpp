// The runtime at its limits: stack overflow in a real G (deep recursion, and one frame larger
// than the guard), running out of address space while spawning, the OS refusing threads, bad
// configuration.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <alloca.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gort/gort.hpp>

#include "child.hpp"
#include "probes.hpp"

using Catch::Matchers::ContainsSubstring;

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool sanitized = true;  // they reserve terabytes of shadow: RLIMIT_AS cannot be used
#else
constexpr bool sanitized = false;
#endif

volatile int never = INT_MAX;

[[gnu::noinline]] int deep(int depth) {
  volatile char pad[2048];
  for (std::size_t i = 0; i < sizeof pad; i += 64) pad[i] = static_cast<char>(depth);
  if (depth == never) return pad[0];
  return deep(depth + 1) + pad[64];
}

// Takes the G's stack down to about `keep` bytes above lo, then calls a frame of `bytes`: deep
// in the G, where the frame's low end lies below the 64 KiB guard.
[[gnu::noinline]] int deep_big_frame(char* lo, std::size_t keep, std::size_t bytes, bool array) {
  char* sp = static_cast<char*>(__builtin_frame_address(0));
  char* burnt = static_cast<char*>(alloca(static_cast<std::size_t>(sp - lo) - keep));
  asm volatile("" : : "r"(burnt) : "memory");
  if (!array) return big_alloca(bytes);
  return bytes == 100 * 1024 ? big_array<100 * 1024>() : big_array<1024 * 1024>();
}

// This process's threads (under qemu-user, the emulator's too).
long thread_count() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long n = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "Threads: %ld", &n) == 1) break;
  std::fclose(f);
  return n;
}

}  // namespace

TEST_CASE("a G whose frame is larger than the guard dies with the gort diagnostic naming it",
          "[limits]") {
  // Built with -fstack-clash-protection (meson.build), the frame's pages are touched as it is
  // allocated and the first touch past the stack is in the G's guard. Without it the frame's
  // low end lands in the stack below, and use_low_end writes there unnoticed ("survived").
  constexpr std::size_t stack_size = 1024 * 1024;
  for (bool array : {true, false}) {
    for (std::size_t bytes : {std::size_t{100 * 1024}, std::size_t{1024 * 1024}}) {
      CAPTURE(array, bytes);
      child_result r = run_in_child([array, bytes] {
        gort::run(gort::config{.procs = 2, .stack_size = stack_size}, [array, bytes] {
          // Neighbours: Gs whose stacks stay in use around the victim's.
          gort::wait_group release, started, finished;
          release.add(1);
          for (int i = 0; i < 8; ++i) {
            started.add(1);
            finished.add(1);
            gort::go([&] {
              started.done();
              release.wait();
              finished.done();
            });
          }
          started.wait();
          auto t = gort::spawn([array, bytes] {
            std::printf("victim %llu\n", static_cast<unsigned long long>(gort::detail::current_g_id()));
            std::fflush(stdout);
            // This frame is within a few KiB of the stack's top (the G's own record and the
            // start-up frames lie above it), so the stack's lowest byte is about stack_size
            // below it; 24 KiB left keeps at least 16 KiB whatever those few KiB are.
            char* lo = static_cast<char*>(__builtin_frame_address(0)) - stack_size;
            return deep_big_frame(lo, 24 * 1024, bytes, array);
          });
          const int v = t.join();
          std::printf("survived (%d)\n", v);
          std::fflush(stdout);
          release.done();
          finished.wait();
        });
      });
      CAPTURE(r.out);
      CHECK(r.died_by(SIGABRT));
      CHECK(r.out.find("survived") == std::string::npos);
      auto at = r.out.find("victim ");
      REQUIRE(at != std::string::npos);
      std::string id = r.out.substr(at + 7, r.out.find('\n', at) - at - 7);
      CHECK_THAT(r.out, ContainsSubstring("gort: stack overflow in G " + id + " (stack 1048576 bytes)"));
    }
  }
}

TEST_CASE("a G that overflows its stack dies with the gort diagnostic naming it", "[limits]") {
  for (const char* guard : {"madvise", "mprotect"}) {
    CAPTURE(guard);
    child_result r = run_in_child([guard] {
      setenv("GORT_STACK_GUARD", guard, 1);
      gort::run(gort::config{.procs = 2, .stack_size = 64 * 1024}, [] {
        // A few Gs first, so the victim's id is not trivially 1 or 2.
        gort::wait_group wg;
        for (int i = 0; i < 10; ++i) {
          wg.add(1);
          gort::go([&wg] { wg.done(); });
        }
        wg.wait();
        auto t = gort::spawn([] {
          std::printf("victim %llu\n", static_cast<unsigned long long>(gort::detail::current_g_id()));
          std::fflush(stdout);
          return deep(0);
        });
        t.join();
      });
    });
    CAPTURE(r.out);
    CHECK(r.died_by(SIGABRT));
    auto at = r.out.find("victim ");
    REQUIRE(at != std::string::npos);
    std::string id = r.out.substr(at + 7, r.out.find('\n', at) - at - 7);
    CHECK_THAT(r.out, ContainsSubstring("gort: stack overflow in G " + id + " (stack 65536 bytes)"));
  }
}

TEST_CASE("running out of address space makes go() throw bad_alloc and the runtime survives",
          "[limits]") {
  if (sanitized) SKIP("RLIMIT_AS cannot be combined with sanitizer shadow memory");
  child_result r = run_in_child([] {
    int code = gort::run(gort::config{.procs = 2}, [] {
      // Leave ~2 GiB of address space: a few thousand 320 KiB stack slots.
      std::FILE* f = std::fopen("/proc/self/statm", "r");
      unsigned long pages = 0;
      if (!f || std::fscanf(f, "%lu", &pages) != 1) return 10;
      std::fclose(f);
      rlimit lim{};
      lim.rlim_cur = lim.rlim_max = pages * 4096ul + (2ul << 30);
      if (setrlimit(RLIMIT_AS, &lim) != 0) return 11;
      // qemu-user accepts RLIMIT_AS but does not enforce it (it would limit qemu itself).
      void* probe = mmap(nullptr, 4ul << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (probe != MAP_FAILED) {
        munmap(probe, 4ul << 30);
        return 77;
      }
      gort::wait_group release, started, finished;
      release.add(1);
      std::atomic<long> ran{0};
      long spawned = 0;
      bool threw = false;
      for (long i = 0; i < 1'000'000; ++i) {
        started.add(1);
        finished.add(1);
        try {
          gort::go([&] {
            ran++;
            started.done();
            release.wait();  // keep every stack live
            finished.done();
          });
        } catch (const std::bad_alloc&) {
          started.done();
          finished.done();
          threw = true;
          break;
        }
        ++spawned;
      }
      if (!threw) return 12;
      started.wait();
      if (ran.load() != spawned) return 13;
      release.done();
      finished.wait();
      // Still usable afterwards: the finished Gs' stacks are reused.
      auto t = gort::spawn([] { return 7; });
      if (t.join() != 7) return 14;
      std::printf("spawned %ld before bad_alloc\n", spawned);
      return 0;
    });
    std::fflush(stdout);
    _exit(code);
  });
  CAPTURE(r.out);
  if (r.exited(77)) SKIP("RLIMIT_AS is not enforced here (qemu-user)");
  CHECK(r.exited(0));
  CHECK_THAT(r.out, ContainsSubstring("before bad_alloc"));
}

TEST_CASE("when the OS refuses threads, gort warns once per episode and finishes the work",
          "[limits]") {
  using namespace std::chrono_literals;
  static const std::string warning = "gort: warning: the OS refused a new thread";
  child_result r = run_in_child([] {
    // RLIMIT_NPROC does not apply to root. As root, become a user that owns no other task (a
    // uid made from our pid), so the limit counts this process's threads and nobody else's.
    if (geteuid() == 0) {
      if (setuid(static_cast<uid_t>(2'000'000'000u + static_cast<unsigned>(getpid()))) != 0) _exit(76);
      prctl(PR_SET_DUMPABLE, 1);  // keep /proc/self readable as before the change of user
    }
    rlimit orig{};
    if (getrlimit(RLIMIT_NPROC, &orig) != 0) _exit(10);
    int code = 0;
    try {
      code = gort::run(gort::config{.procs = 1}, [&orig] {
        // gort::run starts its spare M and sysmon after the main G is already running, and a
        // limit lowered before that would refuse them (and run would throw). With one P, the G
        // spawned here runs only once sysmon has handed the P on from the blocking call below,
        // so when the call returns, every thread of the start-up exists.
        std::atomic<bool> handed_on{false};
        gort::go([&handed_on] {
          handed_on = true;
          handed_on.notify_one();
        });
        gort::blocking([&handed_on] { handed_on.wait(false); });
        long expected = 0;
        std::atomic<long> done{0};
        // More Gs in long blocking calls than the process has threads: every M ends up inside a
        // call, and sysmon's hand-offs of their Ps need new Ms. (The sleep is the blocking call
        // itself, not a wait for something.)
        auto workload = [&] {
          const long n = 2 * thread_count() + 16;
          gort::wait_group wg;
          for (long i = 0; i < n; ++i) {
            wg.add(1);
            gort::go([&] {
              gort::blocking([] { std::this_thread::sleep_for(50ms); });
              done++;
              wg.done();
            });
          }
          wg.wait();
          expected += n;
        };
        auto limit = [&orig](rlim_t cur) {
          rlimit l = orig;
          l.rlim_cur = cur;
          return setrlimit(RLIMIT_NPROC, &l) == 0;
        };
        // Episode 1: no thread can be created.
        if (!limit(0)) return 11;
        pthread_t t;
        if (const int e = pthread_create(&t, nullptr, [](void*) -> void* { return nullptr; }, nullptr)) {
          std::printf("refused: %s\n", std::strerror(e));  // what the warning should name
        } else {
          pthread_join(t, nullptr);
          return 77;
        }
        workload();
        // Threads again: the first one created ends the episode.
        if (!limit(orig.rlim_cur)) return 12;
        workload();
        // Episode 2.
        if (!limit(0)) return 13;
        workload();
        if (!limit(orig.rlim_cur)) return 14;
        std::printf("completed %ld of %ld\n", done.load(), expected);
        return done.load() == expected ? 0 : 15;
      });
    } catch (const std::exception& e) {
      std::printf("exception: %s\n", e.what());
      code = 16;
    }
    std::fflush(stdout);
    _exit(code);
  });
  CAPTURE(r.status, r.out);
  if (r.exited(76)) SKIP("cannot leave root for an unused uid here");
  if (r.exited(77)) SKIP("RLIMIT_NPROC is not enforced here (CAP_SYS_RESOURCE?)");
  CHECK(r.exited(0));
  CHECK_THAT(r.out, ContainsSubstring("completed"));
  std::vector<std::string> lines;
  for (std::size_t pos = 0; (pos = r.out.find(warning, pos)) != std::string::npos; pos += warning.size())
    lines.push_back(r.out.substr(pos, r.out.find('\n', pos) - pos));
  REQUIRE(lines.size() == 2);
  // The cause as pthread_create gave it (EAGAIN).
  const auto at = r.out.find("refused: ");
  REQUIRE(at != std::string::npos);
  const std::string cause = r.out.substr(at + 9, r.out.find('\n', at) - at - 9);
  for (const auto& l : lines) {
    CHECK_THAT(l, ContainsSubstring("(" + cause + ")"));
    CHECK_THAT(l, ContainsSubstring("gort keeps running on the"));
  }
}

TEST_CASE("bad stack sizes are rejected with the value and the minimum", "[limits]") {
  for (std::size_t bad : {std::size_t{1000}, std::size_t{8192}, std::size_t{64 * 1024 + 100}}) {
    CAPTURE(bad);
    try {
      gort::run(gort::config{.stack_size = bad}, [] {});
      FAIL("no exception");
    } catch (const std::invalid_argument& e) {
      CHECK_THAT(e.what(), ContainsSubstring(std::to_string(bad)));
      CHECK_THAT(e.what(), ContainsSubstring("16384"));
    }
  }
  // The runtime is not left half-started.
  CHECK(gort::run([] { return 1; }) == 1);
}
