/* One request's path through the broker (DESIGN.md section 2): authorize,
 * then the value cache, then the backends in priority order, with one
 * backend call per key however many requests want it. Authorization always
 * comes first: nothing is served, from the cache or a backend, to a caller
 * RBAC has not allowed, and "not found" is said only to a caller who may
 * read the name.
 *
 * A request that can be answered from the caches is answered on the HTTP
 * thread (sb_broker_fast); any other runs on the http loop thread and ends
 * in its done callback there. */
#ifndef SB_BROKER_BROKER_H
#define SB_BROKER_BROKER_H

#include <stdbool.h>
#include <stdint.h>

#include "auth/authz.h"
#include "auth/identity.h"
#include "backend/backend.h"
#include "broker/breaker.h"
#include "broker/cache.h"
#include "clients/http.h"
#include "clients/watch.h"
#include "core/config.h"
#include "core/limits.h"

typedef struct sb_broker sb_broker;
typedef struct sb_broker_req sb_broker_req;

typedef void (*sb_broker_done_fn)(sb_broker_req *req, void *ud);

struct sb_broker_req {
    /* Inputs, set before sb_broker_fast / sb_broker_submit. Strings are
     * validated by the caller ("" when absent). */
    sb_identity caller;
    char ns[SB_MAX_NAMESPACE + 1];
    char name[SB_MAX_SECRET_NAME + 1];
    char version_stage[SB_MAX_VERSION_STAGE + 1];
    char version_id[SB_MAX_VERSION_ID + 1];
    bool refresh; /* bypass the value cache, within the caller's refresh budget */
    const char *request_id;
    int64_t deadline_ms;

    /* Outputs. */
    sb_err err;
    sb_secret_doc *doc; /* on SB_OK; released by sb_broker_req_clear */
    bool cache_hit;
    sb_decision decision;
    const char *reason; /* short machine word for the audit record */
    const char *detail; /* why it failed, safe for the client; "" on success */
    int retry_after_s;

    /* The broker's own bookkeeping. */
    struct {
        sb_broker *b;
        sb_broker_done_fn done;
        void *ud;
        size_t backend;          /* index of the backend being asked */
        sb_broker_req *next;     /* next waiter on the same flight */
        sb_fetch_result pending; /* a waiter's result held during its review */
        bool refresh_settled;    /* its refresh was weighed against the budget */
        bool refresh_limited;    /* ... and found over it: answered as a plain read */
        bool authz_stale;        /* allowed by AUTHZ_STALE_IF_ERROR_SECONDS */
    } priv;
};

typedef struct sb_broker_deps {
    const sb_config *cfg;
    sb_http *http;
    sb_authz *authz;
    sb_cache *cache; /* NULL when CACHE_ENABLED=false */
    sb_backend *backends[SB_MAX_BACKENDS];
    size_t backend_count;
} sb_broker_deps;

/* The broker borrows everything in deps. With a cache it sweeps expired
 * entries from a timer on the http loop, so free it only after the loop has
 * stopped (sb_http_stop drops pending timers). */
sb_broker *sb_broker_new(const sb_broker_deps *deps);
void sb_broker_free(sb_broker *b);

/* Answers req from the decision and value caches when both can: returns
 * true with the outputs set. False means the request needs the loop. HTTP
 * threads. */
bool sb_broker_fast(sb_broker *b, sb_broker_req *req, int64_t now);

/* Runs req on the loop; done runs there exactly once. Any thread. */
void sb_broker_submit(sb_broker *b, sb_broker_req *req, sb_broker_done_fn done, void *ud);

/* The state of backend number i's circuit breaker at now, for /readyz.
 * Any thread. */
sb_breaker_state sb_broker_breaker_state(sb_broker *b, size_t i, int64_t now);

/* Releases the outputs (the document reference). */
void sb_broker_req_clear(sb_broker_req *req);

/* Secret ns/name changed (a watch saw it): its cached answers go, and a
 * backend call for it already in flight will not cache what it brings back,
 * since that may predate the change. Loop thread only. */
void sb_broker_invalidate(sb_broker *b, const char *ns, const char *name);

/* The same for every secret of one backend (a watch missed events). */
void sb_broker_invalidate_backend(sb_broker *b, sb_backend_kind kind);

/* A Secret watch's handler that does the two above for the Kubernetes
 * backend (CACHE_INVALIDATION=watch). */
sb_watch_handler sb_broker_watch_handler(sb_broker *b);

#endif
