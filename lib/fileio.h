/*
 * fileio.h — the two ways lib/ touches files: read one whole, and replace
 * one atomically. The file-format modules (safetensors, images) and the
 * callers that write weights all go through here, so every file fisherd
 * writes is either the old one or the complete new one — never half.
 */
#ifndef FISHER_FILEIO_H
#define FISHER_FILEIO_H

#include <stddef.h>

#include "error.h"

/* The whole regular file at path, malloc'd, with *len its size; one NUL
 * byte follows the data (not counted), so text can be used as a string.
 * NULL with err set ("PATH: cannot open: ...", "PATH: not a regular file"). */
unsigned char *fisher_file_read(const char *path, size_t *len, fisher_error *err);

/* One piece of a file being written. */
typedef struct {
    const void *data;
    size_t len;
} fisher_file_piece;

/* Writes the pieces, in order, as the new content of path: into a unique
 * temporary file beside it, fsynced, then renamed over path (and the
 * directory fsynced, best effort). On failure path is untouched and no
 * temporary is left. Returns 0, or -1 with err naming path. */
int fisher_file_write_atomic(const char *path, const fisher_file_piece *pieces, size_t n_pieces,
                             fisher_error *err);

#endif
