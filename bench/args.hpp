// Positional integer arguments for the benchmark programs; a bad one exits 2 with a message,
// which tools/bench reports as a failed run.
#pragma once

#include <cstdio>
#include <cstdlib>

inline long bench_arg(const char* prog, int argc, char** argv, int i, long def, long min = 1) {
  if (argc <= i) return def;
  char* end = nullptr;
  long v = std::strtol(argv[i], &end, 10);
  if (*argv[i] == '\0' || *end != '\0' || v < min) {
    std::fprintf(stderr, "%s: bad argument '%s'\n", prog, argv[i]);
    std::exit(2);
  }
  return v;
}
