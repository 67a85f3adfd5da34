/*
 * job_spec.c — parsing and validating a job spec (job.h). Every problem is
 * reported with the dotted path of the field that has it, so the daemon can
 * answer {"error": {"field": ...}} and a person knows what to change.
 * Unknown fields are errors too: a typo must not silently become a default.
 */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "job.h"
#include "segformer.h"

void fisher_job_spec_defaults(fisher_job_spec *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "job");
    snprintf(s->base_config, sizeof s->base_config, "tiny");
    s->num_labels = 1;
    s->image_size = 128;
    s->train = (fisher_data_spec){.synthetic = 1, .domain = FISHER_SYNTH_CONCRETE, .seed = 1, .count = 800};
    s->val = (fisher_data_spec){.synthetic = 1, .domain = FISHER_SYNTH_CONCRETE, .seed = 2, .count = 100};
    s->norm = fisher_normalization_imagenet();
    s->augment = (fisher_augment){.hflip = 1, .vflip = 1, .scale_min = 1, .scale_max = 1};
    s->strategy = FISHER_STRATEGY_FULL;
    s->fisher = fisher_method_defaults();
    s->optim = fisher_adamw_defaults();
    s->dice_weight = 0.65f;
    s->batch_size = 4;
    s->epochs = 5;
    s->threads = 2;
    s->ranks = 1;
}

/* Parser state: the field path being read, for messages. */
typedef struct {
    char *field;
    size_t field_len;
    fisher_error *err;
} parser;

static int fail(parser *p, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(parser *p, const char *path, const char *fmt, ...) {
    /* a path cut short must still be UTF-8: it travels in JSON answers */
    if (p->field && (size_t)snprintf(p->field, p->field_len, "%s", path) >= p->field_len)
        fisher_utf8_clip(p->field);
    if (p->err) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        if (vsnprintf(msg, sizeof msg, fmt, ap) >= (int)sizeof msg) fisher_utf8_clip(msg);
        va_end(ap);
        if (*path) fisher_errorf(p->err, "%s: %s", path, msg);
        else fisher_errorf(p->err, "%s", msg);
    }
    return -1;
}

static void join(char *out, size_t len, const char *parent, const char *key) {
    if ((size_t)snprintf(out, len, "%s%s%s", parent, *parent ? "." : "", key) >= len) fisher_utf8_clip(out);
}

/* Fails on any key of obj not in `known` (NULL-terminated). */
static int only_keys(parser *p, json_t *obj, const char *path, const char *const *known) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int ok = 0;
        for (const char *const *k = known; *k; k++) ok |= strcmp(key, *k) == 0;
        if (!ok) {
            char at[256];
            join(at, sizeof at, path, key);
            char list[256] = "";
            for (const char *const *k = known; *k; k++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k == known ? "" : ", ", *k);
            return fail(p, at, "unknown field (known here: %s)", list);
        }
    }
    return 0;
}

static int get_int(parser *p, json_t *obj, const char *path, const char *key, int64_t lo, int64_t hi,
                   int64_t *out) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    char at[256];
    join(at, sizeof at, path, key);
    if (!json_is_integer(v)) return fail(p, at, "must be an integer");
    int64_t x = json_integer_value(v);
    if (x < lo || x > hi) return fail(p, at, "must be in [%lld, %lld], got %lld", (long long)lo, (long long)hi, (long long)x);
    *out = x;
    return 0;
}

static int get_double(parser *p, json_t *obj, const char *path, const char *key, double lo,
                      double hi, int lo_open, double *out) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    char at[256];
    join(at, sizeof at, path, key);
    if (!json_is_number(v)) return fail(p, at, "must be a number");
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
        return fail(p, at, "must be in %s%g, %g], got %g", lo_open ? "(" : "[", lo, hi, x);
    *out = x;
    return 0;
}

/* A float field. The range is checked on the value as stored: a number
 * that only becomes 0 (or leaves the range) when rounded to a float would
 * otherwise be accepted here and refused when the stored spec is parsed
 * again at the job's start (lr 1e-50 → 0). */
static int in_float_range(double x, double lo, double hi, int lo_open) {
    double f = (double)(float)x;
    return isfinite(x) && isfinite(f) && f >= lo && f <= hi && !(lo_open && f == lo);
}

static int get_float(parser *p, json_t *obj, const char *path, const char *key, double lo, double hi,
                     int lo_open, float *out) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    char at[256];
    join(at, sizeof at, path, key);
    if (!json_is_number(v)) return fail(p, at, "must be a number");
    double x = json_number_value(v);
    if (!in_float_range(x, lo, hi, lo_open)) {
        if (isfinite(x) && x >= lo && x <= hi && !(lo_open && x == lo))
            return fail(p, at, "must be in %s%g, %g] as the 32-bit float it is kept as; %g becomes %g",
                        lo_open ? "(" : "[", lo, hi, x, (double)(float)x);
        return fail(p, at, "must be in %s%g, %g], got %g", lo_open ? "(" : "[", lo, hi, x);
    }
    *out = (float)x;
    return 0;
}

static int get_string(parser *p, json_t *obj, const char *path, const char *key, char *out, size_t len) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    char at[256];
    join(at, sizeof at, path, key);
    if (!json_is_string(v)) return fail(p, at, "must be a string");
    if (json_string_length(v) == 0) return fail(p, at, "must not be empty");
    if (json_string_length(v) >= len) return fail(p, at, "is longer than %zu characters", len - 1);
    snprintf(out, len, "%s", json_string_value(v));
    return 0;
}

static int get_object(parser *p, json_t *obj, const char *path, const char *key, json_t **out) {
    *out = json_object_get(obj, key);
    if (*out && !json_is_object(*out)) {
        char at[256];
        join(at, sizeof at, path, key);
        return fail(p, at, "must be an object");
    }
    return 0;
}

static int get_float_array(parser *p, json_t *obj, const char *path, const char *key, int n,
                           double lo, double hi, int lo_open, float *out) {
    json_t *a = json_object_get(obj, key);
    if (!a) return 0;
    char at[256];
    join(at, sizeof at, path, key);
    if (!json_is_array(a) || json_array_size(a) != (size_t)n)
        return fail(p, at, "must be an array of %d numbers", n);
    for (int i = 0; i < n; i++) {
        json_t *v = json_array_get(a, (size_t)i);
        double x = json_is_number(v) ? json_number_value(v) : NAN;
        if (!json_is_number(v) || !in_float_range(x, lo, hi, lo_open)) {
            char item[280];
            snprintf(item, sizeof item, "%s[%d]", at, i);
            return fail(p, item, "must be a number in %s%g, %g]", lo_open ? "(" : "[", lo, hi);
        }
        out[i] = (float)x;
    }
    return 0;
}

static int parse_dataset(parser *p, json_t *v, const char *path, fisher_data_spec *d) {
    static const char *const keys[] = {"synthetic", "path", NULL};
    if (!json_is_object(v)) return fail(p, path, "must be an object: {\"synthetic\": {...}} or {\"path\": DIR}");
    if (only_keys(p, v, path, keys)) return -1;
    json_t *syn = json_object_get(v, "synthetic"), *dir = json_object_get(v, "path");
    if (!!syn == !!dir) return fail(p, path, "needs exactly one of \"synthetic\" or \"path\"");
    memset(d, 0, sizeof *d);
    if (dir) {
        char at[256];
        join(at, sizeof at, path, "path");
        d->synthetic = 0;
        return get_string(p, v, path, "path", d->path, sizeof d->path);
    }
    char at[256];
    join(at, sizeof at, path, "synthetic");
    static const char *const skeys[] = {"domain", "count", "seed", NULL};
    if (!json_is_object(syn)) return fail(p, at, "must be an object {\"domain\", \"count\", \"seed\"}");
    if (only_keys(p, syn, at, skeys)) return -1;
    d->synthetic = 1;
    d->domain = FISHER_SYNTH_CONCRETE;
    d->count = 100;
    char domain[32] = "concrete";
    int64_t count = 100, seed = 0;
    if (get_string(p, syn, at, "domain", domain, sizeof domain) ||
        get_int(p, syn, at, "count", 1, 1000000, &count) ||
        get_int(p, syn, at, "seed", 0, INT64_MAX, &seed))
        return -1;
    if (fisher_synth_domain_parse(domain, &d->domain)) {
        char dat[280];
        snprintf(dat, sizeof dat, "%s.domain", at);
        return fail(p, dat, "unknown domain '%s' (known: concrete, asphalt, wall, tiles, shapes)", domain);
    }
    d->count = (size_t)count, d->seed = (uint64_t)seed;
    return 0;
}

/* One of `names` (NULL-terminated) as its index. */
static int get_choice(parser *p, json_t *obj, const char *path, const char *key,
                      const char *const *names, int *out) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    char at[256];
    join(at, sizeof at, path, key);
    if (!json_is_string(v)) return fail(p, at, "must be a string");
    char list[160] = "";
    for (int i = 0; names[i]; i++) {
        if (strcmp(json_string_value(v), names[i]) == 0) {
            *out = i;
            return 0;
        }
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", names[i]);
    }
    return fail(p, at, "unknown value '%s' (known: %s)", json_string_value(v), list);
}

static const char *const estimator_names[] = {"reference", "ema", "empirical", NULL};
static const char *const slice_names[] = {"row", "column", NULL};
static const char *const js_names[] = {"log", "raw", NULL};
static const char *const metric_names[] = {"total_variation", "mean_js", NULL};

static int parse_fisher(parser *p, json_t *o, fisher_method_config *f) {
    static const char *const keys[] = {"estimator", "ema_interval", "freeze_interval", "slice_mode",
                                       "slice_blocks", "js_mode", "metric", "lambda",
                                       "fisher_ema_decay", "js_ema_decay", "gammas", NULL};
    const char *at = "fisher";
    int est = (int)f->estimator, slice = f->slice_columns, js = f->drift.js_mode, metric = f->metric;
    int64_t blocks = f->slice_blocks;
    float gammas[2] = {(float)f->gamma0, (float)f->gamma1};
    if (only_keys(p, o, at, keys) || get_choice(p, o, at, "estimator", estimator_names, &est) ||
        get_int(p, o, at, "ema_interval", 1, 100000000, &f->ema_interval) ||
        get_int(p, o, at, "freeze_interval", 1, 100000000, &f->freeze_interval) ||
        get_choice(p, o, at, "slice_mode", slice_names, &slice) ||
        get_int(p, o, at, "slice_blocks", 1, 4096, &blocks) ||
        get_choice(p, o, at, "js_mode", js_names, &js) ||
        get_choice(p, o, at, "metric", metric_names, &metric) ||
        get_double(p, o, at, "lambda", -10, 10, 0, &f->lambda) ||
        get_double(p, o, at, "fisher_ema_decay", 0, 0.999999, 0, &f->drift.fisher_ema_decay) ||
        get_double(p, o, at, "js_ema_decay", 0, 0.999999, 0, &f->drift.js_ema_decay) ||
        get_float_array(p, o, at, "gammas", 2, 0, 1, 0, gammas))
        return -1;
    f->estimator = (fisher_estimator)est, f->slice_columns = slice, f->drift.js_mode = js;
    f->metric = metric, f->slice_blocks = (int)blocks;
    json_t *g = json_object_get(o, "gammas"); /* as doubles, exactly as written */
    if (g) f->gamma0 = json_number_value(json_array_get(g, 0)), f->gamma1 = json_number_value(json_array_get(g, 1));
    return 0;
}

/* distributed.hostfile: "" (this machine) or a plain file name in the
 * daemon's hostfile folder — nothing that could climb out of it or need
 * quoting on mpirun's command line. */
static int check_hostfile(parser *p, const char *name, size_t len) {
    const char *at = "distributed.hostfile";
    if (len == 0) return 0;
    if (len > 63) return fail(p, at, "is longer than 63 characters");
    if (strlen(name) != len) return fail(p, at, "must not contain a NUL character");
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
            c == '_' || c == '-')
            continue;
        if ((unsigned char)c < 0x20 || (unsigned char)c >= 0x7f)
            return fail(p, at, "must be a plain file name in the hostfile folder (letters, digits, '.', "
                               "'_', '-'), got a non-printable or non-ASCII character");
        return fail(p, at, "must be a plain file name in the hostfile folder (letters, digits, '.', "
                           "'_', '-'), got '%c'", c);
    }
    if (!strcmp(name, ".") || !strcmp(name, "..")) return fail(p, at, "must name a file, not '%s'", name);
    return 0;
}

static int parse(parser *p, json_t *root, fisher_job_spec *s) {
    static const char *const keys[] = {
        "name", "base_model", "image_size", "data", "normalization", "augment", "strategy",
        "fisher", "optim", "loss", "batch_size", "epochs", "steps", "eval_interval", "early_stopping",
        "checkpoint_interval", "seed", "threads", "distributed", NULL};
    if (!json_is_object(root)) return fail(p, "", "a job spec is a JSON object");
    if (only_keys(p, root, "", keys)) return -1;
    if (get_string(p, root, "", "name", s->name, sizeof s->name)) return -1;

    json_t *base;
    if (get_object(p, root, "", "base_model", &base)) return -1;
    if (base) {
        static const char *const bkeys[] = {"arch", "config", "num_labels", "path", NULL};
        if (only_keys(p, base, "base_model", bkeys)) return -1;
        char arch[32] = "segformer";
        int64_t labels = s->num_labels;
        if (get_string(p, base, "base_model", "arch", arch, sizeof arch) ||
            get_string(p, base, "base_model", "config", s->base_config, sizeof s->base_config) ||
            get_int(p, base, "base_model", "num_labels", 1, 1024, &labels) ||
            get_string(p, base, "base_model", "path", s->base_path, sizeof s->base_path))
            return -1;
        if (strcmp(arch, "segformer") != 0) return fail(p, "base_model.arch", "unknown architecture '%s' (known: segformer)", arch);
        fisher_segformer_config probe;
        fisher_error e;
        if (fisher_segformer_config_named(&probe, s->base_config, &e)) return fail(p, "base_model.config", "%s", e.msg);
        if (s->base_path[0] && (json_object_get(base, "config") || json_object_get(base, "num_labels")))
            return fail(p, "base_model", "a weights file brings its own config: give \"path\" or \"config\", not both");
        s->num_labels = (int)labels;
    }

    int64_t v;
    v = s->image_size;
    if (get_int(p, root, "", "image_size", 32, 2048, &v)) return -1;
    s->image_size = (int)v;

    json_t *data;
    if (get_object(p, root, "", "data", &data)) return -1;
    if (data) {
        static const char *const dkeys[] = {"train", "val", "zero_shot", NULL};
        if (only_keys(p, data, "data", dkeys)) return -1;
        json_t *t = json_object_get(data, "train"), *va = json_object_get(data, "val");
        json_t *zs = json_object_get(data, "zero_shot");
        if (t && parse_dataset(p, t, "data.train", &s->train)) return -1;
        if (va && parse_dataset(p, va, "data.val", &s->val)) return -1;
        if (zs) {
            if (!json_is_array(zs)) return fail(p, "data.zero_shot", "must be an array of datasets");
            if (json_array_size(zs) > FISHER_MAX_ZERO_SHOT)
                return fail(p, "data.zero_shot", "at most %d datasets", FISHER_MAX_ZERO_SHOT);
            for (size_t i = 0; i < json_array_size(zs); i++) {
                char at[64];
                snprintf(at, sizeof at, "data.zero_shot[%zu]", i);
                if (parse_dataset(p, json_array_get(zs, i), at, &s->zero_shot[i])) return -1;
            }
            s->n_zero_shot = (int)json_array_size(zs);
        }
    }

    json_t *norm;
    if (get_object(p, root, "", "normalization", &norm)) return -1;
    if (norm) {
        static const char *const nkeys[] = {"mean", "std", NULL};
        if (only_keys(p, norm, "normalization", nkeys) ||
            get_float_array(p, norm, "normalization", "mean", 3, -10, 10, 0, s->norm.mean) ||
            get_float_array(p, norm, "normalization", "std", 3, 0, 10, 1, s->norm.std))
            return -1;
    }

    json_t *aug;
    if (get_object(p, root, "", "augment", &aug)) return -1;
    if (aug) {
        static const char *const akeys[] = {"hflip", "vflip", "scale", NULL};
        if (only_keys(p, aug, "augment", akeys)) return -1;
        const char *flips[2] = {"hflip", "vflip"};
        int *dst[2] = {&s->augment.hflip, &s->augment.vflip};
        for (int i = 0; i < 2; i++) {
            json_t *f = json_object_get(aug, flips[i]);
            if (!f) continue;
            char at[32];
            snprintf(at, sizeof at, "augment.%s", flips[i]);
            if (!json_is_boolean(f)) return fail(p, at, "must be true or false");
            *dst[i] = json_is_true(f);
        }
        float scale[2] = {s->augment.scale_min, s->augment.scale_max};
        if (get_float_array(p, aug, "augment", "scale", 2, 0.25, 4, 0, scale)) return -1;
        if (scale[0] > scale[1]) return fail(p, "augment.scale", "must be [low, high] with low ≤ high");
        s->augment.scale_min = scale[0], s->augment.scale_max = scale[1];
    }

    json_t *strategy = json_object_get(root, "strategy");
    if (strategy) {
        if (!json_is_string(strategy)) return fail(p, "strategy", "must be a string");
        int st = fisher_strategy_parse(json_string_value(strategy));
        if (st < 0)
            return fail(p, "strategy", "unknown strategy '%s' (known: fisher, full, decoder, norm, bitfit)",
                        json_string_value(strategy));
        s->strategy = (fisher_strategy)st;
    }
    json_t *fisher;
    if (get_object(p, root, "", "fisher", &fisher)) return -1;
    if (fisher) {
        if (s->strategy != FISHER_STRATEGY_FISHER)
            return fail(p, "fisher", "only used with \"strategy\": \"fisher\"");
        if (parse_fisher(p, fisher, &s->fisher)) return -1;
    }

    json_t *optim;
    if (get_object(p, root, "", "optim", &optim)) return -1;
    if (optim) {
        static const char *const okeys[] = {"lr", "weight_decay", "betas", "eps", NULL};
        float betas[2] = {s->optim.beta1, s->optim.beta2};
        if (only_keys(p, optim, "optim", okeys) ||
            get_float(p, optim, "optim", "lr", 0, 1, 1, &s->optim.lr) ||
            get_float(p, optim, "optim", "weight_decay", 0, 0.5, 0, &s->optim.weight_decay) ||
            get_float_array(p, optim, "optim", "betas", 2, 0, 0.99999, 0, betas) ||
            get_float(p, optim, "optim", "eps", 0, 1e-2, 1, &s->optim.eps))
            return -1;
        s->optim.beta1 = betas[0], s->optim.beta2 = betas[1];
    }

    json_t *loss;
    if (get_object(p, root, "", "loss", &loss)) return -1;
    if (loss) {
        static const char *const lkeys[] = {"dice_weight", NULL};
        if (only_keys(p, loss, "loss", lkeys) ||
            get_float(p, loss, "loss", "dice_weight", 0, 100, 0, &s->dice_weight))
            return -1;
    }

    v = s->batch_size;
    if (get_int(p, root, "", "batch_size", 1, 1024, &v)) return -1;
    s->batch_size = (int)v;
    if (json_object_get(root, "epochs") && json_object_get(root, "steps"))
        return fail(p, "steps", "give \"epochs\" or \"steps\", not both");
    if (json_object_get(root, "steps")) {
        s->epochs = 0;
        if (get_int(p, root, "", "steps", 1, 100000000, &s->steps)) return -1;
    }
    if (get_int(p, root, "", "epochs", 1, 100000, &s->epochs)) return -1;
    if (get_int(p, root, "", "eval_interval", 0, 100000000, &s->eval_interval) ||
        get_int(p, root, "", "checkpoint_interval", 0, 100000000, &s->checkpoint_interval))
        return -1;
    json_t *es;
    if (get_object(p, root, "", "early_stopping", &es)) return -1;
    if (es) {
        static const char *const ekeys[] = {"patience", NULL};
        v = s->patience;
        if (only_keys(p, es, "early_stopping", ekeys) ||
            get_int(p, es, "early_stopping", "patience", 0, 1000000, &v))
            return -1;
        s->patience = (int)v;
    }
    int64_t seed = (int64_t)s->seed;
    if (get_int(p, root, "", "seed", 0, INT64_MAX, &seed)) return -1;
    s->seed = (uint64_t)seed;
    v = s->threads;
    if (get_int(p, root, "", "threads", 1, 256, &v)) return -1;
    s->threads = (int)v;
    json_t *dist;
    if (get_object(p, root, "", "distributed", &dist)) return -1;
    if (dist) {
        static const char *const dkeys[] = {"ranks", "hostfile", NULL};
        v = s->ranks;
        if (only_keys(p, dist, "distributed", dkeys) ||
            get_int(p, dist, "distributed", "ranks", 1, FISHER_MAX_RANKS, &v))
            return -1;
        s->ranks = (int)v;
        json_t *h = json_object_get(dist, "hostfile");
        if (h) {
            if (!json_is_string(h)) return fail(p, "distributed.hostfile", "must be a string");
            if (check_hostfile(p, json_string_value(h), json_string_length(h))) return -1;
            snprintf(s->hostfile, sizeof s->hostfile, "%s", json_string_value(h));
        }
    }
    /* after both are known, whichever of them the spec gave */
    if (s->batch_size % s->ranks)
        return fail(p, "distributed.ranks",
                    "batch_size %d does not divide by %d ranks: every rank takes an equal shard of each "
                    "global batch, so batch_size must be a multiple of ranks",
                    s->batch_size, s->ranks);
    return 0;
}

int fisher_job_spec_parse(fisher_job_spec *spec, const char *json, char *field, size_t field_len,
                          fisher_error *err) {
    parser p = {field, field_len, err};
    if (field && field_len) field[0] = '\0';
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fisher_errorf(err, "job spec is not valid JSON: %s (line %d, column %d)", jerr.text,
                             jerr.line, jerr.column);
    fisher_job_spec s = *spec;
    int rc = parse(&p, root, &s);
    json_decref(root);
    if (rc == 0) *spec = s; /* all or nothing */
    return rc;
}

static json_t *dataset_json(const fisher_data_spec *d) {
    if (!d->synthetic) return json_pack("{s:s}", "path", d->path);
    return json_pack("{s:{s:s,s:I,s:I}}", "synthetic", "domain", fisher_synth_domain_name(d->domain),
                     "count", (json_int_t)d->count, "seed", (json_int_t)d->seed);
}

static json_t *floats(const float *x, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_real(x[i]));
    return a;
}

char *fisher_job_spec_to_json(const fisher_job_spec *s) {
    json_t *zs = json_array();
    for (int i = 0; i < s->n_zero_shot; i++) json_array_append_new(zs, dataset_json(&s->zero_shot[i]));
    json_t *base = s->base_path[0]
                       ? json_pack("{s:s}", "path", s->base_path)
                       : json_pack("{s:s,s:s,s:i}", "arch", "segformer", "config", s->base_config,
                                   "num_labels", s->num_labels);
    float betas[2] = {s->optim.beta1, s->optim.beta2}, scale[2] = {s->augment.scale_min, s->augment.scale_max};
    json_t *o = json_pack(
        "{s:s,s:o,s:i,s:{s:o,s:o,s:o},s:{s:o,s:o},s:{s:b,s:b,s:o},s:s,"
        "s:{s:f,s:f,s:o,s:f},s:{s:f},s:i,s:I,s:{s:i},s:I,s:I,s:i}",
        "name", s->name, "base_model", base, "image_size", s->image_size,
        "data", "train", dataset_json(&s->train), "val", dataset_json(&s->val), "zero_shot", zs,
        "normalization", "mean", floats(s->norm.mean, 3), "std", floats(s->norm.std, 3),
        "augment", "hflip", s->augment.hflip, "vflip", s->augment.vflip, "scale", floats(scale, 2),
        "strategy", fisher_strategy_name(s->strategy),
        "optim", "lr", (double)s->optim.lr, "weight_decay", (double)s->optim.weight_decay, "betas",
        floats(betas, 2), "eps", (double)s->optim.eps,
        "loss", "dice_weight", (double)s->dice_weight,
        "batch_size", s->batch_size, s->steps ? "steps" : "epochs",
        (json_int_t)(s->steps ? s->steps : s->epochs),
        "early_stopping", "patience", s->patience,
        "eval_interval", (json_int_t)s->eval_interval, "checkpoint_interval",
        (json_int_t)s->checkpoint_interval, "threads", s->threads);
    if (!o) return NULL;
    json_object_set_new(o, "seed", json_integer((json_int_t)s->seed));
    json_object_set_new(o, "distributed", json_pack("{s:i,s:s}", "ranks", s->ranks, "hostfile", s->hostfile));
    if (s->strategy == FISHER_STRATEGY_FISHER) {
        const fisher_method_config *f = &s->fisher;
        json_t *g = json_array();
        json_array_append_new(g, json_real(f->gamma0));
        json_array_append_new(g, json_real(f->gamma1));
        json_object_set_new(
            o, "fisher",
            json_pack("{s:s,s:I,s:I,s:s,s:i,s:s,s:s,s:f,s:f,s:f,s:o}", "estimator",
                      estimator_names[f->estimator], "ema_interval", (json_int_t)f->ema_interval,
                      "freeze_interval", (json_int_t)f->freeze_interval, "slice_mode",
                      slice_names[f->slice_columns], "slice_blocks", f->slice_blocks, "js_mode",
                      js_names[f->drift.js_mode], "metric", metric_names[f->metric], "lambda",
                      f->lambda, "fisher_ema_decay", f->drift.fisher_ema_decay, "js_ema_decay",
                      f->drift.js_ema_decay, "gammas", g));
    }
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(o);
    return text;
}
