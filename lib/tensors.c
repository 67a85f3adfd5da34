/* tensors.c — see tensors.h. */
#include "tensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fisher_table_add(fisher_tensor_table *t, const char *name, int ndim, const int64_t *shape,
                     fisher_error *err) {
    if (strlen(name) >= FISHER_NAME_MAX)
        return fisher_errorf(err, "tensor name too long (%zu chars, max %d): %s", strlen(name),
                             FISHER_NAME_MAX - 1, name);
    if (ndim < 0 || ndim > FISHER_MAX_DIMS)
        return fisher_errorf(err, "tensor %s: %d dimensions (max %d)", name, ndim, FISHER_MAX_DIMS);
    if (fisher_table_find(t, name) >= 0) return fisher_errorf(err, "duplicate tensor name %s", name);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0) return fisher_errorf(err, "tensor %s: dimension %d is %lld", name, i,
                                                (long long)shape[i]);
        numel *= (size_t)shape[i];
    }
    if (t->count == t->cap) {
        int cap = t->cap ? 2 * t->cap : 64;
        fisher_tensor *grown = realloc(t->tensors, (size_t)cap * sizeof *grown);
        if (!grown) return fisher_errorf(err, "out of memory adding tensor %s", name);
        t->tensors = grown, t->cap = cap;
    }
    fisher_tensor *e = &t->tensors[t->count];
    memset(e, 0, sizeof *e);
    memcpy(e->name, name, strlen(name) + 1);
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->offset = t->total;
    e->numel = numel;
    t->total += numel;
    return t->count++;
}

int fisher_table_find(const fisher_tensor_table *t, const char *name) {
    for (int i = 0; i < t->count; i++)
        if (strcmp(t->tensors[i].name, name) == 0) return i;
    return -1;
}

void fisher_table_free(fisher_tensor_table *t) {
    free(t->tensors);
    memset(t, 0, sizeof *t);
}

const char *fisher_shape_str(char *buf, size_t len, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < len) snprintf(buf + used, len - used, "]");
    return buf;
}
