// Ping-pong over two unbuffered channels: one G sends a number, the other sends it back. The
// cost of a channel round trip (two hand-offs, two parks, two wake-ups). Twin: bench/go/pingpong.
// Usage: pingpong [round_trips=1000000] [procs=1]   prints "result pingpong<procs> <ns> ns"
#include <gort/chan.hpp>
#include <gort/gort.hpp>

#include "args.hpp"

#include <chrono>
#include <cstdio>

int main(int argc, char** argv) {
  const long rounds = bench_arg("pingpong", argc, argv, 1, 1'000'000);
  const auto procs = static_cast<unsigned>(bench_arg("pingpong", argc, argv, 2, 1));

  return gort::run(gort::config{.procs = procs}, [&] {
    gort::chan<long> ping, pong;
    gort::go([ping, pong] {
      while (auto v = ping.recv()) pong.send(*v + 1);
    });
    const auto start = std::chrono::steady_clock::now();
    long v = 0;
    for (long i = 0; i < rounds; ++i) {
      ping.send(v);
      v = *pong.recv();
    }
    const std::chrono::duration<double, std::nano> elapsed = std::chrono::steady_clock::now() - start;
    ping.close();
    if (v != rounds) {
      std::fprintf(stderr, "pingpong: got %ld, want %ld\n", v, rounds);
      return 1;
    }
    std::printf("result pingpong%u %.2f ns\n", procs, elapsed.count() / static_cast<double>(rounds));
    return 0;
  });
}
