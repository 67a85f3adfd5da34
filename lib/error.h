/*
 * error.h — how libfisher reports failure.
 *
 * lib/ never prints and never aborts on bad input. A function that can fail
 * takes a `fisher_error *` as its last argument, returns -1 (or NULL) on
 * failure and leaves a message a person can act on in err->msg: what was
 * being done, to which file/tensor/field, and what was wrong with it.
 * `err` may be NULL when the caller does not want the message.
 */
#ifndef FISHER_ERROR_H
#define FISHER_ERROR_H

#include <stddef.h>

typedef struct {
    char msg[512];
} fisher_error;

/* Formats the message into err (if non-NULL). Always returns -1 so callers
 * can write `return fisher_errorf(err, "...", ...);`. */
int fisher_errorf(fisher_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
