#include "common/thread_priority.hpp"

#include <pthread.h>
#include <sched.h>

namespace understudy {

int set_thread_realtime(int priority) {
    sched_param sp{};
    sp.sched_priority = priority;
    return pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
}

} // namespace understudy
