// runtime/fiber: the per-execution state that travels with a switch (C++ exception globals,
// the after-switch action), including across threads.
#include <catch2/catch_test_macros.hpp>

#include <exception>
#include <stdexcept>
#include <string>
#include <thread>

#include "fiber.hpp"
#include "test_util.hpp"

using gort::rt::fiber;
using gort::rt::thread_eh_globals;

namespace {

std::string what_of(const std::exception_ptr& p) {
  if (!p) return "<none>";
  try {
    std::rethrow_exception(p);
  } catch (const std::exception& e) {
    return e.what();
  }
}

struct exc_test {
  fiber main;
  fiber co;
  test_stack st;
  int step = 0;
  std::string co_seen_after_resume;
  int co_uncaught_in_dtor_before = -1, co_uncaught_in_dtor_after = -1;
  std::string failure;
};
exc_test* ex;

void fail(const char* why) {
  if (ex->failure.empty()) ex->failure = why;
}

struct switches_in_dtor {
  ~switches_in_dtor() {
    ex->co_uncaught_in_dtor_before = std::uncaught_exceptions();
    ex->co.switch_to(ex->main, thread_eh_globals());  // suspended during unwinding
    ex->co_uncaught_in_dtor_after = std::uncaught_exceptions();
  }
};

void co_entry(fiber* self, void*) {
  try {
    throw std::runtime_error("from co");
  } catch (const std::exception&) {
    if (std::uncaught_exceptions() != 0) fail("co: uncaught != 0 inside catch");
    ex->step = 1;
    self->switch_to(ex->main, thread_eh_globals());  // switch in the middle of a catch block
    ex->co_seen_after_resume = what_of(std::current_exception());
  }
  if (std::current_exception()) fail("co: exception still current after its catch ended");
  try {
    switches_in_dtor d;
    throw std::logic_error("unwinding");
  } catch (const std::logic_error&) {
  }
  ex->step = 3;
  self->exit_to(ex->main, thread_eh_globals());
}

}  // namespace

TEST_CASE("exception state stays with its coroutine across switches", "[fiber]") {
  exc_test s;
  ex = &s;
  s.main.init_thread();
  s.co.init(s.st.lo, test_stack::size, co_entry, nullptr);

  s.main.switch_to(s.co, thread_eh_globals());
  REQUIRE(s.step == 1);
  // co is suspended inside its catch block: none of that is visible here.
  CHECK(std::current_exception() == nullptr);
  CHECK(std::uncaught_exceptions() == 0);
  try {
    throw std::runtime_error("from main");
  } catch (const std::exception&) {
    // Resume co while main is itself inside a catch block.
    s.main.switch_to(s.co, thread_eh_globals());
    CHECK(what_of(std::current_exception()) == "from main");
  }
  CHECK(s.co_seen_after_resume == "from co");
  // co is now suspended inside a destructor run by unwinding: one uncaught exception there,
  // none here.
  CHECK(s.co_uncaught_in_dtor_before == 1);
  CHECK(std::uncaught_exceptions() == 0);
  CHECK(std::current_exception() == nullptr);
  s.main.switch_to(s.co, thread_eh_globals());
  CHECK(s.co_uncaught_in_dtor_after == 1);
  CHECK(s.step == 3);
  CHECK(s.failure.empty());
  CHECK(std::uncaught_exceptions() == 0);
  s.co.destroy();
  s.main.destroy();
}

namespace {
struct mig_test {
  fiber t1, t2, co;
  test_stack st;
  std::string seen_on_t2;
  int step = 0;
  fiber* back = nullptr;
};
mig_test* mg;

void mig_entry(fiber* self, void*) {
  try {
    throw std::runtime_error("migrating");
  } catch (const std::exception&) {
    mg->step = 1;
    self->switch_to(mg->t1, thread_eh_globals());  // leaves on thread 1 ...
    mg->seen_on_t2 = what_of(std::current_exception());  // ... resumes on thread 2
  }
  mg->step = 2;
  self->exit_to(mg->t2, thread_eh_globals());
}
}  // namespace

TEST_CASE("a coroutine suspended in a catch block resumes on another thread intact", "[fiber]") {
  mig_test s;
  mg = &s;
  s.co.init(s.st.lo, test_stack::size, mig_entry, nullptr);
  std::thread a([&] {
    s.t1.init_thread();
    s.t1.switch_to(s.co, thread_eh_globals());
    s.t1.destroy();
  });
  a.join();
  REQUIRE(s.step == 1);
  std::thread b([&] {
    s.t2.init_thread();
    s.t2.switch_to(s.co, thread_eh_globals());
    s.t2.destroy();
  });
  b.join();
  CHECK(s.step == 2);
  CHECK(s.seen_on_t2 == "migrating");
  s.co.destroy();
}

namespace {
struct after_test {
  fiber main, co;
  test_stack st;
  fiber* parked = nullptr;
  bool co_off_stack_when_published = false;
  int runs = 0;
};
after_test* at;

void publish(fiber* left, void* arg) {
  auto* s = static_cast<after_test*>(arg);
  // We run on main's stack; the fiber that left has its context recorded already.
  int here = 0;  // only its address is used; initialised for -Wmaybe-uninitialized
  s->co_off_stack_when_published = !s->st.contains(&here) && left->ctx != nullptr;
  s->parked = left;
}

void after_entry(fiber* self, void*) {
  for (;;) {
    ++at->runs;
    self->after = publish;
    self->after_arg = at;
    self->switch_to(at->main, thread_eh_globals());
  }
}
}  // namespace

TEST_CASE("the after-switch action runs once the leaving fiber is off its stack", "[fiber]") {
  after_test s;
  at = &s;
  s.main.init_thread();
  s.co.init(s.st.lo, test_stack::size, after_entry, nullptr);
  for (int i = 0; i < 100; ++i) {
    s.parked = nullptr;
    s.main.switch_to(s.co, thread_eh_globals());
    REQUIRE(s.parked == &s.co);
    REQUIRE(s.co_off_stack_when_published);
  }
  CHECK(s.runs == 100);
  s.co.destroy();
  s.main.destroy();
}
