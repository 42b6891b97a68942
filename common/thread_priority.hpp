// Real-time (SCHED_FIFO) priority for the calling thread, for the few threads whose
// latency matters more than their share of a busy host's cores: heartbeats, and the end
// of each epoch (its last copy rounds and the pause). Where the process may not have it
// (no CAP_SYS_NICE, no RLIMIT_RTPRIO), the thread stays at normal priority and its caller
// says so once.
#pragma once

namespace understudy {

// Priorities in use, highest first: a heartbeat must never wait for a checkpoint.
inline constexpr int kHeartbeatPriority = 10;
inline constexpr int kCheckpointPriority = 5;

// Returns 0, or the error number pthread_setschedparam gave.
int set_thread_realtime(int priority);
void set_thread_normal();

// Real-time between realtime() and normal() or the end of the scope.
class ThreadPriority {
public:
    ThreadPriority() = default;
    ThreadPriority(const ThreadPriority&) = delete;
    ThreadPriority& operator=(const ThreadPriority&) = delete;
    ~ThreadPriority() { normal(); }
    // Returns 0 or the error number; a thread already raised is not asked again.
    int realtime(int priority);
    void normal();

private:
    bool raised_ = false;
};

} // namespace understudy
