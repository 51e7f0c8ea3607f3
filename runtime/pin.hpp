// gort: CPU placement of Ms with hwloc.
//
// The topology is discovered once per process (it does not change under us, and loading it
// costs milliseconds). Placement is computed per runtime from config::pin; binding is per
// thread and best effort: cgroups, containers and affinity masks can refuse it, which costs
// one warning, never an error.
#pragma once

#include <vector>

#include "gort/config.hpp"

namespace gort::rt {

// Number of CPUs this process may run on (its affinity mask), at least 1.
unsigned allowed_cpus() noexcept;

// OS CPU number for each of n Ps under `policy`, or an empty vector for pin_policy::none.
std::vector<int> place_procs(pin_policy policy, unsigned n);

// Binds the calling thread to OS CPU `cpu`. Warns once per process on failure.
void bind_thread(int cpu) noexcept;

}  // namespace gort::rt
