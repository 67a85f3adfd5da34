/*
 * png_memory.h — for tests that need PNG files libfisher itself would never
 * write (16-bit, palettes, alpha, interlacing): libpng writing into a
 * growing memory buffer.
 */
#ifndef FISHER_TEST_PNG_MEMORY_H
#define FISHER_TEST_PNG_MEMORY_H

#include <png.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned char *buf;
    size_t len, cap;
} membuf;

/* libpng's write callback: appends to the membuf behind png_get_io_ptr. */
static inline void mem_write(png_structp png, png_bytep data, png_size_t n) {
    membuf *m = png_get_io_ptr(png);
    if (m->len + n > m->cap) {
        m->cap = (m->len + n) * 2;
        m->buf = realloc(m->buf, m->cap);
    }
    memcpy(m->buf + m->len, data, n);
    m->len += n;
}

static inline void mem_flush(png_structp png) { (void)png; }

#endif
