// Ordinary C++ in Gs: a G sits in a plain read() on a pipe nobody writes to while 4 Gs yield,
// procs = 1. Prints the yields per second of the 4 (the baseline, GORT_BENCH_BASELINE=1, runs
// them with no blocked G). The blocked G is released at the end by writing to the pipe.
// Usage: blockedread [millis=500] [procs=1]
#include <gort/gort.hpp>

#include "args.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  const long millis = bench_arg("blockedread", argc, argv, 1, 500);
  const auto procs = static_cast<unsigned>(bench_arg("blockedread", argc, argv, 2, 1));
  const bool baseline = std::getenv("GORT_BENCH_BASELINE") != nullptr;
  int fds[2];
  if (pipe(fds) != 0) return 1;
  std::atomic<long> yields{0};
  gort::run(gort::config{.procs = procs}, [&] {
    gort::wait_group wg;
    if (!baseline) {
      wg.add(1);
      gort::go([&] {
        char c;
        [[maybe_unused]] ssize_t r = read(fds[0], &c, 1);  // a plain blocking call, no gort::blocking
        wg.done();
      });
    }
    const auto start = std::chrono::steady_clock::now();
    const auto until = start + std::chrono::milliseconds(millis);
    for (int i = 0; i < 4; ++i) {
      wg.add(1);
      gort::go([&] {
        long n = 0;
        while (std::chrono::steady_clock::now() < until) {
          gort::yield();
          ++n;
        }
        yields.fetch_add(n);
        wg.done();
      });
    }
    // Release the reader once the yielders' time is up (wg.wait alone would wait for it).
    while (std::chrono::steady_clock::now() < until) gort::sleep_for(std::chrono::milliseconds(10));
    [[maybe_unused]] ssize_t w = write(fds[1], "x", 1);
    wg.wait();
  });
  std::printf("result blockedread %.0f yields/s\n",
              static_cast<double>(yields.load()) / (static_cast<double>(millis) / 1000.0));
  return 0;
}
