// n timers armed at once with deadlines spread over 10 ms, then all fired: each runs a
// function in its own G (gort::after_func) that counts down a wait_group. Twin: bench/go/timers
// (time.AfterFunc, which also runs each function in its own goroutine). ns per timer, from the
// first arm to the last fire, minus nothing: both sides wait out the same 10 ms spread.
// Usage: timers [n=100000] [procs=2]
#include <gort/gort.hpp>
#include <gort/time.hpp>

#include "args.hpp"

#include <chrono>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  const long n = bench_arg("timers", argc, argv, 1, 100'000);
  const auto procs = static_cast<unsigned>(bench_arg("timers", argc, argv, 2, 2));
  return gort::run(gort::config{.procs = procs}, [&] {
    std::vector<gort::timer> ts;
    ts.reserve(static_cast<std::size_t>(n));
    gort::wait_group wg;
    wg.add(static_cast<int>(n));
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < n; ++i)
      ts.push_back(gort::after_func(std::chrono::microseconds(i % 10'000), [&wg] { wg.done(); }));
    wg.wait();
    const std::chrono::duration<double, std::nano> el = std::chrono::steady_clock::now() - start;
    std::printf("result timers %.2f ns\n", el.count() / static_cast<double>(n));
    return 0;
  });
}
