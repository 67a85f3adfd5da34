/*
 * openmp_env.h — how fisherd's processes wait for work between parallel
 * regions.
 *
 * libgomp reads its wait policy from the environment once, when it loads,
 * before main(). Its default spins for ~300k iterations after every region;
 * on a machine where anything else wants the cores (another job, another
 * process) those spinning threads steal the time the GEMMs need, and a
 * mit-b0 step went from ~105 ms to ~1000 ms. A short spin (GOMP_SPINCOUNT
 * 3000) keeps the quiet-machine speed and degrades gracefully under load
 * (measured on 2 cores, mit-b0 128×128 batch 4: 106 ms quiet, 202 ms with a
 * competing busy process; passive waiting: 123 / 174 ms).
 */
#ifndef FISHERD_OPENMP_ENV_H
#define FISHERD_OPENMP_ENV_H

/* When the user has set neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT, sets
 * GOMP_SPINCOUNT and re-executes the program once so libgomp sees it.
 * Returns only when no re-exec was needed or it failed (then the process
 * runs with libgomp's defaults). */
void fisherd_tune_openmp(char **argv);

#endif
