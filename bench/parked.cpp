// Resident memory added per G while N Gs sit blocked in wait_group::wait(): what an idle G
// costs (stack pages actually touched plus the G itself). Twin: bench/go/parked.
// Usage: parked [n=100000] [procs=2]
#include <gort/gort.hpp>

#include "args.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

// statm rather than getrusage: ru_maxrss is a high-water mark, and we want the current value.
long rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  long size = 0, resident = 0;
  if (f == nullptr || std::fscanf(f, "%ld %ld", &size, &resident) != 2) {
    std::perror("parked: /proc/self/statm");
    std::exit(1);
  }
  std::fclose(f);
  return resident * sysconf(_SC_PAGESIZE);
}

// The name carries the count so that 100k and 1M runs stay apart in the harness's table.
std::string label(long n) {
  if (n % 1'000'000 == 0) return "parked" + std::to_string(n / 1'000'000) + "m";
  if (n % 1'000 == 0) return "parked" + std::to_string(n / 1'000) + "k";
  return "parked" + std::to_string(n);
}

}  // namespace

int main(int argc, char** argv) {
  const long n = bench_arg("parked", argc, argv, 1, 100'000);
  const auto procs = static_cast<unsigned>(bench_arg("parked", argc, argv, 2, 2));

  return gort::run(gort::config{.procs = procs}, [&] {
    gort::wait_group started, release, finished;
    started.add(static_cast<int>(n));
    finished.add(static_cast<int>(n));
    release.add(1);

    const long before = rss_bytes();
    for (long i = 0; i < n; ++i) {
      gort::go([&] {
        started.done();
        release.wait();
        finished.done();
      });
    }
    started.wait();
    // started only proves each G got as far as done(); give the last few the moment they
    // need to reach wait() and park, so every one of them is counted parked.
    gort::sleep_for(std::chrono::milliseconds(20));
    const long after = rss_bytes();

    release.done();
    finished.wait();
    std::printf("result %s %ld bytes\n", label(n).c_str(), (after - before) / n);
    return 0;
  });
}
