// A compact tour of the runtime, small enough to run under Valgrind memcheck in tools/test:
// every kind of switch (spawn, yield, park/ready through join and wait_group, timers, exit)
// on two Ps, with the results checked.
#include <catch2/catch_test_macros.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include <gort/gort.hpp>

namespace {
long tree(int depth) {
  if (depth == 0) return 1;
  auto l = gort::spawn(tree, depth - 1);
  long r = tree(depth - 1);
  return l.join() + r;
}
}  // namespace

TEST_CASE("the runtime's switches run clean under a memory checker", "[smoke]") {
  auto out = gort::run(gort::config{.procs = 2}, [] {
    std::atomic<int> ran{0};
    gort::wait_group wg;
    for (int i = 0; i < 200; ++i) {
      wg.add(1);
      gort::go([&] {
        for (int k = 0; k < 5; ++k) gort::yield();
        ran++;
        wg.done();
      });
    }
    wg.wait();
    long leaves = tree(8);
    std::string s = gort::spawn([](std::string a) { return a + "!"; }, std::string("hi")).join();
    bool caught = false;
    try {
      gort::spawn([] { throw std::runtime_error("x"); }).join();
    } catch (const std::runtime_error&) {
      caught = true;
    }
    auto t0 = std::chrono::steady_clock::now();
    gort::sleep_for(std::chrono::milliseconds(5));
    bool slept = std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(5);
    gort::thread th([&ran] { ran++; });
    th.join();
    return std::vector<long>{ran.load(), leaves, static_cast<long>(s.size()), caught, slept};
  });
  CHECK(out == std::vector<long>{201, 256, 3, 1, 1});
}
