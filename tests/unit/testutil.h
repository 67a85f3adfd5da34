/*
 * testutil.h — shared helpers for the C unit and parity tests (cmocka).
 *
 * Parity tests compare a tensor computed in C with the PyTorch golden value
 * and print the max absolute and relative difference, so a drift in accuracy
 * is visible long before it fails. A value passes when
 *     |got - want| <= atol + rtol * |want|
 * element-wise (numpy.allclose's rule); the line printed says which
 * tolerance was applied.
 */
#ifndef FISHER_TESTUTIL_H
#define FISHER_TESTUTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "safetensors.h"
#include "segformer.h"

/* rm -r for a test's temporary directory; returns rmdir's result. */
static inline int rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *de;
    char p[1024];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, de->d_name) >= sizeof p) continue;
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rm_tree(p);
        else unlink(p);
    }
    closedir(d);
    return rmdir(dir);
}

/* Path of a committed golden file: $FISHER_FIXTURES/name (default
 * tests/parity/fixtures). */
static inline const char *fixture_path(const char *name) {
    static char path[1024];
    const char *dir = getenv("FISHER_FIXTURES");
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "tests/parity/fixtures", name);
    return path;
}

/* Opens a golden file; a name ending in .gz is inflated in memory first
 * (the larger fixtures are stored gzipped to keep the repository small). */
static inline fisher_safetensors *fixture_open(const char *name) {
    fisher_error err = {{0}};
    const char *path = fixture_path(name);
    size_t len = strlen(path);
    if (len < 3 || strcmp(path + len - 3, ".gz") != 0) {
        fisher_safetensors *st = fisher_safetensors_open(path, &err);
        if (!st) fail_msg("cannot open fixture: %s", err.msg);
        return st;
    }
    gzFile gz = gzopen(path, "rb");
    if (!gz) fail_msg("cannot open fixture %s", path);
    size_t cap = 1 << 24, used = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (used == cap) buf = realloc(buf, cap *= 2);
        int got = gzread(gz, buf + used, (unsigned)(cap - used));
        if (got < 0) fail_msg("cannot inflate fixture %s", path);
        if (got == 0) break;
        used += (size_t)got;
    }
    gzclose(gz);
    fisher_safetensors *st = fisher_safetensors_parse(buf, used, path, &err);
    free(buf);
    if (!st) fail_msg("cannot parse fixture: %s", err.msg);
    return st;
}

/* A malloc'd copy of a fixture tensor; fails the test if it is missing or its
 * element count is not `expect_numel` (0 = any). */
static inline float *fixture_f32(const fisher_safetensors *st, const char *name,
                                 size_t expect_numel) {
    fisher_error err = {{0}};
    size_t n = 0;
    float *p = fisher_safetensors_get_f32(st, name, NULL, NULL, &n, &err);
    if (!p) fail_msg("fixture tensor: %s", err.msg);
    if (expect_numel && n != expect_numel)
        fail_msg("fixture tensor %s has %zu elements, test expects %zu", name, n, expect_numel);
    return p;
}

/* Compares got against want; prints "name: max abs … max rel …" and fails
 * the test when any element is outside atol_i + rtol·|want|, where atol_i
 * is atol_each[i] when atol_each is non-NULL, else atol. */
static inline void assert_close_each(const char *name, const float *got, const float *want,
                                     size_t n, double rtol, double atol, const double *atol_each) {
    double max_abs = 0, max_rel = 0;
    size_t worst = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        double a = atol_each ? atol_each[i] : atol;
        double d = fabs((double)got[i] - (double)want[i]);
        double rel = d / fmax(fabs((double)want[i]), 1e-30);
        if (!(d <= a + rtol * fabs((double)want[i]))) {
            if (!bad) worst = i;
            bad++;
        }
        if (d > max_abs || isnan(d)) max_abs = d;
        if (d > a && rel > max_rel) max_rel = rel;
    }
    printf("  %-58s n=%-8zu max abs %.2e  max rel %.2e  (rtol %.0e, atol %.0e%s)%s\n", name, n,
           max_abs, max_rel, rtol, atol, atol_each ? " per element" : "", bad ? "  FAIL" : "");
    if (bad)
        fail_msg("%s: %zu of %zu elements outside tolerance; first at [%zu]: got %.9g want %.9g",
                 name, bad, n, worst, (double)got[worst], (double)want[worst]);
}

static inline void assert_close(const char *name, const float *got, const float *want, size_t n,
                                double rtol, double atol) {
    assert_close_each(name, got, want, n, rtol, atol, NULL);
}

/* The `tiny` SegFormer, randomly initialised from seed; fails the test
 * when it cannot be made. */
static inline fisher_segformer *test_tiny_model(uint64_t seed) {
    fisher_error err = {{0}};
    fisher_segformer_config cfg;
    assert_int_equal(fisher_segformer_config_named(&cfg, "tiny", &err), 0);
    fisher_segformer *m = fisher_segformer_create(&cfg, &err);
    assert_non_null(m);
    fisher_segformer_init_random(m, seed);
    return m;
}

#endif
