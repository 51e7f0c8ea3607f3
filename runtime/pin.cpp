// gort: the hwloc topology, the CPUs this process may use, placing Ps on CPUs for the pin
// policies, and binding an M's thread to its P's CPU.
#include "pin.hpp"

#include <hwloc.h>
#include <sched.h>

#include <cstdio>
#include <mutex>

namespace gort::rt {

namespace {

struct topo_holder {
  hwloc_topology_t t = nullptr;
  bool ok = false;
  topo_holder() {
    if (hwloc_topology_init(&t) != 0) return;
    // Only what this process may use: a P placed on a forbidden CPU could never run there.
    if (hwloc_topology_load(t) != 0) {
      hwloc_topology_destroy(t);
      t = nullptr;
      return;
    }
    ok = true;
  }
  ~topo_holder() {
    if (t) hwloc_topology_destroy(t);
  }
};

topo_holder& topo() {
  static topo_holder& h = *new topo_holder;  // never destroyed: Ms may bind during exit()
  return h;
}

std::once_flag warn_once;

}  // namespace

unsigned allowed_cpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  int n = CPU_COUNT(&set);
  return n > 0 ? static_cast<unsigned>(n) : 1;
}

std::vector<int> place_procs(pin_policy policy, unsigned n) {
  std::vector<int> out;
  if (policy == pin_policy::none || n == 0) return out;
  topo_holder& h = topo();
  if (!h.ok) return out;
  int npu = hwloc_get_nbobjs_by_type(h.t, HWLOC_OBJ_PU);
  if (npu <= 0) return out;
  out.reserve(n);
  if (policy == pin_policy::compact) {
    // Logical order walks the tree depth first: SMT siblings, then cores, then packages.
    for (unsigned i = 0; i < n; ++i) {
      hwloc_obj_t pu = hwloc_get_obj_by_type(h.t, HWLOC_OBJ_PU, static_cast<unsigned>(i % static_cast<unsigned>(npu)));
      out.push_back(pu ? static_cast<int>(pu->os_index) : -1);
    }
    return out;
  }
  // spread: hwloc_distrib divides the machine recursively, so consecutive Ps land as far apart
  // as the tree allows. More Ps than PUs wrap around.
  unsigned per_round = n < static_cast<unsigned>(npu) ? n : static_cast<unsigned>(npu);
  // hwloc_distrib allocates the sets itself (one hwloc_bitmap_dup each); we free them.
  std::vector<hwloc_bitmap_t> sets(per_round, nullptr);
  hwloc_obj_t root = hwloc_get_root_obj(h.t);
  hwloc_distrib(h.t, &root, 1, sets.data(), per_round, INT_MAX, 0);
  std::vector<int> round;
  for (auto& s : sets) {
    hwloc_bitmap_singlify(s);
    round.push_back(hwloc_bitmap_first(s));
    hwloc_bitmap_free(s);
  }
  for (unsigned i = 0; i < n; ++i) out.push_back(round[i % per_round]);
  return out;
}

void bind_thread(int cpu) noexcept {
  if (cpu < 0) return;
  topo_holder& h = topo();
  bool ok = false;
  if (h.ok) {
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    hwloc_bitmap_only(set, static_cast<unsigned>(cpu));
    ok = hwloc_set_cpubind(h.t, set, HWLOC_CPUBIND_THREAD) == 0;
    hwloc_bitmap_free(set);
  }
  if (!ok) {
    std::call_once(warn_once, [cpu] {
      std::fprintf(stderr, "gort: warning: could not bind a thread to CPU %d; running unpinned\n", cpu);
    });
  }
}

}  // namespace gort::rt
