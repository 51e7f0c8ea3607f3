// The default number of Ps under a cgroup CPU quota: cgroup_cpu_limit read from fake
// /proc/self/cgroup, /proc/self/mountinfo and cgroup trees under a temporary directory (v2
// cpu.max, v1 cfs files, limits on parent cgroups, missing files), default_procs, and what
// config.procs and GORT_PROCS override.
#include <catch2/catch_test_macros.hpp>

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gort/gort.hpp>

#include "cgroup.hpp"
#include "env.hpp"
#include "pin.hpp"

namespace fs = std::filesystem;
using gort::rt::cgroup_cpu_limit;
using gort::rt::cgroup_files;

namespace {

// A fresh temporary directory, removed with its contents at the end of the test.
struct fake_root {
  fs::path dir;
  fake_root() {
    std::string tmpl = (fs::temp_directory_path() / "gort-cgroup-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    dir = tmpl;
  }
  ~fake_root() { fs::remove_all(dir); }
  void write(const fs::path& rel, const std::string& text) const {
    fs::create_directories((dir / rel).parent_path());
    std::ofstream(dir / rel) << text;
  }
  cgroup_files files() const {
    return {(dir / "proc/self/cgroup").string(), (dir / "proc/self/mountinfo").string()};
  }
  // A mountinfo line for a cgroup mount at dir/point whose root is `root`.
  std::string mount_line(const std::string& root, const std::string& point, bool v2) const {
    const std::string at = (dir / point).string();
    return v2 ? "41 31 0:38 " + root + " " + at + " rw,relatime - cgroup2 cgroup2 rw\n"
              : "32 31 0:29 " + root + " " + at + " rw,relatime - cgroup cgroup rw,cpu,cpuacct\n";
  }
};

// A v2 layout: the process in /app/worker, cgroup2 mounted at <dir>/cg with root "/".
unsigned v2_limit(const std::string& worker_max, const std::string& app_max = "") {
  fake_root r;
  r.write("proc/self/cgroup", "0::/app/worker\n");
  r.write("proc/self/mountinfo", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n" + r.mount_line("/", "cg", true));
  if (!worker_max.empty()) r.write("cg/app/worker/cpu.max", worker_max);
  if (!app_max.empty()) r.write("cg/app/cpu.max", app_max);
  r.write("cg/cgroup.controllers", "cpu memory\n");  // the root has no cpu.max
  return cgroup_cpu_limit(r.files());
}

}  // namespace

TEST_CASE("cgroup v2 cpu.max gives ceil(quota / period)") {
  CHECK(v2_limit("max 100000\n") == 0);
  CHECK(v2_limit("150000 100000\n") == 2);
  CHECK(v2_limit("50000 100000\n") == 1);
  CHECK(v2_limit("200000 100000\n") == 2);
  CHECK(v2_limit("400001 100000\n") == 5);
  CHECK(v2_limit("") == 0);  // no cpu.max: the controller is not enabled there
  CHECK(v2_limit("garbage\n") == 0);
}

TEST_CASE("cgroup v2: the tightest quota on the way up to the mount counts") {
  CHECK(v2_limit("max 100000\n", "300000 100000\n") == 3);
  CHECK(v2_limit("700000 100000\n", "300000 100000\n") == 3);
  CHECK(v2_limit("100000 100000\n", "300000 100000\n") == 1);
  CHECK(v2_limit("", "250000 100000\n") == 3);
}

TEST_CASE("cgroup v2 with a cgroup namespace or a bind-mounted container cgroup") {
  fake_root r;
  // The host bind-mounts the container's own cgroup (/docker/abc) at the mount point.
  r.write("proc/self/cgroup", "0::/docker/abc\n");
  r.write("proc/self/mountinfo", r.mount_line("/docker/abc", "cg", true));
  r.write("cg/cpu.max", "250000 100000\n");
  CHECK(cgroup_cpu_limit(r.files()) == 3);
  // A namespace's view of a cgroup outside the mount's root: only the mount point is read.
  r.write("proc/self/cgroup", "0::/../elsewhere\n");
  CHECK(cgroup_cpu_limit(r.files()) == 3);
}

TEST_CASE("cgroup v1 cfs quota and period") {
  fake_root r;
  r.write("proc/self/cgroup", "5:memory:/x\n4:cpu,cpuacct:/job/7\n0::/\n");
  r.write("proc/self/mountinfo", r.mount_line("/", "v1/cpu,cpuacct", false) +
                                     r.mount_line("/", "unified", true));
  r.write("unified/cpu.max", "100000 100000\n");  // hybrid: the v2 tree has no cpu controller in use
  r.write("v1/cpu,cpuacct/job/7/cpu.cfs_quota_us", "-1\n");
  r.write("v1/cpu,cpuacct/job/7/cpu.cfs_period_us", "100000\n");
  CHECK(cgroup_cpu_limit(r.files()) == 0);
  r.write("v1/cpu,cpuacct/job/7/cpu.cfs_quota_us", "350000\n");
  CHECK(cgroup_cpu_limit(r.files()) == 4);
  r.write("v1/cpu,cpuacct/job/cpu.cfs_quota_us", "50000\n");
  r.write("v1/cpu,cpuacct/job/cpu.cfs_period_us", "100000\n");
  CHECK(cgroup_cpu_limit(r.files()) == 1);
  fs::remove(r.dir / "v1/cpu,cpuacct/job/7/cpu.cfs_period_us");
  CHECK(cgroup_cpu_limit(r.files()) == 1);  // the parent's still applies
}

TEST_CASE("cgroup: escaped mount points, missing files and no cgroup at all") {
  fake_root r;
  CHECK(cgroup_cpu_limit(r.files()) == 0);  // no /proc files
  r.write("proc/self/cgroup", "0::/a\n");
  CHECK(cgroup_cpu_limit(r.files()) == 0);  // no mountinfo
  r.write("proc/self/mountinfo", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n");
  CHECK(cgroup_cpu_limit(r.files()) == 0);  // no cgroup2 mount
  // A space in the mount point is \040 in mountinfo.
  const std::string at = (r.dir / "my").string() + "\\040cg";
  r.write("proc/self/mountinfo", "41 31 0:38 / " + at + " rw - cgroup2 cgroup2 rw\n");
  r.write("my cg/a/cpu.max", "120000 100000\n");
  CHECK(cgroup_cpu_limit(r.files()) == 2);
}

TEST_CASE("default_procs: the affinity mask, fewer under a quota, at least 1") {
  using gort::rt::default_procs;
  CHECK(default_procs(8, 0) == 8);
  CHECK(default_procs(8, 2) == 2);
  CHECK(default_procs(2, 8) == 2);
  CHECK(default_procs(8, 1) == 1);
  CHECK(default_procs(0, 0) == 1);
}

TEST_CASE("procs = 0 on this machine follows its affinity mask and cgroup") {
  REQUIRE(unsetenv("GORT_PROCS") == 0);
  const unsigned expect = gort::rt::default_procs(gort::rt::allowed_cpus(), cgroup_cpu_limit());
  CHECK(gort::rt::read_settings(gort::config{}).procs == expect);
  CHECK(gort::run([] { return gort::procs(); }) == expect);
  // An explicit count, from the config or the environment, is taken as it is.
  CHECK(gort::rt::read_settings(gort::config{.procs = 64}).procs == 64);
  REQUIRE(setenv("GORT_PROCS", "3", 1) == 0);
  CHECK(gort::rt::read_settings(gort::config{.procs = 64}).procs == 3);
  REQUIRE(unsetenv("GORT_PROCS") == 0);
}
