/*
 * lib/cpus.c - the usable CPU count (lib/cpus.h).
 */
#include "config.h"

#include <sched.h>
#include <stdint.h>
#include <unistd.h>

#include "lib/common.h"
#include "lib/cpus.h"

int pi_cpus_usable(void)
{
    cpu_set_t cs;
    CPU_ZERO(&cs);
    if (sched_getaffinity(0, sizeof cs, &cs) == 0 && CPU_COUNT(&cs) > 0) return CPU_COUNT(&cs);
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c > 0 ? (int)PI_MIN(c, INT32_MAX) : 1;
}
