/*
 * fuzz_util.h — what the libFuzzer targets in tests/fuzz/ share: a check
 * that turns a broken property into a crash libFuzzer records (a plain
 * assert would vanish under NDEBUG), and an independent UTF-8 validator
 * to hold the code's own against.
 */
#ifndef FISHER_FUZZ_UTIL_H
#define FISHER_FUZZ_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((format(printf, 2, 3), unused)) static void fuzz_check(int ok, const char *fmt, ...) {
    if (ok) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz property broken: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* RFC 3629, written from the table there rather than from http.c: the
 * shortest form only, no surrogates, nothing past U+10FFFF. */
__attribute__((unused)) static int fuzz_utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c <= 0x7F) k = 0;
        else if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c == 0xE0) k = 2, lo = 0xA0;
        else if (c >= 0xE1 && c <= 0xEC) k = 2;
        else if (c == 0xED) k = 2, hi = 0x9F;
        else if (c >= 0xEE && c <= 0xEF) k = 2;
        else if (c == 0xF0) k = 3, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) k = 3;
        else if (c == 0xF4) k = 3, hi = 0x8F;
        else return 0;
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            unsigned b = s[i + j];
            if (b < (j == 1 ? lo : 0x80) || b > (j == 1 ? hi : 0xBF)) return 0;
        }
        i += k + 1;
    }
    return 1;
}

#endif
