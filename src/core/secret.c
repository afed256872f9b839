/* Secret buffers (see secret.h). Secret bytes come from secmem, which keeps
 * them out of core dumps and wipes them on free. */
#include "core/secret.h"

#include <stdatomic.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "core/alloc.h"
#include "core/limits.h"
#include "core/secmem.h"

struct sb_secret {
    atomic_uint refs;
    size_t len;
    unsigned char bytes[]; /* len bytes, then a NUL */
};

sb_secret *sb_secret_new(const void *bytes, size_t len)
{
    sb_secret *s = sb_secmem_alloc(sizeof(*s) + len + 1);
    atomic_init(&s->refs, 1);
    s->len = len;
    if (len)
        memcpy(s->bytes, bytes, len);
    s->bytes[len] = '\0';
    return s;
}

sb_secret *sb_secret_ref(sb_secret *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void sb_secret_unref(sb_secret *s)
{
    if (!s)
        return;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    sb_secmem_free(s, sizeof(*s) + s->len + 1);
}

const unsigned char *sb_secret_data(const sb_secret *s)
{
    return s->bytes;
}

size_t sb_secret_len(const sb_secret *s)
{
    return s->len;
}

size_t sb_secret_footprint(const sb_secret *s)
{
    return sb_secmem_footprint(sizeof(*s) + s->len + 1);
}

void sb_buf_init(sb_buf *buf, size_t max)
{
    memset(buf, 0, sizeof(*buf));
    buf->max = max;
}

static size_t buf_max(const sb_buf *buf)
{
    return buf->max ? buf->max : SB_MAX_UPSTREAM_BODY;
}

sb_err sb_buf_append(sb_buf *buf, const void *bytes, size_t n)
{
    if (n > buf_max(buf) - buf->len)
        return SB_E_TOO_LARGE;

    if (buf->len + n + 1 > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 256;
        while (cap < buf->len + n + 1)
            cap *= 2;
        /* Grow by copy so the old bytes can be wiped; realloc would free
         * them unwiped. */
        unsigned char *grown = sb_secmem_alloc(cap);
        if (buf->len)
            memcpy(grown, buf->data, buf->len);
        if (buf->data)
            sb_secmem_free(buf->data, buf->cap);
        buf->data = grown;
        buf->cap = cap;
    }

    if (n)
        memcpy(buf->data + buf->len, bytes, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
    return SB_OK;
}

sb_err sb_buf_append_str(sb_buf *buf, const char *s)
{
    return sb_buf_append(buf, s, strlen(s));
}

void sb_buf_reset(sb_buf *buf)
{
    if (buf->data) {
        sb_wipe(buf->data, buf->len);
        buf->data[0] = '\0';
    }
    buf->len = 0;
}

void sb_buf_free(sb_buf *buf)
{
    if (buf->data)
        sb_secmem_free(buf->data, buf->cap);
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
}

sb_secret *sb_buf_to_secret(sb_buf *buf)
{
    sb_secret *s = sb_secret_new(buf->data, buf->len);
    sb_buf_free(buf);
    return s;
}

void sb_wipe(void *p, size_t n)
{
    if (p && n)
        explicit_bzero(p, n);
}

bool sb_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    const volatile unsigned char *x = a;
    const volatile unsigned char *y = b;
    size_t n = alen < blen ? alen : blen;
    unsigned char diff = alen != blen;

    for (size_t i = 0; i < n; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}

sb_err sb_secret_harden_process(void)
{
    struct rlimit none = {0, 0};

    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return SB_E_IO;
    if (setrlimit(RLIMIT_CORE, &none) != 0)
        return SB_E_IO;
    return SB_OK;
}
