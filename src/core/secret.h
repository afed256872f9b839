/* Secret bytes as a type. A secret buffer is immutable once made, shared by
 * reference count between the cache and responses in flight, kept out of
 * core dumps, and wiped when the last reference drops. Also: the growable
 * buffer used for anything read from the network, which wipes what it
 * held whenever it moves or is freed, and constant-time comparison. */
#ifndef SB_CORE_SECRET_H
#define SB_CORE_SECRET_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

typedef struct sb_secret sb_secret;

/* A new secret holding a copy of len bytes (a NUL is kept after them, not
 * counted in the length, so text values can be used as C strings). The
 * reference count starts at one. Aborts on OOM. Any thread. */
sb_secret *sb_secret_new(const void *bytes, size_t len);

/* Takes one more reference / drops one. The last unref wipes the bytes and
 * frees them. Both accept NULL. Any thread. */
sb_secret *sb_secret_ref(sb_secret *s);
void sb_secret_unref(sb_secret *s);

const unsigned char *sb_secret_data(const sb_secret *s);
size_t sb_secret_len(const sb_secret *s);

/* The memory the secret takes in the secret arena (header, bytes and NUL,
 * rounded up to the arena's size class), for exact byte budgets. */
size_t sb_secret_footprint(const sb_secret *s);

/* A growable byte buffer with a hard maximum. Whatever it held is wiped
 * when it grows or is freed, so a secret read from a socket does not linger
 * in freed heap. Zero-initialise, or use sb_buf_init. */
typedef struct sb_buf {
    unsigned char *data;
    size_t len;
    size_t cap;
    size_t max; /* 0 means SB_MAX_UPSTREAM_BODY */
} sb_buf;

void sb_buf_init(sb_buf *buf, size_t max);

/* Appends n bytes. SB_E_TOO_LARGE (and nothing appended) when the result
 * would pass the maximum. The data stays NUL-terminated. */
SB_MUST_CHECK sb_err sb_buf_append(sb_buf *buf, const void *bytes, size_t n);
SB_MUST_CHECK sb_err sb_buf_append_str(sb_buf *buf, const char *s);

/* Empties the buffer (wiping the bytes) and keeps the memory. */
void sb_buf_reset(sb_buf *buf);

/* Wipes and frees the contents; the buffer can be reused after init. */
void sb_buf_free(sb_buf *buf);

/* Moves the contents into a new secret and leaves the buffer empty. */
sb_secret *sb_buf_to_secret(sb_buf *buf);

/* Overwrites memory in a way the compiler may not remove. */
void sb_wipe(void *p, size_t n);

/* Compares two byte strings in time that depends only on the lengths. */
bool sb_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

/* Marks the process for secrets: not dumpable (no core files, /proc/pid/mem
 * closed to other processes of the same user) and no core size. Returns
 * SB_E_IO when prctl refuses. Call once at start-up, before any secret. */
SB_MUST_CHECK sb_err sb_secret_harden_process(void);

#endif
