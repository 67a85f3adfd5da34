/*
 * test_drift.c — lib/drift.h (FISHERADAPTUNE.md §3–§5) against the
 * independent NumPy reference tests/parity/fisher_reference.py, through two
 * golden files it writes:
 *
 *   fisher_js.safetensors.gz       239 (ref, cur) pairs and their distance
 *                                  in log and raw mode;
 *   fisher_tracker.safetensors.gz  the Fisher of 20 real chunks over 60
 *                                  training steps of `tiny`, and everything
 *                                  the tracker did with them under two
 *                                  configurations (a., b.).
 *
 * The tracker replay runs §6's order itself: step-0 zero-Fisher freeze,
 * drift update of the live chunks every ema_interval steps (and step 0),
 * freeze decision every freeze_interval steps (step > 0).
 *
 * Tolerances, and why:
 * - A distance d passes when |Δd| <= 1e-9, or when |Δ(d²)| <= 1e-14. Both
 *   sides compute the same float64 formula from the same float32 inputs,
 *   so d agrees to ~1e-15 — except where d is rounding noise: identical
 *   histograms of different sample sizes give p ≈ q to ~1e-16, the
 *   divergence d² is then a cancellation resolved to ~1e-16, and sqrt turns
 *   that into d anywhere in [0, ~1e-8] depending on summation order alone
 *   (golden "all zeros 10/7" is 1.05e-8; a sequential sum gives 0). Over
 *   every golden case, sequential, pairwise and exact sums give d² within
 *   1.7e-15 of each other, hence 1e-14 on d².
 * - NaN (no distance) must be NaN on both sides.
 * - Tracker js, js_ema, total_variation and each decision's mean, std and
 *   threshold: 1e-9 absolute; the frozen set and `live` exactly; the final
 *   Fisher EMA bit for bit (memcmp): it is float32 arithmetic done the
 *   same way, f32(d)·ema + f32(1 − d)·cur.
 * Discrete outcomes (a bin count, a freeze) are exact, so one flipped
 * decision is a failure, not a tolerance question.
 */
#include "testutil.h"

#include <jansson.h>

#include "drift.h"
#include "rng.h"

#define JS_ATOL 1e-9
#define JS_ATOL_SQUARED 1e-14
#define TRACK_ATOL 1e-9

/* ------------------------------------------------------------------------ */
/* Fixture helpers                                                          */
/* ------------------------------------------------------------------------ */

/* A malloc'd copy of the 8-byte tensor `name` (F64 or I64, read by `read`);
 * its shape goes to shape[ndim]. */
static void *fixture_8(const fisher_safetensors *st, const char *name, int ndim, int64_t *shape,
                       int (*read)(const fisher_safetensors *, const char *, void *, int,
                                   const int64_t *, fisher_error *)) {
    fisher_error err = {{0}};
    fisher_dtype dt;
    int nd;
    int64_t sh[FISHER_ST_MAX_DIMS];
    if (fisher_safetensors_info(st, name, &dt, &nd, sh, &err) != 0)
        fail_msg("fixture tensor: %s", err.msg);
    if (nd != ndim) fail_msg("fixture tensor %s has %d dims, want %d", name, nd, ndim);
    size_t n = 1;
    for (int i = 0; i < nd; i++) n *= (size_t)sh[i], shape[i] = sh[i];
    void *p = malloc((n ? n : 1) * 8);
    if (read(st, name, p, nd, sh, &err) != 0) fail_msg("fixture tensor: %s", err.msg);
    return p;
}

static int read_f64(const fisher_safetensors *st, const char *name, void *dst, int nd,
                    const int64_t *sh, fisher_error *err) {
    return fisher_safetensors_read_f64(st, name, dst, nd, sh, err);
}

static int read_i64(const fisher_safetensors *st, const char *name, void *dst, int nd,
                    const int64_t *sh, fisher_error *err) {
    return fisher_safetensors_read_i64(st, name, dst, nd, sh, err);
}

static double *fixture_f64(const fisher_safetensors *st, const char *name, int ndim,
                           int64_t *shape) {
    return fixture_8(st, name, ndim, shape, read_f64);
}

static int64_t *fixture_i64(const fisher_safetensors *st, const char *name, int ndim,
                            int64_t *shape) {
    return fixture_8(st, name, ndim, shape, read_i64);
}

static int has_tensor(const fisher_safetensors *st, const char *name) {
    fisher_dtype dt;
    int nd;
    int64_t sh[FISHER_ST_MAX_DIMS];
    return fisher_safetensors_info(st, name, &dt, &nd, sh, NULL) == 0;
}

/* Both NaN, or both numbers within atol. */
static int same(double got, double want, double atol) {
    if (isnan(want) || isnan(got)) return isnan(want) && isnan(got);
    return fabs(got - want) <= atol;
}

/* The distance rule above; *by_square is set when only the d² rule held. */
static int same_distance(double got, double want, int *by_square) {
    *by_square = 0;
    if (isnan(want) || isnan(got)) return isnan(want) && isnan(got);
    if (fabs(got - want) <= JS_ATOL) return 1;
    *by_square = fabs(got * got - want * want) <= JS_ATOL_SQUARED;
    return *by_square;
}

/* ------------------------------------------------------------------------ */
/* (i) Every golden pair                                                    */
/* ------------------------------------------------------------------------ */

static void test_js_golden(void **state) {
    (void)state;
    fisher_safetensors *st = fixture_open("fisher_js.safetensors.gz");
    int64_t shape[2];
    double *want = fixture_f64(st, "js.distance", 2, shape);
    size_t n_cases = (size_t)shape[0];
    assert_int_equal(shape[1], 2);
    const char *mode_name[2] = {"log", "raw"};
    double max_abs[2] = {0, 0};
    size_t compared[2] = {0, 0}, nans[2] = {0, 0}, squares[2] = {0, 0}, bad = 0;
    for (size_t i = 0; i < n_cases; i++) {
        char name[64], meta[64];
        size_t nr, nc;
        snprintf(name, sizeof name, "js.%zu.ref", i);
        fisher_error err = {{0}};
        float *ref = fisher_safetensors_get_f32(st, name, NULL, NULL, &nr, &err);
        snprintf(name, sizeof name, "js.%zu.cur", i);
        float *cur = fisher_safetensors_get_f32(st, name, NULL, NULL, &nc, &err);
        if (!ref || !cur) fail_msg("fixture tensor: %s", err.msg);
        snprintf(meta, sizeof meta, "js.%zu.what", i);
        const char *what = fisher_safetensors_metadata(st, meta);
        for (int mode = 0; mode < 2; mode++) {
            double got = fisher_js_distance(nr ? ref : NULL, nr, nc ? cur : NULL, nc, mode);
            double w = want[2 * i + (size_t)mode];
            int by_square;
            if (!same_distance(got, w, &by_square)) {
                if (bad++ < 40)
                    printf("  FAIL js.%zu %s (%s; n %zu/%zu): got %.17g want %.17g\n", i,
                           mode_name[mode], what ? what : "?", nr, nc, got, w);
                continue;
            }
            if (isnan(w)) {
                nans[mode]++;
                continue;
            }
            compared[mode]++;
            squares[mode] += (size_t)by_square;
            if (!by_square && fabs(got - w) > max_abs[mode]) max_abs[mode] = fabs(got - w);
        }
        free(ref), free(cur);
    }
    for (int mode = 0; mode < 2; mode++)
        printf("  js %s: %zu pairs, max |Δd| %.2e (atol %.0e), %zu by |Δd²| <= %.0e, "
               "%zu NaN both\n",
               mode_name[mode], compared[mode], max_abs[mode], JS_ATOL, squares[mode],
               JS_ATOL_SQUARED, nans[mode]);
    free(want);
    fisher_safetensors_close(st);
    if (bad) fail_msg("%zu of %zu distances differ from the reference", bad, 2 * n_cases);
}

/* ------------------------------------------------------------------------ */
/* (ii) Tracker trajectories                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
    fisher_drift_config drift;
    int metric;
    int64_t ema_interval, freeze_interval;
    double lambda;
} replay_config;

static replay_config parse_config(const char *text) {
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (!j) fail_msg("config metadata is not JSON: %s", jerr.text);
    replay_config c;
    c.drift = fisher_drift_defaults();
    const char *mode = json_string_value(json_object_get(j, "js_mode"));
    const char *metric = json_string_value(json_object_get(j, "metric"));
    assert_non_null(mode);
    assert_non_null(metric);
    c.drift.js_mode = strcmp(mode, "raw") == 0 ? FISHER_JS_RAW : FISHER_JS_LOG;
    c.drift.fisher_ema_decay = json_number_value(json_object_get(j, "fisher_ema_decay"));
    c.drift.js_ema_decay = json_number_value(json_object_get(j, "prev_js_ema_decay"));
    c.metric = strcmp(metric, "mean_js") == 0 ? FISHER_METRIC_MEAN_JS
                                                : FISHER_METRIC_TOTAL_VARIATION;
    c.ema_interval = (int64_t)json_number_value(json_object_get(j, "fisher_ema_interval"));
    c.freeze_interval = (int64_t)json_number_value(json_object_get(j, "freeze_interval"));
    c.lambda = json_number_value(json_object_get(j, "js_variance_lambda"));
    assert_true(c.ema_interval > 0 && c.freeze_interval > 0);
    json_decref(j);
    return c;
}

/* Largest |Δ| of one quantity and how many comparisons failed. */
typedef struct {
    const char *name;
    double max_abs;
    size_t n, bad;
} diff_stat;

static void note(diff_stat *s, double got, double want, double atol, int64_t step,
                 const char *key) {
    s->n++;
    if (!same(got, want, atol)) {
        if (s->bad++ < 10)
            printf("  FAIL %s at step %lld, %s: got %.17g want %.17g\n", s->name,
                   (long long)step, key, got, want);
        return;
    }
    if (!isnan(want) && fabs(got - want) > s->max_abs) s->max_abs = fabs(got - want);
}

static void replay(const char *prefix) {
    fisher_safetensors *st = fixture_open("fisher_tracker.safetensors.gz");
    char name[128];
    snprintf(name, sizeof name, "%sconfig", prefix);
    const char *cfg_text = fisher_safetensors_metadata(st, name);
    const char *keys_text = fisher_safetensors_metadata(st, "chunk_keys");
    assert_non_null(cfg_text);
    assert_non_null(keys_text);
    replay_config cfg = parse_config(cfg_text);
    json_error_t jerr;
    json_t *keys = json_loads(keys_text, 0, &jerr);
    assert_non_null(keys);
    size_t K = json_array_size(keys);
    assert_true(K > 0);

    int64_t shape[2];
    snprintf(name, sizeof name, "%sjs", prefix);
    double *g_js = fixture_f64(st, name, 2, shape);
    size_t T = (size_t)shape[0];
    assert_int_equal(shape[1], K);
    snprintf(name, sizeof name, "%sjs_ema", prefix);
    double *g_ema = fixture_f64(st, name, 2, shape);
    snprintf(name, sizeof name, "%stotal_variation", prefix);
    double *g_tv = fixture_f64(st, name, 2, shape);
    snprintf(name, sizeof name, "%slive", prefix);
    int64_t *g_live = fixture_i64(st, name, 2, shape);
    assert_true((size_t)shape[0] == T && (size_t)shape[1] == K);
    snprintf(name, sizeof name, "%sdecisions", prefix);
    double *g_dec = fixture_f64(st, name, 2, shape);
    size_t D = (size_t)shape[0];
    assert_int_equal(shape[1], 6);
    snprintf(name, sizeof name, "%sdecision_frozen", prefix);
    int64_t *g_frozen = fixture_i64(st, name, 2, shape);
    assert_true((size_t)shape[0] == D && (size_t)shape[1] == K);

    float **fisher = calloc(K, sizeof *fisher);
    size_t *n = calloc(K, sizeof *n);
    for (size_t k = 0; k < K; k++) {
        int nd;
        int64_t sh[FISHER_ST_MAX_DIMS];
        size_t numel;
        fisher_error err = {{0}};
        snprintf(name, sizeof name, "chunk.%zu.fisher", k);
        fisher[k] = fisher_safetensors_get_f32(st, name, &nd, sh, &numel, &err);
        if (!fisher[k]) fail_msg("fixture tensor: %s", err.msg);
        assert_true(nd == 2 && (size_t)sh[0] == T);
        n[k] = (size_t)sh[1];
    }

    fisher_chunk_drift *d = calloc(K, sizeof *d);
    uint8_t *live = malloc(K), *keep = malloc(K);
    double *scores = malloc(K * sizeof *scores);
    size_t *idx = malloc(K * sizeof *idx);
    memset(live, 1, K);
    diff_stat s_js = {"js", 0, 0, 0}, s_ema = {"js_ema", 0, 0, 0};
    diff_stat s_tv = {"total_variation", 0, 0, 0}, s_dec = {"decision mean/std/threshold", 0, 0, 0};
    size_t dec = 0, bad_sets = 0, bad_live = 0, bad_pattern = 0, measured = 0;

    for (size_t step = 0; step < T; step++) {
        /* Step 0: chunks whose Fisher is entirely zero freeze. */
        if (step == 0)
            for (size_t k = 0; k < K; k++) {
                int zero = 1;
                for (size_t i = 0; i < n[k] && zero; i++) zero = fisher[k][i] == 0.0f;
                if (zero) live[k] = 0;
            }
        /* Drift update of the live chunks, on ema_interval (and step 0). */
        int measure = step % (size_t)cfg.ema_interval == 0;
        for (size_t k = 0; k < K; k++) {
            size_t at = step * K + k;
            const char *key = json_string_value(json_array_get(keys, k));
            if (!measure || !live[k]) {
                if (!isnan(g_js[at]) || !isnan(g_ema[at]) || !isnan(g_tv[at])) {
                    if (bad_pattern++ < 10)
                        printf("  FAIL step %zu %s: not measured here, reference measured it\n",
                               step, key);
                }
                continue;
            }
            double js = NAN;
            fisher_error err = {{0}};
            int rc = fisher_chunk_drift_update(&d[k], fisher[k] + step * n[k], n[k],
                                               (int64_t)step, &cfg.drift, &js, &err);
            if (rc != 0) fail_msg("update %s at step %zu: %s", key, step, err.msg);
            measured++;
            note(&s_js, js, g_js[at], TRACK_ATOL, (int64_t)step, key);
            note(&s_ema, d[k].js_ema, g_ema[at], TRACK_ATOL, (int64_t)step, key);
            note(&s_tv, d[k].total_variation, g_tv[at], TRACK_ATOL, (int64_t)step, key);
        }
        /* Freeze decision on freeze_interval, step > 0. */
        if (step > 0 && step % (size_t)cfg.freeze_interval == 0) {
            size_t m = 0;
            for (size_t k = 0; k < K; k++)
                if (live[k]) idx[m] = k, scores[m++] = fisher_chunk_drift_score(&d[k], cfg.metric);
            if (m > 0) {
                if (dec >= D) fail_msg("step %zu: a decision the reference did not make", step);
                const double *row = g_dec + 6 * dec;
                const int64_t *frozen_row = g_frozen + K * dec;
                fisher_freeze_stats fs;
                memset(&fs, 0, sizeof fs);
                fisher_freeze_decide(scores, m, cfg.lambda, keep, &fs);
                assert_int_equal((size_t)row[0], step);
                note(&s_dec, fs.mean, row[1], TRACK_ATOL, (int64_t)step, "mean");
                note(&s_dec, fs.std, row[2], TRACK_ATOL, (int64_t)step, "std");
                note(&s_dec, fs.lambda, row[3], 0, (int64_t)step, "lambda");
                note(&s_dec, fs.threshold, row[4], TRACK_ATOL, (int64_t)step, "threshold");
                int set_ok = fs.frozen == (size_t)row[5] && fs.kept + fs.frozen == m;
                for (size_t j = 0; j < m; j++)
                    set_ok &= (keep[j] == 0) == (frozen_row[idx[j]] == 1);
                if (!set_ok) {
                    bad_sets++;
                    printf("  FAIL decision at step %zu: frozen sets differ (C froze %zu, "
                           "reference %lld); continuing with the reference's\n",
                           step, fs.frozen, (long long)row[5]);
                    for (size_t j = 0; j < m; j++)
                        if ((keep[j] == 0) != (frozen_row[idx[j]] == 1))
                            printf("    %s: score %.17g, C %s, reference %s\n",
                                   json_string_value(json_array_get(keys, idx[j])), scores[j],
                                   keep[j] ? "keeps" : "freezes",
                                   frozen_row[idx[j]] ? "freezes" : "keeps");
                }
                /* Follow the reference, so one flipped decision does not hide the rest. */
                for (size_t k = 0; k < K; k++)
                    if (frozen_row[k]) live[k] = 0, fisher_chunk_drift_free(&d[k]);
                dec++;
            }
        }
        for (size_t k = 0; k < K; k++)
            if ((int64_t)live[k] != g_live[step * K + k] && bad_live++ < 10)
                printf("  FAIL live at step %zu, %s: C %d, reference %lld\n", step,
                       json_string_value(json_array_get(keys, k)), live[k],
                       (long long)g_live[step * K + k]);
    }

    /* Final Fisher EMAs: bit for bit. */
    size_t n_final = 0, bad_final = 0;
    for (size_t k = 0; k < K; k++) {
        snprintf(name, sizeof name, "%sfinal_ema_F.%zu", prefix, k);
        int in_file = has_tensor(st, name);
        if (!live[k]) {
            if (in_file) {
                bad_final++;
                printf("  FAIL %s: the reference has it, the chunk is frozen\n", name);
            }
            continue;
        }
        float *want = fixture_f32(st, name, n[k]);
        n_final++;
        if (!d[k].ema_F || d[k].n != n[k] || memcmp(d[k].ema_F, want, n[k] * sizeof(float)) != 0) {
            bad_final++;
            size_t first = 0;
            while (d[k].ema_F && first < n[k] && d[k].ema_F[first] == want[first]) first++;
            printf("  FAIL %s (%s): ema_F differs first at [%zu]\n", name,
                   json_string_value(json_array_get(keys, k)), first);
        }
        free(want);
    }

    size_t n_live_end = 0;
    for (size_t k = 0; k < K; k++) n_live_end += live[k];
    printf("  tracker %s (%s, %s, ema every %lld, freeze every %lld, lambda %g): %zu chunks x "
           "%zu steps, %zu measurements, %zu decisions, %zu live at the end\n",
           prefix, cfg.drift.js_mode == FISHER_JS_RAW ? "raw" : "log",
           cfg.metric == FISHER_METRIC_MEAN_JS ? "mean_js" : "total_variation",
           (long long)cfg.ema_interval, (long long)cfg.freeze_interval, cfg.lambda, K, T,
           measured, dec, n_live_end);
    const diff_stat *all[] = {&s_js, &s_ema, &s_tv, &s_dec};
    for (size_t i = 0; i < 4; i++)
        printf("    %-28s n=%-5zu max |Δ| %.2e  (atol %.0e)%s\n", all[i]->name, all[i]->n,
               all[i]->max_abs, TRACK_ATOL, all[i]->bad ? "  FAIL" : "");
    printf("    frozen sets %zu/%zu equal, live %s, final ema_F %zu/%zu bit-identical\n",
           dec - bad_sets, dec, bad_live ? "DIFFERS" : "identical at every step",
           n_final - (bad_final > n_final ? n_final : bad_final), n_final);

    size_t bad = s_js.bad + s_ema.bad + s_tv.bad + s_dec.bad + bad_sets + bad_live + bad_pattern +
                 bad_final + (dec != D);
    for (size_t k = 0; k < K; k++) fisher_chunk_drift_free(&d[k]), free(fisher[k]);
    free(d), free(fisher), free(n), free(live), free(keep), free(scores), free(idx);
    free(g_js), free(g_ema), free(g_tv), free(g_live), free(g_dec), free(g_frozen);
    json_decref(keys);
    fisher_safetensors_close(st);
    if (dec != D) fail_msg("%zu decisions, reference %zu", dec, D);
    if (bad) fail_msg("tracker %s: %zu mismatches", prefix, bad);
}

static void test_tracker_a(void **state) {
    (void)state;
    replay("a.");
}

static void test_tracker_b(void **state) {
    (void)state;
    replay("b.");
}

/* ------------------------------------------------------------------------ */
/* (iii) The freezing rule at its edges                                     */
/* ------------------------------------------------------------------------ */

static void decide(const double *s, size_t n, double lambda, const uint8_t *want_keep,
                   fisher_freeze_stats *fs) {
    uint8_t keep[16];
    memset(keep, 0xee, sizeof keep);
    memset(fs, 0, sizeof *fs);
    fisher_freeze_decide(s, n, lambda, keep, fs);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(keep[i] == 0 || keep[i] == 1);
        if (want_keep) assert_int_equal(keep[i], want_keep[i]);
        kept += keep[i];
    }
    assert_int_equal(fs->kept, kept);
    assert_int_equal(fs->frozen, n - kept);
    assert_true(fs->lambda == lambda);
}

static void test_freeze_edges(void **state) {
    (void)state;
    fisher_freeze_stats fs;

    /* n = 1: mean = score, std = 0, threshold = score: kept. */
    double one[] = {0.37};
    decide(one, 1, 1.0, (uint8_t[]){1}, &fs);
    assert_true(fs.mean == 0.37 && fs.std == 0 && fs.threshold == 0.37);

    /* All equal and exactly representable: std 0, threshold = the score: all kept,
     * for any lambda. */
    double eq[] = {0.25, 0.25, 0.25, 0.25};
    decide(eq, 4, 1.0, (uint8_t[]){1, 1, 1, 1}, &fs);
    assert_true(fs.mean == 0.25 && fs.std == 0 && fs.threshold == 0.25);
    decide(eq, 4, 1e6, (uint8_t[]){1, 1, 1, 1}, &fs);

    /* All equal but not representable: numpy's mean of three 0.1 is
     * 0.10000000000000002 > 0.1, so none reaches it and only the first
     * stays; an exact mean would keep all three. Either is the rule applied
     * to a rounded mean; the first chunk is kept in both. */
    double tenth[] = {0.1, 0.1, 0.1};
    decide(tenth, 3, 1.0, NULL, &fs);
    assert_true(fs.kept == 1 || fs.kept == 3);
    printf("  three equal scores 0.1: %zu kept (mean %.17g)\n", fs.kept, fs.mean);

    /* Ties exactly at the threshold are kept (score >= threshold):
     * {2, 2, 5, 5}: mean 3.5, std 1.5, threshold 5 with lambda 1. */
    double ties[] = {2, 5, 2, 5};
    decide(ties, 4, 1.0, (uint8_t[]){0, 1, 0, 1}, &fs);
    assert_true(fs.mean == 3.5 && fs.std == 1.5 && fs.threshold == 5.0);
    decide(ties, 4, 0.0, (uint8_t[]){0, 1, 0, 1}, &fs);
    decide(ties, 4, -1.0, (uint8_t[]){1, 1, 1, 1}, &fs); /* threshold 2 */

    /* lambda so large none reaches it: the single highest stays, the first
     * among equals. */
    double top[] = {0.3, 0.7, 0.1, 0.7};
    decide(top, 4, 10.0, (uint8_t[]){0, 1, 0, 0}, &fs);
    double first[] = {0.9, 0.2, 0.9};
    decide(first, 3, 5.0, (uint8_t[]){1, 0, 0}, &fs);

    /* Population std: {1, 2, 3, 4} has std sqrt(1.25). */
    double four[] = {1, 2, 3, 4};
    decide(four, 4, 1.0, (uint8_t[]){0, 0, 0, 1}, &fs);
    assert_true(fabs(fs.std - sqrt(1.25)) <= 1e-15 && fs.mean == 2.5);
    assert_true(fabs(fs.threshold - (2.5 + sqrt(1.25))) <= 1e-15);

    /* n = 0 decides nothing. */
    uint8_t keep0[1] = {0xee};
    memset(&fs, 0, sizeof fs);
    fisher_freeze_decide(one, 0, 1.0, keep0, &fs);
    assert_int_equal(keep0[0], 0xee);
    assert_int_equal(fs.kept, 0);
    assert_int_equal(fs.frozen, 0);
}

/* ------------------------------------------------------------------------ */
/* (iv) The distance and the tracker at their edges                         */
/* ------------------------------------------------------------------------ */

static void test_js_basics(void **state) {
    (void)state;
    const float x[] = {0.5f, 0.25f, 3e-7f, 0.0f, 12.0f};
    for (int mode = 0; mode < 2; mode++) {
        /* No distance for an empty side. */
        assert_true(isnan(fisher_js_distance(NULL, 0, NULL, 0, mode)));
        assert_true(isnan(fisher_js_distance(NULL, 0, x, 5, mode)));
        assert_true(isnan(fisher_js_distance(x, 5, NULL, 0, mode)));
        /* Identical arrays: p = q = m exactly, so exactly 0. */
        assert_true(fisher_js_distance(x, 5, x, 5, mode) == 0.0);
        assert_true(fisher_js_distance(x, 1, x, 1, mode) == 0.0);
        /* Symmetric, bit for bit: the range comes from both sides together. */
        assert_true(fisher_js_distance(x, 5, x + 1, 3, mode) ==
                    fisher_js_distance(x + 1, 3, x, 5, mode));
    }
    /* Raw mode, by hand: ref {1, 3}, cur {3, 3}, bins over [1, 3]; 3 is the
     * closed last edge. p = (½, 0…0, ½), q = (0…0, 1), m = (¼, 0…0, ¾):
     * JS² = ½(½ ln 2 + ½ ln ⅔) + ½ ln(4/3) = ¾ ln(4/3) (up to the 1e-12s). */
    const float r1[] = {1, 3}, c1[] = {3, 3};
    double want = sqrt(0.75 * log(4.0 / 3.0));
    double got = fisher_js_distance(r1, 2, c1, 2, FISHER_JS_RAW);
    printf("  raw {1,3} vs {3,3}: %.17g, by hand %.17g\n", got, want);
    assert_true(fabs(got - want) <= 1e-10);
    /* Raw mode with no finite value: no distance. */
    const float inf1[] = {INFINITY}, nan1[] = {NAN};
    assert_true(isnan(fisher_js_distance(inf1, 1, nan1, 1, FISHER_JS_RAW)));

    /* Log mode, by hand: 100 zeros (log −12) against 100 × 1e4 (log 4): the
     * 1st/99th percentiles are −12 and 4 exactly, all of p in bin 0 and all
     * of q in the closed last bin: disjoint, JS = sqrt(ln 2). */
    float *z = calloc(100, sizeof *z), *t = malloc(100 * sizeof *t);
    for (int i = 0; i < 100; i++) t[i] = 1e4f;
    got = fisher_js_distance(z, 100, t, 100, FISHER_JS_LOG);
    printf("  log 100 zeros vs 100 x 1e4: %.17g, sqrt(ln 2) %.17g\n", got, sqrt(log(2.0)));
    assert_true(fabs(got - sqrt(log(2.0))) <= 1e-10);
    /* ... but one value each: the percentiles interpolate inside (−12, 4),
     * so both values fall outside the bins and the histograms are equal. */
    assert_true(fisher_js_distance(z, 1, t, 1, FISHER_JS_LOG) == 0.0);
    free(z), free(t);
}

/* Large inputs find their percentiles through a pseudo-random sample that
 * brackets the needed ranks, and fall back to plain selection when the
 * sample misleads. The distance must not depend on the route: the same two
 * sides in an order that fools the sample (every slot the sampler reads —
 * xorshift32 from 0x9e3779b9, position (state · n) >> 32, as drift.c draws
 * them — holds an outlier, so the brackets miss) and reversed (an ordinary
 * sample) give bit-identical distances. */
static void test_js_independent_of_order(void **state) {
    (void)state;
    enum { N = 40000, SAMPLED = 2048 };
    float *all = malloc(2 * N * sizeof(float));
    fisher_rng rng;
    fisher_rng_seed(&rng, 5);
    for (size_t i = 0; i < 2 * (size_t)N; i++) all[i] = expf(3.0f * fisher_rng_normal(&rng));
    uint32_t x = 0x9e3779b9u;
    for (int i = 0; i < SAMPLED; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        all[((uint64_t)x * 2 * N) >> 32] = 1e20f;
    }
    float *ref = all, *cur = all + N;
    double fooled[2], plain[2];
    for (int mode = 0; mode < 2; mode++) fooled[mode] = fisher_js_distance(ref, N, cur, N, mode);
    for (size_t i = 0; i < N / 2; i++) { /* reverse each side in place */
        float t = ref[i];
        ref[i] = ref[N - 1 - i], ref[N - 1 - i] = t;
        t = cur[i];
        cur[i] = cur[N - 1 - i], cur[N - 1 - i] = t;
    }
    for (int mode = 0; mode < 2; mode++) {
        plain[mode] = fisher_js_distance(ref, N, cur, N, mode);
        printf("  %s mode: sample-fooling order %.17g, reversed %.17g\n", mode ? "raw" : "log",
               fooled[mode], plain[mode]);
        assert_true(isfinite(fooled[mode]) && fooled[mode] == plain[mode]);
    }
    free(all);
}

/* §3's log mode the plain way — a log per value, a full sort, numpy's
 * percentile, linspace edges, a binary search per value — to hold the
 * library's route (keys, selection, exact key thresholds, a lookup table)
 * to the definition on inputs the golden file cannot carry: large and
 * shaped to stress every shortcut. */
static int cmp_f64(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double plain_percentile(const double *sorted, size_t n, double q) {
    double v = (double)(n - 1) * q;
    size_t i = (size_t)floor(v), i1 = i + 1 < n ? i + 1 : n - 1;
    double t = v - floor(v), a = sorted[i], b = sorted[i1], diff = b - a;
    return t < 0.5 ? a + diff * t : b - diff * (1.0 - t);
}

static double plain_js_log(const float *ref, size_t n_ref, const float *cur, size_t n_cur) {
    size_t n = n_ref + n_cur;
    double *v = malloc(n * sizeof *v), *sorted = malloc(n * sizeof *sorted);
    double lo_f = INFINITY, hi_f = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        v[i] = sorted[i] = log10(fabs((double)(i < n_ref ? ref[i] : cur[i - n_ref])) + 1e-12);
        if (isfinite(v[i])) lo_f = fmin(lo_f, v[i]), hi_f = fmax(hi_f, v[i]);
    }
    qsort(sorted, n, sizeof *sorted, cmp_f64);
    double low = plain_percentile(sorted, n, 0.01), high = plain_percentile(sorted, n, 0.99);
    if (!isfinite(low)) low = lo_f;
    if (!isfinite(high)) high = hi_f;
    if (high <= low) high = low + 1e-3;
    double edges[65], step = (high - low) / 64, count[2][64] = {{0}};
    for (int i = 0; i < 64; i++) edges[i] = (double)i * step + low;
    edges[64] = high;
    for (size_t i = 0; i < n; i++) {
        if (!(v[i] >= edges[0] && v[i] <= edges[64])) continue;
        int lo = 0, hi = 64; /* the last edge ≤ v, by bisection; the last bin is closed */
        while (hi - lo > 1) {
            int mid = (lo + hi) / 2;
            if (edges[mid] <= v[i]) lo = mid;
            else hi = mid;
        }
        count[i >= n_ref][lo] += 1;
    }
    double p[2][64], kl = 0;
    for (int s = 0; s < 2; s++) {
        double sum = 0;
        for (int i = 0; i < 64; i++) sum += (p[s][i] = count[s][i] + 1e-12);
        for (int i = 0; i < 64; i++) p[s][i] /= sum;
        sum = 0;
        for (int i = 0; i < 64; i++) sum += (p[s][i] = p[s][i] < 1e-12 ? 1e-12 : p[s][i]);
        for (int i = 0; i < 64; i++) p[s][i] /= sum;
    }
    for (int i = 0; i < 64; i++) {
        double m = (p[0][i] + p[1][i]) / 2;
        kl += 0.5 * p[0][i] * log(p[0][i] / m) + 0.5 * p[1][i] * log(p[1][i] / m);
    }
    free(v), free(sorted);
    return sqrt(kl > 0 ? kl : 0);
}

static void test_js_matches_plain_definition(void **state) {
    (void)state;
    const size_t sizes[] = {300, 511, 512, 1500, 2048, 9000, 60000};
    fisher_rng rng;
    fisher_rng_seed(&rng, 11);
    int cases = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
        for (int shape = 0; shape < 8; shape++) {
            size_t n = sizes[si];
            float *ref = malloc(n * sizeof *ref), *cur = malloc(n * sizeof *cur);
            float S[7] = {0.2f, 0.2f, 0.2f, 0.21f, 0.2f, 0.5f, 0.2f}, H[50];
            for (int j = 0; j < 50; j++) H[j] = 0.2f + 0.8f * expf(4 * fisher_rng_normal(&rng));
            for (size_t i = 0; i < 2 * n; i++) {
                float u = fisher_rng_uniform(&rng), g = fisher_rng_normal(&rng), x;
                switch (shape) {
                case 0: x = expf(2 * g); break;                        /* ordinary spread */
                case 1: x = powf(10.0f, 30 * g); break;                /* 0, subnormal … inf */
                case 2: x = 0.2f * (1 + 1e-7f * (float)(int)(8 * u)); break; /* a few ulps apart */
                case 3: x = (float)(int)(4 * u) * 0.25f; break;         /* heavy ties, zeros */
                case 4: x = u < 0.3f ? 1e-14f * u : expf(g); break;     /* below the 1e-12 floor */
                case 5: x = u < 0.02f ? INFINITY : expf(g); break;     /* overflowed values */
                case 6: x = S[i % 7] * H[(i / 7) % 50]; break;         /* rank one, as S·H */
                default: x = 1e-12f * (1 + u); break;                  /* on the floor itself */
                }
                (i < n ? ref : cur)[i % n] = x;
            }
            for (size_t n_cur = n; n_cur >= n / 3; n_cur -= n / 3) { /* n, 2n/3, n/3 */
                double got = fisher_js_distance(ref, n, cur, n_cur, FISHER_JS_LOG);
                double want = plain_js_log(ref, n, cur, n_cur);
                if (!(got == want || fabs(got - want) <= 1e-12))
                    fail_msg("n %zu/%zu shape %d: library %.17g, plain definition %.17g", n, n_cur,
                             shape, got, want);
                cases++;
            }
            free(ref), free(cur);
        }
    printf("  %d cases agree with the plain definition\n", cases);
}

/* The tracker carries its percentile brackets from one measurement to the
 * next (drift.c, "predicted brackets"); that must never change a number.
 * Replays chunk trajectories shaped to make predictions hit, miss (a jump),
 * and overflow (a narrow cluster, heavy ties), and checks every js and the
 * EMA bit for bit against the stateless distance and a plain EMA. */
static void test_tracker_matches_stateless(void **state) {
    (void)state;
    const size_t sizes[] = {300, 5000, 40000};
    fisher_drift_config cfg = fisher_drift_defaults();
    float keep = (float)cfg.fisher_ema_decay, take = (float)(1.0 - cfg.fisher_ema_decay);
    fisher_rng rng;
    fisher_rng_seed(&rng, 21);
    int checked = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
        for (int shape = 0; shape < 4; shape++) {
            size_t n = sizes[si];
            float *cur = malloc(n * sizeof *cur), *ema = malloc(n * sizeof *ema);
            fisher_chunk_drift d = {0};
            for (int step = 0; step < 40; step++) {
                float scale = expf(0.05f * (float)step) * (step >= 20 && shape == 1 ? 1000.0f : 1.0f);
                for (size_t i = 0; i < n; i++) {
                    float g = fisher_rng_normal(&rng), u = fisher_rng_uniform(&rng);
                    switch (shape) {
                    case 0: cur[i] = scale * expf(2 * g); break;                    /* drifting spread */
                    case 1: cur[i] = scale * expf(g); break;                        /* a jump at step 20 */
                    case 2: cur[i] = 0.04f * (1 + 1e-5f * g); break;                /* a narrow cluster */
                    default: cur[i] = u < 0.6f ? 0.04f : 0.04f * (1 + (float)(int)(8 * u)); break; /* ties */
                    }
                }
                double want = step ? fisher_js_distance(ema, n, cur, n, FISHER_JS_LOG) : 0, got;
                if (!step) memcpy(ema, cur, n * sizeof *ema);
                else
                    for (size_t i = 0; i < n; i++) {
                        float a = keep * ema[i], b = take * cur[i];
                        ema[i] = a + b;
                    }
                fisher_error err = {{0}};
                assert_int_equal(fisher_chunk_drift_update(&d, cur, n, step, &cfg, &got, &err), 0);
                if (!(got == want)) fail_msg("n %zu shape %d step %d: tracker js %.17g, stateless %.17g", n, shape, step, got, want);
                assert_memory_equal(d.ema_F, ema, n * sizeof *ema);
                checked++;
            }
            fisher_chunk_drift_free(&d);
            free(cur), free(ema);
        }
    printf("  %d measurements identical to the stateless route\n", checked);
}

/* One measurement of a chunk both ways — from s and h (the outer route,
 * which may decline: then the array route measures by_outer too) and from
 * the materialised cur — asserting the same js and the same EMA bits.
 * Returns 1 when the outer route measured. */
static int measure_both_ways(fisher_chunk_drift *by_outer, fisher_chunk_drift *by_array,
                             const fisher_outer *o, const float *cur, int step,
                             const fisher_drift_config *cfg, const char *what) {
    size_t n = o->rows * o->cols;
    fisher_error err = {{0}};
    double js_outer, js_array;
    int rc = fisher_chunk_drift_update_outer(by_outer, o, step, cfg, &js_outer, &err);
    assert_true(rc == 0 || rc == 1);
    if (rc == 1) assert_int_equal(fisher_chunk_drift_update(by_outer, cur, n, step, cfg, &js_outer, &err), 0);
    assert_int_equal(fisher_chunk_drift_update(by_array, cur, n, step, cfg, &js_array, &err), 0);
    if (!(js_outer == js_array))
        fail_msg("%s step %d: outer js %.17g, array %.17g", what, step, js_outer, js_array);
    assert_memory_equal(by_outer->ema_F, by_array->ema_F, n * sizeof(float));
    assert_true(by_outer->total_variation == by_array->total_variation);
    return rc == 0;
}

/* An outer-product chunk measured without materialising it must do exactly
 * what the array form does: two trackers over the same trajectories (rows
 * sharing s as the reference estimator makes them, rows all different as
 * the ema estimator makes them, a column of one, a jump that spoils the
 * prediction), one fed s and h, one the materialised products; every js
 * and the EMA bit for bit. */
static void test_tracker_outer_matches_array(void **state) {
    (void)state;
    /* {1, 300}: a one-column chunk as fisher.c passes it, its S as the row;
     * {60, 9}: rows shorter than a vector, as a depthwise 3×3 kernel's */
    const size_t shapes[][2] = {{64, 32}, {40, 300}, {300, 1}, {1, 300}, {60, 9}, {7, 1000}, {5, 1500}};
    fisher_drift_config cfg = fisher_drift_defaults();
    fisher_rng rng;
    fisher_rng_seed(&rng, 33);
    int outer_used = 0, checked = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int kind = 0; kind < 3; kind++) {
            size_t R = shapes[si][0], C = shapes[si][1], n = R * C;
            float *sv = malloc(R * sizeof *sv), *hv = malloc(C * sizeof *hv), *cur = malloc(n * sizeof *cur);
            float *sorted = malloc(2 * C * sizeof *sorted), *sort_tmp = sorted + C;
            fisher_chunk_drift by_outer = {0}, by_array = {0};
            for (int step = 0; step < 30; step++) {
                /* slow drift, as training makes it, and for kind 2 a jump at step 15 */
                float jump = step == 15 && kind == 2 ? 50.0f : 1.0f;
                for (size_t r = 0; r < R; r++) /* kind 0: S ≈ 0.2 everywhere, as the reference's */
                    sv[r] = kind == 0 ? (r % 5 ? 0.2f : 0.2f + 1e-3f * fisher_rng_uniform(&rng))
                            : step ? sv[r] * jump * expf(0.02f * fisher_rng_normal(&rng))
                                   : -expf(fisher_rng_normal(&rng)); /* signs do not matter */
                for (size_t c = 0; c < C; c++)
                    hv[c] = step ? hv[c] * expf(0.02f * fisher_rng_normal(&rng))
                                 : 0.2f + 0.8f * expf(3 * fisher_rng_normal(&rng));
                for (size_t r = 0; r < R; r++)
                    for (size_t c = 0; c < C; c++) cur[r * C + c] = fabsf(sv[r] * hv[c]);
                /* every other step with h sorted by the caller, as fisher.c does for chunks sharing H */
                fisher_outer_sort(hv, C, sorted, sort_tmp);
                fisher_outer o = {sv, R, hv, C, step % 2 ? sorted : NULL};
                char what[64];
                snprintf(what, sizeof what, "%zux%zu kind %d", R, C, kind);
                outer_used += measure_both_ways(&by_outer, &by_array, &o, cur, step, &cfg, what);
                checked++;
            }
            fisher_chunk_drift_free(&by_outer), fisher_chunk_drift_free(&by_array);
            free(sv), free(hv), free(cur), free(sorted);
        }
    printf("  %d measurements, %d of them from s and h alone, identical to the array form\n", checked, outer_used);
    assert_true(outer_used > checked / 2);
}

/* The same for a chunk of 8.6 M values, past the 2^19 vectors after which
 * the vector route's bit-sliced histograms read themselves out and start
 * again (drift.c: BIT_BLOCKS_MAX): rows all different, so cur is binned
 * value by value too. */
static void test_tracker_outer_large_chunk(void **state) {
    (void)state;
    const size_t R = 4200, C = 2048, n = R * C;
    fisher_drift_config cfg = fisher_drift_defaults();
    fisher_rng rng;
    fisher_rng_seed(&rng, 34);
    float *sv = malloc(R * sizeof *sv), *hv = malloc(C * sizeof *hv), *cur = malloc(n * sizeof *cur);
    assert_non_null(sv), assert_non_null(hv), assert_non_null(cur);
    fisher_chunk_drift by_outer = {0}, by_array = {0};
    int outer_used = 0;
    for (int step = 0; step < 4; step++) {
        for (size_t r = 0; r < R; r++) sv[r] = step ? sv[r] * expf(0.02f * fisher_rng_normal(&rng)) : expf(fisher_rng_normal(&rng));
        for (size_t c = 0; c < C; c++)
            hv[c] = step ? hv[c] * expf(0.02f * fisher_rng_normal(&rng)) : 0.2f + 0.8f * expf(3 * fisher_rng_normal(&rng));
        for (size_t r = 0; r < R; r++)
            for (size_t c = 0; c < C; c++) cur[r * C + c] = fabsf(sv[r] * hv[c]);
        fisher_outer o = {sv, R, hv, C, NULL};
        outer_used += measure_both_ways(&by_outer, &by_array, &o, cur, step, &cfg, "4200x2048");
    }
    assert_true(outer_used >= 2);
    fisher_chunk_drift_free(&by_outer), fisher_chunk_drift_free(&by_array);
    free(sv), free(hv), free(cur);
}

static int cmp_float_asc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* fisher_outer_sort orders magnitudes exactly as a comparison sort does:
 * signs dropped, zeros, subnormals, ties, huge values, sizes around its
 * digit boundaries. */
static void test_outer_sort_matches_qsort(void **state) {
    (void)state;
    fisher_rng rng;
    fisher_rng_seed(&rng, 5);
    const size_t sizes[] = {1, 2, 3, 17, 256, 512, 513, 1000, 2049, 4096, 4097, 5000}; /* 8-bit digits up to 4096 */
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si];
        float *h = malloc(4 * n * sizeof *h), *got = h + n, *tmp = got + n, *want = tmp + n;
        for (size_t i = 0; i < n; i++) {
            float u = fisher_rng_uniform(&rng);
            h[i] = u < 0.1f ? 0.0f : u < 0.2f ? -1e-40f * u : u < 0.3f ? 0.2f
                 : (u < 0.5f ? -1.0f : 1.0f) * expf(20 * fisher_rng_normal(&rng));
            want[i] = fabsf(h[i]);
        }
        qsort(want, n, sizeof *want, cmp_float_asc);
        fisher_outer_sort(h, n, got, tmp);
        assert_memory_equal(got, want, n * sizeof *got);
        /* S near 0.2 throughout: most digits the same in every key, the
         * passes over them skipped */
        for (size_t i = 0; i < n; i++) {
            float u = fisher_rng_uniform(&rng);
            h[i] = u < 0.7f ? 0.2f : u < 0.9f ? nextafterf(0.2f, 1.0f) : -(0.2f + 1e-4f * u);
            want[i] = fabsf(h[i]);
        }
        qsort(want, n, sizeof *want, cmp_float_asc);
        fisher_outer_sort(h, n, got, tmp);
        assert_memory_equal(got, want, n * sizeof *got);
        free(h);
    }
}

static void test_tracker_contract(void **state) {
    (void)state;
    fisher_drift_config cfg = fisher_drift_defaults();
    assert_true(cfg.fisher_ema_decay == 0.9 && cfg.js_ema_decay == 0.9);
    assert_int_equal(cfg.js_mode, FISHER_JS_LOG);

    fisher_chunk_drift d;
    memset(&d, 0, sizeof d);
    fisher_error err = {{0}};
    const float a[] = {1, 2, 3, 4}, b[] = {1, 2, 3, 8}, c[] = {1, 2, 3, 4, 5};
    double js = -1;
    /* First measurement: ema_F = cur, js 0, everything 0, count 1. */
    assert_int_equal(fisher_chunk_drift_update(&d, a, 4, 0, &cfg, &js, &err), 0);
    assert_true(js == 0 && d.js_ema == 0 && d.total_variation == 0 && d.js_sum == 0);
    assert_int_equal(d.js_count, 1);
    assert_memory_equal(d.ema_F, a, sizeof a);
    /* Second: js against the EMA before the update; ema in float32. */
    double want_js = fisher_js_distance(a, 4, b, 4, FISHER_JS_LOG);
    assert_int_equal(fisher_chunk_drift_update(&d, b, 4, 5, &cfg, &js, &err), 0);
    assert_true(js == want_js);
    float d32 = (float)0.9, e32 = (float)(1 - 0.9);
    for (int i = 0; i < 4; i++) {
        float w = d32 * a[i] + e32 * b[i];
        assert_memory_equal(&d.ema_F[i], &w, sizeof w);
    }
    double je = 0.9 * 0 + (1 - 0.9) * want_js;
    assert_true(fabs(d.js_ema - je) <= 1e-15 && fabs(d.total_variation - je) <= 1e-15);
    assert_true(fabs(d.js_sum - je) <= 1e-15);
    assert_int_equal(d.js_count, 2);
    assert_true(fabs(fisher_chunk_drift_score(&d, FISHER_METRIC_MEAN_JS) - je / 2) <= 1e-15);
    assert_true(fisher_chunk_drift_score(&d, FISHER_METRIC_TOTAL_VARIATION) ==
                d.total_variation);
    /* A chunk does not change size. */
    assert_int_equal(fisher_chunk_drift_update(&d, c, 5, 6, &cfg, NULL, &err), -1);
    assert_true(err.msg[0] != 0);
    printf("  size change refused: %s\n", err.msg);
    fisher_chunk_drift_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_js_golden),    cmocka_unit_test(test_tracker_a),
        cmocka_unit_test(test_tracker_b),    cmocka_unit_test(test_freeze_edges),
        cmocka_unit_test(test_js_basics),    cmocka_unit_test(test_tracker_contract),
        cmocka_unit_test(test_js_independent_of_order),
        cmocka_unit_test(test_js_matches_plain_definition),
        cmocka_unit_test(test_tracker_matches_stateless),
        cmocka_unit_test(test_tracker_outer_matches_array),
        cmocka_unit_test(test_tracker_outer_large_chunk),
        cmocka_unit_test(test_outer_sort_matches_qsort),
    };
    return cmocka_run_group_tests_name("drift", tests, NULL, NULL);
}
