/* openmp_env.c — see openmp_env.h. */
#include "openmp_env.h"

#include <stdlib.h>
#include <unistd.h>

#define SPINCOUNT "3000"

void fisherd_tune_openmp(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", SPINCOUNT, 1) != 0) return;
    execv("/proc/self/exe", argv); /* on failure: carry on with the defaults */
}
