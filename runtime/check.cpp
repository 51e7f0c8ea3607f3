// gort: the fatal-error path of check.hpp.
#include "check.hpp"

#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <algorithm>
#include <cstdlib>

namespace gort::rt {

void fatal(const char* fmt, ...) noexcept {
  // One write of the whole line: no stdio lock (the caller may hold it, or be a signal handler)
  // and no interleaving with another thread's output.
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, "gort: fatal: ");
  va_list ap;
  va_start(ap, fmt);
  const int m = std::vsnprintf(buf + n, sizeof buf - static_cast<std::size_t>(n) - 1, fmt, ap);
  va_end(ap);
  n = m < 0 ? n : std::min<int>(n + m, static_cast<int>(sizeof buf) - 2);
  buf[n++] = '\n';
  for (int off = 0; off < n;) {
    const ssize_t w = ::write(2, buf + off, static_cast<std::size_t>(n - off));
    if (w <= 0) break;
    off += static_cast<int>(w);
  }
  std::abort();
}

}  // namespace gort::rt
