// Skynet in the classic channel form: every node is a G that starts its 10 children and adds up
// what they send on the node's own unbuffered channel; each of the leaves sends its number.
// Twin: bench/go/skynet (tools/bench row "skynetchan skynetchan:skynet").
// Usage: skynetchan [leaves=1000000] [procs=2]   (leaves must be a power of 10)
#include <gort/chan.hpp>
#include <gort/gort.hpp>

#include "args.hpp"

#include <chrono>
#include <cstdio>

namespace {

constexpr long fanout = 10;

void skynet(gort::chan<long> out, long num, long size) {
  if (size == 1) {
    out.send(num);
    return;
  }
  gort::chan<long> in;
  const long sub = size / fanout;
  for (long i = 0; i < fanout; ++i) gort::go(skynet, in, num + i * sub, sub);
  long sum = 0;
  for (long i = 0; i < fanout; ++i) sum += *in.recv();
  out.send(sum);
}

}  // namespace

int main(int argc, char** argv) {
  const long leaves = bench_arg("skynetchan", argc, argv, 1, 1'000'000);
  const auto procs = static_cast<unsigned>(bench_arg("skynetchan", argc, argv, 2, 2));
  for (long p = leaves; p > 1; p /= fanout) {
    if (p % fanout != 0) {
      std::fprintf(stderr, "skynetchan: leaves (%ld) must be a power of %ld\n", leaves, fanout);
      return 2;
    }
  }

  return gort::run(gort::config{.procs = procs}, [&] {
    const auto start = std::chrono::steady_clock::now();
    gort::chan<long> out;
    gort::go(skynet, out, 0L, leaves);
    const long sum = *out.recv();
    const std::chrono::duration<double, std::milli> elapsed = std::chrono::steady_clock::now() - start;
    const long want = leaves * (leaves - 1) / 2;
    if (sum != want) {
      std::fprintf(stderr, "skynetchan: sum %ld, want %ld\n", sum, want);
      return 1;
    }
    std::printf("result skynetchan %.2f ms\n", elapsed.count());
    return 0;
  });
}
