// gort: the deadlock report (deadlock.cpp): "all goroutines are asleep".
#pragma once

#include <cstddef>
#include <cstdint>

namespace gort::rt {

// OS threads of this process (/proc/self/task), or -1.
int count_threads() noexcept;
// Names a code address (a G's creation site) as symbol+offset (library), for reports.
void describe_site(const void* at, char* buf, std::size_t n) noexcept;
// sysmon, with every P idle. Returns only if the runtime is not dead-locked; `nap` sleeps for
// up to the given time and returns false if woken early (something happened).
void check_deadlock(bool (*nap)(std::int64_t ns));

}  // namespace gort::rt
