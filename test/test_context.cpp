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
// What gort_test_regs_roundtrip(seed) loads into each callee-saved register before it switches
// (the K_i of test/regs_*.S, plus seed), and where frame.h says the stub stores it.
#if defined(__x86_64__)
std::uint64_t wrong_slots(const frame& f, std::uint64_t seed) {
  const std::uint64_t got[] = {f.rbx, f.rbp, f.r12, f.r13, f.r14, f.r15};
  const std::uint64_t k[] = {0x1111111111111111, 0x2222222222222222, 0x3333333333333333,
                             0x4444444444444444, 0x5555555555555555, 0x6666666666666666};
  std::uint64_t bad = 0;
  for (int i = 0; i < 6; ++i)
    if (got[i] != k[i] + seed) bad |= 1ull << i;
  if (f.mxcsr != mxcsr_a) bad |= 1ull << 6;
  if (f.fpcw != fpcw_a) bad |= 1ull << 7;
  return bad;
}
#else
std::uint64_t wrong_slots(const frame& f, std::uint64_t seed) {
  const std::uint64_t got[] = {f.x19, f.x20, f.x21, f.x22, f.x23, f.x24, f.x25, f.x26, f.x27,
                               f.x28, f.fp,  f.d8,  f.d9,  f.d10, f.d11, f.d12, f.d13, f.d14,
                               f.d15};
  const std::uint64_t k[] = {0x1919191919191919, 0x2020202020202020, 0x2121212121212121,
                             0x2222222222222222, 0x2323232323232323, 0x2424242424242424,
                             0x2525252525252525, 0x2626262626262626, 0x2727272727272727,
                             0x2828282828282828, 0x2929292929292929, 0x0808080808080808,
                             0x0909090909090909, 0x1010101010101010, 0x1111111111111111,
                             0x1212121212121212, 0x1313131313131313, 0x1414141414141414,
                             0x1515151515151515};
  std::uint64_t bad = 0;
  for (int i = 0; i < 19; ++i)
    if (got[i] != k[i] + seed) bad |= 1ull << i;
  if (f.lr != reinterpret_cast<std::uint64_t>(f.pc)) bad |= 1ull << 19;
  return bad;
}
#endif

struct slot_test {
  std::uint64_t seed = 0;
  std::uint64_t bad = 0;
  bool pc_in_caller = true;
  int inspected = 0;
  transfer (*jump)(ctx, void*) = gort_jump;
};
slot_test* slots;

// Reads the frame of the context that just switched here (suspended inside
// gort_test_regs_roundtrip's call of the stub), then switches straight back.
void inspect_entry(transfer t) {
  for (;;) {
    const frame& f = *frame_of(t.from);
    slots->bad |= wrong_slots(f, slots->seed);
    // pc is the return address of that call: inside gort_test_regs_roundtrip (under 1 KiB long).
    auto pc = reinterpret_cast<std::uintptr_t>(f.pc);
    auto fn = reinterpret_cast<std::uintptr_t>(&gort_test_regs_roundtrip);
    if (pc <= fn || pc >= fn + 1024) slots->pc_in_caller = false;
    ++slots->inspected;
    t = slots->jump(t.from, nullptr);
  }
}

void check_frame_slots(transfer (*jump)(ctx, void*)) {
  test_stack st;
  slot_test s;
  s.jump = jump;
  slots = &s;
  void* peer = gort_make(st.top(), inspect_entry);
  std::uint64_t lost = 0;
  for (std::uint64_t seed = 1; seed <= 100; ++seed) {
    s.seed = seed;
    lost |= gort_test_regs_roundtrip(&peer, seed, mxcsr_a, fpcw_a, jump);
  }
  CHECK(s.inspected == 100);
  CHECK(s.bad == 0);
  CHECK(s.pc_in_caller);
  CHECK(lost == 0);
}
}  // namespace

TEST_CASE("a suspended context's frame holds each register in the slot frame.h names",
          "[context]") {
  SECTION("gort_jump") { check_frame_slots(gort_jump); }
  SECTION("gort_jump_ret") { check_frame_slots(gort_jump_ret); }
}

TEST_CASE("gort_make's frame holds fn, zeroed registers and a null link above it", "[context]") {
  test_stack st;
  ctx c = gort_make(st.top(), reg_b_entry);
  const frame& f = *frame_of(c);
  // The frame sits 16 bytes below the (16-byte aligned) top, which hold the null link: a null
  // return address on x86-64, a null frame record on AArch64.
  CHECK(static_cast<char*>(c) + GORT_FRAME_SIZE + 16 == st.top());
  const auto* above =
      reinterpret_cast<const std::uint64_t*>(static_cast<char*>(c) + GORT_FRAME_SIZE);
  CHECK(above[0] == 0);
  CHECK(f.pc != nullptr);
  const auto fn = reinterpret_cast<std::uint64_t>(&reg_b_entry);
#if defined(__x86_64__)
  CHECK(f.rbx == fn);
  CHECK(f.rbp == 0);  // frame-pointer walkers stop here
  CHECK((f.r12 | f.r13 | f.r14 | f.r15) == 0);
#else
  CHECK(above[1] == 0);
  CHECK(f.x19 == fn);
  CHECK((f.x20 | f.x21 | f.x22 | f.x23 | f.x24 | f.x25 | f.x26 | f.x27 | f.x28) == 0);
  CHECK((f.d8 | f.d9 | f.d10 | f.d11 | f.d12 | f.d13 | f.d14 | f.d15) == 0);
  CHECK(f.fp == 0);  // frame-pointer walkers stop here
  CHECK(f.lr == 0);
#endif
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

#if defined(__x86_64__)  // AArch64's FPCR is per thread, not part of a context
TEST_CASE("a fresh context inherits the creator's FP control state", "[context]") {
  // run_reg_test covers switching; here: make() captures MXCSR at creation time.
  std::uint32_t saved;
  asm volatile("stmxcsr %0" : "=m"(saved));
  std::uint32_t want = 0x1F80 | (1u << 13);
  asm volatile("ldmxcsr %0" : : "m"(want));
  test_stack st;
  ctx c = gort_make(st.top(), echo_entry);
  asm volatile("ldmxcsr %0" : : "m"(saved));
  CHECK(frame_of(c)->mxcsr == want);
}
#endif
