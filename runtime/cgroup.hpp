// gort: the CPU limit of the process's cgroup (cgroup.cpp), for the default number of Ps.
//
// A container given 1.5 CPUs by a CPU quota usually still sees every CPU of the host in its
// affinity mask; Ps beyond the quota only make the kernel throttle the whole process for the
// rest of each period. Read once per run() with procs = 0 (env.cpp); no concurrency.
#pragma once

#include <string>

namespace gort::rt {

// Where the cgroup files are found: /proc/self/cgroup, /proc/self/mountinfo. Tests point them
// at fake trees.
struct cgroup_files {
  std::string self_cgroup = "/proc/self/cgroup";
  std::string mountinfo = "/proc/self/mountinfo";
};

// ceil(quota / period) of the tightest CPU quota on the path from the process's cgroup up to
// the root of its hierarchy: cgroup v1's cpu controller (cpu.cfs_quota_us, cpu.cfs_period_us)
// if one is mounted, else cgroup v2's cpu.max. 0: no quota, or nothing readable. Never throws.
unsigned cgroup_cpu_limit(const cgroup_files& files = {}) noexcept;

// The number of Ps for procs = 0: the CPUs of the affinity mask, fewer under a cgroup quota
// (limit: cgroup_cpu_limit, 0 for none), at least 1. Go 1.25's GOMAXPROCS default does the same
// but never goes below 2 for a quota.
inline unsigned default_procs(unsigned cpus, unsigned limit) noexcept {
  const unsigned n = limit != 0 && limit < cpus ? limit : cpus;
  return n > 0 ? n : 1;
}

}  // namespace gort::rt
