/* File backend (see file.h). Reads are small local files, done on the http
 * loop thread like every other backend call, never on an HTTP thread. */
#include "backend/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/json.h"
#include "core/limits.h"

struct file_backend {
    sb_backend base;
    char *dir;
};

static sb_err read_file(const char *path, sb_buf *out, struct stat *st)
{
    char chunk[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

    if (fd < 0)
        return errno == ENOENT ? SB_E_NOT_FOUND : SB_E_UNAVAILABLE;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return SB_E_UNAVAILABLE;
    }
    sb_buf_init(out, SB_MAX_UPSTREAM_BODY);
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            break;
        if (n < 0 || sb_buf_append(out, chunk, (size_t)n) != SB_OK) {
            sb_wipe(chunk, sizeof(chunk));
            close(fd);
            sb_buf_free(out);
            return n < 0 ? SB_E_UNAVAILABLE : SB_E_UPSTREAM;
        }
    }
    sb_wipe(chunk, sizeof(chunk));
    close(fd);
    return SB_OK;
}

static sb_err to_doc(const sb_fetch *f, json_t *root, const struct stat *st, sb_secret_doc **out)
{
    char version[32];
    const char *key;
    size_t key_len;
    json_t *value;

    if (!json_is_object(root))
        return SB_E_UPSTREAM;
    snprintf(version, sizeof(version), "%lld", (long long)st->st_mtim.tv_sec);
    sb_secret_doc *doc = sb_doc_new(SB_BACKEND_FILE, f->ns, f->name, version);
    json_object_keylen_foreach(root, key, key_len, value)
    {
        if (!json_is_string(value) || sb_doc_add(doc, key, key_len, json_string_value(value),
                                                 json_string_length(value)) != SB_OK) {
            sb_doc_unref(doc);
            return SB_E_UPSTREAM;
        }
    }
    sb_doc_seal(doc);
    *out = doc;
    return SB_OK;
}

static void file_fetch(sb_backend *be, const sb_fetch *f, sb_backend_done_fn done, void *ud)
{
    struct file_backend *fb = (struct file_backend *)be;
    sb_fetch_result res = {.retry_after_s = -1, .detail = ""};
    struct stat st;
    sb_buf raw;
    json_t *root = NULL;

    /* ns and name are validated DNS names: no slash or dot segment can
     * reach the path. */
    char *path = sb_xasprintf("%s/%s/%s.json", fb->dir, f->ns, f->name);
    res.err = read_file(path, &raw, &st);
    free(path);
    if (res.err == SB_OK) {
        res.err = sb_json_parse(raw.data, raw.len, SB_MAX_UPSTREAM_BODY, &root);
        sb_buf_free(&raw);
    }
    if (res.err == SB_OK)
        res.err = to_doc(f, root, &st, &res.doc);
    json_decref(root);

    if (res.err == SB_E_UPSTREAM || res.err == SB_E_TOO_LARGE) {
        res.err = SB_E_UPSTREAM;
        res.detail = "the secret file is not a flat JSON object of strings";
    } else if (res.err == SB_E_UNAVAILABLE) {
        res.detail = "the secret file cannot be read";
    }
    done(&res, ud);
}

static void file_destroy(sb_backend *be)
{
    struct file_backend *fb = (struct file_backend *)be;
    free(fb->dir);
    free(fb);
}

static const struct sb_backend_ops file_ops = {.fetch = file_fetch, .destroy = file_destroy};

sb_backend *sb_file_backend_new(const char *dir)
{
    struct file_backend *fb = sb_xcalloc(1, sizeof(*fb));

    fb->base.ops = &file_ops;
    fb->base.kind = SB_BACKEND_FILE;
    fb->dir = sb_xstrdup(dir);
    return &fb->base;
}
