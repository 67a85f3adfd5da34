/* fileio.c — see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

unsigned char *fisher_file_read(const char *path, size_t *len, fisher_error *err) {
    if (!path) {
        fisher_errorf(err, "NULL path");
        return NULL;
    }
    unsigned char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fisher_errorf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        fisher_errorf(err, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        fisher_errorf(err, "%s: not a regular file", path);
        goto fail;
    }
    if ((uintmax_t)sb.st_size > SIZE_MAX - 1) {
        fisher_errorf(err, "%s: file too large (%jd bytes)", path, (intmax_t)sb.st_size);
        goto fail;
    }
    size_t size = (size_t)sb.st_size, got = 0;
    if (!(buf = malloc(size + 1))) {
        fisher_errorf(err, "%s: out of memory for %zu bytes", path, size);
        goto fail;
    }
    /* Read to EOF or `size`: a file shrinking underneath us is read at the
     * shorter length (and its format check then fails cleanly). */
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            fisher_errorf(err, "%s: read failed: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *len = got;
    return buf;
fail:
    close(fd);
    free(buf);
    return NULL;
}

/* write(2) until all of buf is out; 0 or -1 with errno set. */
static int write_all(int fd, const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Best effort: fsync the directory holding path so the rename itself is
 * durable. The file is already complete and in place, and some filesystems
 * refuse fsync on a directory, so failure here is not an error. */
static void sync_parent_dir(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    size_t n = !slash ? 0 : slash == path ? 1 : (size_t)(slash - path);
    if (n >= sizeof dir) return;
    if (n) memcpy(dir, path, n);
    else dir[n++] = '.';
    dir[n] = '\0';
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

int fisher_file_write_atomic(const char *path, const fisher_file_piece *pieces, size_t n_pieces,
                             fisher_error *err) {
    if (!path) return fisher_errorf(err, "NULL path");
    size_t cap = strlen(path) + 16;
    char *tmp = malloc(cap);
    if (!tmp) return fisher_errorf(err, "%s: out of memory", path);
    /* mkstemp, not a pid suffix: two threads of one process may write the
     * same path at once, and each must get a temporary of its own */
    snprintf(tmp, cap, "%s.tmp.XXXXXX", path);
    int rc = -1, fd = mkstemp(tmp);
    if (fd < 0) {
        fisher_errorf(err, "%s: cannot create %s: %s", path, tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    if (fchmod(fd, 0644) != 0) goto io_err; /* mkstemp makes it 0600 */
    for (size_t i = 0; i < n_pieces; i++)
        if (pieces[i].len && write_all(fd, pieces[i].data, pieces[i].len) != 0) goto io_err;
    /* fsync before rename: otherwise a crash can leave the new name pointing
     * at a file whose data never reached the disk */
    if (fsync(fd) != 0) goto io_err;
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) goto io_err;
    if (rename(tmp, path) != 0) {
        fisher_errorf(err, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        goto out;
    }
    sync_parent_dir(path);
    rc = 0;
    goto out;
io_err:
    fisher_errorf(err, "%s: writing %s failed: %s", path, tmp, strerror(errno));
out:
    if (fd >= 0) close(fd);
    if (rc != 0) unlink(tmp);
    free(tmp);
    return rc;
}
