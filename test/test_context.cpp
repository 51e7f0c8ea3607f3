// The arch/ stubs on their own: register preservation, data passing, ontop, deep chains,
// unwinder termination. No scheduler involved.
#include <catch2/catch_test_macros.hpp>

#include <unwind.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "context.hpp"
#include "test_util.hpp"

using namespace gort::arch;

extern "C" std::uint64_t gort_test_regs_roundtrip(void** peer, std::uint64_t seed,
                                                   std::uint32_t mxcsr, std::uint16_t fpcw,
                                                   transfer (*jump)(ctx, void*));

namespace {

// MXCSR default 0x1F80 with the rounding-control bits set differently on each side;
// x87 CW default 0x037F likewise.
constexpr std::uint32_t mxcsr_a = 0x1F80 | (3u << 13);  // round toward zero
constexpr std::uint32_t mxcsr_b = 0x1F80 | (2u << 13);  // round up
constexpr std::uint16_t fpcw_a = 0x037F | (3u << 10);
constexpr std::uint16_t fpcw_b = 0x037F | (1u << 10);

struct reg_test {
  void* peer = nullptr;
  std::uint64_t mask_b = 0;
  transfer (*jump)(ctx, void*) = gort_jump;
};
reg_test* rt_state;

void reg_b_entry(transfer t) {
  reg_test& s = *rt_state;
  s.peer = t.from;
  for (;;) s.mask_b |= gort_test_regs_roundtrip(&s.peer, 2, mxcsr_b, fpcw_b, s.jump);
}

// A switches with `jump`, B with `jump_b` (the same stub unless given).
std::uint64_t run_reg_test(transfer (*jump)(ctx, void*), std::uint64_t& mask_b, int rounds,
                           transfer (*jump_b)(ctx, void*) = nullptr) {
  test_stack st;
  reg_test s;
  s.jump = jump_b ? jump_b : jump;
  rt_state = &s;
  s.peer = gort_make(st.top(), reg_b_entry);
  std::uint64_t mask_a = 0;
  for (int i = 0; i < rounds; ++i) mask_a |= gort_test_regs_roundtrip(&s.peer, 1, mxcsr_a, fpcw_a, jump);
  mask_b = s.mask_b;  // B is left suspended for good; its stack goes away with `st`
  return mask_a;
}

}  // namespace

TEST_CASE("every callee-saved register survives a switch, both ways", "[context]") {
  std::uint64_t mask_b = ~0ull;
  std::uint64_t mask_a = run_reg_test(gort_jump, mask_b, 1000);
  CHECK(mask_a == 0);
  CHECK(mask_b == 0);
}

TEST_CASE("gort_jump_ret keeps every callee-saved register, both ways", "[context]") {
  std::uint64_t mask_b = ~0ull;
  std::uint64_t mask_a = run_reg_test(gort_jump_ret, mask_b, 1000);
  CHECK(mask_a == 0);
  CHECK(mask_b == 0);
}

TEST_CASE("a context saved by gort_jump resumes through gort_jump_ret and back", "[context]") {
  // One frame layout, two endings: the scheduler relies on being able to mix them.
  std::uint64_t mask_b = ~0ull;
  std::uint64_t mask_a = run_reg_test(gort_jump, mask_b, 1000, gort_jump_ret);
  CHECK(mask_a == 0);
  CHECK(mask_b == 0);
  mask_b = ~0ull;
  mask_a = run_reg_test(gort_jump_ret, mask_b, 1000, gort_jump);
  CHECK(mask_a == 0);
  CHECK(mask_b == 0);
}

namespace {
struct ping {
  void* peer;
  std::uint64_t n;
};

void echo_entry(transfer t) {
  // Replies to each value v with 3v+1 until it receives 0.
  for (;;) {
    auto v = reinterpret_cast<std::uintptr_t>(t.data);
    t = gort_jump(t.from, reinterpret_cast<void*>(v * 3 + 1));
  }
}
}  // namespace

TEST_CASE("10 million switches pass the right values each way", "[context]") {
  test_stack st;
  ctx peer = gort_make(st.top(), echo_entry);
  const std::uint64_t n = 5'000'000 / static_cast<std::uint64_t>(test_scale());  // 10M switches
  std::uint64_t bad = 0;
  for (std::uint64_t i = 1; i <= n; ++i) {
    transfer t = gort_jump(peer, reinterpret_cast<void*>(i));
    peer = t.from;
    if (reinterpret_cast<std::uintptr_t>(t.data) != i * 3 + 1) ++bad;
  }
  CHECK(bad == 0);
}

namespace {
struct chain {
  std::vector<test_stack> stacks;
  std::vector<ctx> ctxs;
  std::vector<int> visits;
  int n;
};
chain* ch;

// Link k: receives depth k from its predecessor, switches to link k+1, and when that returns
// switches back to the predecessor with the count of links below it plus one.
void link_entry(transfer t) {
  auto k = static_cast<int>(reinterpret_cast<std::intptr_t>(t.data));
  ch->visits[k]++;
  void* pred = t.from;
  std::intptr_t below = 0;
  if (k + 1 < ch->n) {
    transfer r = gort_jump(ch->ctxs[k + 1], reinterpret_cast<void*>(std::intptr_t{k + 1}));
    below = reinterpret_cast<std::intptr_t>(r.data);
  }
  gort_jump(pred, reinterpret_cast<void*>(below + 1));
  std::abort();
}
}  // namespace

TEST_CASE("a chain of 10,000 coroutines switches to the next and back", "[context]") {
  chain c;
  c.n = 10'000;
  c.stacks.resize(c.n);
  c.visits.assign(c.n, 0);
  for (auto& s : c.stacks) c.ctxs.push_back(gort_make(s.top(), link_entry));
  ch = &c;
  transfer r = gort_jump(c.ctxs[0], nullptr);
  CHECK(reinterpret_cast<std::intptr_t>(r.data) == c.n);
  for (int k = 0; k < c.n; ++k) REQUIRE(c.visits[k] == 1);
}

namespace {
void* ontop_seen_from;
void* ontop_seen_sp_region;
int ontop_calls;

transfer ontop_fn_impl(transfer t) {
  ++ontop_calls;
  ontop_seen_from = t.from;
  int local;
  ontop_seen_sp_region = &local;
  return {t.from, reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(t.data) + 100)};
}

void ontop_entry(transfer t) {
  for (;;) {
    // Whatever arrives here went through ontop_fn_impl first when sent with gort_ontop.
    t = gort_jump(t.from, t.data);
  }
}
}  // namespace

TEST_CASE("ontop runs its function on the target's stack before the target resumes", "[context]") {
  test_stack st;
  ctx peer = gort_make(st.top(), ontop_entry);
  // First entry into a fresh context through ontop.
  transfer t = gort_ontop(peer, reinterpret_cast<void*>(std::uintptr_t{1}), ontop_fn_impl);
  CHECK(ontop_calls == 1);
  CHECK(reinterpret_cast<std::uintptr_t>(t.data) == 101);  // fn's result is what the target saw
  CHECK(st.contains(ontop_seen_sp_region));                // fn ran on the target's stack
  peer = t.from;
  // And into a context suspended in gort_jump.
  for (std::uintptr_t i = 2; i < 1000; ++i) {
    t = gort_ontop(peer, reinterpret_cast<void*>(i), ontop_fn_impl);
    REQUIRE(reinterpret_cast<std::uintptr_t>(t.data) == i + 100);
    REQUIRE(st.contains(ontop_seen_sp_region));
    peer = t.from;
  }
  CHECK(ontop_calls == 999);
}

namespace {
int unwind_frames;
_Unwind_Reason_Code unwind_end;
_Unwind_Reason_Code count_frame(_Unwind_Context*, void*) {
  ++unwind_frames;
  return _URC_NO_REASON;
}
[[gnu::noinline]] void walk() { unwind_end = _Unwind_Backtrace(count_frame, nullptr); }
void unwind_entry(transfer t) {
  walk();
  gort_jump(t.from, nullptr);
  std::abort();
}
}  // namespace

TEST_CASE("the entry frame stops unwinders", "[context]") {
  test_stack st;
  ctx c = gort_make(st.top(), unwind_entry);
  unwind_frames = 0;
  gort_jump(c, nullptr);
  CHECK(unwind_end == _URC_END_OF_STACK);
  // walk, unwind_entry and the entry trampoline (plus _Unwind_Backtrace's own frame).
  CHECK(unwind_frames >= 3);
  CHECK(unwind_frames <= 5);
}

TEST_CASE("a fresh context inherits the creator's FP control state", "[context]") {
#if defined(__x86_64__)
  // run_reg_test covers switching; here: make() captures MXCSR at creation time.
  std::uint32_t saved;
  asm volatile("stmxcsr %0" : "=m"(saved));
  std::uint32_t want = 0x1F80 | (1u << 13);
  asm volatile("ldmxcsr %0" : : "m"(want));
  test_stack st;
  ctx c = gort_make(st.top(), echo_entry);
  asm volatile("ldmxcsr %0" : : "m"(saved));
  CHECK(frame_of(c)->mxcsr == want);
#else
  SUCCEED("AArch64 keeps FPCR per thread");
#endif
}
