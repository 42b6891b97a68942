#include "common/thread_priority.hpp"

#include <pthread.h>
#include <sched.h>

#include <utility>

namespace understudy {

int set_thread_realtime(int priority) {
    sched_param sp{};
    sp.sched_priority = priority;
    return pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
}

void set_thread_normal() {
    sched_param sp{};
    (void)pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp);
}

int ThreadPriority::realtime(int priority) {
    if (raised_) return 0;
    const int rc = set_thread_realtime(priority);
    raised_ = rc == 0;
    return rc;
}

void ThreadPriority::normal() {
    if (std::exchange(raised_, false)) set_thread_normal();
}

} // namespace understudy
