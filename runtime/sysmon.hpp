// gort: sysmon, the monitor thread (sysmon.cpp): preemption requests, retaking Ps from blocking
// calls and held Ms, scavenging, and the deadlock check.
#pragma once

namespace gort::rt {

void sysmon_start();  // boot, once the first M runs
void sysmon_stop();   // shutdown, before the Ms are joined
// Wakes sysmon from a sleep (a P left the idle list, or a G was held for preemption).
void sysmon_poke() noexcept;

}  // namespace gort::rt
