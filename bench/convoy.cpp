// Ordinary C++ in Gs: 100 Gs take turns on one std::mutex, each section 2 ms of computation.
// The baseline (GORT_BENCH_BASELINE=1) is 100 std::threads doing the same. Prints the time all
// sections take; a run still going after its budget is cut there and its time extrapolated
// from the sections done (so a stalled runtime shows as a large number, not a hang); one that
// does not wind down within 2 s of being cut (a runtime that stopped making progress) is ended
// by the watchdog, which prints the same extrapolation.
// Usage: convoy [workers=100] [sections_each=5] [procs=1] [max_threads=10000] [budget_s=10]
#include <gort/gort.hpp>

#include "args.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;

void compute_for(std::chrono::microseconds d) {
  const auto until = clk::now() + d;
  while (clk::now() < until) {
  }
}

}  // namespace

int main(int argc, char** argv) {
  const long workers = bench_arg("convoy", argc, argv, 1, 100);
  const long each = bench_arg("convoy", argc, argv, 2, 5);
  const auto procs = static_cast<unsigned>(bench_arg("convoy", argc, argv, 3, 1));
  const auto max_threads = static_cast<std::uint32_t>(bench_arg("convoy", argc, argv, 4, 10'000));
  const long budget_s = bench_arg("convoy", argc, argv, 5, 10);
  const bool baseline = std::getenv("GORT_BENCH_BASELINE") != nullptr;

  std::mutex mu;
  std::atomic<long> done{0};
  std::atomic<bool> stop{false};
  const long total = workers * each;
  auto work = [&] {
    for (long i = 0; i < each && !stop.load(std::memory_order_relaxed); ++i) {
      std::lock_guard<std::mutex> l(mu);
      compute_for(std::chrono::microseconds(2000));
      done.fetch_add(1, std::memory_order_relaxed);
    }
  };
  const auto start = clk::now();
  const auto deadline = start + std::chrono::seconds(budget_s);
  std::atomic<bool> finished{false};
  auto report = [&] {
    const double elapsed = std::chrono::duration<double>(clk::now() - start).count();
    const long n = done.load();
    const double full = n ? elapsed * static_cast<double>(total) / static_cast<double>(n) : 1e9;
    std::fprintf(stderr, "convoy: %ld of %ld sections in %.2f s\n", n, total, elapsed);
    std::printf("result convoy %.3f s\n", full);
    std::fflush(stdout);
  };
  // The budget: a watchdog thread stops the workers (they finish the section they are in), and
  // ends a run that cannot wind down.
  std::thread watchdog([&] {
    while (done.load() < total && clk::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    stop.store(true);
    const auto grace = clk::now() + std::chrono::seconds(2);
    while (!finished.load() && clk::now() < grace) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (!finished.load()) {
      report();
      std::_Exit(0);
    }
  });
  if (baseline) {
    std::vector<std::thread> ts;
    for (long w = 0; w < workers; ++w) ts.emplace_back(work);
    for (auto& t : ts) t.join();
  } else {
    gort::config cfg{.procs = procs};
    cfg.max_threads = max_threads;
    gort::run(cfg, [&] {
      gort::wait_group wg;
      for (long w = 0; w < workers; ++w) {
        wg.add(1);
        gort::go([&] {
          work();
          wg.done();
        });
      }
      wg.wait();
    });
  }
  finished.store(true);
  report();
  watchdog.join();
  return 0;
}
