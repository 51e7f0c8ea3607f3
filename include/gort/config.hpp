// gort: runtime configuration.
#pragma once

#include <cstddef>

namespace gort {

// Where the runtime's OS threads (Ms) run. With pinning, the M that holds processor P i is bound
// to P i's CPU, rebinding when it moves to another P.
enum class pin_policy {
  none,     // the OS scheduler places threads (default: gort shares the machine politely)
  compact,  // P i on the i-th allowed hardware thread, filling a core's SMT siblings first
  spread,   // Ps spread as far apart as the topology allows: packages, then cores, then SMT
};

struct config {
  // Number of logical processors (Ps), i.e. Gs running in parallel. 0: every CPU this process
  // may run on (its affinity mask). Environment GORT_PROCS overrides. At most 4096.
  unsigned procs = 0;
  // Bytes of stack per G: reserved address space, committed page by page when touched.
  // A multiple of the page size, at least 16 KiB.
  std::size_t stack_size = 256 * 1024;
  pin_policy pin = pin_policy::none;
};

}  // namespace gort
