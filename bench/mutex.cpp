// Contended gort::mutex: G count x iterations of lock; ++counter; unlock. Twin: bench/go/mutex
// (sync.Mutex). Prints ns per lock/unlock pair.
// Usage: mutex [gs=100] [iters_per_g=100000] [procs=2]
#include <gort/gort.hpp>
#include <gort/sync.hpp>

#include "args.hpp"

#include <chrono>
#include <cstdio>
#include <mutex>

int main(int argc, char** argv) {
  const long ng = bench_arg("mutex", argc, argv, 1, 100);
  const long per = bench_arg("mutex", argc, argv, 2, 100'000);
  const auto procs = static_cast<unsigned>(bench_arg("mutex", argc, argv, 3, 2));
  return gort::run(gort::config{.procs = procs}, [&] {
    gort::mutex mu;
    long counter = 0;
    gort::wait_group wg;
    wg.add(static_cast<int>(ng));
    const auto start = std::chrono::steady_clock::now();
    for (long g = 0; g < ng; ++g)
      gort::go([&] {
        for (long i = 0; i < per; ++i) {
          std::lock_guard<gort::mutex> l(mu);
          ++counter;
        }
        wg.done();
      });
    wg.wait();
    const std::chrono::duration<double, std::nano> el = std::chrono::steady_clock::now() - start;
    if (counter != ng * per) {
      std::fprintf(stderr, "mutex: lost increments\n");
      return 1;
    }
    std::printf("result mutex %.2f ns\n", el.count() / static_cast<double>(ng * per));
    return 0;
  });
}
