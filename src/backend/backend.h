/* The backend interface: Kubernetes, AWS Secrets Manager and the file
 * backend all fetch one secret asynchronously and hand back a secret
 * document. Documents are immutable and shared by reference count between
 * the cache and the responses that carry them. */
#ifndef SB_BACKEND_BACKEND_H
#define SB_BACKEND_BACKEND_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/error.h"
#include "core/secret.h"

typedef struct sb_secret_item {
    char *key;
    size_t key_len;
    sb_secret *value;
} sb_secret_item;

typedef struct sb_secret_doc {
    atomic_uint refs;
    sb_backend_kind backend;
    char *ns;
    char *name;
    char *version; /* resourceVersion or VersionId; "" when unknown */
    size_t count;
    sb_secret_item *items; /* sorted by key after sb_doc_seal */
    size_t bytes;          /* memory held, for the cache's byte budget */
    bool binary_only;      /* AWS SecretBinary: the one item is binary even if UTF-8 */
} sb_secret_doc;

/* A new, empty document with one reference. */
sb_secret_doc *sb_doc_new(sb_backend_kind backend, const char *ns, const char *name,
                          const char *version);

/* Adds a key and a copy of its value (building phase only). SB_E_UPSTREAM
 * when the key is not a valid Secret key or repeats one, SB_E_TOO_LARGE past
 * SB_MAX_SECRET_KEYS. */
SB_MUST_CHECK sb_err sb_doc_add(sb_secret_doc *doc, const char *key, size_t key_len,
                                const void *value, size_t len);

/* Ends the building phase (sorts the keys). */
void sb_doc_seal(sb_secret_doc *doc);

/* The item named key, or NULL. */
const sb_secret_item *sb_doc_find(const sb_secret_doc *doc, const char *key, size_t key_len);

sb_secret_doc *sb_doc_ref(sb_secret_doc *doc);
void sb_doc_unref(sb_secret_doc *doc); /* wipes the values at the last ref */

/* What one request asks a backend for. Strings live as long as the call. */
typedef struct sb_fetch {
    const char *ns;
    const char *name;
    const char *version_stage; /* NULL when absent (AWS only) */
    const char *version_id;    /* NULL when absent (AWS only) */
    const char *caller_ns;     /* the caller's ServiceAccount */
    const char *caller_sa;
    const char *request_id;
    int64_t deadline_ms; /* monotonic */
} sb_fetch;

/* Whether the backend's own read decided the caller's right to the name
 * (a read made as the caller: 403 means no, 200 or 404 means yes). */
typedef enum sb_fetch_authz {
    SB_FETCH_AUTHZ_NONE,
    SB_FETCH_AUTHZ_ALLOWED,
    SB_FETCH_AUTHZ_DENIED,
} sb_fetch_authz;

typedef struct sb_fetch_result {
    sb_err err;         /* SB_OK, SB_E_NOT_FOUND, SB_E_FORBIDDEN, or a failure */
    sb_secret_doc *doc; /* on SB_OK: one reference, now the receiver's */
    sb_fetch_authz authz;
    const char *detail; /* safe to log and to show the client; static */
    int retry_after_s;  /* -1 when the backend named no delay */
} sb_fetch_result;

typedef void (*sb_backend_done_fn)(sb_fetch_result *res, void *ud);

typedef struct sb_backend sb_backend;

struct sb_backend_ops {
    /* Fetches one secret; done runs exactly once on the http loop thread.
     * Called on the loop thread. */
    void (*fetch)(sb_backend *be, const sb_fetch *f, sb_backend_done_fn done, void *ud);
    void (*destroy)(sb_backend *be);
};

struct sb_backend {
    const struct sb_backend_ops *ops;
    sb_backend_kind kind;
    bool reads_as_caller; /* its fetch decides authorization (sb_fetch_authz) */
};

static inline void sb_backend_fetch(sb_backend *be, const sb_fetch *f, sb_backend_done_fn done,
                                    void *ud)
{
    be->ops->fetch(be, f, done, ud);
}

static inline void sb_backend_destroy(sb_backend *be)
{
    if (be)
        be->ops->destroy(be);
}

#endif
