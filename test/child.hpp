// Death tests: run a function in a forked child and collect how it ended and what it printed.
#pragma once

#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

struct child_result {
  int status = 0;
  std::string out;  // stdout and stderr, interleaved
  bool died_by(int sig) const { return WIFSIGNALED(status) && WTERMSIG(status) == sig; }
  bool exited(int code) const { return WIFEXITED(status) && WEXITSTATUS(status) == code; }
};

// Reads the child's output from fd until EOF (then closes fd) into `out`, and reaps the child's
// status; both retry on EINTR.
inline void drain_and_reap(int fd, pid_t pid, std::string& out, int& status) {
  char buf[4096];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  close(fd);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

// Runs f in a forked child (stdout and stderr captured, default actions for the fatal signals
// that test frameworks intercept, no core dumps, an alarm after alarm_seconds so a hang ends in
// SIGALRM). The child exits 0 if f returns, 3 if it throws; f may also end it itself.
template <class F>
child_result run_in_child(F&& f, unsigned alarm_seconds = 300) {
  int fds[2];
  if (pipe(fds) != 0) std::abort();
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) std::abort();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGALRM}) signal(sig, SIG_DFL);
    rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    alarm(alarm_seconds);
    // Leave with exit_group: _exit is intercepted by TSan, which turns the status into 66
    // if the parent had reported anything before the fork. The status here is f's.
    int code = 0;
    try {
      f();
    } catch (...) {
      code = 3;
    }
    std::fflush(nullptr);
    syscall(SYS_exit_group, code);
    _exit(code);  // not reached
  }
  close(fds[1]);
  child_result r;
  drain_and_reap(fds[0], pid, r.out, r.status);
  return r;
}
