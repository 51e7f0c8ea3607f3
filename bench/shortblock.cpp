// Go's TestPreemptionAfterSyscall's shape: 8 Gs loop over 10 us gort::blocking calls on 2 Ps
// while the main G sleeps 1 ms, 20 times; prints the longest time the main G waited past its
// wake-up for a P.
// Usage: shortblock [rounds=20] [procs=2]
#include <gort/gort.hpp>

#include "args.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>

int main(int argc, char** argv) {
  const long rounds = bench_arg("shortblock", argc, argv, 1, 20);
  const auto procs = static_cast<unsigned>(bench_arg("shortblock", argc, argv, 2, 2));
  double worst_ms = 0;
  gort::run(gort::config{.procs = procs}, [&] {
    std::atomic<bool> stop{false};
    gort::wait_group wg;
    for (int i = 0; i < 8; ++i) {
      wg.add(1);
      gort::go([&] {
        while (!stop.load(std::memory_order_relaxed)) gort::blocking([] { ::usleep(10); });
        wg.done();
      });
    }
    for (long r = 0; r < rounds; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      gort::sleep_for(std::chrono::milliseconds(1));
      const double late =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() - 1.0;
      worst_ms = std::max(worst_ms, late);
    }
    stop.store(true);
    wg.wait();
  });
  std::printf("result shortblock %.3f ms\n", worst_ms);
  return 0;
}
