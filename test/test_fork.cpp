// fork() while a runtime runs: fork+exec (std::system, popen, fork then exec) keeps working from
// a G and from a plain thread; in the child, gort calls fail naming fork (an abort with a
// "gort: fatal:" line from park, yield and a plain thread's block; std::logic_error from
// go/spawn and run), while exit() and _exit() end it with their status. A fork while no
// runtime runs gives a child that can run its own.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <gort/chan.hpp>
#include <gort/gort.hpp>
#include <gort/sync.hpp>

#include "child.hpp"
#include "test_util.hpp"

using Catch::Matchers::ContainsSubstring;

#if defined(__SANITIZE_ADDRESS__)
// A child that ends with exit() would run LeakSanitizer, which counts as leaks what the
// parent's other threads held (they do not exist in the child) and changes the exit status.
namespace {
bool no_leak_check = false;
}  // namespace
extern "C" int __lsan_is_turned_off() { return no_leak_check; }
#define NO_LEAK_CHECK() (no_leak_check = true)
#else
#define NO_LEAK_CHECK() ((void)0)
#endif

namespace {

struct forked {
  int status = -1;
  std::string err;  // the child's stderr
};

// Forks; the child runs f with stderr into a pipe, default SIGABRT/SIGALRM actions and a 30 s
// alarm (a hang ends in SIGALRM), then exits 0, or 9 after printing what f threw. The parent
// collects the child's stderr and status. Called from a G or a plain thread: the parent side
// blocks its thread in read and waitpid, which is fine for a test.
forked fork_and(const std::function<void()>& f) {
  forked r;
  int fds[2];
  if (pipe(fds) != 0) std::abort();
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) std::abort();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    signal(SIGABRT, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    alarm(30);
    int code = 0;
    try {
      f();
    } catch (const std::exception& e) {
      std::fputs(e.what(), stderr);
      code = 9;
    }
    std::fflush(stderr);
    syscall(SYS_exit_group, code);  // not _exit: see child.hpp (TSan)
  }
  close(fds[1]);
  drain_and_reap(fds[0], pid, r.err, r.status);
  return r;
}

bool aborted(const forked& r) { return WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGABRT; }
bool exited(const forked& r, int code) { return WIFEXITED(r.status) && WEXITSTATUS(r.status) == code; }

// fork then exec /bin/sh -c "exit <code>"; the child's exit status, or -1.
int fork_exec(int code) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    const std::string cmd = "exit " + std::to_string(code);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// Every way of starting a program, from the calling thread; true if each gave what it should.
bool spawn_programs(int i) {
  bool ok = fork_exec(i % 100) == i % 100;
  const int st = std::system(("exit " + std::to_string((i + 1) % 100)).c_str());
  ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == (i + 1) % 100;
  if (FILE* f = popen("echo gort", "r")) {
    char line[16] = {};
    ok = ok && std::fgets(line, sizeof line, f) && std::string(line) == "gort\n";
    ok = pclose(f) == 0 && ok;
  } else {
    ok = false;
  }
  return ok;
}

}  // namespace

TEST_CASE("fork+exec, system and popen work from a G and a plain thread while Gs run") {
  const int rounds = static_cast<int>(std::max(4L, 40 / test_scale()));
  struct result {
    int g_ok = 0, thread_ok = 0;
    std::uint64_t spins = 0;
  };
  const result r = gort::run(gort::config{.procs = 2}, [&] {
    result out;
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> spins{0};
    // Busy Gs, so that preemption signals and hand-offs happen around the forks.
    gort::wait_group wg;
    for (int k = 0; k < 3; ++k) {
      wg.add(1);
      gort::go([&] {
        while (!stop.load(std::memory_order_relaxed)) spins.fetch_add(1, std::memory_order_relaxed);
        wg.done();
      });
    }
    std::thread plain([&] {
      for (int i = 0; i < rounds; ++i) out.thread_ok += spawn_programs(i);
    });
    for (int i = 0; i < rounds; ++i) out.g_ok += spawn_programs(i);
    plain.join();
    stop = true;
    wg.wait();
    out.spins = spins.load();
    return out;
  });
  CHECK(r.g_ok == rounds);
  CHECK(r.thread_ok == rounds);
  CHECK(r.spins > 0);
}

TEST_CASE("in the child of a fork from a G, scheduler calls abort naming fork") {
  struct outcome {
    forked yield, recv, sleep, lock, go, run, exit_status;
  };
  const outcome o = gort::run(gort::config{.procs = 2}, [] {
    outcome out;
    gort::chan<int> ch;
    gort::mutex mu;
    out.yield = fork_and([] { gort::yield(); });
    out.recv = fork_and([&] { (void)ch.recv(); });
    out.sleep = fork_and([] { gort::sleep_for(std::chrono::milliseconds(1)); });
    mu.lock();  // held in the parent: the child's lock() must wait, and so park
    out.lock = fork_and([&] { mu.lock(); });
    mu.unlock();
    out.go = fork_and([] { gort::go([] {}); });
    out.run = fork_and([] { gort::run([] {}); });
    out.exit_status = fork_and([] {
      NO_LEAK_CHECK();
      std::exit(4);
    });
    return out;
  });
  for (const forked* f : {&o.yield, &o.recv, &o.sleep, &o.lock}) {
    INFO(f->err);
    CHECK(aborted(*f));
    CHECK_THAT(f->err, ContainsSubstring("gort: fatal:") && ContainsSubstring("forked while a runtime ran"));
  }
  CHECK_THAT(o.yield.err, ContainsSubstring("gort::yield"));
  CHECK_THAT(o.sleep.err, ContainsSubstring("sleep"));
  CHECK_THAT(o.lock.err, ContainsSubstring("mutex"));
  for (const forked* f : {&o.go, &o.run}) {
    INFO(f->err);
    CHECK(exited(*f, 9));
    CHECK_THAT(f->err, ContainsSubstring("forked while a runtime ran"));
  }
  CHECK_THAT(o.go.err, ContainsSubstring("go/spawn"));
  CHECK_THAT(o.run.err, ContainsSubstring("gort::run"));
  INFO(o.exit_status.err);
  CHECK(exited(o.exit_status, 4));
}

TEST_CASE("in the child of a fork from a plain thread, gort calls fail naming fork") {
  struct outcome {
    forked recv, go, run, procs;
  };
  outcome out;
  gort::run([&] {
    gort::chan<int> ch;
    std::thread plain([&] {
      out.recv = fork_and([&] { (void)ch.recv(); });
      out.go = fork_and([] { gort::go([] {}); });
      out.run = fork_and([] { gort::run([] {}); });
      out.procs = fork_and([] { (void)gort::procs(); });
    });
    plain.join();
  });
  INFO(out.recv.err);
  CHECK(aborted(out.recv));
  CHECK_THAT(out.recv.err, ContainsSubstring("gort: fatal:") && ContainsSubstring("forked while a runtime ran"));
  for (const forked* f : {&out.go, &out.run}) {
    INFO(f->err);
    CHECK(exited(*f, 9));
    CHECK_THAT(f->err, ContainsSubstring("forked while a runtime ran"));
  }
  CHECK(exited(out.procs, 9));  // no runtime runs there
  CHECK_THAT(out.procs.err, ContainsSubstring("no runtime is running"));
}

TEST_CASE("a fork while no runtime runs gives a child that runs its own") {
  CHECK(gort::run([] { return 1; }) == 1);
  const forked f = fork_and([] {
    const int v = gort::run(gort::config{.procs = 2}, [] {
      auto t = gort::spawn([] { return 41; });
      return t.join() + 1;
    });
    if (v != 42) throw std::runtime_error("wrong value " + std::to_string(v));
  });
  INFO(f.err);
  CHECK(exited(f, 0));
}
