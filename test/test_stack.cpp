// runtime/stack: the G stack pool (sizes, reuse, guards, the VMA budget, a million stacks).
#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "san.hpp"
#if GORT_ASAN
#include <sanitizer/asan_interface.h>
#endif

#include "child.hpp"
#include "stack.hpp"
#include "test_util.hpp"

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

using gort::rt::guard_mode;
using gort::rt::stack;
using gort::rt::stack_pool;

namespace {

const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
constexpr std::size_t slot_bytes = gort::rt::default_stack_size + gort::rt::stack_guard_size;

std::size_t count_maps() {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  std::size_t lines = 0;
  char buf[1 << 16];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0)
    lines += static_cast<std::size_t>(std::count(buf, buf + n, '\n'));
  close(fd);
  return lines;
}

// Whether [p, p+len) is mapped at all (msync fails with ENOMEM on unmapped memory).
bool mapped(const void* p, std::size_t len = 1) {
  auto a = reinterpret_cast<std::uintptr_t>(p) & ~(page - 1);
  return msync(reinterpret_cast<void*>(a), len, MS_ASYNC) == 0;
}

std::size_t count_lines_with(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t pos = 0; (pos = text.find(what, pos)) != std::string::npos; pos += what.size())
    n++;
  return n;
}

void write_byte(void* p, char v) { *static_cast<volatile char*>(p) = v; }
char read_byte(const void* p) { return *static_cast<const volatile char*>(p); }

}  // namespace

TEST_CASE("stack sizes below the minimum or off the page grid are rejected", "[stack]") {
  const std::size_t bad[] = {0, 1, page, gort::rt::min_stack_size - page, 100000,
                             gort::rt::default_stack_size + 1};
  for (std::size_t size : bad) {
    INFO("size " << size);
    try {
      stack_pool p(size);
      FAIL("no exception");
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find(std::to_string(size)) != std::string::npos);
      CHECK(what.find(std::to_string(gort::rt::min_stack_size)) != std::string::npos);
    }
  }
  if (gort::rt::min_stack_size % page == 0) {
    stack_pool p(gort::rt::min_stack_size);
    CHECK(p.stack_size() == gort::rt::min_stack_size);
  }
  stack_pool d;
  CHECK(d.stack_size() == gort::rt::default_stack_size);
  CHECK(d.mode() != guard_mode::automatic);
}

TEST_CASE("a returned stack comes back without a new mapping", "[stack]") {
  stack_pool p;
  stack a = p.get();
  const auto before = p.stats();
  const std::size_t maps = count_maps();
  p.put(a);
  stack b = p.get();
  CHECK(b.lo == a.lo);
  CHECK(b.where == a.where);
  CHECK(p.stats().mapped_bytes == before.mapped_bytes);
  CHECK(p.stats().chunks == 1);
  CHECK(count_maps() == maps);

  // LIFO: the most recently returned stack is the first one handed out again.
  stack c = p.get(), d = p.get();
  p.put(b);
  p.put(d);
  p.put(c);
  CHECK(p.get().lo == c.lo);
  CHECK(p.get().lo == d.lo);
  CHECK(p.get().lo == b.lo);
}

// Frames that never return leave ASan redzones in a stack's shadow. Once the pool unmaps the
// stack, memory mapped at the same addresses (a new thread's stack or TLS) must start clean.
TEST_CASE("an unmapped stack leaves no ASan poison behind", "[stack][asan]") {
#if GORT_ASAN
  stack_pool p(gort::rt::default_stack_size, guard_mode::none);
  stack s = p.get();
  auto* lo = static_cast<char*>(s.lo);
  // Redzones scattered over the stack, as dead frames leave them, and its topmost bytes.
  for (std::size_t off = 64; off < s.size; off += 5000) ASAN_POISON_MEMORY_REGION(lo + off, 32);
  ASAN_POISON_MEMORY_REGION(lo + s.size - 256, 256);
  REQUIRE(__asan_region_is_poisoned(lo, s.size) != nullptr);
  p.put(s);
  REQUIRE(p.trim() > 0);
  void* m = mmap(lo, s.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  REQUIRE(m == lo);
  CHECK(__asan_region_is_poisoned(m, s.size) == nullptr);
  munmap(m, s.size);
#else
  SKIP("ASan builds only");
#endif
}

TEST_CASE("stacks have the documented geometry, owners and guard lookup", "[stack]") {
  for (guard_mode m : {guard_mode::automatic, guard_mode::mprotect, guard_mode::none}) {
    stack_pool p(gort::rt::default_stack_size, m);
    INFO("mode " << gort::rt::to_string(p.mode()));
    stack s = p.get();
    REQUIRE(s);
    CHECK(s.size == gort::rt::default_stack_size);
    CHECK(static_cast<char*>(s.top()) - static_cast<char*>(s.lo) ==
          static_cast<std::ptrdiff_t>(s.size));
    CHECK(reinterpret_cast<std::uintptr_t>(s.lo) % page == 0);
    write_byte(s.lo, 1);
    write_byte(static_cast<char*>(s.top()) - 1, 2);
    CHECK(read_byte(s.lo) == 1);
    CHECK(read_byte(static_cast<char*>(s.top()) - 1) == 2);

    CHECK(stack_pool::owner(s) == 0);
    stack_pool::set_owner(s, 77);
    CHECK(stack_pool::owner(s) == 77);

    auto* lo = static_cast<char*>(s.lo);
    const auto below = gort::rt::find_guard(lo - 1);
    const auto bottom = gort::rt::find_guard(lo - gort::rt::stack_guard_size);
    if (p.mode() == guard_mode::none) {
      CHECK_FALSE(stack_pool::guarded(s));
      CHECK_FALSE(below.hit);
    } else {
      CHECK(stack_pool::guarded(s));
      REQUIRE(below.hit);
      CHECK(below.gid == 77);
      CHECK(below.stack_size == s.size);
      CHECK(bottom.hit);
      CHECK(bottom.gid == 77);
    }
    CHECK_FALSE(gort::rt::find_guard(lo).hit);
    CHECK_FALSE(gort::rt::find_guard(static_cast<char*>(s.top()) - 1).hit);
    CHECK_FALSE(gort::rt::find_guard(lo - gort::rt::stack_guard_size - 1).hit);

    // The next slot's guard sits right above this stack and belongs to the next stack.
    stack t = p.get();
    CHECK(t.lo == static_cast<char*>(s.top()) + gort::rt::stack_guard_size);
    stack_pool::set_owner(t, 78);
    if (p.mode() != guard_mode::none) CHECK(gort::rt::find_guard(s.top()).gid == 78);

    p.put(s);
    CHECK(stack_pool::owner(s) == 0);  // a returned stack has no owner
    p.put(t);
    p.trim();
    CHECK_FALSE(gort::rt::find_guard(lo - 1).hit);
  }
}

TEST_CASE("counters follow get, put and trim", "[stack]") {
  stack_pool p(gort::rt::default_stack_size, guard_mode::none);
  auto st = p.stats();
  CHECK(st.live == 0);
  CHECK(st.cached == 0);
  CHECK(st.mapped_bytes == 0);

  std::vector<stack> v;
  for (std::size_t i = 0; i < gort::rt::stacks_per_chunk + 1; i++) v.push_back(p.get());
  st = p.stats();
  CHECK(st.live == v.size());
  CHECK(st.chunks == 2);
  CHECK(st.cached == 2 * gort::rt::stacks_per_chunk - v.size());
  CHECK(st.mapped_bytes == 2 * gort::rt::stacks_per_chunk * slot_bytes);
  CHECK(st.unguarded == v.size());

  // Keep one stack of the first chunk: trim frees only the other chunk.
  const stack keep = v.front();
  for (std::size_t i = 1; i < v.size(); i++) p.put(v[i]);
  CHECK(p.stats().live == 1);
  CHECK(p.trim() == gort::rt::stacks_per_chunk * slot_bytes);
  st = p.stats();
  CHECK(st.chunks == 1);
  CHECK(st.cached == gort::rt::stacks_per_chunk - 1);
  CHECK(mapped(keep.lo));
  CHECK_FALSE(mapped(v.back().lo));
  write_byte(keep.lo, 3);

  // The free list stays consistent after trim: every cached slot can still be handed out.
  std::vector<stack> again;
  for (std::size_t i = 0; i < gort::rt::stacks_per_chunk - 1; i++) again.push_back(p.get());
  CHECK(p.stats().chunks == 1);
  for (auto& s : again) p.put(s);
  p.put(keep);
  CHECK(p.trim() == gort::rt::stacks_per_chunk * slot_bytes);
  st = p.stats();
  CHECK(st.live == 0);
  CHECK(st.cached == 0);
  CHECK(st.mapped_bytes == 0);
  CHECK(st.chunks == 0);
  CHECK_FALSE(mapped(keep.lo));
}

TEST_CASE("the destructor unmaps every chunk, handed-out stacks included", "[stack]") {
  void* lo;
  {
    stack_pool p;
    stack s = p.get();
    lo = s.lo;
    write_byte(lo, 1);
    CHECK(mapped(lo));
  }
  CHECK_FALSE(mapped(lo));
  CHECK_FALSE(gort::rt::find_guard(static_cast<char*>(lo) - 1).hit);
}

TEST_CASE("a refused mapping throws bad_alloc and the pool stays usable", "[stack]") {
  // 64 slots of 4 TiB do not fit in a 47- or 48-bit address space.
  stack_pool huge(std::size_t{4} << 40, guard_mode::none);
  CHECK_THROWS_AS(huge.get(), std::bad_alloc);
  CHECK_THROWS_AS(huge.get(), std::bad_alloc);
  CHECK(huge.stats().mapped_bytes == 0);
  CHECK(huge.stats().live == 0);
  stack_pool p;
  stack s = p.get();
  write_byte(s.lo, 1);
  p.put(s);
}

TEST_CASE("the detected guard mode matches a direct probe", "[stack][guard]") {
  // The probe: install a guard on a fresh page and touch it in a child.
  const auto r = run_in_child([] {
    const std::size_t pg = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(3);
    if (madvise(p, pg, MADV_GUARD_INSTALL) != 0) _exit(2);
    write_byte(p, 1);
    _exit(0);
  });
  INFO("child status " << r.status << ", stderr: " << r.out);
  REQUIRE((r.died_by(SIGSEGV) || r.exited(0) || r.exited(2)));
  const bool faults = r.died_by(SIGSEGV);
  CHECK(gort::rt::madvise_guard_works() == faults);

  stack_pool explicit_madvise(gort::rt::default_stack_size, guard_mode::madvise);
  CHECK(explicit_madvise.mode() == (faults ? guard_mode::madvise : guard_mode::mprotect));
  CHECK(stack_pool(gort::rt::default_stack_size, guard_mode::mprotect).mode() ==
        guard_mode::mprotect);
  CHECK(stack_pool(gort::rt::default_stack_size, guard_mode::none).mode() == guard_mode::none);

  // automatic: GORT_STACK_GUARD wins, else the probe decides.
  const char* env = std::getenv("GORT_STACK_GUARD");
  const std::string saved = env ? env : "";
  unsetenv("GORT_STACK_GUARD");
  CHECK(stack_pool().mode() == (faults ? guard_mode::madvise : guard_mode::mprotect));
  setenv("GORT_STACK_GUARD", "none", 1);
  CHECK(stack_pool().mode() == guard_mode::none);
  setenv("GORT_STACK_GUARD", "mprotect", 1);
  CHECK(stack_pool().mode() == guard_mode::mprotect);
  setenv("GORT_STACK_GUARD", "madvise", 1);
  CHECK(stack_pool().mode() == (faults ? guard_mode::madvise : guard_mode::mprotect));
  CHECK(stack_pool(gort::rt::default_stack_size, guard_mode::none).mode() == guard_mode::none);
  if (env)
    setenv("GORT_STACK_GUARD", saved.c_str(), 1);
  else
    unsetenv("GORT_STACK_GUARD");
}

TEST_CASE("guard regions fault in every guard mode", "[stack][guard]") {
  for (guard_mode m : {guard_mode::madvise, guard_mode::mprotect, guard_mode::none}) {
    stack_pool probe(gort::rt::default_stack_size, m);
    if (probe.mode() != m) {
      WARN("guard mode " << gort::rt::to_string(m) << " is not available here (qemu-user or "
           "kernel < 6.13): MADV_GUARD_INSTALL does not fault");
      continue;
    }
    for (std::size_t off : {std::size_t{1}, gort::rt::stack_guard_size}) {
      INFO("mode " << gort::rt::to_string(m) << ", " << off << " bytes below lo");
      const auto r = run_in_child([m, off] {
        stack_pool p(gort::rt::default_stack_size, m);
        stack s = p.get();
        p.put(p.get());  // a neighbour above, so the guard is not at the edge of a mapping
        write_byte(s.lo, 1);
        write_byte(static_cast<char*>(s.top()) - 1, 1);
        if (stack_pool::guarded(s) != (m != guard_mode::none)) _exit(4);
        write_byte(static_cast<char*>(s.lo) - off, 1);
        _exit(0);
      });
      INFO("child status " << r.status << ", stderr: " << r.out);
      if (m == guard_mode::none)
        CHECK(r.exited(0));
      else
        CHECK(r.died_by(SIGSEGV));
    }
  }
}

TEST_CASE("mprotect guards stay within the VMA budget, with one warning", "[stack][guard]") {
  const std::size_t budget = stack_pool::guard_budget();
  REQUIRE(budget > 0);
  const auto r = run_in_child([budget] {
    std::vector<stack> v;
    v.reserve(budget + 2 * gort::rt::stacks_per_chunk);
    const std::size_t base = count_maps();
    stack_pool p(gort::rt::default_stack_size, guard_mode::mprotect);
    std::size_t guarded = 0;
    // Whatever else holds guards in this process, the budget ends within `budget` stacks.
    for (std::size_t i = 0; i < budget + 2 * gort::rt::stacks_per_chunk; i++) {
      v.push_back(p.get());
      guarded += stack_pool::guarded(v.back());
    }
    if (guarded > budget) _exit(10);
    if (guarded == v.size()) _exit(11);
    if (p.stats().unguarded != v.size() - guarded) _exit(12);
    // Two VMAs per guard at most, whatever the kernel merged; the slack is for the allocator.
    const std::size_t maps = count_maps();
    if (maps > base + 2 * guarded + 64) {
      std::fprintf(stderr, "maps: %zu before, %zu with %zu guards\n", base, maps, guarded);
      _exit(13);
    }
    for (auto& s : v) write_byte(s.lo, 1);  // unguarded stacks work just the same
    for (auto& s : v) p.put(s);
    v.clear();
    p.trim();
    // The budget comes back with trim: the next stacks are guarded again.
    stack s = p.get();
    if (!stack_pool::guarded(s)) _exit(14);
    _exit(0);
  });
  INFO("child status " << r.status << ", stderr: " << r.out);
  CHECK(r.exited(0));
  CHECK(count_lines_with(r.out, "gort: warning:") == 1);
  CHECK(count_lines_with(r.out, "vm.max_map_count = ") == 1);
  CHECK(r.out.find(std::to_string(budget)) != std::string::npos);
}

TEST_CASE("threads share a pool", "[stack]") {
  stack_pool p;
  constexpr int threads = 4;
  constexpr int held = 8;
  const long iters = std::max(1L, 20000 / test_scale());
  std::atomic<bool> bad{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; t++) {
    ts.emplace_back([&, t] {
      stack mine[held];
      for (long i = 0; i < iters; i++) {
        const int k = static_cast<int>(i % held) + 1;
        for (int j = 0; j < k; j++) {
          mine[j] = p.get();
          // Tag both ends: a stack handed to two threads at once shows up as a foreign tag.
          const char tag = static_cast<char>(t * 32 + j);
          write_byte(mine[j].lo, tag);
          write_byte(static_cast<char*>(mine[j].top()) - 1, tag);
          stack_pool::set_owner(mine[j], static_cast<std::uint64_t>(t * 1000 + j));
        }
        for (int j = 0; j < k; j++) {
          const char tag = static_cast<char>(t * 32 + j);
          if (read_byte(mine[j].lo) != tag || read_byte(static_cast<char*>(mine[j].top()) - 1) != tag ||
              stack_pool::owner(mine[j]) != static_cast<std::uint64_t>(t * 1000 + j))
            bad = true;
          p.put(mine[j]);
        }
        if (i % 1000 == 999 && t == 0) p.trim();
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK_FALSE(bad);
  CHECK(p.stats().live == 0);
  CHECK(p.stats().chunks <= 1);  // at most threads * held = 32 live at once
}

namespace {

// Hands out n stacks at once and checks them; they must be disjoint, writable at both ends,
// and cost few VMAs.
void million(guard_mode m) {
  constexpr std::size_t n = 1'000'000;
  std::vector<stack> v;
  v.reserve(n);
  const std::size_t base = count_maps();
  const auto t0 = std::chrono::steady_clock::now();
  {
    stack_pool p(gort::rt::default_stack_size, m);
    INFO("mode " << gort::rt::to_string(p.mode()));
    for (std::size_t i = 0; i < n; i++) v.push_back(p.get());
    const std::size_t maps = count_maps();
    INFO("maps: " << base << " before, " << maps << " with " << n << " stacks");
    CHECK(maps < 20000);

    const auto st = p.stats();
    const std::size_t chunks = (n + gort::rt::stacks_per_chunk - 1) / gort::rt::stacks_per_chunk;
    CHECK(st.live == n);
    CHECK(st.chunks == chunks);
    CHECK(st.mapped_bytes == chunks * gort::rt::stacks_per_chunk * slot_bytes);
    CHECK(st.cached == chunks * gort::rt::stacks_per_chunk - n);

    std::size_t guarded = 0;
    for (auto& s : v) guarded += stack_pool::guarded(s);
    CHECK(st.unguarded == n - guarded);
    if (p.mode() == guard_mode::madvise) CHECK(guarded == n);
    if (p.mode() == guard_mode::mprotect) {
      // No other pool holds guards now, so exactly the budget is used.
      CHECK(guarded == std::min(n, stack_pool::guard_budget()));
      CHECK(maps <= base + 2 * guarded + 64);
    }

    // Disjoint, each with its guard region clear of the stack below.
    std::vector<stack> sorted = v;
    std::sort(sorted.begin(), sorted.end(),
              [](const stack& a, const stack& b) { return a.lo < b.lo; });
    bool disjoint = true;
    for (std::size_t i = 1; i < n; i++)
      disjoint &= static_cast<char*>(sorted[i - 1].top()) + gort::rt::stack_guard_size <=
                  static_cast<char*>(sorted[i].lo);
    CHECK(disjoint);

    // Writable at both ends. Touching 2M pages commits 8 GiB, so each run of adjacent stacks
    // is given back to the kernel once checked, which keeps this test's footprint small.
    bool writable = true;
    std::size_t run = 0;
    for (std::size_t i = 0; i < n; i++) {
      const auto& s = sorted[i];
      const char tag = static_cast<char>(i * 7 + 1);
      auto* last = static_cast<char*>(s.top()) - 1;
      write_byte(s.lo, tag);
      write_byte(last, static_cast<char>(~tag));
      writable &= read_byte(s.lo) == tag && read_byte(last) == static_cast<char>(~tag);
      const bool end = i + 1 == n || i - run + 1 == 4096 ||
                       static_cast<char*>(sorted[i + 1].lo) != last + 1 + gort::rt::stack_guard_size;
      if (end) {
        auto* from = static_cast<char*>(sorted[run].lo);
        madvise(from, static_cast<std::size_t>(last + 1 - from), MADV_DONTNEED);
        run = i + 1;
      }
    }
    CHECK(writable);

    for (auto& s : v) p.put(s);
    CHECK(p.stats().live == 0);
    CHECK(p.stats().cached == chunks * gort::rt::stacks_per_chunk);
    CHECK(p.trim() == st.mapped_bytes);
    CHECK(p.stats().mapped_bytes == 0);
    CHECK(p.stats().chunks == 0);
  }
  const std::size_t after = count_maps();
  INFO("maps: " << base << " before, " << after << " after trim");
  CHECK(after <= base + 64);
  const auto secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("1M stacks, mode " << gort::rt::to_string(m) << ": " << secs << " s");
}

}  // namespace

TEST_CASE("a million stacks at once, guard mode auto", "[stack][million]") {
  million(guard_mode::automatic);
}

TEST_CASE("a million stacks at once, mprotect guards", "[stack][million]") {
  million(guard_mode::mprotect);
}
