// bench/switch: cost of one context switch, gort's stubs beside Boost.Context's jump_fcontext
// in the same binary and run.
//
// Time: Google Benchmark, a coroutine ping-pong (two switches per iteration), reported per
// switch. Instructions: this VM has no hardware counters, so the binary re-runs itself under
// `valgrind --tool=callgrind` for each stub at two iteration counts and divides the difference
// of the instruction totals by the difference of the switch counts; that cancels start-up and
// loop-independent cost exactly, and is repeatable whatever else runs on the machine.
#include <benchmark/benchmark.h>
#include <boost/context/detail/fcontext.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

#include "context.hpp"

namespace bc = boost::context::detail;
using namespace gort::arch;

namespace {

constexpr std::size_t stack_bytes = 64 * 1024;

void* new_stack_top() {
  void* p = mmap(nullptr, stack_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::abort();
  return static_cast<char*>(p) + stack_bytes;
}

// Both peers run the same loop: bounce straight back to whoever switched in.
void gort_bouncer(transfer t) {
  for (;;) t = gort_jump(t.from, t.data);
}
void boost_bouncer(bc::transfer_t t) {
  for (;;) t = bc::jump_fcontext(t.fctx, t.data);
}

using stub = transfer (*)(ctx, void*);

[[gnu::noinline]] void gort_rounds(stub jump, entry_fn bouncer, long n) {
  ctx c = gort_make(new_stack_top(), bouncer);
  for (long i = 0; i < n; ++i) {
    transfer t = jump(c, nullptr);
    c = t.from;
  }
}

[[gnu::noinline]] void boost_rounds(long n) {
  bc::fcontext_t c = bc::make_fcontext(new_stack_top(), stack_bytes, boost_bouncer);
  for (long i = 0; i < n; ++i) c = bc::jump_fcontext(c, nullptr).fctx;
}

void per_switch(benchmark::State& state) {
  state.counters["per_switch"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * 2,
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_gort_jump(benchmark::State& state) {
  ctx c = gort_make(new_stack_top(), gort_bouncer);
  for (auto _ : state) c = gort_jump(c, nullptr).from;
  per_switch(state);
}
void BM_fcontext_jump(benchmark::State& state) {
  bc::fcontext_t c = bc::make_fcontext(new_stack_top(), stack_bytes, boost_bouncer);
  for (auto _ : state) c = bc::jump_fcontext(c, nullptr).fctx;
  per_switch(state);
}
BENCHMARK(BM_gort_jump)->Repetitions(5)->ReportAggregatesOnly(true);
BENCHMARK(BM_fcontext_jump)->Repetitions(5)->ReportAggregatesOnly(true);

// The scheduler's shape: both sides run the same loop and switch through one call site, as
// every G does through fiber::switch_to. Above, the two sides switch from different sites (the
// benchmark loop and the bouncer), where a stub ending in `jmp` is predicted and one ending in
// `ret` is not; here it is the other way round, because a `jmp` leaves the return-address
// predictor one entry behind (see arch/switch_x86_64_sysv_elf.S). Each side keeps its peer in
// its own `side`; the data word carries the starter's to the fresh bouncer.
constexpr long same_site_rounds = 1000;  // round trips per benchmark iteration

template <class Jump>
struct side {
  void* peer;
  Jump jump;
};

[[gnu::noipa]] void* same_site_switch(side<stub>& s) { return s.jump(s.peer, &s).from; }
[[gnu::noipa]] void* same_site_switch(side<bc::transfer_t (*)(bc::fcontext_t, void*)>& s) {
  return s.jump(s.peer, &s).fctx;
}
template <class Jump>
[[gnu::noipa]] void same_site_loop(side<Jump>& s, long n) {
  for (long i = 0; i < n; ++i) s.peer = same_site_switch(s);
}

template <stub J>
void same_site_bouncer(transfer t) {
  side<stub> s{t.from, J};
  same_site_loop(s, -1ul >> 1);
}
void same_site_bouncer_fcontext(bc::transfer_t t) {
  side<bc::transfer_t (*)(bc::fcontext_t, void*)> s{t.fctx, bc::jump_fcontext};
  same_site_loop(s, -1ul >> 1);
}

template <stub J>
void BM_same_site_gort(benchmark::State& state) {
  side<stub> s{gort_make(new_stack_top(), same_site_bouncer<J>), J};
  for (auto _ : state) same_site_loop(s, same_site_rounds);
}
void BM_same_site_fcontext(benchmark::State& state) {
  side<bc::transfer_t (*)(bc::fcontext_t, void*)> s{
      bc::make_fcontext(new_stack_top(), stack_bytes, same_site_bouncer_fcontext), bc::jump_fcontext};
  for (auto _ : state) same_site_loop(s, same_site_rounds);
}
BENCHMARK(BM_same_site_gort<gort_jump>)->Name("BM_same_site_gort_jump")->Repetitions(5)->ReportAggregatesOnly(true);
BENCHMARK(BM_same_site_gort<gort_jump_ret>)->Name("BM_same_site_gort_jump_ret")->Repetitions(5)->ReportAggregatesOnly(true);
BENCHMARK(BM_same_site_fcontext)->Name("BM_same_site_fcontext")->Repetitions(5)->ReportAggregatesOnly(true);

// Keeps the medians so the ratio can be printed after the table.
class ratio_reporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, double> median_ns;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs)
      if (r.aggregate_name == "median") {
        const bool same_site = r.run_name.function_name.rfind("BM_same_site", 0) == 0;
        median_ns[r.run_name.function_name] =  // per switch
            r.GetAdjustedRealTime() / (same_site ? 2.0 * same_site_rounds : 2.0);
      }
    ConsoleReporter::ReportRuns(runs);
  }
};

// Instructions executed by `self --count <which> <n>` under callgrind, or -1.
double callgrind_total(const char* self, const char* which, long n) {
  char cmd[4096];
  std::snprintf(cmd, sizeof cmd,
                "valgrind --tool=callgrind --callgrind-out-file=/dev/null %s --count %s %ld 2>&1",
                self, which, n);
  FILE* p = popen(cmd, "r");
  if (!p) return -1;
  char line[512];
  double total = -1;
  while (std::fgets(line, sizeof line, p)) {
    const char* k = std::strstr(line, "Collected :");
    if (k) total = std::strtod(k + std::strlen("Collected :"), nullptr);
  }
  pclose(p);
  return total;
}

double instructions_per_switch(const char* self, const char* which) {
  const long n1 = 100'000, n2 = 300'000;
  double a = callgrind_total(self, which, n1), b = callgrind_total(self, which, n2);
  if (a < 0 || b < 0) return -1;
  return (b - a) / (2.0 * static_cast<double>(n2 - n1));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "--count") == 0) {
    long n = std::atol(argv[3]);
    std::string which = argv[2];
    if (which == "gort") gort_rounds(gort_jump, gort_bouncer, n);
    else if (which == "fcontext") boost_rounds(n);
    else return 2;
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  ratio_reporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  benchmark::Shutdown();

  auto g = rep.median_ns["BM_gort_jump"], f = rep.median_ns["BM_fcontext_jump"];
  std::printf("\nper switch (median of 5)   gort %.2f ns   fcontext %.2f ns\n", g, f);
  if (f > 0) std::printf("ratio time gort/fcontext: %.3f\n", g / f);
  auto sj = rep.median_ns["BM_same_site_gort_jump"], sr = rep.median_ns["BM_same_site_gort_jump_ret"],
       sf = rep.median_ns["BM_same_site_fcontext"];
  std::printf("same call site, the scheduler's shape (median of 5)   gort_jump_ret %.2f ns   gort_jump %.2f ns   fcontext %.2f ns\n",
              sr, sj, sf);
  if (sf > 0) std::printf("ratio time gort_jump_ret/fcontext, same call site: %.3f\n", sr / sf);

  if (std::system("valgrind --version >/dev/null 2>&1") == 0) {
    double ig = instructions_per_switch(argv[0], "gort");
    double ifc = instructions_per_switch(argv[0], "fcontext");
    std::printf("instructions per switch (callgrind, loop included)   gort %.1f   fcontext %.1f\n",
                ig, ifc);
    if (ifc > 0) std::printf("ratio instructions gort/fcontext: %.3f\n", ig / ifc);
  } else {
    std::printf("instructions per switch: valgrind not installed\n");
  }
  return 0;
}
