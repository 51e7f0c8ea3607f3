// Start N Gs that only signal a wait_group. The clock stops after the last one has run, so
// the figure is the whole life of a G (create, schedule, run, exit, recycle), not just the
// cost of queueing it. Twin: bench/go/spawn.
// Usage: spawn [n=1000000] [procs=2]
#include <gort/gort.hpp>

#include "args.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  const long n = bench_arg("spawn", argc, argv, 1, 1'000'000);
  const auto procs = static_cast<unsigned>(bench_arg("spawn", argc, argv, 2, 2));

  return gort::run(gort::config{.procs = procs}, [&] {
    gort::wait_group wg;
    wg.add(static_cast<int>(n));
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < n; ++i) gort::go([&wg] { wg.done(); });
    wg.wait();
    const std::chrono::duration<double, std::nano> elapsed =
        std::chrono::steady_clock::now() - start;
    std::printf("result spawn %.2f ns\n", elapsed.count() / static_cast<double>(n));
    return 0;
  });
}
