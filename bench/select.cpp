// select over 4 channels: 4 producer Gs each feed their own buffered channel (capacity 16) and
// one consumer G takes every value with a select over the 4 receive cases. Reported as ns per
// select (lower is better). Twin: bench/go/select.
// Usage: select [selects=2000000] [procs=2]
#include <gort/chan.hpp>
#include <gort/gort.hpp>

#include "args.hpp"

#include <array>
#include <chrono>
#include <cstdio>
#include <optional>

int main(int argc, char** argv) {
  const long total = bench_arg("select", argc, argv, 1, 2'000'000);
  const auto procs = static_cast<unsigned>(bench_arg("select", argc, argv, 2, 2));
  constexpr int k = 4;

  return gort::run(gort::config{.procs = procs}, [&] {
    const long per = total / k;
    std::array<gort::chan<long>, k> ch{gort::chan<long>(16), gort::chan<long>(16),
                                       gort::chan<long>(16), gort::chan<long>(16)};
    const auto start = std::chrono::steady_clock::now();
    for (int p = 0; p < k; ++p)
      gort::go([c = ch[p], per] {
        for (long i = 1; i <= per; ++i) c.send(i);
      });
    long sum = 0;
    auto add = [&sum](std::optional<long> v) { sum += *v; };
    for (long n = 0; n < per * k; ++n)
      gort::select(gort::on_recv(ch[0], add), gort::on_recv(ch[1], add), gort::on_recv(ch[2], add),
                   gort::on_recv(ch[3], add));
    const std::chrono::duration<double, std::nano> elapsed = std::chrono::steady_clock::now() - start;
    if (sum != k * per * (per + 1) / 2) {
      std::fprintf(stderr, "select: sum %ld, want %ld\n", sum, k * per * (per + 1) / 2);
      return 1;
    }
    std::printf("result select %.2f ns\n", elapsed.count() / static_cast<double>(per * k));
    return 0;
  });
}
