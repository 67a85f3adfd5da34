/*
 * tensors.h — a table of named tensors carved out of one flat float array.
 *
 * A model's parameters live in ONE allocation; this table says where each
 * tensor starts (offset, in floats), its shape, and its name as a PyTorch
 * state dict spells it. Gradients and optimiser moments use the very same
 * layout, so "the gradient of tensor i" is grads + tensors[i].offset, and a
 * frozen row block of a tensor is a skipped range of that array.
 *
 * Add every tensor first, then allocate `total` floats; offsets never move.
 */
#ifndef FISHER_TENSORS_H
#define FISHER_TENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define FISHER_NAME_MAX 128
#define FISHER_MAX_DIMS 4

typedef struct {
    char name[FISHER_NAME_MAX];
    int ndim;
    int64_t shape[FISHER_MAX_DIMS];
    size_t offset; /* in floats, into the flat array */
    size_t numel;
} fisher_tensor;

typedef struct {
    fisher_tensor *tensors;
    int count, cap;
    size_t total; /* floats the flat array needs */
} fisher_tensor_table;

/* Appends a tensor; returns its index, or -1 (err set) on a bad shape, a
 * duplicate or over-long name, or out of memory. */
int fisher_table_add(fisher_tensor_table *t, const char *name, int ndim, const int64_t *shape,
                     fisher_error *err);
/* Index of the tensor called name, or -1. O(count); fine for ~1000 tensors. */
int fisher_table_find(const fisher_tensor_table *t, const char *name);
void fisher_table_free(fisher_tensor_table *t);

/* "[2, 3, 4]" into buf (for messages). Returns buf. */
const char *fisher_shape_str(char *buf, size_t len, int ndim, const int64_t *shape);

#endif
