/*
 * test_serve_config.c — `fisherd serve`'s configuration (daemon/serve_config.h):
 * defaults, the config file, flags over the file, and every refusal a
 * person would otherwise discover only when the daemon misbehaves.
 */
#include "testutil.h"

#include <sys/stat.h>
#include <unistd.h>

#include "serve_config.h"

static char dir[] = "/tmp/fisherd-test-serve-config-XXXXXX";

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    rm_tree(dir);
    return 0;
}

static void write_text(const char *name, const char *text, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Parses argv (NULL-terminated, after "serve"); returns parse's result. */
static int parse(serve_config *c, char *msg, const char **args) {
    char *argv[32] = {"serve"};
    int argc = 1;
    while (args[argc - 1]) argv[argc] = (char *)args[argc - 1], argc++;
    msg[0] = 0;
    int rc = serve_config_parse(c, argc, argv, msg, 512);
    if (rc < 0) printf("  refused: %s\n", msg);
    return rc;
}

static void test_defaults(void **state) {
    (void)state;
    serve_config c;
    char msg[512];
    const char *none[] = {NULL};
    assert_int_equal(parse(&c, msg, none), 0);
    assert_string_equal(c.listen, "127.0.0.1:8080");
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 8080);
    assert_string_equal(c.data_dir, "./var");
    assert_int_equal(c.max_jobs, 1);
    assert_int_equal(c.threads, 2);
    assert_int_equal(c.n_data_roots, 0);
    assert_int_equal(c.token[0], 0);
    assert_int_equal(c.log_level, LOG_INFO);
    assert_string_equal(c.hostfile_dir, "");   /* distributed jobs: this machine only */
    assert_string_equal(c.mpirun, "mpirun");
}

static void test_flags_win_over_file(void **state) {
    (void)state;
    char cfg[600], tok[600], msg[512];
    write_text("token", "  0123456789abcdef0123\n", tok, sizeof tok);
    char text[2048];
    snprintf(text, sizeof text,
             "{\"listen\": \"0.0.0.0:9000\", \"max_jobs\": 3, \"threads\": 4, \"data_roots\": [\"%s\"],"
             " \"token_file\": \"%s\", \"auth_reads\": true, \"log_level\": \"debug\"}", dir, tok);
    write_text("fisherd.json", text, cfg, sizeof cfg);
    serve_config c;
    const char *args[] = {"--max-jobs", "2", "--config", cfg, "--listen", "[::1]:0", NULL};
    assert_int_equal(parse(&c, msg, args), 0);
    assert_int_equal(c.max_jobs, 2);        /* the flag, though it came before --config */
    assert_int_equal(c.threads, 4);         /* the file */
    assert_string_equal(c.host, "::1");
    assert_int_equal(c.port, 0);
    assert_string_equal(c.token, "0123456789abcdef0123"); /* trimmed */
    assert_true(c.auth_reads);
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_int_equal(c.n_data_roots, 1);
    char real[PATH_MAX];
    assert_non_null(realpath(dir, real));
    assert_string_equal(c.data_roots[0], real);
    /* beyond loopback with the file's token: allowed */
    const char *wide[] = {"--config", cfg, NULL};
    assert_int_equal(parse(&c, msg, wide), 0);
    assert_string_equal(c.host, "0.0.0.0");
}

static void test_refusals(void **state) {
    (void)state;
    char msg[512], cfg[600], tok[600];
    serve_config c;
    struct { const char *args[6]; const char *says; } cases[] = {
        {{"--listen", "0.0.0.0:8080", NULL}, "without a bearer token"},
        {{"--listen", "localhost", NULL}, "HOST:PORT"},
        {{"--listen", "127.0.0.1:70000", NULL}, "0..65535"},
        {{"--listen", "::1:80", NULL}, "[IPV6]:PORT"},
        {{"--max-jobs", "0", NULL}, "--max-jobs must be a whole number in 1..64"},
        {{"--threads", "two", NULL}, "--threads must be a whole number"},
        {{"--data-root", "/nonexistent/fisherd", NULL}, "is not a folder"},
        {{"--log-level", "loud", NULL}, "error, warn, info or debug"},
        {{"--auth-reads", NULL}, "needs --token-file"},
        {{"--bogus", NULL}, "unknown option"},
        {{"extra", NULL}, "unexpected argument 'extra'"},
        {{"--hostfile-dir", "/nonexistent/hostfiles", NULL}, "--hostfile-dir '/nonexistent/hostfiles' is not a folder"},
        {{"--hostfile-dir", "/etc/hostname", NULL}, "is not a folder"},
        {{"--mpirun", "", NULL}, "--mpirun must not be empty"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        assert_int_equal(parse(&c, msg, cases[i].args), -1);
        if (!strstr(msg, cases[i].says)) fail_msg("case %zu: '%s' does not say '%s'", i, msg, cases[i].says);
    }
    write_text("short-token", "abc\n", tok, sizeof tok);
    const char *short_token[] = {"--token-file", tok, NULL};
    assert_int_equal(parse(&c, msg, short_token), -1);
    assert_non_null(strstr(msg, "at least 16 characters"));
    const char *files[][2] = {
        {"{\"max_job\": 2}", "unknown key \"max_job\""},
        {"{\"threads\": \"4\"}", "\"threads\" must be a whole number in 1..256"},
        {"[1, 2]", "must be a JSON object"},
        {"{\"listen\": ", "line 1"},
        {"{\"data_roots\": \"/tmp\"}", "must be an array"},
        {"{\"hostfile_dir\": 3}", "\"hostfile_dir\" must be a string"},
        {"{\"hostfile_dir\": \"/nonexistent/h\"}", "is not a folder"},
        {"{\"mpirun\": false}", "\"mpirun\" must be a string"},
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        write_text("bad.json", files[i][0], cfg, sizeof cfg);
        const char *args[] = {"--config", cfg, NULL};
        assert_int_equal(parse(&c, msg, args), -1);
        if (!strstr(msg, files[i][1])) fail_msg("file %zu: '%s' does not say '%s'", i, msg, files[i][1]);
    }
}

/* The hostfile folder is kept resolved (a job's hostfile is checked
 * against the real folder); the launcher comes from the file unless a
 * flag says otherwise. */
static void test_distributed_keys(void **state) {
    (void)state;
    char msg[512], cfg[600], hosts[600], link[600], real[PATH_MAX];
    snprintf(hosts, sizeof hosts, "%s/hostfiles", dir);
    assert_int_equal(mkdir(hosts, 0755), 0);
    snprintf(link, sizeof link, "%s/hosts-link", dir);
    assert_int_equal(symlink(hosts, link), 0);
    assert_non_null(realpath(hosts, real));
    char text[1400];
    snprintf(text, sizeof text, "{\"hostfile_dir\": \"%s\", \"mpirun\": \"/opt/ompi/bin/mpirun\"}", link);
    write_text("dist.json", text, cfg, sizeof cfg);
    serve_config c;
    const char *file_only[] = {"--config", cfg, NULL};
    assert_int_equal(parse(&c, msg, file_only), 0);
    assert_string_equal(c.hostfile_dir, real);
    assert_string_equal(c.mpirun, "/opt/ompi/bin/mpirun");
    const char *flags[] = {"--mpirun", "mpiexec", "--config", cfg, "--hostfile-dir", dir, NULL};
    assert_int_equal(parse(&c, msg, flags), 0);
    assert_string_equal(c.mpirun, "mpiexec");
    assert_non_null(realpath(dir, real));
    assert_string_equal(c.hostfile_dir, real);
}

/* As execvp would find it: a name through PATH, a path as it is; only an
 * executable regular file counts. */
static void test_find_program(void **state) {
    (void)state;
    char out[PATH_MAX], path[600];
    assert_int_equal(serve_find_program("sh", out, sizeof out), 0);
    assert_int_equal(access(out, X_OK), 0);
    assert_non_null(strchr(out, '/'));
    assert_int_equal(serve_find_program("/bin/sh", out, sizeof out), 0);
    assert_string_equal(out, "/bin/sh");
    assert_int_equal(serve_find_program("fisherd-no-such-launcher", out, sizeof out), -1);
    assert_int_equal(serve_find_program("", out, sizeof out), -1);
    assert_int_equal(serve_find_program("/tmp", out, sizeof out), -1);       /* a folder */
    write_text("not-executable", "#!/bin/sh\n", path, sizeof path);
    assert_int_equal(serve_find_program(path, out, sizeof out), -1);
    assert_int_equal(chmod(path, 0755), 0);
    assert_int_equal(serve_find_program(path, out, sizeof out), 0);
    /* a name looked up in PATH, which the daemon may have changed */
    char *old = getenv("PATH") ? strdup(getenv("PATH")) : NULL;
    setenv("PATH", dir, 1);
    assert_int_equal(serve_find_program("not-executable", out, sizeof out), 0);
    assert_string_equal(out, path);
    assert_int_equal(serve_find_program("sh", out, sizeof out), -1);
    if (old) setenv("PATH", old, 1), free(old);
    else unsetenv("PATH");
}

static void test_loopback(void **state) {
    (void)state;
    assert_true(serve_host_is_loopback("127.0.0.1"));
    assert_true(serve_host_is_loopback("127.1.2.3"));
    assert_true(serve_host_is_loopback("::1"));
    assert_true(serve_host_is_loopback("localhost"));
    assert_false(serve_host_is_loopback("0.0.0.0"));
    assert_false(serve_host_is_loopback("::"));
    assert_false(serve_host_is_loopback("10.0.0.1"));
    assert_false(serve_host_is_loopback("1270.0.0.1"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_flags_win_over_file),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_distributed_keys),
        cmocka_unit_test(test_find_program),
        cmocka_unit_test(test_loopback),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
