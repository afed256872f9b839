/* Development-mode file helpers (see files.h). */
#include "dev/files.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static sb_err io_error(char *err, size_t errlen, const char *what, const char *path)
{
    snprintf(err, errlen, "cannot %s %s: %s", what, path, strerror(errno));
    return SB_E_IO;
}

static bool mkdir_one(const char *path)
{
    struct stat st;

    if (mkdir(path, 0700) == 0)
        return true;
    return errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

sb_err sb_dev_mkdir_private(const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX];
    struct stat st;
    size_t len = strlen(dir);

    if (len == 0 || len >= sizeof(path)) {
        snprintf(err, errlen, "directory name is empty or too long");
        return SB_E_IO;
    }
    memcpy(path, dir, len + 1);
    for (size_t i = 1; i < len; i++) {
        if (path[i] != '/')
            continue;
        path[i] = '\0';
        if (!mkdir_one(path))
            return io_error(err, errlen, "create directory", path);
        path[i] = '/';
    }
    if (!mkdir_one(path))
        return io_error(err, errlen, "create directory", path);

    /* The directory holds private keys or secrets: no one else may list it. */
    if (stat(path, &st) != 0)
        return io_error(err, errlen, "stat", path);
    if ((st.st_mode & 077) && chmod(path, 0700) != 0)
        return io_error(err, errlen, "make private", path);
    return SB_OK;
}

static bool write_all(int fd, const unsigned char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Writes a fresh temporary file; a stale one from a crash is removed first. */
static sb_err write_tmp(const char *tmp, const void *data, size_t len, unsigned int mode, char *err,
                        size_t errlen)
{
    if (unlink(tmp) != 0 && errno != ENOENT)
        return io_error(err, errlen, "remove", tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
    if (fd < 0)
        return io_error(err, errlen, "create", tmp);

    bool ok = write_all(fd, data, len) && fsync(fd) == 0;
    int saved = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        saved = errno;
    }
    if (!ok) {
        unlink(tmp);
        errno = saved;
        return io_error(err, errlen, "write", tmp);
    }
    return SB_OK;
}

sb_err sb_dev_write_file(const char *path, const void *data, size_t len, unsigned int mode,
                         bool replace, bool *out_written, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    bool written = true;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        snprintf(err, errlen, "file name too long: %s", path);
        return SB_E_IO;
    }
    sb_err rc = write_tmp(tmp, data, len, mode, err, errlen);
    if (rc)
        return rc;

    /* rename replaces atomically; link refuses, atomically, to overwrite. */
    if (replace ? rename(tmp, path) != 0 : link(tmp, path) != 0) {
        if (replace || errno != EEXIST) {
            int saved = errno;
            unlink(tmp);
            errno = saved;
            return io_error(err, errlen, "write", path);
        }
        written = false;
    }
    if (!replace)
        unlink(tmp);
    if (out_written)
        *out_written = written;
    return SB_OK;
}
