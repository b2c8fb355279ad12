// Names the calling thread for top -H, perf and /proc/PID/task/*/comm.
#pragma once

#include <sys/prctl.h>

namespace runnel {

// `name`: at most 15 bytes (the kernel truncates longer ones). Threads the caller creates
// afterwards (oneTBB's workers, for one) start with the same name.
inline void name_this_thread(const char* name) { ::prctl(PR_SET_NAME, name, 0, 0, 0); }

}  // namespace runnel
