// Real-time (SCHED_FIFO) priority for the calling thread, for the few threads whose
// latency matters more than their share of a busy host's cores: the heartbeats, and the
// epoch thread (its copy rounds and the pause). Without the privilege (CAP_SYS_NICE, or
// an RLIMIT_RTPRIO at least this high, as the systemd units give) the thread stays at
// normal priority, and its caller says so once.
#pragma once

namespace understudy {

// Priorities in use, highest first: a heartbeat must never wait for a checkpoint.
inline constexpr int kHeartbeatPriority = 10;
inline constexpr int kCheckpointPriority = 5;

// Returns 0, or the error number pthread_setschedparam gave.
int set_thread_realtime(int priority);

} // namespace understudy
