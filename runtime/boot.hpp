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

}  // namespace gort::rt
