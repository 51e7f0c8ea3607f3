// The README's example, built by tools/test against an installed gort (pkg-config and meson).
#include <gort/gort.hpp>

#include <atomic>
#include <cstdio>

int main() {
  long sum = gort::run([] {
    gort::wait_group wg;
    std::atomic<long> total{0};
    for (int i = 0; i < 100000; ++i) {
      wg.add(1);
      gort::go([&, i] {
        total += i;
        wg.done();
      });
    }
    wg.wait();
    auto t = gort::spawn([](int x) { return x * 2; }, 21);
    return total.load() + t.join();
  });
  std::printf("%ld\n", sum);
  return sum == 4999950000L + 42 ? 0 : 1;
}
