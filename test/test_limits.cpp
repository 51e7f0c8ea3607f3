// The runtime at its limits: stack overflow in a real G, running out of address space while
// spawning, bad configuration.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <sys/mman.h>
#include <sys/resource.h>

#include <atomic>
#include <climits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include <gort/gort.hpp>

#include "child.hpp"

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

}  // namespace

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
