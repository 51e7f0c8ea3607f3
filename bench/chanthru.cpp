// Buffered channel throughput: 4 producer Gs and 4 consumer Gs on one channel of capacity 128.
// Reported as ns per message (lower is better). Twin: bench/go/chanthru.
// Usage: chanthru [messages=4000000] [procs=2]
#include <gort/chan.hpp>
#include <gort/gort.hpp>

#include "args.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>

int main(int argc, char** argv) {
  const long total = bench_arg("chanthru", argc, argv, 1, 4'000'000);
  const auto procs = static_cast<unsigned>(bench_arg("chanthru", argc, argv, 2, 2));
  constexpr int producers = 4, consumers = 4;
  constexpr std::size_t capacity = 128;

  return gort::run(gort::config{.procs = procs}, [&] {
    const long per = total / producers;
    gort::chan<long> ch(capacity);
    gort::wait_group prod, cons;
    std::atomic<long> sum{0};
    prod.add(producers);
    cons.add(consumers);
    const auto start = std::chrono::steady_clock::now();
    for (int p = 0; p < producers; ++p)
      gort::go([&, p] {
        for (long i = 0; i < per; ++i) ch.send(p * per + i);
        prod.done();
      });
    for (int c = 0; c < consumers; ++c)
      gort::go([&] {
        long s = 0;
        while (auto v = ch.recv()) s += *v;
        sum.fetch_add(s);
        cons.done();
      });
    prod.wait();
    ch.close();
    cons.wait();
    const std::chrono::duration<double, std::nano> elapsed = std::chrono::steady_clock::now() - start;
    const long n = per * producers;
    if (sum.load() != n * (n - 1) / 2) {
      std::fprintf(stderr, "chanthru: sum %ld, want %ld\n", sum.load(), n * (n - 1) / 2);
      return 1;
    }
    std::printf("result chanthru %.2f ns\n", elapsed.count() / static_cast<double>(n));
    return 0;
  });
}
