/*
 * test_error.c — lib/error.h: messages cut at a character boundary, and the
 * UTF-8 check and repair every JSON-bound string of the daemon goes through
 * (HTTP errors, stored reasons, the MPI job stream).
 */
#include "testutil.h"

#include "error.h"

static void test_valid_utf8(void **state) {
    (void)state;
    static const struct {
        const char *s;
        int valid;
    } cases[] = {
        {"", 1},
        {"plain ascii", 1},
        {"caf\xc3\xa9", 1},                 /* é */
        {"\xe2\x82\xac", 1},                /* € */
        {"\xf0\x9f\x98\x80", 1},            /* U+1F600 */
        {"\xf4\x8f\xbf\xbf", 1},            /* U+10FFFF, the last code point */
        {"caf\xc3", 0},                     /* cut after the lead byte */
        {"\xe2\x82", 0},                    /* cut inside a 3-byte sequence */
        {"\x80", 0},                        /* a continuation byte alone */
        {"\xc0\xaf", 0},                    /* overlong '/' */
        {"\xe0\x80\xaf", 0},                /* overlong '/', 3 bytes */
        {"\xed\xa0\x80", 0},                /* a surrogate, U+D800 */
        {"\xf4\x90\x80\x80", 0},            /* past U+10FFFF */
        {"\xff", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int got = fisher_utf8_valid(cases[i].s, strlen(cases[i].s));
        if (got != cases[i].valid) fail_msg("case %zu: valid %d, expected %d", i, got, cases[i].valid);
    }
}

static void test_sanitize_replaces_only_bad_bytes(void **state) {
    (void)state;
    char a[] = "ok \xc3\xa9 \xff bad \xe2\x82 end \xed\xa0\x80";
    fisher_utf8_sanitize(a);
    assert_string_equal(a, "ok \xc3\xa9 ? bad ?? end ???");
    assert_true(fisher_utf8_valid(a, strlen(a)));
    char b[] = "caf\xc3\xa9 stays";
    fisher_utf8_sanitize(b);
    assert_string_equal(b, "caf\xc3\xa9 stays");
}

static void test_errorf_cuts_at_a_character(void **state) {
    (void)state;
    /* two ASCII bytes, then 260 é of 2 bytes: the message's 511 bytes end
     * on the lead byte of the 255th é, which the cut must drop */
    char text[600] = "xx";
    for (int i = 0; i < 260; i++) strcat(text, "\xc3\xa9");
    fisher_error err;
    assert_int_equal(fisher_errorf(&err, "%s", text), -1);
    size_t n = strlen(err.msg);
    assert_true(n < sizeof err.msg);
    assert_true(fisher_utf8_valid(err.msg, n));
    assert_int_equal(n, 2 + 2 * 254); /* the last whole é before the cut */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_utf8),
        cmocka_unit_test(test_sanitize_replaces_only_bad_bytes),
        cmocka_unit_test(test_errorf_cuts_at_a_character),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
