// fib(n) where every call above the cutoff hands fib(n-1) to a new G, computes fib(n-2)
// itself and joins: fork-join with uneven tasks, run at procs=1 and procs=2 to show both the
// cost of spawn/join and how well work spreads. Twin: bench/go/fib (goroutine + channel).
//
// The default cutoff is 12, not higher: below the cutoff the work is plain recursive
// arithmetic whose speed depends on the compiler (g++ -O3 does serial fib(32) in about half
// of Go's time), not on the runtime. At 12 the Go twin spends about half its time in
// goroutine start/finish and channel traffic; at 20 nearly all of it would be leaf
// arithmetic and the ratio would compare compilers.
// Usage: fib [n=32] [procs=1] [cutoff=12]
#include <gort/gort.hpp>

#include "args.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace {

long fib_serial(int n) { return n < 2 ? n : fib_serial(n - 1) + fib_serial(n - 2); }

long fib(int n, int cutoff) {
  if (n <= cutoff) return fib_serial(n);
  auto child = gort::spawn(fib, n - 1, cutoff);
  const long b = fib(n - 2, cutoff);
  return child.join() + b;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = static_cast<int>(bench_arg("fib", argc, argv, 1, 32, 0));
  unsigned procs = static_cast<unsigned>(bench_arg("fib", argc, argv, 2, 1, 0));
  const int cutoff = static_cast<int>(bench_arg("fib", argc, argv, 3, 12, 0));
  if (procs < 1) procs = 1;

  return gort::run(gort::config{.procs = procs}, [&] {
    const auto start = std::chrono::steady_clock::now();
    const long got = fib(n, cutoff);
    const std::chrono::duration<double, std::milli> elapsed =
        std::chrono::steady_clock::now() - start;

    long a = 0, b = 1;
    for (int i = 0; i < n; ++i) {
      const long next = a + b;
      a = b;
      b = next;
    }
    if (got != a) {
      std::fprintf(stderr, "fib: fib(%d) = %ld, want %ld\n", n, got, a);
      return 1;
    }
    std::printf("result fib%u %.2f ms\n", procs, elapsed.count());
    return 0;
  });
}
