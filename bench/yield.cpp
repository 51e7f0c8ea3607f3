// Two Gs taking turns through gort::yield() on one P: the cost of a voluntary switch,
// scheduler included. Twin: bench/go/yield (runtime.Gosched).
// Usage: yield [total_yields=10000000] [procs=1]
#include <gort/gort.hpp>

#include "args.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  const long total = bench_arg("yield", argc, argv, 1, 10'000'000);
  const auto procs = static_cast<unsigned>(bench_arg("yield", argc, argv, 2, 1));

  return gort::run(gort::config{.procs = procs}, [&] {
    const long per = total / 2;
    gort::wait_group wg;
    wg.add(2);
    const auto start = std::chrono::steady_clock::now();
    for (int g = 0; g < 2; ++g) {
      gort::go([&wg, per] {
        for (long i = 0; i < per; ++i) gort::yield();
        wg.done();
      });
    }
    wg.wait();
    const std::chrono::duration<double, std::nano> elapsed =
        std::chrono::steady_clock::now() - start;
    std::printf("result yield %.2f ns\n", elapsed.count() / static_cast<double>(2 * per));
    return 0;
  });
}
