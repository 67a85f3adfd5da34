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
 * can write `return fisher_errorf(err, "...", ...);`. A message too long
 * for msg is cut at a character boundary, so one made of UTF-8 (file
 * names, a spec's keys) stays UTF-8 and can travel in JSON. */
int fisher_errorf(fisher_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Drops an incomplete UTF-8 sequence from the end of s: what snprintf
 * leaves when it truncates UTF-8 text. */
void fisher_utf8_clip(char *s);

/* Whether s (n bytes) is valid UTF-8: no overlong forms, surrogates or
 * code points past U+10FFFF (what a JSON string may hold). */
int fisher_utf8_valid(const char *s, size_t n);

/* Replaces every byte of s that is not part of valid UTF-8 with '?', so
 * text from anywhere (a client, a file name, an old database) can always
 * become a JSON string. */
void fisher_utf8_sanitize(char *s);

#endif
