/*
 * drift.c — see drift.h. Numbers follow FISHERADAPTUNE.md §3–§5 and the
 * reference's NumPy, detail for detail:
 *
 *   percentiles  numpy's default 'linear' method, virtual index (n − 1)·q;
 *   edges        numpy.linspace: e_i = i·((high − low)/64) + low, e_64 = high;
 *   histogram    numpy.histogram with an edges array: [e_i, e_i+1) except the
 *                last bin, which also holds e_64; values outside dropped.
 *
 * Only four order statistics of the combined values are needed, so they are
 * found by selection (O(n)), not by sorting.
 */
#include "drift.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define JS_BINS 64
#define JS_EPS 1e-12

fisher_drift_config fisher_drift_defaults(void) {
    return (fisher_drift_config){.fisher_ema_decay = 0.9, .js_ema_decay = 0.9, .js_mode = FISHER_JS_LOG};
}

/* ------------------------------------------------------------ selection */

static void swap_d(double *a, double *b) {
    double t = *a;
    *a = *b, *b = t;
}

/* Rearranges x (n, no NaN) so that x[k] is the k-th smallest, everything
 * before it ≤ and everything after it ≥ (Hoare's quickselect with a
 * median-of-three pivot; inputs here are not adversarial). */
static void select_kth(double *x, size_t n, size_t k) {
    size_t lo = 0, hi = n - 1;
    while (hi > lo) {
        size_t mid = lo + (hi - lo) / 2;
        if (x[mid] < x[lo]) swap_d(&x[mid], &x[lo]);
        if (x[hi] < x[lo]) swap_d(&x[hi], &x[lo]);
        if (x[hi] < x[mid]) swap_d(&x[hi], &x[mid]);
        double pivot = x[mid];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] < pivot) i++;
            while (x[j] > pivot) j--;
            if (i <= j) {
                swap_d(&x[i], &x[j]);
                i++;
                if (j == 0) break;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return;
    }
}

static double min_of(const double *x, size_t n) {
    double m = x[0];
    for (size_t i = 1; i < n; i++) m = x[i] < m ? x[i] : m;
    return m;
}

/* Where numpy's 'linear' percentile q of n values reads: order statistics
 * k and k + 1 (clamped to n − 1), the second weighted t. */
typedef struct {
    size_t k, k1;
    double t;
} pct_at;

static pct_at percentile_at(size_t n, double q) {
    double v = (double)(n - 1) * q;
    pct_at p = {(size_t)floor(v), 0, v - floor(v)};
    p.k1 = p.k + 1 < n ? p.k + 1 : n - 1;
    return p;
}

static double lerp(double a, double b, double t) {
    double diff = b - a; /* numpy's _lerp, in its order of operations */
    return t < 0.5 ? a + diff * t : b - diff * (1.0 - t);
}

/* Order statistics k and k1 = k + 1 (or k) of x (n, no NaN) by quickselect
 * on a copy in work (n). */
static void order_stats_by_select(const double *x, size_t n, size_t k, size_t k1, double *work,
                                  double *xk, double *xk1) {
    memcpy(work, x, n * sizeof *work);
    select_kth(work, n, k);
    *xk = work[k];
    *xk1 = k1 == k ? *xk : min_of(work + k + 1, n - k - 1);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define SAMPLE 1024   /* values sampled to bracket a rank */
#define MARGIN 48     /* sample positions either side of the estimate (≈ 5 sigma at q = 1 %) */

/* The 1st and 99th percentiles of x (n, no NaN; x is not changed), as
 * numpy computes them. Four order statistics are needed; instead of
 * selecting over all n twice, a sorted sample brackets each needed rank
 * between two values, one scan counts what lies below each bracket and
 * gathers what lies inside it (a few percent of n), and selection runs on
 * those few. When a bracket misses its rank — possible on pathological
 * orderings, never wrong — plain selection over a copy decides. Exact
 * either way: only the route to the same order statistics differs. */
static void percentiles_1_99(const double *x, size_t n, double *work, double *p1, double *p99) {
    pct_at lo = percentile_at(n, 0.01), hi = percentile_at(n, 0.99);
    double a, b, c, d;
    if (n < 8 * SAMPLE) {
        order_stats_by_select(x, n, lo.k, lo.k1, work, &a, &b);
        order_stats_by_select(x, n, hi.k, hi.k1, work, &c, &d);
    } else {
        double sample[SAMPLE];
        for (size_t i = 0; i < SAMPLE; i++) sample[i] = x[i * (n / SAMPLE)];
        qsort(sample, SAMPLE, sizeof *sample, cmp_double);
        /* the brackets: sample values around where each rank should fall */
        double pos_lo = (double)lo.k / (double)(n - 1) * (SAMPLE - 1);
        double pos_hi = (double)hi.k / (double)(n - 1) * (SAMPLE - 1);
        long l1 = (long)pos_lo - MARGIN, u1 = (long)pos_lo + 1 + MARGIN;
        long l2 = (long)pos_hi - MARGIN, u2 = (long)pos_hi + 1 + MARGIN;
        double L1 = l1 < 0 ? -INFINITY : sample[l1], U1 = u1 >= SAMPLE ? INFINITY : sample[u1];
        double L2 = l2 < 0 ? -INFINITY : sample[l2], U2 = u2 >= SAMPLE ? INFINITY : sample[u2];
        size_t cap = n / 2, below1 = 0, below2 = 0, in1 = 0, in2 = 0;
        double *buf1 = work, *buf2 = work + cap;
        int ok = 1;
        for (size_t i = 0; i < n && ok; i++) {
            double v = x[i];
            if (v < L1) below1++;
            else if (v <= U1) ok = in1 < cap, buf1[in1 < cap ? in1++ : in1] = v;
            if (v < L2) below2++;
            else if (v <= U2) ok = ok && in2 < cap, buf2[in2 < cap ? in2++ : in2] = v;
        }
        /* both needed ranks of each percentile must fall inside its bracket */
        ok = ok && below1 <= lo.k && lo.k1 < below1 + in1 && below2 <= hi.k && hi.k1 < below2 + in2;
        if (ok) {
            select_kth(buf1, in1, lo.k - below1);
            a = buf1[lo.k - below1];
            b = lo.k1 == lo.k ? a : min_of(buf1 + lo.k - below1 + 1, in1 - (lo.k - below1) - 1);
            select_kth(buf2, in2, hi.k - below2);
            c = buf2[hi.k - below2];
            d = hi.k1 == hi.k ? c : min_of(buf2 + hi.k - below2 + 1, in2 - (hi.k - below2) - 1);
        } else {
            order_stats_by_select(x, n, lo.k, lo.k1, work, &a, &b);
            order_stats_by_select(x, n, hi.k, hi.k1, work, &c, &d);
        }
    }
    *p1 = lerp(a, b, lo.t);
    *p99 = lerp(c, d, hi.t);
}

/* ------------------------------------------------------------ histograms */

typedef struct {
    double low, high, edges[JS_BINS + 1];
    double scale; /* JS_BINS / (high − low), for a first guess the edges then correct */
} bins;

static void make_bins(bins *h, double low, double high) {
    h->low = low, h->high = high;
    double step = (high - low) / JS_BINS;
    for (int i = 0; i < JS_BINS; i++) h->edges[i] = (double)i * step + low;
    h->edges[JS_BINS] = high;
    h->scale = JS_BINS / (high - low);
}

/* The bin of x, or -1 when x falls outside [e_0, e_64] (or is NaN). */
static int bin_of(const bins *h, double x) {
    if (!(x >= h->edges[0] && x <= h->edges[JS_BINS])) return -1;
    /* NaN when the range collapsed (low + 1e-12 == low for large values):
     * every edge then equals low and numpy puts x in the closed last bin */
    double guess = floor((x - h->low) * h->scale);
    int i = !(guess >= 0) ? 0 : guess > JS_BINS - 1 ? JS_BINS - 1 : (int)guess;
    while (i < JS_BINS - 1 && x >= h->edges[i + 1]) i++;
    while (i > 0 && x < h->edges[i]) i--;
    return i;
}

/* counts + eps, normalised; then clipped at eps and renormalised (§3.4–5). */
static void to_distribution(double *p, const double *counts) {
    double sum = 0;
    for (int i = 0; i < JS_BINS; i++) sum += (p[i] = counts[i] + JS_EPS);
    for (int i = 0; i < JS_BINS; i++) p[i] /= sum;
    sum = 0;
    for (int i = 0; i < JS_BINS; i++) sum += (p[i] = p[i] < JS_EPS ? JS_EPS : p[i]);
    for (int i = 0; i < JS_BINS; i++) p[i] /= sum;
}

static double js_of_counts(const double *count_ref, const double *count_cur) {
    double p[JS_BINS], q[JS_BINS], kl_pm = 0, kl_qm = 0;
    to_distribution(p, count_ref);
    to_distribution(q, count_cur);
    for (int i = 0; i < JS_BINS; i++) {
        double m = (p[i] + q[i]) / 2;
        kl_pm += p[i] * log(p[i] / m);
        kl_qm += q[i] * log(q[i] / m);
    }
    double js = 0.5 * kl_pm + 0.5 * kl_qm;
    return sqrt(js > 0 ? js : 0);
}

/* Log mode. Non-finite Fisher values, which the method leaves open (it
 * zeroes NaN before any distance, so only an overflow to inf gets here):
 * a NaN means no distance; the min/max fallback for a non-finite
 * percentile is over the finite values, so infinite ones fall outside the
 * bins; no finite value at all means no distance. */
static double js_log(const float *ref, size_t n_ref, const float *cur, size_t n_cur) {
    size_t n = n_ref + n_cur;
    double *all = malloc(2 * n * sizeof *all);
    if (!all) return NAN;
    double *work = all + n, lo_finite = INFINITY, hi_finite = -INFINITY, result = NAN;
    for (size_t i = 0; i < n; i++) {
        float x = i < n_ref ? ref[i] : cur[i - n_ref];
        double v = all[i] = log10(fabs((double)x) + JS_EPS);
        if (isnan(v)) goto out;
        if (isfinite(v)) lo_finite = v < lo_finite ? v : lo_finite, hi_finite = v > hi_finite ? v : hi_finite;
    }
    if (lo_finite > hi_finite) goto out;
    double low, high;
    percentiles_1_99(all, n, work, &low, &high);
    if (!isfinite(low)) low = lo_finite;
    if (!isfinite(high)) high = hi_finite;
    if (high <= low) high = low + 1e-3;
    bins h;
    make_bins(&h, low, high);
    double cr[JS_BINS] = {0}, cc[JS_BINS] = {0};
    for (size_t i = 0; i < n; i++) {
        int b = bin_of(&h, all[i]);
        if (b >= 0) (i < n_ref ? cr : cc)[b] += 1;
    }
    result = js_of_counts(cr, cc);
out:
    free(all);
    return result;
}

static double js_raw(const float *ref, size_t n_ref, const float *cur, size_t n_cur) {
    size_t n = n_ref + n_cur;
    double low = INFINITY, high = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double a = fabs((double)(i < n_ref ? ref[i] : cur[i - n_ref]));
        if (!isfinite(a)) continue;
        low = a < low ? a : low;
        high = a > high ? a : high;
    }
    if (low > high) return NAN; /* no finite value at all */
    if (high == low) high = low + 1e-12;
    bins h;
    make_bins(&h, low, high);
    double cr[JS_BINS] = {0}, cc[JS_BINS] = {0};
    for (size_t i = 0; i < n; i++) {
        int b = bin_of(&h, fabs((double)(i < n_ref ? ref[i] : cur[i - n_ref])));
        if (b >= 0) (i < n_ref ? cr : cc)[b] += 1;
    }
    return js_of_counts(cr, cc);
}

double fisher_js_distance(const float *ref, size_t n_ref, const float *cur, size_t n_cur, int mode) {
    if (!n_ref || !n_cur || !ref || !cur) return NAN;
    return mode == FISHER_JS_RAW ? js_raw(ref, n_ref, cur, n_cur) : js_log(ref, n_ref, cur, n_cur);
}

/* ------------------------------------------------------------ the tracker */

int fisher_chunk_drift_update(fisher_chunk_drift *d, const float *cur, size_t n, int64_t step,
                              const fisher_drift_config *cfg, double *js_out, fisher_error *err) {
    if (!d->measured) {
        if (!n) return fisher_errorf(err, "drift: an empty chunk cannot be measured");
        if (!(d->ema_F = malloc(n * sizeof *d->ema_F)))
            return fisher_errorf(err, "drift: out of memory for a chunk of %zu", n);
        memcpy(d->ema_F, cur, n * sizeof *cur);
        d->n = n, d->measured = 1;
        d->js_ema = 0, d->total_variation = 0, d->js_sum = 0, d->js_count = 1;
        d->last_step = step, d->last_value = 0;
        if (js_out) *js_out = 0;
        return 0;
    }
    if (n != d->n)
        return fisher_errorf(err, "drift: chunk had %zu elements, now %zu", d->n, n);
    double js = fisher_js_distance(d->ema_F, n, cur, n, cfg->js_mode);
    /* float32, both factors rounded from double, as the reference's tensors do */
    float keep = (float)cfg->fisher_ema_decay, take = (float)(1.0 - cfg->fisher_ema_decay);
    for (size_t i = 0; i < n; i++) {
        float a = keep * d->ema_F[i], b = take * cur[i];
        d->ema_F[i] = a + b;
    }
    double e = cfg->js_ema_decay;
    d->js_ema = e * d->js_ema + (1.0 - e) * js;
    d->total_variation += fabs(d->js_ema - d->last_value);
    d->last_step = step, d->last_value = d->js_ema;
    d->js_sum += d->js_ema;
    d->js_count += 1;
    if (js_out) *js_out = js;
    return 0;
}

void fisher_chunk_drift_free(fisher_chunk_drift *d) {
    free(d->ema_F);
    memset(d, 0, sizeof *d);
}

double fisher_chunk_drift_score(const fisher_chunk_drift *d, int metric) {
    if (metric == FISHER_METRIC_MEAN_JS) return d->js_count ? d->js_sum / (double)d->js_count : 0;
    return d->total_variation;
}

/* ------------------------------------------------------------ freezing */

void fisher_freeze_decide(const double *scores, size_t n, double lambda, uint8_t *keep,
                          fisher_freeze_stats *stats) {
    fisher_freeze_stats s = {.lambda = lambda};
    if (n) {
        double sum = 0, sq = 0;
        for (size_t i = 0; i < n; i++) sum += scores[i];
        s.mean = sum / (double)n;
        for (size_t i = 0; i < n; i++) sq += (scores[i] - s.mean) * (scores[i] - s.mean);
        s.std = sqrt(sq / (double)n);
        s.threshold = s.mean + lambda * s.std;
        size_t best = 0;
        for (size_t i = 0; i < n; i++) {
            keep[i] = scores[i] >= s.threshold;
            s.kept += keep[i];
            if (scores[i] > scores[best]) best = i;
        }
        if (!s.kept) keep[best] = 1, s.kept = 1;
        s.frozen = n - s.kept;
    }
    if (stats) *stats = s;
}
