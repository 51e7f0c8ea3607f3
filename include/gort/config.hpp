// gort: runtime configuration.
#pragma once

#include <chrono>
#include <cstddef>

namespace gort {

// Where the runtime's OS threads (Ms) run. With pinning, the M that holds processor P i is bound
// to P i's CPU, rebinding when it moves to another P.
enum class pin_policy {
  none,     // the OS scheduler places threads (default: gort shares the machine politely)
  compact,  // P i on the i-th allowed hardware thread, filling a core's SMT siblings first
  spread,   // Ps spread as far apart as the topology allows: packages, then cores, then SMT
};

// The default bytes of stack per G (config::stack_size): deep enough for ordinary library code
// (iostreams, regex, a few KiB frames) while a parked G commits only the pages it touched.
inline constexpr std::size_t default_stack_size = 256 * 1024;

struct config {
  // Number of logical processors (Ps), i.e. Gs running in parallel. 0: every CPU this process
  // may run on (its affinity mask). Environment GORT_PROCS overrides. At most 4096.
  unsigned procs = 0;
  // Bytes of stack per G: reserved address space, committed page by page when touched.
  // A multiple of the page size, at least 16 KiB.
  std::size_t stack_size = default_stack_size;
  pin_policy pin = pin_policy::none;
  // A G that runs this long without going through the scheduler is preempted (sysmon asks it
  // to yield; see async_preempt), never later than sysmon's own wake-up latency after that,
  // and at most a tenth of it sooner (up to half, rarely: docs/design.md, sysmon cadence).
  // At least 100 us. Environment GORT_TIME_SLICE overrides, with a unit: "10ms", "500us".
  std::chrono::nanoseconds time_slice = std::chrono::milliseconds(10);
  // Preempt Gs that never call into the runtime (tight loops) with a signal (SIGURG). Without
  // it, only runtime calls and gort::preempt_point() yield. Environment GORT_ASYNC_PREEMPT=0/1.
  bool async_preempt = true;
  // Most OS threads (Ms) the runtime may create: Ms in blocking calls, wired to Gs
  // (lock_os_thread) or held for preemption need their own. Exceeding it is fatal, as in Go.
  // Environment GORT_MAX_THREADS overrides.
  unsigned max_threads = 10'000;
  // The monitor thread behind preemption and blocking-call hand-off. Off only to measure what
  // it costs: without it, long-running Gs are never preempted and a blocking call keeps its P.
  // Environment GORT_SYSMON=0/1.
  bool sysmon = true;
  // Abort with "gort: all goroutines are asleep - deadlock!" and a line per waiting G when no
  // G can ever run again (docs/api.md "Deadlock report"). Needs sysmon. Silent while threads
  // created since run() began exist. Threads that existed before are assumed not to feed the
  // runtime: a program where one does (sends on a channel later, say) turns this off.
  // Environment GORT_DEADLOCK=0/1.
  bool detect_deadlock = true;
  // Dead Gs are cached, stacks and all, for the next spawn. Once per scavenge_period sysmon gives
  // half of the cached Gs that no spawn needed during the last period back to the kernel (their
  // stacks' memory, and whole stack mappings once empty), beyond a reserve of 1,024, so memory
  // used by a spike of Gs returns within seconds of the spike. 0: never. Needs sysmon.
  // Environment GORT_SCAVENGE_PERIOD overrides, with a unit: "1s", "200ms", "0s".
  std::chrono::nanoseconds scavenge_period = std::chrono::seconds(1);
};

}  // namespace gort
