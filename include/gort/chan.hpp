// gort: Go's channels and select. Reference: docs/channels.md.
//
//   gort::chan<int> ch;                       // unbuffered: send waits for a receiver
//   gort::go([ch] { ch.send(42); ch.close(); });
//   while (auto v = ch.recv()) use(*v);       // nullopt once closed and drained
//
//   gort::select(gort::on_recv(a, [](std::optional<int> v) { ... }),
//                gort::on_send(b, 7, [] { ... }),
//                gort::on_timeout(10ms, [] { ... }));
//
// Everything works from Gs (which park) and from plain OS threads (which block), so code
// outside the runtime can feed a pipeline of Gs and drain one.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

#include "gort/deadline.hpp"

#if !defined(GORT_API)
#if defined(GORT_BUILDING_LIBRARY)
#define GORT_API __attribute__((visibility("default")))
#else
#define GORT_API
#endif
#endif

namespace gort {

// Sending on, or closing, a closed channel.
class closed_channel : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

template <class T>
class chan;

namespace detail {

struct chan_core;  // the shared channel; the runtime's business (runtime/chan.cpp)

// How the runtime moves elements it cannot see the type of. move == nullptr: the type is
// trivially copyable and moved by memcpy (the common case: no indirect call per element).
struct elem_ops {
  std::size_t size;
  std::size_t align;
  void (*move)(void* dst, void* src) noexcept;  // constructs *dst from std::move(*src)
  void (*destroy)(void* p) noexcept;            // null: trivial
};

template <class T>
inline constexpr elem_ops elem_ops_for{
    sizeof(T), alignof(T),
    std::is_trivially_copyable_v<T> ? nullptr
                                    : +[](void* d, void* s) noexcept {
                                        ::new (d) T(std::move(*static_cast<T*>(s)));
                                      },
    std::is_trivially_destructible_v<T> ? nullptr
                                        : +[](void* p) noexcept { static_cast<T*>(p)->~T(); }};

// Outcome of an operation that may not complete.
enum class chan_status : int { ok = 0, closed = 1, would_block = 2 };

GORT_API chan_core* chan_make(const elem_ops* ops, std::size_t capacity);
GORT_API void chan_retain(chan_core* c) noexcept;
GORT_API void chan_release(chan_core* c) noexcept;
// deadline_ns: 0 blocks without limit, < 0 does not block (try_), else a CLOCK_MONOTONIC
// (steady_clock) deadline. send moves from *v only on ok; throws closed_channel when closed.
// recv constructs *dst only on ok.
GORT_API chan_status chan_send(chan_core* c, void* v, std::int64_t deadline_ns);
GORT_API chan_status chan_recv(chan_core* c, void* dst, std::int64_t deadline_ns);
GORT_API void chan_close(chan_core* c);
GORT_API std::size_t chan_size(const chan_core* c) noexcept;
GORT_API std::size_t chan_capacity(const chan_core* c) noexcept;
[[noreturn]] GORT_API void chan_null(const char* op);

// One channel case of a select, as the runtime sees it.
struct select_case {
  chan_core* c;
  void* elem;  // send: the value (moved from only if this case is taken); recv: destination
  bool send;
};
// Returns the index of the case taken (ok: for a receive, false when the channel was closed),
// or n when none was taken: no case ready and nonblocking, or the deadline passed.
GORT_API std::size_t chan_select(select_case* cases, std::size_t n, std::int64_t deadline_ns,
                                 bool nonblocking, bool* ok);

// A timeout's deadline: -1 when already due (only an immediate completion counts), else
// steady_deadline_after(d), never_ns for a d too long to represent.
template <class Rep, class Per>
std::int64_t deadline_after(const std::chrono::duration<Rep, Per>& d) noexcept {
  if (d <= d.zero()) return -1;
  return steady_deadline_after(d);
}
// The runtime's form of such a deadline: never_ns becomes 0, "no limit".
inline std::int64_t runtime_deadline(std::int64_t deadline) noexcept { return deadline >= never_ns ? 0 : deadline; }

template <class T>
chan_core* core_of(const chan<T>& ch, const char* op) {
  if (!ch.c_) chan_null(op);
  return ch.c_;
}

// Storage for a value the runtime constructs (a received element).
template <class T>
struct slot {
  alignas(T) unsigned char raw[sizeof(T)];
  T* get() noexcept {
    // The runtime constructed the value behind the compiler's back (through a pointer it was
    // given); hiding the pointer's origin keeps GCC from warning that it may be uninitialized.
    void* p = raw;
    asm volatile("" : "+r"(p)::"memory");
    return std::launder(static_cast<T*>(p));
  }
  std::optional<T> take() noexcept(std::is_nothrow_move_constructible_v<T>) {
    struct destroy_after {
      T* p;
      ~destroy_after() { p->~T(); }
    } d{get()};
    return std::optional<T>(std::move(*d.p));
  }
};

template <class T, class F>
struct recv_case {
  chan_core* c;
  F fn;
  slot<T> s;
};
template <class T, class F>
struct send_case {
  chan_core* c;
  T v;
  F fn;
};
template <class F>
struct timeout_case {
  std::int64_t deadline;
  F fn;
};
template <class F>
struct default_case {
  F fn;
};

template <class C> inline constexpr bool is_chan_case = false;
template <class T, class F> inline constexpr bool is_chan_case<recv_case<T, F>> = true;
template <class T, class F> inline constexpr bool is_chan_case<send_case<T, F>> = true;
template <class C> inline constexpr bool is_timeout_case = false;
template <class F> inline constexpr bool is_timeout_case<timeout_case<F>> = true;
template <class C> inline constexpr bool is_default_case = false;
template <class F> inline constexpr bool is_default_case<default_case<F>> = true;

template <class Tuple, std::size_t... I>
std::size_t select_impl(Tuple& cs, std::index_sequence<I...>) {
  constexpr std::size_t n = sizeof...(I);
  using Cs = std::remove_reference_t<Tuple>;
  constexpr std::size_t nchan =
      (std::size_t{0} + ... +
       (is_chan_case<std::remove_cvref_t<std::tuple_element_t<I, Cs>>> ? 1 : 0));
  constexpr std::size_t ndef =
      (std::size_t{0} + ... +
       (is_default_case<std::remove_cvref_t<std::tuple_element_t<I, Cs>>> ? 1 : 0));
  static_assert(ndef <= 1, "gort::select: at most one on_default case");

  select_case rc[nchan > 0 ? nchan : 1];
  std::size_t orig[nchan > 0 ? nchan : 1];  // rc index -> case index
  std::size_t k = 0;
  std::int64_t deadline = 0;  // 0: none
  std::size_t to_idx = n, def_idx = n;
  auto add = [&](auto& c, std::size_t i) {
    using C = std::remove_reference_t<decltype(c)>;
    if constexpr (is_chan_case<C>) {
      if constexpr (requires { c.s; }) rc[k] = {c.c, c.s.raw, false};
      else rc[k] = {c.c, std::addressof(c.v), true};
      orig[k++] = i;
    } else if constexpr (is_timeout_case<C>) {
      // The earliest deadline wins; "already due" (< 0) beats any time; ties go to the first.
      if (to_idx == n || (c.deadline < 0 && deadline >= 0) ||
          (c.deadline >= 0 && deadline >= 0 && c.deadline < deadline)) {
        deadline = c.deadline;
        to_idx = i;
      }
    } else {
      def_idx = i;
    }
  };
  (add(std::get<I>(cs), I), ...);

  bool ok = false;
  const bool nonblocking = def_idx != n || deadline < 0;
  const std::size_t r = chan_select(rc, k, deadline < 0 ? 0 : runtime_deadline(deadline), nonblocking, &ok);
  const std::size_t taken = r < k ? orig[r] : (def_idx != n ? def_idx : to_idx);

  auto run = [&](auto& c) {
    using C = std::remove_reference_t<decltype(c)>;
    if constexpr (is_chan_case<C> && requires { c.s; }) {
      // Called directly, not through std::invoke: the prvalue argument then initialises the
      // handler's parameter in place, with no move of a (possibly empty) optional.
      if (ok) c.fn(c.s.take());
      else c.fn(decltype(c.s.take()){});
    } else {
      c.fn();
    }
  };
  ((I == taken ? (run(std::get<I>(cs)), 0) : 0), ...);
  return taken;
}

}  // namespace detail

// A handle to a channel shared by every copy (Go's chan). A moved-from handle refers to no
// channel: any operation on it throws std::logic_error (until a channel is assigned to it).
// T must be nothrow move-constructible (elements move while a ring slot is claimed or the
// channel's lock is held).
template <class T>
class chan {
  static_assert(std::is_nothrow_move_constructible_v<T> && std::is_nothrow_destructible_v<T>,
                "gort::chan<T>: T must be nothrow move-constructible and destructible");
  static_assert(alignof(T) <= 64, "gort::chan<T>: alignment above 64 is not supported");
  static_assert(!std::is_reference_v<T> && !std::is_const_v<T>,
                "gort::chan<T>: T must be a non-const object type");

 public:
  // capacity 0: unbuffered (a send completes when a receiver has taken the value).
  explicit chan(std::size_t capacity = 0)
      : c_(detail::chan_make(&detail::elem_ops_for<T>, capacity)) {}
  chan(const chan& o) noexcept : c_(o.c_) {
    if (c_) detail::chan_retain(c_);
  }
  chan(chan&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
  chan& operator=(const chan& o) noexcept {
    if (o.c_) detail::chan_retain(o.c_);
    if (c_) detail::chan_release(c_);
    c_ = o.c_;
    return *this;
  }
  chan& operator=(chan&& o) noexcept {
    if (this != &o) {
      if (c_) detail::chan_release(c_);
      c_ = std::exchange(o.c_, nullptr);
    }
    return *this;
  }
  ~chan() {
    if (c_) detail::chan_release(c_);
  }

  // Blocks until a receiver took v (unbuffered) or v is in the buffer. Throws closed_channel
  // if the channel is closed, or closed while waiting (v is then not consumed).
  void send(T v) const { detail::chan_send(core("send"), std::addressof(v), 0); }
  // Blocks until a value arrives; nullopt once the channel is closed and drained.
  std::optional<T> recv() const {
    detail::slot<T> s;
    if (detail::chan_recv(core("recv"), s.raw, 0) != detail::chan_status::ok) return std::nullopt;
    return s.take();
  }

  // Sends only if that needs no waiting. False: v is untouched. Throws closed_channel.
  bool try_send(T& v) const {
    return detail::chan_send(core("try_send"), std::addressof(v), -1) == detail::chan_status::ok;
  }
  bool try_send(T&& v) const { return try_send(v); }
  // A value if one is available without waiting; nullopt otherwise (also when closed).
  std::optional<T> try_recv() const {
    detail::slot<T> s;
    if (detail::chan_recv(core("try_recv"), s.raw, -1) != detail::chan_status::ok)
      return std::nullopt;
    return s.take();
  }

  // Waits at most d (without limit for a d too long to represent as a deadline, such as
  // nanoseconds::max()). False: timed out and v is untouched. Throws closed_channel.
  template <class Rep, class Per>
  bool send_for(T& v, std::chrono::duration<Rep, Per> d) const {
    return detail::chan_send(core("send_for"), std::addressof(v),
                            detail::runtime_deadline(detail::deadline_after(d))) ==
           detail::chan_status::ok;
  }
  template <class Rep, class Per>
  bool send_for(T&& v, std::chrono::duration<Rep, Per> d) const {
    return send_for(v, d);
  }
  // Waits at most d (as send_for); nullopt on timeout or when closed and drained.
  template <class Rep, class Per>
  std::optional<T> recv_for(std::chrono::duration<Rep, Per> d) const {
    detail::slot<T> s;
    if (detail::chan_recv(core("recv_for"), s.raw, detail::runtime_deadline(detail::deadline_after(d))) !=
        detail::chan_status::ok)
      return std::nullopt;
    return s.take();
  }

  // Wakes every waiter: blocked senders throw closed_channel, receivers drain the buffer and
  // then get nullopt. Closing twice throws closed_channel.
  void close() const { detail::chan_close(core("close")); }

  std::size_t size() const { return detail::chan_size(core("size")); }
  std::size_t capacity() const { return detail::chan_capacity(core("capacity")); }

  // False for a moved-from handle.
  explicit operator bool() const noexcept { return c_ != nullptr; }
  // Handles to the same channel compare equal.
  friend bool operator==(const chan& a, const chan& b) noexcept { return a.c_ == b.c_; }

 private:
  template <class U>
  friend detail::chan_core* detail::core_of(const chan<U>&, const char*);
  detail::chan_core* core(const char* op) const {
    if (!c_) detail::chan_null(op);
    return c_;
  }
  detail::chan_core* c_ = nullptr;
};

// select cases. The handler of a receive takes std::optional<T> (nullopt: closed); the others
// take nothing. on_send's value is moved from only if its case is taken.
template <class T, class F>
auto on_recv(const chan<T>& ch, F&& fn) {
  return detail::recv_case<T, std::decay_t<F>>{detail::core_of(ch, "select on_recv"),
                                               std::forward<F>(fn), {}};
}
template <class T, class V, class F>
auto on_send(const chan<T>& ch, V&& v, F&& fn) {
  return detail::send_case<T, std::decay_t<F>>{detail::core_of(ch, "select on_send"),
                                               T(std::forward<V>(v)), std::forward<F>(fn)};
}
template <class Rep, class Per, class F>
auto on_timeout(std::chrono::duration<Rep, Per> d, F&& fn) {
  return detail::timeout_case<std::decay_t<F>>{detail::deadline_after(d), std::forward<F>(fn)};
}
template <class F>
auto on_default(F&& fn) {
  return detail::default_case<std::decay_t<F>>{std::forward<F>(fn)};
}

// Blocks until one case can proceed, performs it, runs its handler and returns the index of
// the case taken (its position in the argument list). Among several ready cases one is picked
// uniformly at random. on_default is taken at once when no channel case is ready; on_timeout
// when its duration passes first (with several, the earliest; one too long to represent as a
// deadline never passes). A send case on a closed channel throws closed_channel, as a plain
// send does.
template <class... Cases>
std::size_t select(Cases&&... cases) {
  static_assert(sizeof...(Cases) > 0, "gort::select: no cases (would block forever)");
  static_assert(((detail::is_chan_case<std::remove_cvref_t<Cases>> ||
                  detail::is_timeout_case<std::remove_cvref_t<Cases>> ||
                  detail::is_default_case<std::remove_cvref_t<Cases>>) && ...),
                "gort::select: arguments must be on_recv/on_send/on_timeout/on_default cases");
  std::tuple<std::remove_cvref_t<Cases>&...> cs{cases...};
  return detail::select_impl(cs, std::index_sequence_for<Cases...>{});
}

}  // namespace gort
