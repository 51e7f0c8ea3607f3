// Wake-up lateness behind a spinner: on one P, a G spins with no calls at all while another
// sleeps 1 ms, `rounds` times, recording how late each wake-up is. Only preemption lets the
// sleeper run. Prints the median and the maximum. Twin: bench/go/lateness.
// Usage: lateness [rounds=50] [procs=1]
#include <gort/gort.hpp>

#include "args.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  const long rounds = bench_arg("lateness", argc, argv, 1, 50);
  const auto procs = static_cast<unsigned>(bench_arg("lateness", argc, argv, 2, 1));
  return gort::run(gort::config{.procs = procs}, [&] {
    std::atomic<bool> stop{false};
    std::vector<double> late;
    gort::wait_group wg;
    wg.add(2);
    gort::go([&] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
      wg.done();
    });
    gort::go([&] {
      for (long i = 0; i < rounds; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        gort::sleep_for(std::chrono::milliseconds(1));
        const std::chrono::duration<double, std::milli> d = std::chrono::steady_clock::now() - t0;
        late.push_back(d.count() - 1.0);
      }
      stop = true;
      wg.done();
    });
    wg.wait();
    std::sort(late.begin(), late.end());
    std::printf("result lateness %.3f ms\n", late[late.size() / 2]);
    std::printf("result lateness_max %.3f ms\n", late.back());
    return 0;
  });
}
