// Skynet: a tree with `leaves` leaves and fan-out 10 where every node is its own G, spawns
// its children and sums what they return (1,111,111 Gs at the default size). Twin:
// bench/go/skynet, which uses the classic channel-per-parent form.
// Usage: skynet [leaves=1000000] [procs=2]   (leaves must be a power of 10)
#include <gort/gort.hpp>

#include "args.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

constexpr long fanout = 10;

long skynet(long num, long size) {
  if (size == 1) return num;
  const long sub = size / fanout;
  // Named through decltype so this file depends only on spawn() and join(), not on how the
  // task type is spelled.
  std::vector<decltype(gort::spawn(skynet, num, sub))> kids;
  kids.reserve(fanout);
  for (long i = 0; i < fanout; ++i) kids.push_back(gort::spawn(skynet, num + i * sub, sub));
  long sum = 0;
  for (auto& k : kids) sum += k.join();
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  const long leaves = bench_arg("skynet", argc, argv, 1, 1'000'000);
  const auto procs = static_cast<unsigned>(bench_arg("skynet", argc, argv, 2, 2));
  for (long p = leaves; p > 1; p /= fanout) {
    if (p % fanout != 0) {
      std::fprintf(stderr, "skynet: leaves (%ld) must be a power of %ld\n", leaves, fanout);
      return 2;
    }
  }

  return gort::run(gort::config{.procs = procs}, [&] {
    const auto start = std::chrono::steady_clock::now();
    // The root is a G of its own too, as in the Go twin, so both build the same tree.
    const long sum = gort::spawn(skynet, 0L, leaves).join();
    const std::chrono::duration<double, std::milli> elapsed =
        std::chrono::steady_clock::now() - start;

    const long want = leaves * (leaves - 1) / 2;
    if (sum != want) {
      std::fprintf(stderr, "skynet: sum %ld, want %ld\n", sum, want);
      return 1;
    }
    std::printf("result skynet %.2f ms\n", elapsed.count());
    return 0;
  });
}
