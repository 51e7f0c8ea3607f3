// gort: boot and shutdown of a runtime (boot.cpp).
#pragma once

#include <cstdint>

#include "gort/config.hpp"
#include "gort/gort.hpp"

namespace gort::rt {

// Boots a runtime with cfg, runs body(frame) as its main G, and shuts it down when that
// returns. Throws std::logic_error if a runtime already runs, std::invalid_argument for a bad
// configuration.
void run_main(const config& cfg, gort::detail::body_fn body, void* frame);

// Identifies the current run (the main G's id), 0 when no main G runs.
std::uint64_t run_id() noexcept;

struct g;

// Shutdown lets Gs that have not reached the runtime run on until a cut-off (boot.cpp,
// shutdown_grace_ns): whether it has passed. Async-signal-safe.
bool shutdown_cut_off() noexcept;
// Records that the preemption handler abandoned gp where it ran at the cut-off; run_main
// names it once every M has exited. Async-signal-safe.
void note_cut_off(g* gp) noexcept;
// The end of an M that shutdown left inside a blocking call (blocking_exit's slow path, when
// the call returns): it blocks every signal and sleeps forever, touching nothing of the
// runtime, which may be gone, or running again with other Ms.
[[noreturn]] void abandoned_in_call() noexcept;
// How many Ms left in blocking calls have come back from them and stopped (for tests).
std::uint64_t left_calls_returned() noexcept;

}  // namespace gort::rt
