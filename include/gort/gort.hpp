// gort: Go's G/M/P scheduler for C++. Start here: docs/api.md, README.md.
//
//   gort::run([] {                      // boots the runtime, runs the lambda as the main G
//     gort::wait_group wg;
//     for (int i = 0; i < 1000; ++i) {
//       wg.add(1);
//       gort::go([&wg, i] { work(i); wg.done(); });
//     }
//     wg.wait();                        // parks this G, not the thread
//   });
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>

#include "gort/config.hpp"
#include "gort/deadline.hpp"

#if defined(GORT_BUILDING_LIBRARY)
#define GORT_API __attribute__((visibility("default")))
#else
#define GORT_API
#endif

namespace gort {

namespace detail {

struct gdesc;  // a G; the runtime's business

// The typed part of a G lives at the top of its stack (no allocation): the header below puts
// the callable there, the runtime calls `body` on it once, and `destroy` when the last holder
// (the G itself once its body returned, a task or a thread handle) lets go, in that holder's
// own context: on the G, or on the thread or G that joins or drops the handle.
using body_fn = void (*)(void* frame);
using destroy_fn = void (*)(void* frame) noexcept;

// Reserves a G with `size` bytes of frame storage (alignment <= 64) and returns the storage,
// and the G's id in *id. Throws std::logic_error when no runtime is running, std::bad_alloc
// when out of memory.
GORT_API gdesc* g_new(std::size_t size, std::size_t align, void** frame, std::uint64_t* id);
// Makes a reserved G runnable. A joinable G keeps its frame after finishing until g_release.
GORT_API void g_start(gdesc* g, body_fn body, destroy_fn destroy, bool joinable) noexcept;
// Gives back a reserved G whose frame could not be constructed.
GORT_API void g_discard(gdesc* g) noexcept;
// Handles keep their G's id with the G: it tells whether the runtime that made the G still
// runs. After that runtime shut down a handle never touches its G (docs/api.md, "Handles and
// the runtime's lifetime").
//
// Blocks (parks the calling G, or blocks the calling OS thread) until g (id `id`) has finished.
// Returns 0 if g's runtime shut down (before or during the wait): the handle is inert. Else a
// token for g_release_joined; until then the G's frame may be read.
[[nodiscard]] GORT_API int g_join(gdesc* g, std::uint64_t id);
// Drops the hold of a handle that g_join returned `token` for.
GORT_API void g_release_joined(gdesc* g, int token) noexcept;
// Drops a handle's hold on a joinable G. Does nothing once g's runtime has shut down.
GORT_API void g_release(gdesc* g, std::uint64_t id) noexcept;
GORT_API std::uint64_t current_g_id() noexcept;  // 0 outside a G

// Boots a runtime, runs body(frame) as the main G, waits for it, shuts the runtime down.
GORT_API void run_main(const config& cfg, body_fn body, void* frame);

GORT_API void yield_now() noexcept;
GORT_API void preempt_point() noexcept;
GORT_API void preempt_off() noexcept;
GORT_API void preempt_on() noexcept;
// Bracket a blocking call: enter returns a token for exit (null outside a G).
GORT_API void* blocking_enter() noexcept;
GORT_API void blocking_exit(void* token) noexcept;
GORT_API void sleep_until_steady(std::int64_t steady_ns);
GORT_API unsigned procs();

template <class R>
struct outcome {
  using stored = std::conditional_t<std::is_reference_v<R>,
                                    std::reference_wrapper<std::remove_reference_t<R>>, R>;
  std::optional<stored> value;
  std::exception_ptr error;
  template <class F>
  void capture(F&& f) noexcept {
    try {
      value.emplace(std::forward<F>(f)());
    } catch (...) {
      error = std::current_exception();
    }
  }
  R take() {
    // Moved out, so the last reference drops on the joiner's thread, not in the dead G's
    // recycle (TSan cannot see libstdc++'s uninstrumented exception refcount).
    if (error) std::rethrow_exception(std::exchange(error, nullptr));
    if constexpr (std::is_reference_v<R>) return value->get();
    else return std::move(*value);
  }
};
template <>
struct outcome<void> {
  std::exception_ptr error;
  template <class F>
  void capture(F&& f) noexcept {
    try {
      std::forward<F>(f)();
    } catch (...) {
      error = std::current_exception();
    }
  }
  void take() {
    // Moved out, so the last reference drops on the joiner's thread, not in the dead G's
    // recycle (TSan cannot see libstdc++'s uninstrumented exception refcount).
    if (error) std::rethrow_exception(std::exchange(error, nullptr));
  }
};

template <class F, class... A>
using result_of = std::invoke_result_t<std::decay_t<F>, std::decay_t<A>...>;

// The callable and its arguments, destroyed right after the call (as std::thread does).
template <class F, class... A>
struct call {
  std::decay_t<F> fn;
  std::tuple<std::decay_t<A>...> args;
  decltype(auto) operator()() { return std::apply(std::move(fn), std::move(args)); }
};

template <class F, class... A>
struct detached_frame {
  std::optional<call<F, A...>> c;
  static void body(void* p) {
    auto* fr = static_cast<detached_frame*>(p);
    (*fr->c)();  // an exception escaping here ends the process (runtime diagnostic)
    fr->c.reset();
  }
  static void destroy(void* p) noexcept { static_cast<detached_frame*>(p)->~detached_frame(); }
};

template <class F, class... A>
struct task_frame {
  using R = result_of<F, A...>;
  std::optional<call<F, A...>> c;
  outcome<R> out;
  static void body(void* p) {
    auto* fr = static_cast<task_frame*>(p);
    fr->out.capture(*fr->c);
    fr->c.reset();
  }
  static void destroy(void* p) noexcept { static_cast<task_frame*>(p)->~task_frame(); }
};

// Reserves a G, constructs Frame in its storage, starts it.
template <class Frame, class F, class... A>
gdesc* launch(bool joinable, Frame** out, std::uint64_t* id, F&& f, A&&... args) {
  void* mem = nullptr;
  gdesc* g = g_new(sizeof(Frame), alignof(Frame), &mem, id);
  Frame* fr;
  try {
    fr = ::new (mem) Frame{};
    fr->c.emplace(call<F, A...>{std::forward<F>(f), {std::forward<A>(args)...}});
  } catch (...) {
    g_discard(g);
    throw;
  }
  if (out) *out = fr;
  g_start(g, &Frame::body, &Frame::destroy, joinable);
  return g;
}

struct main_frame_base {
  void (*invoke)(main_frame_base*);
};

}  // namespace detail

// Boots a runtime with `cfg`, runs main_fn as a G and returns its result (or rethrows its
// exception) once it returns. Gs still alive at that point are abandoned: never resumed again,
// their stacks unmapped without unwinding, as a Go program's goroutines end with main. Throws
// std::logic_error if a runtime is already running in this process, std::invalid_argument for
// a bad configuration. Calling run again afterwards starts a fresh runtime.
template <class F>
decltype(auto) run(const config& cfg, F&& main_fn) {
  using R = std::invoke_result_t<F>;
  struct frame : detail::main_frame_base {
    std::remove_reference_t<F>* fn;
    detail::outcome<R> out;
  } fr;
  fr.fn = std::addressof(main_fn);
  fr.invoke = [](detail::main_frame_base* b) {
    auto* self = static_cast<frame*>(b);
    self->out.capture([self]() -> R { return std::forward<F>(*self->fn)(); });
  };
  detail::run_main(cfg, [](void* p) {
    auto* b = static_cast<detail::main_frame_base*>(p);
    b->invoke(b);
  }, static_cast<detail::main_frame_base*>(&fr));
  return fr.out.take();
}
template <class F>
decltype(auto) run(F&& main_fn) {
  return run(config{}, std::forward<F>(main_fn));
}

// Starts a detached G running f(args...). Arguments are decay-copied, as by std::thread. An
// exception escaping f prints "gort: G <id> terminated by exception: <what>" and calls
// std::terminate. Works from Gs and from plain OS threads while a runtime runs; otherwise
// throws std::logic_error.
template <class F, class... A>
void go(F&& f, A&&... args) {
  std::uint64_t id;
  detail::gdesc* g = detail::launch<detail::detached_frame<F, A...>>(
      false, nullptr, &id, std::forward<F>(f), std::forward<A>(args)...);
  (void)g;
}

// The handle of a G started by spawn: join() waits for it and returns its result or rethrows
// its exception. Destroying an unjoined task detaches the G: its result is destroyed when the G
// finishes, on the G. A task may outlive run(): see docs/api.md, "Handles and the runtime's
// lifetime".
template <class R>
class task {
 public:
  task() = default;
  task(task&& o) noexcept : g_(std::exchange(o.g_, nullptr)), out_(o.out_), id_(o.id_) {}
  task& operator=(task&& o) noexcept {
    if (this != &o) {
      reset();
      g_ = std::exchange(o.g_, nullptr);
      out_ = o.out_;
      id_ = o.id_;
    }
    return *this;
  }
  ~task() { reset(); }

  // Waits for the G; returns its result or rethrows its exception. Once only: a second join
  // (or join on an empty task) throws std::logic_error, and so does a join once the runtime
  // that ran the G has shut down (the task is then empty).
  R join() {
    if (!g_) throw std::logic_error("gort::task::join: task has no G (empty, moved-from, or already joined)");
    const int token = detail::g_join(g_, id_);
    if (!token) {
      g_ = nullptr;
      throw std::logic_error(
          "gort::task::join: the runtime that ran this task has shut down (its result, if any, "
          "was destroyed then)");
    }
    struct release {
      detail::gdesc*& g;
      int token;
      ~release() { detail::g_release_joined(std::exchange(g, nullptr), token); }
    } r{g_, token};
    return out_->take();
  }
  bool valid() const noexcept { return g_ != nullptr; }
  std::uint64_t id() const noexcept { return g_ ? id_ : 0; }

 private:
  template <class F, class... A>
  friend auto spawn(F&& f, A&&... args);
  task(detail::gdesc* g, detail::outcome<R>* out, std::uint64_t id) : g_(g), out_(out), id_(id) {}
  void reset() noexcept {
    if (g_) detail::g_release(std::exchange(g_, nullptr), id_);
  }
  detail::gdesc* g_ = nullptr;
  detail::outcome<R>* out_ = nullptr;
  std::uint64_t id_ = 0;  // the G's, which also names its runtime (g_release, g_join)
};

// Starts a G running f(args...) and returns a task<R> to join it. Same rules as go().
template <class F, class... A>
auto spawn(F&& f, A&&... args) {
  using frame = detail::task_frame<F, A...>;
  frame* fr = nullptr;
  std::uint64_t id;
  detail::gdesc* g = detail::launch<frame>(true, &fr, &id, std::forward<F>(f), std::forward<A>(args)...);
  return task<typename frame::R>(g, &fr->out, id);
}

// A drop-in for std::thread whose body runs as a G. join() parks a calling G (or blocks a
// calling OS thread); destroying a joinable thread calls std::terminate, as std::thread does.
class thread {
 public:
  class id {
   public:
    id() noexcept = default;
    explicit id(std::uint64_t v) noexcept : v_(v) {}
    friend bool operator==(id a, id b) noexcept { return a.v_ == b.v_; }
    friend auto operator<=>(id a, id b) noexcept { return a.v_ <=> b.v_; }
    friend std::ostream& operator<<(std::ostream& os, id i) { return os << i.v_; }
    std::uint64_t value() const noexcept { return v_; }

   private:
    std::uint64_t v_ = 0;  // the G id; 0 = "not a thread"
  };

  thread() noexcept = default;
  template <class F, class... A,
            class = std::enable_if_t<!std::is_same_v<std::remove_cvref_t<F>, thread>>>
  explicit thread(F&& f, A&&... args) {
    g_ = detail::launch<detail::detached_frame<F, A...>>(true, nullptr, &id_, std::forward<F>(f),
                                                         std::forward<A>(args)...);
  }
  thread(thread&& o) noexcept : g_(std::exchange(o.g_, nullptr)), id_(o.id_) {}
  thread& operator=(thread&& o) noexcept {
    if (joinable()) std::terminate();
    g_ = std::exchange(o.g_, nullptr);
    id_ = o.id_;
    return *this;
  }
  thread(const thread&) = delete;
  thread& operator=(const thread&) = delete;
  ~thread() {
    if (joinable()) std::terminate();
  }

  bool joinable() const noexcept { return g_ != nullptr; }
  id get_id() const noexcept { return g_ ? id(id_) : id(); }
  // std::system_error(invalid_argument) if not joinable, (resource_deadlock_would_occur) if
  // the calling G is this thread, (no_such_process) if the runtime that ran it has shut down
  // (the thread is then no longer joinable).
  void join();
  void detach();
  void swap(thread& o) noexcept {
    std::swap(g_, o.g_);
    std::swap(id_, o.id_);
  }
  static unsigned hardware_concurrency() noexcept { return std::thread::hardware_concurrency(); }

 private:
  GORT_API void check_joinable(const char* what) const;
  [[noreturn]] GORT_API void runtime_gone(const char* what);
  detail::gdesc* g_ = nullptr;
  std::uint64_t id_ = 0;  // the G's, which also names its runtime (g_release, g_join)
};

inline void thread::join() {
  check_joinable("gort::thread::join");
  const int token = detail::g_join(g_, id_);
  if (!token) runtime_gone("gort::thread::join");
  detail::g_release_joined(std::exchange(g_, nullptr), token);
}
inline void thread::detach() {
  check_joinable("gort::thread::detach");
  detail::g_release(std::exchange(g_, nullptr), id_);
}
inline void swap(thread& a, thread& b) noexcept { a.swap(b); }

// Lets other Gs run; the caller goes to the back of its processor's run queue. On a plain OS
// thread: std::this_thread::yield().
inline void yield() noexcept { detail::yield_now(); }

// Yields if this G's time slice is over (sysmon asked it to). A few loads: for long loops
// when asynchronous preemption is off (config.async_preempt). Does nothing inside no_preempt.
inline void preempt_point() noexcept { detail::preempt_point(); }

// Holds off preemption of the current G (asynchronous, and at preempt_point()) while alive,
// e.g. around latency-critical work. Nests. yield() and blocking operations still switch. No
// effect on a plain OS thread. docs/api.md "Preemption".
class no_preempt {
 public:
  no_preempt() noexcept { detail::preempt_off(); }
  ~no_preempt() { detail::preempt_on(); }
  no_preempt(const no_preempt&) = delete;
  no_preempt& operator=(const no_preempt&) = delete;
};

// Runs f(args...) — a call that may block the thread: file I/O, getaddrinfo, a third-party
// blocking client — and returns its result. Cheap when the call is short (the G keeps its P);
// when it lasts longer than a sysmon tick, the P is handed to another M so the Gs queued
// behind keep running, and the G re-acquires a P on return. Inside f the thread acts as a
// plain OS thread: gort calls made there block the thread (docs/api.md "Blocking calls").
template <class F, class... A>
decltype(auto) blocking(F&& f, A&&... args) {
  struct scope {
    void* token = detail::blocking_enter();
    ~scope() { detail::blocking_exit(token); }
  } s;
  return std::invoke(std::forward<F>(f), std::forward<A>(args)...);
}

// Wires the calling G to its OS thread (Go's LockOSThread): until the matching
// unlock_os_thread, the G runs only on this thread and the thread runs no other G. Nests
// (each lock needs an unlock). For thread-affine APIs: thread-local state of C libraries,
// OpenGL contexts, per-thread credentials. No effect on a plain OS thread.
GORT_API void lock_os_thread();
GORT_API void unlock_os_thread();

// Parks the calling G (or sleeps the calling OS thread) for at least d. Never wakes early. A d
// too long to represent (nanoseconds::max(), hours::max()) sleeps until detail::never_ns.
template <class Rep, class Period>
void sleep_for(const std::chrono::duration<Rep, Period>& d) {
  if (d <= d.zero()) return;
  detail::sleep_until_steady(detail::steady_deadline_after(d));
}

template <class Clock, class Dur>
void sleep_until(const std::chrono::time_point<Clock, Dur>& t) {
  if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
    detail::sleep_until_steady(detail::steady_deadline_at(t));
  } else {
    // Other clocks may jump: sleep in steady steps until that clock says we are there.
    for (auto now = Clock::now(); now < t; now = Clock::now()) sleep_for(t - now);
  }
}

// Go's sync.WaitGroup: add(n) before starting work, done() when a piece ends, wait() parks
// until the count is zero. A count that would go negative throws std::logic_error.
class wait_group {
 public:
  wait_group() noexcept = default;
  wait_group(const wait_group&) = delete;
  wait_group& operator=(const wait_group&) = delete;
  ~wait_group() = default;

  GORT_API void add(int delta);
  void done() { add(-1); }
  GORT_API void wait();

 private:
  std::atomic<std::uint64_t> state_{0};  // counter << 32 | parked waiters
  std::atomic<std::uint32_t> lock_{0};
  void* head_ = nullptr;  // FIFO of parked waiters, guarded by lock_
  void* tail_ = nullptr;
};

// Number of processors (Ps) of the running runtime. Throws std::logic_error if none runs.
inline unsigned procs() { return detail::procs(); }

}  // namespace gort

template <>
struct std::hash<gort::thread::id> {
  std::size_t operator()(gort::thread::id i) const noexcept {
    return std::hash<std::uint64_t>{}(i.value());
  }
};
