/* openmp_env.c — see openmp_env.h. */
#include "openmp_env.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#define SPINCOUNT "3000"

void fisherd_tune_openmp(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", SPINCOUNT, 1) != 0) return;
    /* by the binary's own path where it can: the kernel names a process
     * after the file it exec'd, and through /proc/self/exe ps, top, and
     * systemd's journal and cgroup listing call every fisherd "exe" */
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        execv(self, argv);
    }
    execv("/proc/self/exe", argv); /* the file was replaced or deleted since */
    /* on failure: carry on with the defaults */
}
