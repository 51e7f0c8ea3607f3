// The cost of declaring a blocking call: gort::blocking(getpid) in a loop, ns per call.
// Twin: bench/go/getpid, syscall.Syscall(SYS_GETPID), which pays entersyscall/exitsyscall
// (syscall.Getpid would not).
// Usage: getpid [calls=10000000] [procs=1]
#include <gort/gort.hpp>
#include <unistd.h>

#include "args.hpp"

#include <chrono>
#include <cstdio>

int main(int argc, char** argv) {
  const long calls = bench_arg("getpid", argc, argv, 1, 10'000'000);
  const auto procs = static_cast<unsigned>(bench_arg("getpid", argc, argv, 2, 1));
  return gort::run(gort::config{.procs = procs}, [&] {
    long sum = 0;
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < calls; ++i) sum += gort::blocking(getpid);
    const std::chrono::duration<double, std::nano> elapsed = std::chrono::steady_clock::now() - start;
    if (sum != calls * getpid()) return 1;
    std::printf("result getpid %.2f ns\n", elapsed.count() / static_cast<double>(calls));
    return 0;
  });
}
