// gort: the CPU limit of the process's cgroup (cgroup.hpp).
//
// /proc/self/cgroup names the process's cgroup in each hierarchy ("4:cpu,cpuacct:/a/b" for
// cgroup v1, "0::/a/b" for v2); /proc/self/mountinfo says where each hierarchy is mounted and
// which part of it (the mount's root: "/" with a cgroup namespace, the container's own cgroup
// when the host bind-mounts it). The cgroup's directory is the mount point plus the cgroup
// path below the mount's root. A quota set on a parent cgroup limits its children too, so the
// limit is the tightest one from that directory up to the mount point (Go 1.25 reads only the
// leaf cgroup's).
// Single-threaded: read once per run() by env.cpp.
#include "cgroup.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

namespace gort::rt {

namespace {

bool has_token(std::string_view list, std::string_view tok) {
  while (!list.empty()) {
    const std::size_t c = list.find(',');
    if (list.substr(0, c) == tok) return true;
    if (c == std::string_view::npos) break;
    list.remove_prefix(c + 1);
  }
  return false;
}

// mountinfo escapes space, tab, newline and backslash in paths as \ooo (octal).
std::string unescape(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3') {
      const int c = (s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0');
      out.push_back(static_cast<char>(c));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool read_int(const std::string& path, std::int64_t& v) {
  std::ifstream f(path);
  return static_cast<bool>(f >> v);
}

// The quota at one cgroup directory, as a CPU count rounded up; 0: none there.
std::int64_t limit_at(const std::string& dir, bool v2) {
  std::int64_t quota = 0, period = 0;
  if (v2) {
    std::ifstream f(dir + "/cpu.max");
    std::string q;
    if (!(f >> q >> period) || q == "max") return 0;
    char* end = nullptr;
    quota = std::strtoll(q.c_str(), &end, 10);
    if (*end != '\0') return 0;
  } else {
    if (!read_int(dir + "/cpu.cfs_quota_us", quota)) return 0;
    if (!read_int(dir + "/cpu.cfs_period_us", period)) return 0;
  }
  if (quota <= 0 || period <= 0) return 0;  // v1 writes -1 for no quota
  return quota / period + (quota % period != 0);
}

struct mount {
  std::string root, point;
};

// The mount of the hierarchy in question: v1's with the cpu controller, or v2's.
bool find_mount(const std::string& mountinfo, bool v2, mount& out) {
  std::ifstream f(mountinfo);
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ls(line);
    std::vector<std::string> fields;
    for (std::string w; ls >> w;) fields.push_back(std::move(w));
    const auto sep = std::find(fields.begin(), fields.end(), "-");
    if (fields.size() < 5 || sep == fields.end() || fields.end() - sep < 4) continue;
    const std::string& fstype = sep[1];
    const std::string& superopts = sep[3];
    if (v2 ? fstype == "cgroup2" : fstype == "cgroup" && has_token(superopts, "cpu")) {
      out.root = unescape(fields[3]);
      out.point = unescape(fields[4]);
      return true;
    }
  }
  return false;
}

unsigned limit(const cgroup_files& files) {
  std::ifstream f(files.self_cgroup);
  std::string line, v1_path, v2_path;
  bool v1 = false, v2 = false;
  while (std::getline(f, line)) {
    const std::size_t a = line.find(':');
    const std::size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string_view id(line.data(), a);
    const std::string_view ctl(line.data() + a + 1, b - a - 1);
    if (id == "0" && ctl.empty()) {
      v2 = true;
      v2_path = line.substr(b + 1);
    } else if (has_token(ctl, "cpu")) {
      v1 = true;
      v1_path = line.substr(b + 1);
    }
  }
  // Where both exist (a hybrid layout), the cpu controller belongs to the v1 hierarchy.
  const bool use_v2 = !v1;
  if (use_v2 && !v2) return 0;
  mount mnt;
  if (!find_mount(files.mountinfo, use_v2, mnt)) return 0;
  std::string rel = use_v2 ? v2_path : v1_path;
  // The cgroup below the mount's root; a cgroup outside it (a namespace's view) is read at the
  // mount point only.
  if (mnt.root != "/") {
    if (rel.compare(0, mnt.root.size(), mnt.root) == 0 &&
        (rel.size() == mnt.root.size() || rel[mnt.root.size()] == '/'))
      rel.erase(0, mnt.root.size());
    else
      rel.clear();
  }
  while (!rel.empty() && rel.back() == '/') rel.pop_back();
  std::int64_t best = 0;
  for (;;) {
    const std::int64_t l = limit_at(mnt.point + rel, use_v2);
    if (l > 0 && (best == 0 || l < best)) best = l;
    if (rel.empty()) break;
    rel.erase(rel.rfind('/'));
  }
  return best > 0 && best < 1'000'000 ? static_cast<unsigned>(best) : 0;
}

}  // namespace

unsigned cgroup_cpu_limit(const cgroup_files& files) noexcept {
  try {
    return limit(files);
  } catch (...) {  // bad_alloc: no limit known
    return 0;
  }
}

}  // namespace gort::rt
