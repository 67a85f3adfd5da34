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

#include <float.h>
#include <math.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX512_ROUTE 1
#endif
#include <stdlib.h>
#include <string.h>

#define JS_BINS 64
#define JS_EPS 1e-12

fisher_drift_config fisher_drift_defaults(void) {
    return (fisher_drift_config){.fisher_ema_decay = 0.9, .js_ema_decay = 0.9, .js_mode = FISHER_JS_LOG};
}

/* ------------------------------------------------------------ keys */

/* The magnitude of a float as an integer key. For |x| the IEEE bit
 * patterns order exactly like the values (+0 < subnormals < normals < inf
 * < NaN), and log10(|x| + 1e-12) is monotone in |x|, so order statistics
 * and bin membership of the log values are decided by comparing keys: the
 * log is taken of the handful of keys that matter, not of every element. */
#define KEY_INF 0x7f800000u

static inline uint32_t key_of(float x) {
    uint32_t k;
    memcpy(&k, &x, sizeof k);
    return k & 0x7fffffffu;
}

static inline double value_of_key(uint32_t k) {
    float x;
    memcpy(&x, &k, sizeof x);
    return (double)x;
}

static inline double log_of_key(uint32_t k) {
    float x;
    memcpy(&x, &k, sizeof x);
    return log10((double)x + JS_EPS);
}

/* ------------------------------------------------------------ selection */

static void swap_u(uint32_t *a, uint32_t *b) {
    uint32_t t = *a;
    *a = *b, *b = t;
}

/* Rearranges x (n) so that x[k] is the k-th smallest, everything before it
 * ≤ and everything after it ≥ (Hoare's quickselect with a median-of-three
 * pivot; inputs here are not adversarial). */
static void select_kth(uint32_t *x, size_t n, size_t k) {
    size_t lo = 0, hi = n - 1;
    while (hi > lo) {
        size_t mid = lo + (hi - lo) / 2;
        if (x[mid] < x[lo]) swap_u(&x[mid], &x[lo]);
        if (x[hi] < x[lo]) swap_u(&x[hi], &x[lo]);
        if (x[hi] < x[mid]) swap_u(&x[hi], &x[mid]);
        uint32_t pivot = x[mid];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] < pivot) i++;
            while (x[j] > pivot) j--;
            if (i <= j) {
                swap_u(&x[i], &x[j]);
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

/* The k-th smallest of x (n); x is reordered. */
static uint32_t kth_smallest(uint32_t *x, size_t n, size_t k) {
    select_kth(x, n, k);
    return x[k];
}

/* The least of x (n ≥ 1). */
static uint32_t least_of(const uint32_t *x, size_t n) {
    uint32_t least = UINT32_MAX;
    for (size_t i = 0; i < n; i++) least = x[i] < least ? x[i] : least;
    return least;
}

/* The j-th smallest of x (n), every key in [lo, lo + span], and with next
 * the one after it (j + 1 < n); x is reordered. Keys are counted by the top
 * bits of k − lo and selected among the one bucket's that holds rank j:
 * two passes without branches on the keys, where quickselect's partitions
 * mispredicted (mit-b0: ~570 selections of ~230 keys a step). The key after
 * is the bucket's next, or the least of a later bucket. */
#define SPAN_BUCKETS 256
static uint32_t select_in_span(uint32_t *x, size_t n, size_t j, uint32_t lo, uint32_t span, uint32_t *next) {
    uint32_t later = UINT32_MAX; /* the least key above the bucket, once rank j is the bucket's last */
    int next_later = 0;
    while (n > 64 && span > 0) { /* each round narrows the span 256-fold */
        int sh = 0;
        while ((span >> sh) >= SPAN_BUCKETS) sh++;
        /* four sets of counters: keys near a percentile crowd into few
         * buckets, and one counter made each increment wait for the last */
        uint32_t count[4][SPAN_BUCKETS] = {{0}};
        size_t i = 0;
        for (; i + 4 <= n; i += 4)
            for (int l = 0; l < 4; l++) count[l][(x[i + l] - lo) >> sh]++;
        for (; i < n; i++) count[0][(x[i] - lo) >> sh]++;
        size_t below = 0, c;
        uint32_t bucket = 0;
        for (;; bucket++) {
            c = (size_t)count[0][bucket] + count[1][bucket] + count[2][bucket] + count[3][bucket];
            if (below + c > j) break;
            below += c;
        }
        size_t m = 0;
        if (next && !next_later && j + 1 == below + c) { /* the next key lies above the bucket */
            next_later = 1;
            for (i = 0; i < n; i++) {
                uint32_t k = x[i], in = (k - lo) >> sh;
                x[m] = k, m += in == bucket;
                later = in > bucket && k < later ? k : later;
            }
        } else {
            for (i = 0; i < n; i++) { /* the bucket's keys to the front */
                uint32_t k = x[i];
                x[m] = k, m += (k - lo) >> sh == bucket;
            }
        }
        n = m, j -= below, lo += bucket << sh, span = (1u << sh) - 1;
    }
    uint32_t key = span ? kth_smallest(x, n, j) : lo;
    if (next) *next = next_later || j + 1 >= n ? later : span ? least_of(x + j + 1, n - j - 1) : lo;
    return key;
}

/* Where numpy's 'linear' percentile q of n values reads: order statistics
 * k and k1 = k + 1 (clamped to n − 1), the second weighted t. */
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

/* The keys of ref (n_ref) and cur (n_cur) seen as one array of n. */
typedef struct {
    const float *ref, *cur;
    size_t n_ref, n_cur, n;
} both;

static uint32_t key_at(const both *a, size_t i) {
    return key_of(i < a->n_ref ? a->ref[i] : a->cur[i - a->n_ref]);
}

/* The four order statistics numpy's 1st and 99th percentiles read (lo.k,
 * lo.k1, hi.k, hi.k1 → out[0..3]), by selection over two copies of every
 * key in work (2n); *max_key gets the largest key (> KEY_INF: there is a
 * NaN). Each selection takes its rank and the next (k1 = k0 + 1 or k0,
 * clamped at n − 1; k3 likewise). */
static void order_stats_all(const both *a, const pct_at *lo, const pct_at *hi, uint32_t *work,
                            uint32_t *out, uint32_t *max_key) {
    size_t n = a->n;
    uint32_t mk = 0, least = UINT32_MAX;
    for (size_t i = 0; i < n; i++) {
        uint32_t k = work[i] = work[n + i] = key_at(a, i);
        mk = k > mk ? k : mk, least = k < least ? k : least;
    }
    *max_key = mk;
    out[0] = select_in_span(work, n, lo->k, least, mk - least, lo->k1 != lo->k ? &out[1] : NULL);
    if (lo->k1 == lo->k) out[1] = out[0];
    out[2] = select_in_span(work + n, n, hi->k, least, mk - least, hi->k1 != hi->k ? &out[3] : NULL);
    if (hi->k1 == hi->k) out[3] = out[2];
}

/* list (ascending, *filled of its m) takes k if k is among the m least
 * keys it has been offered. */
static inline void keep_least(uint32_t *list, size_t m, size_t *filled, uint32_t k) {
    size_t j;
    if (*filled < m) j = (*filled)++;
    else if (k < list[m - 1]) j = m - 1;
    else return;
    while (j > 0 && list[j - 1] > k) list[j] = list[j - 1], j--;
    list[j] = k;
}

/* The m_low least keys of a, ascending, into low and the m_high greatest,
 * descending, into high (1 ≤ m ≤ n), in one pass: past the first few, a
 * key rarely enters either list. */
static void extreme_keys(const both *a, size_t m_low, size_t m_high, uint32_t *low, uint32_t *high) {
    size_t n_low = 0, n_high = 0;
    for (size_t i = 0; i < a->n; i++) {
        uint32_t k = key_at(a, i);
        if (n_low < m_low || k < low[m_low - 1]) keep_least(low, m_low, &n_low, k);
        /* the greatest as the least of the complements */
        if (n_high < m_high || ~k < high[m_high - 1]) keep_least(high, m_high, &n_high, ~k);
    }
    for (size_t i = 0; i < m_high; i++) high[i] = ~high[i];
}

/* The four order statistics from extreme_keys, when the percentiles'
 * ranks lie within RANKS_FEW of either end (every array below FEW keys):
 * small chunks, whose selections over all keys took ~5 % of the drift time. */
#define RANKS_FEW 32
static int order_stats_few(const both *a, const pct_at *lo, const pct_at *hi, uint32_t *out, uint32_t *max_key) {
    size_t m_low = lo->k1 + 1, m_high = a->n - hi->k;
    if (m_low > RANKS_FEW || m_high > RANKS_FEW) return -1;
    uint32_t low[RANKS_FEW], high[RANKS_FEW];
    extreme_keys(a, m_low, m_high, low, high);
    out[0] = low[lo->k], out[1] = low[lo->k1];
    out[2] = high[a->n - 1 - hi->k], out[3] = high[a->n - 1 - hi->k1];
    *max_key = high[0];
    return 0;
}

/* A key range that should hold a needed rank. Keys below lo are counted;
 * keys equal to lo, mid or hi are counted (a Fisher often repeats one value
 * thousands of times, and the percentile may sit on it); keys strictly
 * between are gathered — few, when the bracket is a good guess. Sorted,
 * the bracket reads: at_lo × lo, the gathered keys below mid, at_mid × mid,
 * the gathered keys above mid, at_hi × hi. mid = lo when there is no
 * middle value to single out. */
typedef struct {
    uint32_t lo, mid, hi;
    size_t below, at_lo, at_mid, at_hi, inside, inside_low, cap;
    uint32_t *buf;
} bracket;

/* Key k, known to lie in [b->lo, b->hi]: counted or gathered. Out of line:
 * the scans below reach it only for the few keys near a percentile. */
static __attribute__((noinline)) void bracket_take(bracket *b, uint32_t k) {
    if (k == b->lo) b->at_lo++;
    else if (k == b->hi) b->at_hi++;
    else if (k == b->mid) b->at_mid++;
    else {
        if (b->inside < b->cap) b->buf[b->inside] = k;
        b->inside++;
        b->inside_low += k < b->mid;
    }
}

/* b takes again every key it took between the states `from` and `to` (a
 * row's keys, for a row that repeats it): the counts grow by the same
 * amounts, and the gathered keys are appended again while there is room
 * (when the row overflowed the buffer, b is past its room anyway and only
 * the count matters). */
static void bracket_repeat(bracket *b, const bracket *from, const bracket *to) {
    b->at_lo += to->at_lo - from->at_lo;
    b->at_mid += to->at_mid - from->at_mid;
    b->at_hi += to->at_hi - from->at_hi;
    b->inside_low += to->inside_low - from->inside_low;
    for (size_t i = from->inside; i < to->inside; i++, b->inside++)
        if (b->inside < b->cap) b->buf[b->inside] = b->buf[i];
}

/* What a scan needs of two brackets on every key, kept in registers: the
 * lower ends, the widths, and the counts below. */
typedef struct {
    uint32_t lo[2], width[2];
    size_t below[2];
} bracket_pair;

static bracket_pair pair_of(const bracket *b) {
    return (bracket_pair){{b[0].lo, b[1].lo}, {b[0].hi - b[0].lo, b[1].hi - b[1].lo}, {0, 0}};
}

/* Counts key k against both brackets (k − lo ≤ width: inside, unsigned). */
static inline void pair_add(bracket_pair *p, bracket *b, uint32_t k) {
    p->below[0] += k < p->lo[0];
    p->below[1] += k < p->lo[1];
    if (k - p->lo[0] <= p->width[0]) bracket_take(&b[0], k);
    if (k - p->lo[1] <= p->width[1]) bracket_take(&b[1], k);
}

static void pair_done(const bracket_pair *p, bracket *b) {
    b[0].below += p->below[0];
    b[1].below += p->below[1];
}

/* One pass over x (n) for both brackets; *max_key grows to the largest key. */
static void brackets_scan(bracket *b, const float *x, size_t n, uint32_t *max_key) {
    uint32_t mk = *max_key;
    bracket_pair p = pair_of(b);
    for (size_t i = 0; i < n; i++) {
        uint32_t k = key_of(x[i]);
        mk = k > mk ? k : mk;
        pair_add(&p, b, k);
    }
    pair_done(&p, b);
    *max_key = mk;
}

/* Where global rank r sits in b: 0 when outside b (the guess was wrong) or
 * b overflowed its buffer; else 1 with *key set when r falls on lo, mid or
 * hi, or 2 with *j its index among the gathered keys in sorted order. */
static int bracket_locate(const bracket *b, size_t r, uint32_t *key, size_t *j) {
    if (r < b->below || b->inside > b->cap || r >= b->below + b->at_lo + b->inside + b->at_mid + b->at_hi)
        return 0;
    r -= b->below;
    if (r < b->at_lo) return *key = b->lo, 1;
    r -= b->at_lo;
    if (r < b->inside_low) return *j = r, 2;
    if (r < b->inside_low + b->at_mid) return *key = b->mid, 1;
    r -= b->at_mid;
    if (r < b->inside) return *j = r, 2;
    return *key = b->hi, 1;
}

/* The keys of global ranks r and r1 (r1 = r or r + 1), or -1 when either
 * is not inside b. Two neighbouring gathered ranks cost one selection. */
static int bracket_ranks(bracket *b, size_t r, size_t r1, uint32_t *out, uint32_t *out1) {
    size_t j, j1;
    int where = bracket_locate(b, r, out, &j), where1 = bracket_locate(b, r1, out1, &j1);
    if (!where || !where1) return -1;
    int pair = where == 2 && where1 == 2 && j1 == j + 1;
    uint32_t span = b->hi - b->lo; /* gathered keys lie in [lo, hi] */
    if (where == 2) *out = select_in_span(b->buf, b->inside, j, b->lo, span, pair ? out1 : NULL);
    if (where1 == 2 && !pair) *out1 = select_in_span(b->buf, b->inside, j1, b->lo, span, NULL);
    return 0;
}

/* The four order statistics of the two percentiles from their brackets:
 * 0, or -1 when one fell outside (or a bracket overflowed). */
static int percentile_keys(bracket *b, const pct_at *lo, const pct_at *hi, uint32_t *out) {
    if (bracket_ranks(&b[0], lo->k, lo->k1, &out[0], &out[1])) return -1;
    return bracket_ranks(&b[1], hi->k, hi->k1, &out[2], &out[3]);
}

#define SAMPLE 2048   /* keys sampled to bracket a rank, at most */
#define MARGIN 24     /* sample positions either side of the estimate (≈ 5 sigma at q = 1 %) */
#define FEW 2048      /* below this many keys plain selection is as fast */

/* Keys sampled from n values for brackets: how many, and room for what a
 * bracket is expected to gather (twice its expected share). */
static size_t sample_size(size_t n) { return n / 8 < SAMPLE ? n / 8 : SAMPLE; }
static size_t sampled_cap(size_t n) { return n / sample_size(n) * (2 * MARGIN + 2) * 2 + 64; }

/* The next pseudo-random index in [0, n): xorshift32, scaled. */
static size_t sample_index(uint32_t *state, size_t n) {
    *state ^= *state << 13, *state ^= *state >> 17, *state ^= *state << 5;
    return (size_t)(((uint64_t)*state * n) >> 32);
}

/* Brackets of the two percentiles' ranks among n keys, from m of them
 * sampled (sample is reordered); buf holds 2 · cap keys. half_width[j]
 * gets the half-width in keys that holds about a 256th of the values
 * either side of percentile j, measured from the sample: the width for
 * predicted brackets. Narrower gathers less to select from, wider misses
 * less often; a 64th cost more in selection (mit-b0, one step at
 * ema_interval 1) than the extra misses of a 256th (3 % of measurements). */
static void brackets_from_sample(bracket *br, uint32_t *sample, size_t m, size_t n, const pct_at *lo,
                                 const pct_at *hi, uint32_t *buf, size_t cap, uint32_t half_width[2]) {
    const pct_at *pct[2] = {lo, hi};
    for (int j = 0; j < 2; j++) {
        double pos = (double)pct[j]->k / (double)(n - 1) * (double)(m - 1);
        long l = (long)pos - MARGIN, u = (long)pos + 1 + MARGIN;
        br[j] = (bracket){.lo = l < 0 ? 0 : kth_smallest(sample, m, (size_t)l),
                          .hi = u >= (long)m ? UINT32_MAX : kth_smallest(sample, m, (size_t)u),
                          .cap = cap, .buf = buf + (size_t)j * cap};
        br[j].mid = br[j].lo;
        /* the 1st and 99th percentiles often lie within MARGIN of the
         * sample's ends, so a bracket may be open on one side: measure the
         * half-width on the side that is not */
        uint32_t at = kth_smallest(sample, m, (size_t)pos), w = 0;
        if (u < (long)m) w = br[j].hi - at;
        if (l >= 0 && at - br[j].lo > w) w = at - br[j].lo;
        /* MARGIN of m sampled keys span w: a 256th of the values about w·m/(256·MARGIN) */
        uint64_t w64 = (uint64_t)w * m / (256 * MARGIN);
        half_width[j] = w64 > UINT32_MAX ? UINT32_MAX : (uint32_t)w64;
    }
}

/* The same four order statistics as order_stats_all, without copying or
 * selecting over all n: a pseudo-random sample brackets each percentile's
 * ranks between two keys, one scan counts what lies below each bracket and
 * gathers what lies strictly inside (a few percent of n), and selection
 * runs on those few. When a bracket misses its ranks — possible, never
 * wrong — plain selection decides. Exact either way: only the route to the
 * same keys differs. *max_key as there; half_width as brackets_from_sample
 * (0 when there was no sample). Returns 0, or -1 when out of memory. */
static int order_stats(const both *a, const pct_at *lo, const pct_at *hi, uint32_t *out,
                       uint32_t *max_key, uint32_t half_width[2]) {
    half_width[0] = half_width[1] = 0;
    if (a->n < FEW && !order_stats_few(a, lo, hi, out, max_key)) return 0;
    if (a->n < FEW) {
        uint32_t work[2 * FEW];
        order_stats_all(a, lo, hi, work, out, max_key);
        return 0;
    }
    size_t m = sample_size(a->n), cap = sampled_cap(a->n);
    uint32_t sample[SAMPLE], state = 0x9e3779b9u;
    for (size_t i = 0; i < m; i++) sample[i] = key_at(a, sample_index(&state, a->n));
    uint32_t *buf = malloc(2 * cap * sizeof *buf);
    if (!buf) return -1;
    bracket br[2];
    brackets_from_sample(br, sample, m, a->n, lo, hi, buf, cap, half_width);
    *max_key = 0;
    brackets_scan(br, a->ref, a->n_ref, max_key);
    brackets_scan(br, a->cur, a->n_cur, max_key);
    int missed = percentile_keys(br, lo, hi, out);
    free(buf);
    if (!missed) return 0;
    uint32_t *work = malloc(2 * a->n * sizeof *work);
    if (!work) return -1;
    order_stats_all(a, lo, hi, work, out, max_key);
    free(work);
    return 0;
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

/* The log-mode bins seen from the keys. t[i] (i < 64) is the least key
 * whose log value reaches edge i, t[64] the least whose log value passes
 * high (the last bin is closed). A key k is binned iff t[0] ≤ k < t[64],
 * into the last i with t[i] ≤ k — exactly bin_of(log_of_key(k)). Keys are
 * nearly logarithmic in the value, so a table over [t[0], t[64)) cut into
 * LUT_SIZE equal spans names the bin at each span's start and where in
 * the span the next edge lies, and one comparison (rarely more) corrects
 * the bin within the span — one table read, no second one for the edge. */
#define LUT_SIZE 256 /* built for every chunk at every step: 512 spans cost more to fill (mit-b0) and left one_step no likelier */

typedef struct {
    uint32_t t[JS_BINS + 1];
    uint32_t span;            /* t[64] − t[0] */
    int shift;                /* a key's span in the table: (k − t[0]) >> shift */
    int one_step;             /* no span crosses two edges: one comparison always corrects */
    uint32_t lut[LUT_SIZE];   /* bin at the span's start | (next edge − span start) << 6; the
                               * offset is 1 << shift when the next edge lies beyond the span */
} key_bins;

#define LUT_BIN(e) ((int)((e) & 63u))
#define LUT_EDGE(e) ((e) >> 6)

/* A lower bound on log_of_key(k) − log_of_key(k − 1) as computed (k ≥ 1),
 * less twice LOG_MARGIN; ≤ 0 when there is none to rely on (both keys
 * round to the same y = x + 1e-12). With y_k − y_{k−1} exact (neighbours:
 * Sterbenz), the true difference log10(y_k / y_{k−1}) is at least
 * (y_k − y_{k−1}) / y_k / ln 10; the factor covers this bound's own two
 * roundings. LOG_MARGIN is far above log10's error on values below 40 in
 * magnitude (a few ulps, ~1e-14), and far below the ~5e-8 between the log
 * values of two neighbouring normal floats. */
#define LOG_MARGIN 1e-12
static double key_gap(uint32_t k) {
    float a, b;
    uint32_t k1 = k - 1;
    memcpy(&a, &k, sizeof a), memcpy(&b, &k1, sizeof b);
    double ya = (double)a + JS_EPS, yb = (double)b + JS_EPS;
    return (ya - yb) / ya / 2.302585092994046 * (1 - 1e-9) - 2 * LOG_MARGIN;
}

/* How far, relatively, a value must lie from the estimate of 10^edge for
 * the side of the edge its log value falls on to be known without taking
 * the log: far above the estimate's own error (~1e-14: one pow and up to
 * 64 multiplies) and log10's (a few ulps of values below 40 in magnitude,
 * ~1e-14), far below the ~6e-8 between neighbouring normal floats, so
 * almost every edge is decided by two comparisons. */
#define POW_MARGIN 1e-10

/* The least key whose log value reaches edge (passes it when strictly),
 * KEY_INF if none; ten is about 10^edge, so that y = ten − 1e-12, about
 * the value at the edge, starts the search within an ulp or two. Log
 * values ascend with keys, so the answer is unique, whatever the start.
 * Usually no log decides it: when key k's value + 1e-12 lies clearly above
 * ten and key k − 1's clearly below (POW_MARGIN), k is the answer. Else
 * one log usually does: when the start's log value lies within the gap to
 * its neighbour of the edge, the neighbour is known to lie on the other
 * side (key_gap) and its log is not taken. */
static uint32_t least_key_reaching(double edge, int strictly, double ten) {
#define REACHES(k) (strictly ? log_of_key(k) > edge : log_of_key(k) >= edge)
    double y = ten - JS_EPS;
    uint32_t k = !(y > 0) ? 0 : y >= FLT_MAX ? KEY_INF : key_of((float)y);
    if (k > 1 && k + 1 < KEY_INF && isfinite(ten)) {
        double above = ten * (1 + POW_MARGIN), below = ten * (1 - POW_MARGIN);
        double y0 = value_of_key(k - 1) + JS_EPS, y1 = value_of_key(k) + JS_EPS, y2 = value_of_key(k + 1) + JS_EPS;
        if (y0 <= below && y1 >= above) return k;       /* k reaches, k − 1 falls short */
        if (y1 <= below && y2 >= above) return k + 1;   /* k falls short, k + 1 reaches */
    }
    if (k > 0 && k + 1 < KEY_INF) {
        double v = log_of_key(k);
        if (strictly ? v > edge : v >= edge) {
            if (v - edge < key_gap(k)) return k;           /* k − 1 falls short */
        } else if (edge - v < key_gap(k + 1)) {
            return k + 1;                                   /* k + 1 reaches */
        }
    }
    while (k > 0 && REACHES(k - 1)) k--;
    while (k < KEY_INF && !REACHES(k)) k++;
    return k;
#undef REACHES
}

static void make_key_bins(key_bins *kb, const bins *h) {
    /* the starts 10^edge_i as 10^low · (10^step)^i: one multiply an edge,
     * not a pow (edge_i = i·step + low; the error, ~1e-14, is far inside
     * the ulp the search starts from) */
    double at = pow(10.0, h->low), ratio = pow(10.0, (h->high - h->low) / JS_BINS);
    for (int i = 0; i < JS_BINS; i++, at *= ratio) kb->t[i] = least_key_reaching(h->edges[i], 0, at);
    kb->t[JS_BINS] = least_key_reaching(h->high, 1, pow(10.0, h->high));
    uint32_t t0 = kb->t[0];
    kb->span = kb->t[JS_BINS] - t0;
    kb->shift = 0;
    while ((kb->span >> kb->shift) >= LUT_SIZE) kb->shift++;
    uint32_t last = kb->span >> kb->shift, width = 1u << kb->shift; /* keys < 2^31, so shift ≤ 23: fits beside 6 bits */
    /* Span s starts at t0 + s·width and is named by the last bin b whose
     * edge t[b] it has reached (t[1..63]; bin 63 takes the rest), with the
     * distance to edge t[b + 1]. Filled bin by bin: the spans starting
     * before t[b + 1] and not before t[b]. */
    uint32_t sp = 0;
    for (int b = 0; b < JS_BINS; b++) {
        uint32_t next = kb->t[b + 1], end = last + 1;
        if (b < JS_BINS - 1) { /* the first span starting at or after next */
            uint32_t first = next <= t0 ? 0 : ((next - t0 - 1) >> kb->shift) + 1;
            end = first < end ? first : end;
        }
        for (; sp < end; sp++) {
            uint32_t edge = next - (t0 + (sp << kb->shift));
            kb->lut[sp] = (uint32_t)b | (edge < width ? edge : width) << 6;
        }
    }
    /* One comparison corrects the table's guess unless two of the inner
     * edges t[1..63] fall between neighbouring span starts: in (start of
     * s − 1, start of s] for some s ≤ last, or in (start of last,
     * t[64] − 1]. An edge e > t0 up to lim lies in one of these, the one
     * numbered ((e − t0 − 1) >> shift) + 1; edges ascend, so neighbours
     * are compared. (lim counts edges at t[64] when the last span starts
     * there, as a walk over the spans does: conservative, never wrong.) */
    uint32_t last_start = t0 + (last << kb->shift), lim = kb->t[JS_BINS] - 1;
    lim = last_start > lim ? last_start : lim;
    kb->one_step = 1;
    for (int j = 1; j < JS_BINS - 1; j++) {
        uint32_t e = kb->t[j], f = kb->t[j + 1];
        if (e > t0 && f <= lim && (e - t0 - 1) >> kb->shift == (f - t0 - 1) >> kb->shift) kb->one_step = 0;
    }
}

/* The bin of key k, or JS_BINS when k is outside [t[0], t[64]). Branch-free
 * in the usual case: the table's guess, one comparison to correct it. */
static inline int key_bin(const key_bins *kb, uint32_t k) {
    uint32_t d = k - kb->t[0];
    int in = d < kb->span;
    uint32_t e = kb->lut[in ? d >> kb->shift : 0];
    int b = LUT_BIN(e) + ((d & ((1u << kb->shift) - 1)) >= LUT_EDGE(e));
    if (!kb->one_step)
        while (b < JS_BINS - 1 && k >= kb->t[b + 1]) b++;
    return in ? b : JS_BINS;
}

/* Histograms count into LANES interleaved copies: consecutive values often
 * land in the same bin, and one counter would make every increment wait
 * for the previous one's store. */
#define LANES 4
typedef uint32_t lane_counts[LANES][JS_BINS + 1]; /* the extra bin takes values outside */

static void add_lanes(uint64_t *counts, lane_counts lanes) {
    for (int b = 0; b < JS_BINS; b++)
        for (int l = 0; l < LANES; l++) counts[b] += lanes[l][b];
}

/* counts += times · row, bin by bin. */
static void add_rows(uint64_t *counts, const uint64_t *row, size_t times) {
    for (int b = 0; b < JS_BINS; b++) counts[b] += row[b] * times;
}

/* counts[bin] += 1 for every binned key of x (n). */
static void count_keys(const key_bins *kb, const float *x, size_t n, uint64_t *counts) {
    lane_counts lanes = {{0}};
    for (size_t i = 0; i < n; i++) lanes[i % LANES][key_bin(kb, key_of(x[i]))]++;
    add_lanes(counts, lanes);
}

/* ------------------------------------------------------------ predicted brackets
 *
 * The tracker measures the same chunk again and again, and its percentiles
 * move little from one measurement to the next. So the pass that writes the
 * new EMA also counts it against two brackets around this measurement's
 * percentile keys and gathers what falls inside; the next measurement then
 * only scans cur against the same brackets, and needs neither a sample nor
 * a second pass over the EMA. When a needed rank falls outside its bracket
 * (the percentiles moved further than predicted) the sampled route decides
 * and the next brackets are wider; when a bracket gathers too much they are
 * narrower. Exact either way. */

#define BRACKET_WIDTH0 (1u << 21)   /* key half-width with nothing measured: a quarter of an octave */
#define BRACKET_WIDTH_MIN (1u << 4)
#define BRACKET_WIDTH_MAX (1u << 27)

struct fisher_drift_brackets {
    bracket b[2];                   /* the EMA's part: counts, and inside keys in buf */
    uint32_t max_key;               /* the largest EMA key */
    uint32_t width[2];              /* key half-widths for the next brackets */
    int valid;                      /* b describes the current EMA */
    uint32_t *buf;                  /* 2 · cap keys */
    size_t cap;
    uint8_t *row_same;              /* per row of an outer-product chunk: 1 when the last pass
                                     * copied it from the row before (so the two are equal) */
    size_t rows;                    /* rows it describes; 0 while it says nothing */
    size_t row_cap;                 /* row_same's length */
};

/* Keys a bracket may gather from n values: all of them in a small chunk,
 * whose Fisher is often lumpy (rows sharing one S make runs of near-equal
 * values that no width can split), a 16th in a large one. */
#define GATHER_ALL_MAX 8192
static size_t gather_room(size_t n) { return n <= GATHER_ALL_MAX ? n : n / 16 + 64; }

static uint32_t clamp_width(uint64_t w) {
    return w < BRACKET_WIDTH_MIN ? BRACKET_WIDTH_MIN : w > BRACKET_WIDTH_MAX ? BRACKET_WIDTH_MAX : (uint32_t)w;
}

/* A prediction for a chunk of n values, empty (not valid), with brackets
 * of half-widths `width` (NULL or 0: BRACKET_WIDTH0); NULL when out of memory. */
static fisher_drift_brackets *brackets_new(size_t n, const uint32_t *width) {
    fisher_drift_brackets *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->cap = gather_room(n);
    for (int j = 0; j < 2; j++) p->width[j] = clamp_width(width && width[j] ? width[j] : BRACKET_WIDTH0);
    if (!(p->buf = malloc(2 * p->cap * sizeof *p->buf))) free(p), p = NULL;
    return p;
}

/* After a sampled measurement: brackets as wide as the sample's, which
 * hold a few percent of the values whatever their spread (a Fisher that
 * clusters within a few hundred keys and one spread over decades alike;
 * the 1st percentile often sits in a dense pile, the 99th in a sparse
 * tail, so each has its own), and at least twice as wide as before when
 * the percentiles had moved out of the predicted ones. */
static void width_from_sample(fisher_drift_brackets *p, const uint32_t half_width[2], int moved) {
    for (int j = 0; j < 2; j++) {
        uint64_t w = half_width[j] ? half_width[j] : p->width[j];
        if (moved && w < 2 * (uint64_t)p->width[j]) w = 2 * (uint64_t)p->width[j];
        p->width[j] = clamp_width(w);
    }
}

/* After the pass that gathers for the next measurement: a bracket that
 * overflowed is narrowed so that it would gather about half its room, in
 * one step rather than by halving measurement after measurement. */
static void width_after_gathering(fisher_drift_brackets *p) {
    p->valid = 1;
    for (int j = 0; j < 2; j++)
        if (p->b[j].inside > p->b[j].cap) {
            p->valid = 0;
            p->width[j] = clamp_width((uint64_t)((double)p->width[j] * (double)p->cap / (2.0 * (double)p->b[j].inside)));
        }
}

/* Brackets of p's half-widths around the keys c0 and c1. */
static void brackets_around(fisher_drift_brackets *p, uint32_t c0, uint32_t c1) {
    uint32_t c[2] = {c0, c1};
    for (int j = 0; j < 2; j++) {
        uint32_t w = p->width[j];
        uint32_t lo = c[j] > w ? c[j] - w : 0, hi = c[j] < KEY_INF - w ? c[j] + w : KEY_INF;
        p->b[j] = (bracket){.lo = lo, .mid = c[j], .hi = hi, .cap = p->cap, .buf = p->buf + (size_t)j * p->cap};
    }
}

/* all[2] = the EMA's stored brackets, each with its gathered keys copied
 * into a new array with room for gather_room(n) more (cur's). Returns that
 * allocation (free it), or NULL when out of memory. */
static uint32_t *brackets_with_room(const fisher_drift_brackets *p, size_t n, bracket *all) {
    size_t room = gather_room(n), len[2] = {p->b[0].inside + room, p->b[1].inside + room};
    uint32_t *work = malloc((len[0] + len[1]) * sizeof *work);
    if (!work) return NULL;
    for (int j = 0; j < 2; j++) {
        uint32_t *buf = work + (j ? len[0] : 0);
        memcpy(buf, p->b[j].buf, p->b[j].inside * sizeof *buf);
        all[j] = p->b[j];
        all[j].buf = buf, all[j].cap = len[j];
    }
    return work;
}

/* Order statistics from the EMA's stored brackets plus a scan of cur (n):
 * 0 with out[] and *max_key, or -1 when a needed rank fell outside its
 * bracket, a bracket overflowed, or memory ran out. */
static int order_stats_predicted(const fisher_drift_brackets *p, const float *cur, size_t n,
                                 const pct_at *lo, const pct_at *hi, uint32_t *out, uint32_t *max_key) {
    bracket all[2];
    uint32_t *work = brackets_with_room(p, n, all);
    if (!work) return -1;
    *max_key = p->max_key;
    brackets_scan(all, cur, n, max_key);
    int missed = percentile_keys(all, lo, hi, out);
    free(work);
    return missed;
}

/* count_keys over ema (n) and cur (n) at once, replacing each ema[i] by
 * keep·ema[i] + take·cur[i] once it is binned: the tracker's EMA update,
 * fused so that the chunk is read once. With next, the new EMA is also
 * counted and gathered against next's brackets. */
static void count_keys_blending(const key_bins *kb, float *ema, const float *cur, size_t n,
                                float keep, float take, uint64_t *counts_ema, uint64_t *counts_cur,
                                fisher_drift_brackets *next) {
    uint32_t mk = 0;
    lane_counts lanes_ema = {{0}}, lanes_cur = {{0}};
    /* without next: brackets no key can reach (keys are at most 0x7fffffff) */
    bracket scratch[2] = {{.lo = UINT32_MAX, .hi = UINT32_MAX}, {.lo = UINT32_MAX, .hi = UINT32_MAX}};
    bracket *nb = next ? next->b : scratch;
    bracket_pair p = pair_of(nb);
    for (size_t i = 0; i < n; i++) {
        float e = ema[i], c = cur[i];
        lanes_ema[i % LANES][key_bin(kb, key_of(e))]++;
        lanes_cur[i % LANES][key_bin(kb, key_of(c))]++;
        float x = keep * e, y = take * c, z = x + y;
        ema[i] = z;
        uint32_t kz = key_of(z);
        mk = kz > mk ? kz : mk;
        pair_add(&p, nb, kz);
    }
    pair_done(&p, nb);
    add_lanes(counts_ema, lanes_ema);
    add_lanes(counts_cur, lanes_cur);
    if (!next) return;
    next->max_key = mk;
    width_after_gathering(next);
}

/* ema[i] = keep·ema[i] + take·cur[i], float32, both factors rounded from double as the reference's tensors do. */
static void blend(float *ema, const float *cur, size_t n, float keep, float take) {
    for (size_t i = 0; i < n; i++) {
        float x = keep * ema[i], y = take * cur[i];
        ema[i] = x + y;
    }
}

/* counts + eps, normalised; then clipped at eps and renormalised (§3.4–5):
 * p from count_p and q from count_q side by side, each sum in its own
 * order, so that the two chains of dependent additions overlap. */
static void to_distributions(double *p, double *q, const uint64_t *count_p, const uint64_t *count_q) {
    double sum_p = 0, sum_q = 0;
    for (int i = 0; i < JS_BINS; i++) {
        sum_p += (p[i] = (double)count_p[i] + JS_EPS);
        sum_q += (q[i] = (double)count_q[i] + JS_EPS);
    }
    for (int i = 0; i < JS_BINS; i++) p[i] /= sum_p, q[i] /= sum_q;
    sum_p = 0, sum_q = 0;
    for (int i = 0; i < JS_BINS; i++) {
        sum_p += (p[i] = p[i] < JS_EPS ? JS_EPS : p[i]);
        sum_q += (q[i] = q[i] < JS_EPS ? JS_EPS : q[i]);
    }
    for (int i = 0; i < JS_BINS; i++) p[i] /= sum_p, q[i] /= sum_q;
}

/* Equal counts make equal probabilities, and so equal terms: bins whose
 * pair of counts is small (empty in one or both, as most bins of a small
 * chunk are) take their terms from the first bin with the same pair, not
 * two more logs. */
#define JS_MEMO 4

static double js_of_counts(const uint64_t *count_ref, const uint64_t *count_cur) {
    double p[JS_BINS], q[JS_BINS], kl_pm = 0, kl_qm = 0, memo[JS_MEMO][JS_MEMO][2];
    uint8_t known[JS_MEMO][JS_MEMO] = {{0}};
    to_distributions(p, q, count_ref, count_cur);
    for (int i = 0; i < JS_BINS; i++) {
        uint64_t a = count_ref[i], b = count_cur[i];
        double *t = a < JS_MEMO && b < JS_MEMO ? memo[a][b] : NULL;
        if (!t || !known[a][b]) {
            double m = (p[i] + q[i]) / 2, tp = p[i] * log(p[i] / m), tq = q[i] * log(q[i] / m);
            if (t) t[0] = tp, t[1] = tq, known[a][b] = 1;
            kl_pm += tp;
            kl_qm += tq;
        } else {
            kl_pm += t[0];
            kl_qm += t[1];
        }
    }
    double js = 0.5 * kl_pm + 0.5 * kl_qm;
    return sqrt(js > 0 ? js : 0);
}

/* ------------------------------------------------------------ the distance */

#define DIRECT_MAX 512 /* below this many values one log each costs less than 65 key thresholds */

/* The least and greatest finite keys of a (none: lo > hi). */
static void finite_range(const both *a, uint32_t *lo, uint32_t *hi) {
    *lo = UINT32_MAX, *hi = 0;
    for (size_t i = 0; i < a->n; i++) {
        uint32_t k = key_at(a, i);
        if (k >= KEY_INF) continue;
        *lo = k < *lo ? k : *lo;
        *hi = k > *hi ? k : *hi;
    }
}

/* Log mode into *js (NAN: no distance). When ema is given (the tracker;
 * then ema == a->ref and n_ref == n_cur) it is also blended with cur, on
 * every path, after it has been measured. Non-finite Fisher values, which
 * the method leaves open (it zeroes NaN before any distance, so only an
 * overflow to inf gets here): a NaN means no distance; the min/max
 * fallback for a non-finite percentile is over the finite values, so
 * infinite ones fall outside the bins; no finite value at all means no
 * distance. Returns 0, or -1 when out of memory (*js NAN, ema blended). */
static int js_log(const both *a, float *ema, float keep, float take, fisher_drift_brackets **pred,
                  double *js) {
    *js = NAN;
    pct_at lo = percentile_at(a->n, 0.01), hi = percentile_at(a->n, 0.99);
    uint32_t ord[4], max_key, half_width[2] = {0, 0};
    fisher_drift_brackets *p = pred ? *pred : NULL;
    int rc = 0;
    if (p && p->valid && !order_stats_predicted(p, a->cur, a->n_cur, &lo, &hi, ord, &max_key)) {
        /* predicted well */
    } else {
        rc = order_stats(a, &lo, &hi, ord, &max_key, half_width);
        if (p) width_from_sample(p, half_width, p->valid);
    }
    if (p) p->valid = 0; /* until the blend pass below fills it for the new EMA */
    if (rc || max_key > KEY_INF) goto out;
    double low = lerp(log_of_key(ord[0]), log_of_key(ord[1]), lo.t);
    double high = lerp(log_of_key(ord[2]), log_of_key(ord[3]), hi.t);
    if (!isfinite(low) || !isfinite(high)) {
        uint32_t lo_finite, hi_finite;
        finite_range(a, &lo_finite, &hi_finite);
        if (lo_finite > hi_finite) goto out;
        if (!isfinite(low)) low = log_of_key(lo_finite);
        if (!isfinite(high)) high = log_of_key(hi_finite);
    }
    if (high <= low) high = low + 1e-3;
    bins h;
    make_bins(&h, low, high);
    uint64_t cr[JS_BINS] = {0}, cc[JS_BINS] = {0};
    if (a->n < DIRECT_MAX) {
        /* a run of equal values (a norm or bias chunk whose S is 0.2
         * throughout, and its EMA) takes one log */
        uint32_t last = UINT32_MAX;
        int b = -1;
        for (size_t i = 0; i < a->n; i++) {
            uint32_t k = key_at(a, i);
            if (k != last) b = bin_of(&h, log_of_key(k)), last = k;
            if (b >= 0) (i < a->n_ref ? cr : cc)[b]++;
        }
    } else {
        key_bins kb;
        make_key_bins(&kb, &h);
        if (ema) {
            if (pred && !p) p = *pred = brackets_new(a->n_cur, half_width);
            if (p) brackets_around(p, ord[0], ord[2]);
            count_keys_blending(&kb, ema, a->cur, a->n_cur, keep, take, cr, cc, p);
            ema = NULL;
        } else {
            count_keys(&kb, a->ref, a->n_ref, cr);
            count_keys(&kb, a->cur, a->n_cur, cc);
        }
    }
    *js = js_of_counts(cr, cc);
out:
    if (ema) blend(ema, a->cur, a->n_cur, keep, take);
    return rc;
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
    uint64_t cr[JS_BINS] = {0}, cc[JS_BINS] = {0};
    for (size_t i = 0; i < n; i++) {
        int b = bin_of(&h, fabs((double)(i < n_ref ? ref[i] : cur[i - n_ref])));
        if (b >= 0) (i < n_ref ? cr : cc)[b]++;
    }
    return js_of_counts(cr, cc);
}

double fisher_js_distance(const float *ref, size_t n_ref, const float *cur, size_t n_cur, int mode) {
    if (!n_ref || !n_cur || !ref || !cur) return NAN;
    if (mode == FISHER_JS_RAW) return js_raw(ref, n_ref, cur, n_cur);
    both a = {ref, cur, n_ref, n_cur, n_ref + n_cur};
    double js;
    js_log(&a, NULL, 0, 0, NULL, &js);
    return js;
}

/* ------------------------------------------------------------ the tracker */

/* §4's bookkeeping after a distance js. */
static void record_js(fisher_chunk_drift *d, double js, int64_t step, const fisher_drift_config *cfg) {
    double e = cfg->js_ema_decay;
    d->js_ema = e * d->js_ema + (1.0 - e) * js;
    d->total_variation += fabs(d->js_ema - d->last_value);
    d->last_step = step, d->last_value = d->js_ema;
    d->js_sum += d->js_ema;
    d->js_count += 1;
}

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
    /* float32, both factors rounded from double, as the reference's tensors do */
    float keep = (float)cfg->fisher_ema_decay, take = (float)(1.0 - cfg->fisher_ema_decay);
    double js;
    if (d->next) d->next->rows = 0; /* the EMA changes here without the outer route's row record */
    if (cfg->js_mode == FISHER_JS_RAW) {
        js = fisher_js_distance(d->ema_F, n, cur, n, FISHER_JS_RAW);
        blend(d->ema_F, cur, n, keep, take);
    } else {
        both a = {d->ema_F, cur, n, n, 2 * n};
        if (js_log(&a, d->ema_F, keep, take, &d->next, &js))
            return fisher_errorf(err, "drift: out of memory measuring a chunk of %zu", n);
    }
    record_js(d, js, step, cfg);
    if (js_out) *js_out = js;
    return 0;
}

/* ------------------------------------------------------------ outer products
 *
 * cur = |s| ⊗ |h|, and for a fixed row value the float product s·h[c] is
 * monotone in h[c]: over h sorted, the keys of a row are sorted too. So a
 * row's count below a key is a binary search, and rows that share s (most
 * of them, under the reference estimator) share the answer. The EMA is
 * still read element by element, with cur computed on the fly. */

#define SEARCH_MIN 1024 /* the scalar route's rows beyond this are binned by searches (65 of ~10 steps cost as much) */

/* The first c in [from, to) with key(s·hs[c]) ≥ t, hs ascending; to if none. */
static size_t first_reaching(const float *hs, size_t from, size_t to, float s, uint32_t t) {
    while (from < to) {
        size_t mid = from + (to - from) / 2;
        if (key_of(s * hs[mid]) < t) from = mid + 1;
        else to = mid;
    }
    return from;
}

/* Least significant digit first: the keys of magnitudes order like the
 * values, and counting passes beat a comparison sort at the sizes of H (up
 * to a few thousand): four of 8 bits, or beyond 4096 values three of 11,
 * whose tables of 2048 cost more to clear and sum than a fourth pass over
 * fewer values (fisher.c sorts ~100 H of 32 to 1024 values every step on
 * mit-b0). A pass in which every key has the same digit would leave the
 * order as it is (the sort is stable), so it is skipped: S near 0.2
 * throughout shares most digits. */
void fisher_outer_sort(const float *h, size_t n, float *out, float *tmp) {
    enum { RADIX_MAX = 1 << 11 };
    int digit = n <= 4096 ? 8 : 11, passes = (31 + digit - 1) / digit;
    size_t radix = (size_t)1 << digit, count[RADIX_MAX];
    float *a = out, *b = tmp;
    for (size_t i = 0; i < n; i++) a[i] = fabsf(h[i]);
    for (int pass = 0; pass < passes; pass++) {
        int sh = pass * digit;
        memset(count, 0, radix * sizeof *count);
        for (size_t i = 0; i < n; i++) count[(key_of(a[i]) >> sh) & (radix - 1)]++;
        if (n && count[(key_of(a[0]) >> sh) & (radix - 1)] == n) continue;
        size_t at = 0;
        for (size_t d = 0; d < radix; d++) {
            size_t c = count[d];
            count[d] = at, at += c;
        }
        for (size_t i = 0; i < n; i++) b[count[(key_of(a[i]) >> sh) & (radix - 1)]++] = a[i];
        float *t = a;
        a = b, b = t;
    }
    if (a != out) memcpy(out, a, n * sizeof *out);
}

/* Counts cur = s ⊗ hs (hs ascending) against both brackets, row by row:
 * what lies below each is a binary search, what lies inside is taken. */
static void outer_brackets_scan(bracket *b, const float *s, size_t R, const float *hs, size_t C) {
    bracket before[2], after[2];
    size_t from[2] = {0, 0};
    for (size_t r = 0; r < R; r++) {
        if (r && s[r] == s[r - 1]) { /* the row before's keys again: its counts and gathered keys */
            for (int j = 0; j < 2; j++) {
                b[j].below += from[j];
                bracket_repeat(&b[j], &before[j], &after[j]);
            }
            continue;
        }
        for (int j = 0; j < 2; j++) {
            before[j] = b[j];
            from[j] = first_reaching(hs, 0, C, s[r], b[j].lo);
            size_t to = b[j].hi >= KEY_INF ? C : first_reaching(hs, from[j], C, s[r], b[j].hi + 1);
            b[j].below += from[j];
            for (size_t c = from[j]; c < to; c++) bracket_take(&b[j], key_of(s[r] * hs[c]));
            after[j] = b[j];
        }
    }
}

/* The four order statistics of ema (n) and cur = s ⊗ h (R × C = n; hs is h
 * ascending) as one array, like order_stats: from p's predicted brackets
 * when it has them and they hold the ranks, else from sampled ones (p's
 * width then follows the sample). 0, 1 when neither held them (the array
 * route decides), -1 when out of memory. *max_key gets the EMA's largest
 * key (cur's is added by the caller). */
static int outer_order_stats(fisher_drift_brackets *p, const float *ema, const float *s, size_t R,
                             const float *h, const float *hs, size_t C, const pct_at *lo,
                             const pct_at *hi, uint32_t *ord, uint32_t *max_key) {
    size_t n = R * C;
    int moved = 0;
    if (p->valid) {
        bracket all[2];
        uint32_t *work = brackets_with_room(p, n, all);
        if (!work) return -1;
        outer_brackets_scan(all, s, R, hs, C);
        int missed = percentile_keys(all, lo, hi, ord);
        free(work);
        *max_key = p->max_key;
        if (!missed) return 0;
        moved = 1;
    }
    size_t m = sample_size(2 * n), cap = sampled_cap(2 * n);
    uint32_t sample[SAMPLE], state = 0x9e3779b9u, half_width[2];
    for (size_t i = 0; i < m; i++) {
        size_t at = sample_index(&state, 2 * n);
        sample[i] = key_of(at < n ? ema[at] : s[(at - n) / C] * h[(at - n) % C]);
    }
    uint32_t *buf = malloc(2 * cap * sizeof *buf);
    if (!buf) return -1;
    bracket br[2];
    brackets_from_sample(br, sample, m, 2 * n, lo, hi, buf, cap, half_width);
    *max_key = 0;
    brackets_scan(br, ema, n, max_key);
    outer_brackets_scan(br, s, R, hs, C);
    int missed = percentile_keys(br, lo, hi, ord);
    free(buf);
    width_from_sample(p, half_width, moved);
    return missed ? 1 : 0;
}

/* The EMA pass of an outer-product chunk, one row at a time: every EMA
 * value binned (before the update) and replaced by keep·ema + take·cur,
 * cur = |s_r·h[c]| formed on the fly and binned too when cur_lanes is given,
 * and the new value counted against the next brackets. */
typedef struct {
    float keep, take;         /* float32, both factors rounded from double */
    const key_bins *kb;
    bracket_pair pair;
    bracket *b;
    uint32_t max_key;         /* the largest new key so far */
} ema_pass;

static void ema_row_scalar(ema_pass *ps, float *ema, float sr, const float *h, size_t C, lane_counts lanes,
                           lane_counts *cur_lanes) {
    uint32_t mk = ps->max_key;
    for (size_t c = 0; c < C; c++) {
        float e = ema[c], cv = fabsf(sr * h[c]);
        lanes[c % LANES][key_bin(ps->kb, key_of(e))]++;
        if (cur_lanes) (*cur_lanes)[c % LANES][key_bin(ps->kb, key_of(cv))]++;
        float x = ps->keep * e, y = ps->take * cv, z = x + y;
        ema[c] = z;
        uint32_t kz = key_of(z);
        mk = kz > mk ? kz : mk;
        pair_add(&ps->pair, ps->b, kz);
    }
    ps->max_key = mk;
}

/* Where a histogram of the EMA pass counts until it is added to counts
 * (JS_BINS): scalar counters (lanes), or on the vector route a bit-sliced
 * histogram (bits, see below), which knows its counts itself. A tally of
 * neither counts nothing. */
typedef struct {
    lane_counts *lanes;
    struct bit_hist *bits;
    uint64_t *counts;
} tally;

#ifdef HAVE_AVX512_ROUTE
/* A bit-sliced histogram of the 64 bins, for sixteen values at a time. A
 * vector of sixteen bins becomes two one-hot vectors (bit b of the lane in
 * the first for b < 32, bit b − 32 in the second; a value outside sets no
 * bit), and those are summed as 512 one-bit counters each by carry-save
 * adders (Harley–Seal, as in positional popcounts): two ternary-logic
 * instructions an input, where the scalar counters took a load, a read,
 * an add and a write for each of the sixteen values (mit-b0 at ema_interval
 * 1, ~4.3 M values a step; with the tallies below, fisher_method_step went
 * from 8.3 to 6.6 ms CPU at 1 thread, median of 30 steps). Inputs wait in buf
 * until sixteen are there; the adders' results of weight 1, 2, 4, 8 stay in
 * low, carries of weight 16 and more ripple into plane and pend as a binary
 * tree (level k holds at most one waiting carry), so every level costs a
 * constant amortised. Read out (bit_hist_finish) once per chunk. */
#define BIT_BLOCKS_MAX (1u << 15)     /* blocks of 16 inputs before a read-out: carries reach level 19 */
#define BIT_LEVELS 20
typedef struct bit_hist {
    _Alignas(64) uint32_t buf[16][2][16];          /* inputs not yet added, per stream (bins 0–31, 32–63) */
    _Alignas(64) uint32_t low[4][2][16];           /* weights 1, 2, 4, 8 */
    _Alignas(64) uint32_t plane[BIT_LEVELS][2][16]; /* weight 2^k, k ≥ 4; valid below top */
    _Alignas(64) uint32_t pend[BIT_LEVELS][2][16];  /* a carry of weight 2^k waiting for its pair */
    uint32_t has_pend;                             /* bit k: pend[k] holds one */
    int n_buf, top;
    uint32_t blocks;
    uint64_t *counts;                              /* where bit_hist_finish adds (JS_BINS) */
} bit_hist;

static void bit_hist_init(bit_hist *v, uint64_t *counts) {
    memset(v->low, 0, sizeof v->low);
    v->has_pend = 0, v->n_buf = 0, v->top = 4, v->blocks = 0, v->counts = counts;
}

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#define VLOAD(p) _mm512_load_si512((const void *)(p))
#define VSTORE(p, x) _mm512_store_si512((void *)(p), x)
#define XOR3(a, b, c) _mm512_ternarylogic_epi32(a, b, c, 0x96)
#define MAJ3(a, b, c) _mm512_ternarylogic_epi32(a, b, c, 0xe8)
/* (h, l) = a + b + c per bit position: l the sum bit, h the carry */
#define CSA(h, l, a, b, c)                                         \
    do {                                                           \
        __m512i a_ = (a), b_ = (b), c_ = (c);                      \
        h = MAJ3(a_, b_, c_), l = XOR3(a_, b_, c_);                \
    } while (0)

static void bit_hist_finish(bit_hist *v);

/* A carry x (both streams) of weight 2^k into the tree of levels ≥ 4. */
AVX512_TARGET static void bit_hist_carry(bit_hist *v, int k, __m512i x0, __m512i x1) {
    for (;; k++) {
        if (k == v->top) {
            VSTORE(v->plane[k][0], _mm512_setzero_si512()), VSTORE(v->plane[k][1], _mm512_setzero_si512());
            v->top++;
        }
        if (!(v->has_pend >> k & 1)) {
            VSTORE(v->pend[k][0], x0), VSTORE(v->pend[k][1], x1);
            v->has_pend |= 1u << k;
            return;
        }
        v->has_pend &= ~(1u << k);
        __m512i p0 = VLOAD(v->plane[k][0]), q0 = VLOAD(v->pend[k][0]);
        __m512i p1 = VLOAD(v->plane[k][1]), q1 = VLOAD(v->pend[k][1]);
        VSTORE(v->plane[k][0], XOR3(p0, q0, x0)), VSTORE(v->plane[k][1], XOR3(p1, q1, x1));
        x0 = MAJ3(p0, q0, x0), x1 = MAJ3(p1, q1, x1);
    }
}

/* Adds the sixteen buffered inputs of both streams. */
AVX512_TARGET static void bit_hist_block(bit_hist *v) {
    __m512i sixteens[2];
    for (int s = 0; s < 2; s++) {
        __m512i ones = VLOAD(v->low[0][s]), twos = VLOAD(v->low[1][s]);
        __m512i fours = VLOAD(v->low[2][s]), eights = VLOAD(v->low[3][s]);
        __m512i twos_a, twos_b, fours_a, fours_b, eights_a, eights_b;
#define IN(i) VLOAD(v->buf[i][s])
        CSA(twos_a, ones, ones, IN(0), IN(1));
        CSA(twos_b, ones, ones, IN(2), IN(3));
        CSA(fours_a, twos, twos, twos_a, twos_b);
        CSA(twos_a, ones, ones, IN(4), IN(5));
        CSA(twos_b, ones, ones, IN(6), IN(7));
        CSA(fours_b, twos, twos, twos_a, twos_b);
        CSA(eights_a, fours, fours, fours_a, fours_b);
        CSA(twos_a, ones, ones, IN(8), IN(9));
        CSA(twos_b, ones, ones, IN(10), IN(11));
        CSA(fours_a, twos, twos, twos_a, twos_b);
        CSA(twos_a, ones, ones, IN(12), IN(13));
        CSA(twos_b, ones, ones, IN(14), IN(15));
        CSA(fours_b, twos, twos, twos_a, twos_b);
        CSA(eights_b, fours, fours, fours_a, fours_b);
        CSA(sixteens[s], eights, eights, eights_a, eights_b);
#undef IN
        VSTORE(v->low[0][s], ones), VSTORE(v->low[1][s], twos);
        VSTORE(v->low[2][s], fours), VSTORE(v->low[3][s], eights);
    }
    v->n_buf = 0;
    bit_hist_carry(v, 4, sixteens[0], sixteens[1]);
    if (++v->blocks == BIT_BLOCKS_MAX) bit_hist_finish(v), bit_hist_init(v, v->counts);
}

/* The bins b (sixteen, JS_BINS for none) as one input of each stream;
 * *n_buf is v->n_buf, kept by the caller in a register (through memory,
 * each input waited for the previous one's store). */
AVX512_TARGET static inline void bit_hist_add(bit_hist *v, int *n_buf, __m512i b) {
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(32);
    VSTORE(v->buf[*n_buf][0], _mm512_sllv_epi32(one, b));   /* counts ≥ 32 shift everything out */
    VSTORE(v->buf[*n_buf][1], _mm512_sllv_epi32(one, _mm512_sub_epi32(b, half)));
    if (++*n_buf == 16) bit_hist_block(v), *n_buf = 0;
}

/* The counts of plane x's bits as 64 bytes, at most 8 each: byte j counts
 * bit j of the eight quadwords (position j of the even lanes, j − 32 of
 * the odd ones). In registers: through memory, each mask load waited for
 * the store before it. */
AVX512_TARGET static inline __m512i bit_plane_bytes(__m512i x) {
    const __m512i minus_one = _mm512_set1_epi8(-1);
    __m512i bytes = _mm512_setzero_si512();
#define ADD_QWORD(part, hi)                                                                                  \
    bytes = _mm512_mask_sub_epi8(                                                                            \
        bytes, _cvtu64_mask64((uint64_t)_mm_extract_epi64(_mm512_extracti32x4_epi32(x, part), hi)), bytes, \
        minus_one)
    ADD_QWORD(0, 0), ADD_QWORD(0, 1), ADD_QWORD(1, 0), ADD_QWORD(1, 1);
    ADD_QWORD(2, 0), ADD_QWORD(2, 1), ADD_QWORD(3, 0), ADD_QWORD(3, 1);
#undef ADD_QWORD
    return bytes;
}

/* Adds v's counts to v->counts and leaves v empty of inputs (the caller
 * initialises it again before further use). Levels are read four at a
 * time: their byte counts (at most 16 a level, with a waiting carry)
 * weighted 1, 2, 4, 8 still fit a byte, so one widening serves four. */
AVX512_TARGET static void bit_hist_finish(bit_hist *v) {
    if (v->n_buf) { /* zero inputs fill the block: they count nowhere */
        for (int i = v->n_buf; i < 16; i++)
            VSTORE(v->buf[i][0], _mm512_setzero_si512()), VSTORE(v->buf[i][1], _mm512_setzero_si512());
        bit_hist_block(v);
    }
    for (int s = 0; s < 2; s++) {
        __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
        for (int g = 0; 4 * g < v->top; g++) {
            __m512i four = _mm512_setzero_si512(); /* Σ 2^i · level 4g + i's byte counts */
            for (int i = 3; i >= 0; i--) {
                int k = 4 * g + i;
                four = _mm512_add_epi8(four, four);
                if (k >= v->top) continue;
                __m512i x = VLOAD(k < 4 ? v->low[k][s] : v->plane[k][s]);
                if (_mm512_test_epi32_mask(x, x)) four = _mm512_add_epi8(four, bit_plane_bytes(x));
                if (k >= 4 && v->has_pend >> k & 1) four = _mm512_add_epi8(four, bit_plane_bytes(VLOAD(v->pend[k][s])));
            }
            if (!_mm512_test_epi32_mask(four, four)) continue;
            const __m128i shift = _mm_cvtsi32_si128(4 * g);
#define WIDEN(i) acc[i] = _mm512_add_epi32(acc[i], _mm512_sll_epi32(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(four, i)), shift))
            WIDEN(0), WIDEN(1), WIDEN(2), WIDEN(3);
#undef WIDEN
        }
        uint32_t sum[64];
        for (int i = 0; i < 4; i++) _mm512_storeu_si512((void *)(sum + 16 * i), acc[i]);
        for (int p = 0; p < 32; p++) v->counts[32 * s + p] += (uint64_t)sum[p] + sum[32 + p];
    }
    v->n_buf = 0;
}

/* ema_row_scalar sixteen values at a time: the same float32 operations in
 * the same order (no fused multiply-add, as -std=c11 keeps the scalar
 * code), bins from the same table and the same one comparison, the same
 * counts; only the rare bracket keys stay scalar. About 4x the scalar
 * loop's speed with scalar counters (mit-b0 EMA pass). */
AVX512_TARGET static inline __attribute__((always_inline)) void
ema_row_avx512_core(ema_pass *ps, float *ema, float sr, const float *h, size_t C, tally t, lane_counts *cur_lanes,
                    bit_hist *cur_bits, const int ema_in_bits, const int cur_mode /* 0 none, 1 lanes, 2 bits */) {
    const key_bins *kb = ps->kb;
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), one = _mm512_set1_epi32(1);
    const __m512i bin_bits = _mm512_set1_epi32(63), outside = _mm512_set1_epi32(JS_BINS);
    const __m512i in_span = _mm512_set1_epi32((int)((1u << kb->shift) - 1));
    const __m512i t0 = _mm512_set1_epi32((int)kb->t[0]), span = _mm512_set1_epi32((int)kb->span);
    const __m128i shift = _mm_cvtsi32_si128(kb->shift);
    const __m512 keep = _mm512_set1_ps(ps->keep), take = _mm512_set1_ps(ps->take), s = _mm512_set1_ps(sr);
    const __m512i lo0 = _mm512_set1_epi32((int)ps->pair.lo[0]), lo1 = _mm512_set1_epi32((int)ps->pair.lo[1]);
    const __m512i w0 = _mm512_set1_epi32((int)ps->pair.width[0]), w1 = _mm512_set1_epi32((int)ps->pair.width[1]);
    __m512i mk = _mm512_set1_epi32((int)ps->max_key);
    size_t below0 = 0, below1 = 0;
    int n_ema = ema_in_bits ? t.bits->n_buf : 0, n_cur = cur_mode == 2 ? cur_bits->n_buf : 0;
    uint8_t bins[16];
    uint32_t keys[16];
    /* the bins of x's sixteen values in the lanes of valid (JS_BINS outside):
     * the table's guess at its span, one comparison */
#define BINS16(x, valid)                                                                                      \
    ({                                                                                                        \
        __m512i d = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(x), abs_mask), t0);                \
        __mmask16 in = _mm512_cmplt_epu32_mask(d, span) & (valid);                                            \
        __m512i entry = _mm512_i32gather_epi32(_mm512_maskz_srl_epi32(in, d, shift), (const void *)kb->lut, 4); \
        __m512i guess = _mm512_and_si512(entry, bin_bits);                                                    \
        __mmask16 past = _mm512_cmpge_epu32_mask(_mm512_and_si512(d, in_span), _mm512_srli_epi32(entry, 6));  \
        _mm512_mask_mov_epi32(outside, in, _mm512_mask_add_epi32(guess, past, guess, one));                   \
    })
#define COUNT16(b, counts)                                                                                    \
    do {                                                                                                      \
        _mm_storeu_si128((__m128i *)bins, _mm512_cvtepi32_epi8(b));                                           \
        /* unrolled: constant lane offsets, one byte load and one add each */                                \
        _Pragma("GCC unroll 16") for (int l = 0; l < 16; l++) (counts)[l % LANES][bins[l]]++;                \
    } while (0)
#define STEP16(live)                                                                                          \
    do {                                                                                                      \
        __m512i b = BINS16(e, live);                                                                          \
        if (ema_in_bits) bit_hist_add(t.bits, &n_ema, b);                                                             \
        else COUNT16(b, *t.lanes);                                                                            \
        if (cur_mode == 1) COUNT16(BINS16(cv, live), *cur_lanes);                                             \
        if (cur_mode == 2) bit_hist_add(cur_bits, &n_cur, BINS16(cv, live));                                          \
        /* the new value against the next brackets */                                                         \
        __m512i kz = _mm512_and_si512(_mm512_castps_si512(z), abs_mask);                                      \
        mk = _mm512_mask_max_epu32(mk, live, mk, kz);                                                         \
        below0 += (size_t)__builtin_popcount(_mm512_cmplt_epu32_mask(kz, lo0) & (live));                      \
        below1 += (size_t)__builtin_popcount(_mm512_cmplt_epu32_mask(kz, lo1) & (live));                      \
        unsigned inside0 = _mm512_cmple_epu32_mask(_mm512_sub_epi32(kz, lo0), w0) & (live);                   \
        unsigned inside1 = _mm512_cmple_epu32_mask(_mm512_sub_epi32(kz, lo1), w1) & (live);                   \
        if (inside0 | inside1) {                                                                              \
            _mm512_storeu_si512(keys, kz);                                                                    \
            for (; inside0; inside0 &= inside0 - 1) bracket_take(&ps->b[0], keys[__builtin_ctz(inside0)]);    \
            for (; inside1; inside1 &= inside1 - 1) bracket_take(&ps->b[1], keys[__builtin_ctz(inside1)]);    \
        }                                                                                                     \
    } while (0)
    size_t c = 0;
    for (; c + 16 <= C; c += 16) {
        /* the EMA streams from memory (15 MB a step on mit-b0) and rows
         * are short: the hardware prefetcher alone left the loads waiting
         * (1 thread: 16.9 -> 14.4 ms of drift a step, best of 20) */
        _mm_prefetch((const char *)(ema + c) + 1024, _MM_HINT_T0);
        __m512 e = _mm512_loadu_ps(ema + c);
        __m512 cv = _mm512_abs_ps(_mm512_mul_ps(s, _mm512_loadu_ps(h + c)));
        __m512 z = _mm512_add_ps(_mm512_mul_ps(keep, e), _mm512_mul_ps(take, cv));
        _mm512_storeu_ps(ema + c, z);
        STEP16(0xffff);
    }
    if (c < C) {
        /* the last C − c < 16 values (all of a row of 9, a depthwise 3×3
         * kernel's): the same operations on the lanes that hold them; the
         * others load zeros, are not stored, bin outside, count nowhere */
        __mmask16 live = (__mmask16)((1u << (C - c)) - 1);
        __m512 e = _mm512_maskz_loadu_ps(live, ema + c);
        __m512 cv = _mm512_abs_ps(_mm512_mul_ps(s, _mm512_maskz_loadu_ps(live, h + c)));
        __m512 z = _mm512_add_ps(_mm512_mul_ps(keep, e), _mm512_mul_ps(take, cv));
        _mm512_mask_storeu_ps(ema + c, live, z);
        STEP16(live);
    }
#undef STEP16
#undef COUNT16
#undef BINS16
    if (ema_in_bits) t.bits->n_buf = n_ema;
    if (cur_mode == 2) cur_bits->n_buf = n_cur;
    ps->pair.below[0] += below0, ps->pair.below[1] += below1;
    ps->max_key = (uint32_t)_mm512_reduce_max_epu32(mk);
}

AVX512_TARGET static void ema_row_avx512(ema_pass *ps, float *ema, float sr, const float *h, size_t C, tally t,
                                         tally cur) {
    if (t.bits) {
        if (cur.bits) ema_row_avx512_core(ps, ema, sr, h, C, t, NULL, cur.bits, 1, 2);
        else if (cur.lanes) ema_row_avx512_core(ps, ema, sr, h, C, t, cur.lanes, NULL, 1, 1);
        else ema_row_avx512_core(ps, ema, sr, h, C, t, NULL, NULL, 1, 0);
    } else {
        if (cur.bits) ema_row_avx512_core(ps, ema, sr, h, C, t, NULL, cur.bits, 0, 2);
        else if (cur.lanes) ema_row_avx512_core(ps, ema, sr, h, C, t, cur.lanes, NULL, 0, 1);
        else ema_row_avx512_core(ps, ema, sr, h, C, t, NULL, NULL, 0, 0);
    }
}
#endif

/* Whether the EMA pass may take the vector route with kb: the table's guess
 * needs more than one comparison only in odd cases. */
static int ema_vectorised(const key_bins *kb) {
#ifdef HAVE_AVX512_ROUTE
    return kb->one_step && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
    (void)kb;
    return 0;
#endif
}

/* An empty tally into counts: bits on the vector route, else lanes. */
static tally tally_start(int vectorised, lane_counts *lanes, struct bit_hist *bits, uint64_t *counts) {
#ifdef HAVE_AVX512_ROUTE
    if (vectorised) return bit_hist_init(bits, counts), (tally){.bits = bits};
#endif
    (void)vectorised, (void)bits;
    memset(lanes, 0, sizeof(lane_counts));
    return (tally){.lanes = lanes, .counts = counts};
}

/* Adds t's counts to its counts. */
static void tally_finish(tally t) {
#ifdef HAVE_AVX512_ROUTE
    if (t.bits) return bit_hist_finish(t.bits);
#endif
    add_lanes(t.counts, *t.lanes);
}

/* One row of the EMA pass; bit-sliced tallies only on the vector route. */
static void ema_row(ema_pass *ps, float *ema, float sr, const float *h, size_t C, int vectorised, tally t,
                    tally cur) {
#ifdef HAVE_AVX512_ROUTE
    if (vectorised) return ema_row_avx512(ps, ema, sr, h, C, t, cur);
#endif
    (void)vectorised;
    ema_row_scalar(ps, ema, sr, h, C, *t.lanes, cur.lanes);
}

int fisher_chunk_drift_update_outer(fisher_chunk_drift *d, const fisher_outer *o, int64_t step,
                                    const fisher_drift_config *cfg, double *js_out, fisher_error *err) {
    size_t R = o->rows, C = o->cols, n = R * C;
    if (!d->measured || n != d->n || cfg->js_mode != FISHER_JS_LOG || 2 * n < DIRECT_MAX) return 1;
    if (!d->next && !(d->next = brackets_new(n, 0)))
        return fisher_errorf(err, "drift: out of memory measuring a chunk of %zu", n);
    fisher_drift_brackets *p = d->next;
    float *s = malloc((R + (o->h_sorted ? 0 : 2 * C)) * sizeof *s), *sorted = s + R;
    if (!s) return fisher_errorf(err, "drift: out of memory measuring a chunk of %zu", n);
    int rc = 1;
    float s_max = 0;
    for (size_t r = 0; r < R; r++) {
        s[r] = fabsf(o->s[r]);
        if (!isfinite(s[r])) goto out;
        s_max = s[r] > s_max ? s[r] : s_max;
    }
    /* h is read as it is, not copied as |h|: keys ignore the sign, and the
     * EMA pass takes |s·h|, the same float as |s|·|h| */
    const float *h = o->h, *hs = o->h_sorted;
    uint32_t h_key = 0; /* the largest key of h; ≥ KEY_INF: not finite */
    for (size_t c = 0; c < C; c++) {
        uint32_t k = key_of(h[c]);
        h_key = k > h_key ? k : h_key;
    }
    if (h_key >= KEY_INF) goto out;
    float h_max = (float)value_of_key(h_key);
    if (!hs) fisher_outer_sort(h, C, sorted, sorted + C), hs = sorted;

    pct_at lo = percentile_at(2 * n, 0.01), hi = percentile_at(2 * n, 0.99);
    uint32_t ord[4], max_key;
    int found = outer_order_stats(p, d->ema_F, s, R, h, hs, C, &lo, &hi, ord, &max_key);
    if (found < 0) {
        rc = fisher_errorf(err, "drift: out of memory measuring a chunk of %zu", n);
        goto out;
    }
    uint32_t cur_max = key_of(s_max * h_max);
    max_key = cur_max > max_key ? cur_max : max_key;
    if (found || max_key >= KEY_INF) { /* the array route decides */
        p->valid = 0;
        goto out;
    }
    double low = lerp(log_of_key(ord[0]), log_of_key(ord[1]), lo.t);
    double high = lerp(log_of_key(ord[2]), log_of_key(ord[3]), hi.t);
    if (high <= low) high = low + 1e-3;
    bins hb;
    make_bins(&hb, low, high);
    key_bins kb;
    make_key_bins(&kb, &hb);

    /* The EMA pass, which bins cur as well. A row like the one before
     * (rows share s under the reference estimator) reuses its counts; a
     * long row's keys ascend with hs, so its bins are 65 binary searches. */
    brackets_around(p, ord[0], ord[2]);
    ema_pass ps = {.keep = (float)cfg->fisher_ema_decay, .take = (float)(1.0 - cfg->fisher_ema_decay),
                   .kb = &kb, .pair = pair_of(p->b), .b = p->b};
    uint64_t cr[JS_BINS] = {0}, cc[JS_BINS] = {0}, row[JS_BINS] = {0};
    size_t row_uses = 0; /* rows whose cur counts are row[], not yet in cc */
    /* tallies of the chunk's EMA and cur, of a row's cur wanted again,
     * of a row's EMA that copies repeat */
    int vec = ema_vectorised(&kb);
    lane_counts lanes[4];
#ifdef HAVE_AVX512_ROUTE
    bit_hist bits[4];
#define BITS(i) &bits[i]
#else
#define BITS(i) NULL
#endif
    uint64_t dup[JS_BINS];
    tally all_ema = tally_start(vec, &lanes[0], BITS(0), cr), all_cur = tally_start(vec, &lanes[1], BITS(1), cc);
    /* a row the last pass copied from the row before still equals it, so
     * it need not be compared again (without the record, rows are
     * compared: the same decisions, more reading) */
    int same_known = p->rows == R;
    if (p->row_cap < R) {
        free(p->row_same);
        p->row_same = malloc(R);
        p->row_cap = p->row_same ? R : 0;
    }
    if (!p->row_same) same_known = 0;
    for (size_t r = 0; r < R;) {
        int same = r && s[r] == s[r - 1], next_same = r + 1 < R && s[r + 1] == s[r];
        /* the rows after r with its s and, bit for bit, its EMA (rows that
         * have shared S since their first measurement) would give row r's
         * results again: they are copied, not computed */
        size_t end = r + 1;
        while (end < R && s[end] == s[r] &&
               ((same_known && p->row_same[end]) || !memcmp(d->ema_F + end * C, d->ema_F + r * C, C * sizeof(float))))
            end++;
        size_t dups = end - r - 1;
        if (p->row_same) { /* for the next pass: rows r + 1 .. end − 1 become copies of row r */
            p->row_same[r] = 0;
            memset(p->row_same + r + 1, 1, dups);
        }
        /* cur is binned in the first row of a run with one s; its counts go
         * to row[] when the rows after it want them again, added once for
         * all rows of the run */
        tally bin_cur = {0}, bin_ema = all_ema;
        /* on the scalar route a long row's bins are 65 binary searches (its
         * keys ascend with hs), cheaper than binning it value by value */
        int searched = !same && !vec && C > SEARCH_MIN;
        if (searched) {
            add_rows(cc, row, row_uses), row_uses = 0;
            size_t at = first_reaching(hs, 0, C, s[r], kb.t[0]);
            for (int b = 0; b < JS_BINS; b++) {
                size_t next = first_reaching(hs, at, C, s[r], kb.t[b + 1]);
                row[b] = next - at, at = next;
            }
        } else if (!same && next_same) {
            add_rows(cc, row, row_uses), row_uses = 0;
            memset(row, 0, sizeof row);
            bin_cur = tally_start(vec, &lanes[2], BITS(2), row);
        } else if (!same) {
            bin_cur = all_cur;
        }
        if (dups) memset(dup, 0, sizeof dup), bin_ema = tally_start(vec, &lanes[3], BITS(3), dup);
        bracket before[2] = {p->b[0], p->b[1]};
        size_t below[2] = {ps.pair.below[0], ps.pair.below[1]};
        ema_row(&ps, d->ema_F + r * C, s[r], h, C, vec, bin_ema, bin_cur);
        if (!same && next_same && !searched) tally_finish(bin_cur);
        if (same || next_same || searched) row_uses += 1 + dups; /* dups > 0 only when next_same */
        if (dups) {
            bracket after[2] = {p->b[0], p->b[1]};
            size_t below_row[2] = {ps.pair.below[0] - below[0], ps.pair.below[1] - below[1]};
            for (size_t k = 1; k <= dups; k++) {
                memcpy(d->ema_F + (r + k) * C, d->ema_F + r * C, C * sizeof(float));
                for (int j = 0; j < 2; j++) {
                    ps.pair.below[j] += below_row[j];
                    bracket_repeat(&p->b[j], &before[j], &after[j]);
                }
            }
            tally_finish(bin_ema);
            add_rows(cr, dup, dups + 1);
        }
        r = end;
    }
    add_rows(cc, row, row_uses);
    p->rows = p->row_same ? R : 0;
    tally_finish(all_ema), tally_finish(all_cur);
#undef BITS
    pair_done(&ps.pair, p->b);
    p->max_key = ps.max_key;
    width_after_gathering(p);
    double js = js_of_counts(cr, cc);
    record_js(d, js, step, cfg);
    if (js_out) *js_out = js;
    rc = 0;
out:
    free(s);
    return rc;
}

void fisher_chunk_drift_free(fisher_chunk_drift *d) {
    if (d->next) free(d->next->buf), free(d->next->row_same);
    free(d->next);
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
