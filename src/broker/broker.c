/* The request path (see broker.h). Everything after sb_broker_submit runs
 * on the http loop thread, so the flight table needs no lock; the caches
 * are shared with the HTTP threads' fast path and lock themselves.
 *
 * A flight is one backend call for one key. Its leader's own read decides
 * the leader's authorization when the backend reads as the caller; every
 * waiter is authorized on its own before it sees the result. */
#include "broker/broker.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/lru.h"
#include "obs/log.h"
#include "obs/metrics.h"

#define FLIGHT_KEY_MAX (4 + SB_MAX_NAMESPACE + SB_MAX_SECRET_NAME + SB_MAX_VERSION_STAGE + \
                        SB_MAX_VERSION_ID + 4)

struct flight {
    sb_broker *b;
    size_t backend;
    char key[FLIGHT_KEY_MAX];
    size_t klen;
    sb_broker_req *leader;
    sb_broker_req *waiters;
    sb_fetch fetch;
};

struct sb_broker {
    const sb_config *cfg;
    sb_http *http;
    sb_authz *authz;
    sb_cache *cache;
    sb_backend *backends[SB_MAX_BACKENDS];
    size_t backend_count;
    sb_lru *flights; /* key -> struct flight; loop thread only */
};

static void start(sb_broker_req *req);
static void fetch_from(sb_broker_req *req, size_t backend);

sb_broker *sb_broker_new(const sb_broker_deps *deps)
{
    sb_broker *b = sb_xcalloc(1, sizeof(*b));

    b->cfg = deps->cfg;
    b->http = deps->http;
    b->authz = deps->authz;
    b->cache = deps->cache;
    b->backend_count = deps->backend_count;
    memcpy(b->backends, deps->backends, sizeof(b->backends));
    b->flights = sb_lru_new(SIZE_MAX, NULL);
    return b;
}

void sb_broker_free(sb_broker *b)
{
    if (!b)
        return;
    sb_lru_free(b->flights);
    free(b);
}

void sb_broker_req_clear(sb_broker_req *req)
{
    sb_doc_unref(req->doc);
    req->doc = NULL;
    sb_doc_unref(req->priv.pending.doc);
    req->priv.pending.doc = NULL;
}

static sb_cache_key cache_key(const sb_broker_req *req, size_t backend)
{
    return (sb_cache_key){.backend = req->priv.b->backends[backend]->kind,
                          .ns = req->ns,
                          .name = req->name,
                          .version_stage = req->version_stage,
                          .version_id = req->version_id};
}

/* Looks the secret up through the backend chain: a hit anywhere ends the
 * walk; an absence moves to the next backend; a miss stops at that one
 * (*out_first_miss). */
static sb_cache_state chain_lookup(sb_broker *b, const sb_broker_req *req, int64_t now,
                                   sb_secret_doc **out_doc, size_t *out_first_miss)
{
    for (size_t i = 0; i < b->backend_count; i++) {
        sb_cache_key key = cache_key(req, i);
        sb_cache_state st = sb_cache_get(b->cache, &key, now, out_doc);
        if (st == SB_CACHE_ABSENT)
            continue;
        sb_metrics_cache(key.backend, st == SB_CACHE_HIT);
        *out_first_miss = i;
        return st;
    }
    return SB_CACHE_ABSENT;
}

static void set_outcome(sb_broker_req *req, sb_err err, const char *reason, const char *detail)
{
    req->err = err;
    req->reason = reason;
    req->detail = detail ? detail : "";
}

bool sb_broker_fast(sb_broker *b, sb_broker_req *req, int64_t now)
{
    sb_secret_doc *doc = NULL;
    size_t miss = 0;

    req->priv.b = b;
    sb_decision d = sb_authz_lookup(b->authz, &req->caller, req->ns, req->name, now);
    req->decision = d;
    if (d == SB_DECISION_DENY) {
        sb_metrics_authz(false, SB_METRICS_AUTHZ_CACHE);
        set_outcome(req, SB_E_FORBIDDEN, "rbac_denied", "RBAC does not allow this caller to read this secret");
        return true;
    }
    if (d != SB_DECISION_ALLOW || req->refresh || !b->cache)
        return false;

    sb_cache_state st = chain_lookup(b, req, now, &doc, &miss);
    if (st == SB_CACHE_MISS)
        return false;
    sb_metrics_authz(true, SB_METRICS_AUTHZ_CACHE);
    if (st == SB_CACHE_ABSENT) {
        set_outcome(req, SB_E_NOT_FOUND, "not_found", "no backend has this secret");
        return true;
    }
    req->doc = doc;
    req->cache_hit = true;
    set_outcome(req, SB_OK, "allowed", NULL);
    return true;
}

static void finish(sb_broker_req *req)
{
    req->priv.done(req, req->priv.ud);
}

static void finish_err(sb_broker_req *req, sb_err err, const char *reason, const char *detail)
{
    set_outcome(req, err, reason, detail);
    finish(req);
}

static void deny(sb_broker_req *req)
{
    req->decision = SB_DECISION_DENY;
    finish_err(req, SB_E_FORBIDDEN, "rbac_denied",
               "RBAC does not allow this caller to read this secret");
}

/* What a request does once its SubjectAccessReview allows it. */
enum after_review {
    AFTER_SERVE_CACHED, /* req->doc holds the cached document */
    AFTER_NOT_FOUND,    /* every backend's absence was cached */
    AFTER_FETCH,        /* ask backend priv.backend */
    AFTER_DELIVER,      /* a flight's result waits in priv.pending */
};

struct review_ctx {
    sb_broker_req *req;
    enum after_review after;
};

static void deliver(sb_broker_req *req, const sb_fetch_result *res);

static void on_review(sb_err err, bool allowed, void *ud)
{
    struct review_ctx *rc = ud;
    sb_broker_req *req = rc->req;
    enum after_review after = rc->after;

    free(rc);
    if (err != SB_OK) {
        sb_broker_req_clear(req);
        finish_err(req, err == SB_E_FORBIDDEN ? SB_E_CREDENTIALS : err, "authz_unavailable",
                   "the API server could not be asked whether this caller may read the secret");
        return;
    }
    sb_metrics_authz(allowed, SB_METRICS_AUTHZ_SAR);
    if (!allowed) {
        sb_broker_req_clear(req);
        deny(req);
        return;
    }

    req->decision = SB_DECISION_ALLOW;
    switch (after) {
    case AFTER_SERVE_CACHED:
        req->cache_hit = true;
        finish_err(req, SB_OK, "allowed", NULL);
        return;
    case AFTER_NOT_FOUND:
        finish_err(req, SB_E_NOT_FOUND, "not_found", "no backend has this secret");
        return;
    case AFTER_FETCH:
        fetch_from(req, req->priv.backend);
        return;
    case AFTER_DELIVER: {
        sb_fetch_result res = req->priv.pending;
        req->priv.pending.doc = NULL;
        deliver(req, &res);
        sb_doc_unref(res.doc);
        return;
    }
    }
}

static void review_then(sb_broker_req *req, enum after_review after)
{
    struct review_ctx *rc = sb_xmalloc(sizeof(*rc));

    *rc = (struct review_ctx){.req = req, .after = after};
    sb_authz_review(req->priv.b->authz, &req->caller, req->ns, req->name, req->request_id,
                    on_review, rc);
}

static bool serve_stale(sb_broker_req *req)
{
    sb_broker *b = req->priv.b;

    /* Only a caller authorized right now may see an old value. */
    if (!b->cache || b->cfg->stale_if_error_ms <= 0 || req->decision != SB_DECISION_ALLOW)
        return false;
    sb_cache_key key = cache_key(req, req->priv.backend);
    sb_secret_doc *doc = sb_cache_get_stale(b->cache, &key, sb_clock_mono_ms(),
                                            b->cfg->stale_if_error_ms);
    if (!doc)
        return false;
    req->doc = doc;
    req->cache_hit = true;
    finish_err(req, SB_OK, "stale_if_error", NULL);
    return true;
}

static void deliver(sb_broker_req *req, const sb_fetch_result *res)
{
    switch (res->err) {
    case SB_OK:
        req->doc = sb_doc_ref(res->doc);
        finish_err(req, SB_OK, "allowed", NULL);
        return;
    case SB_E_NOT_FOUND:
        if (req->priv.backend + 1 < req->priv.b->backend_count) {
            fetch_from(req, req->priv.backend + 1);
            return;
        }
        finish_err(req, SB_E_NOT_FOUND, "not_found", "no backend has this secret");
        return;
    case SB_E_FORBIDDEN:
        deny(req);
        return;
    default:
        if (serve_stale(req))
            return;
        req->retry_after_s = res->retry_after_s;
        finish_err(req, res->err, "backend_error", res->detail);
        return;
    }
}

static void deliver_to_waiter(sb_broker_req *w, const sb_fetch_result *res)
{
    /* The leader was refused: that says nothing about this caller, who
     * starts over (and may lead the next flight). */
    if (res->err == SB_E_FORBIDDEN && res->authz == SB_FETCH_AUTHZ_DENIED) {
        start(w);
        return;
    }
    /* Failures reveal nothing about the secret: no need to authorize. */
    if (res->err != SB_OK && res->err != SB_E_NOT_FOUND) {
        deliver(w, res);
        return;
    }

    sb_decision d = sb_authz_lookup(w->priv.b->authz, &w->caller, w->ns, w->name,
                                    sb_clock_mono_ms());
    w->decision = d;
    if (d == SB_DECISION_DENY) {
        sb_metrics_authz(false, SB_METRICS_AUTHZ_CACHE);
        deny(w);
        return;
    }
    if (d == SB_DECISION_ALLOW) {
        sb_metrics_authz(true, SB_METRICS_AUTHZ_CACHE);
        deliver(w, res);
        return;
    }
    w->priv.pending = *res;
    w->priv.pending.doc = sb_doc_ref(res->doc);
    review_then(w, AFTER_DELIVER);
}

static void record_upstream_decision(sb_broker_req *leader, const sb_fetch_result *res,
                                     int64_t now)
{
    if (res->authz == SB_FETCH_AUTHZ_NONE)
        return;
    bool allowed = res->authz == SB_FETCH_AUTHZ_ALLOWED;
    sb_authz_record(leader->priv.b->authz, &leader->caller, leader->ns, leader->name, allowed,
                    now);
    sb_metrics_authz(allowed, SB_METRICS_AUTHZ_UPSTREAM);
    leader->decision = allowed ? SB_DECISION_ALLOW : SB_DECISION_DENY;
}

static void on_fetched(sb_fetch_result *res, void *ud)
{
    struct flight *f = ud;
    sb_broker *b = f->b;
    sb_backend_kind kind = b->backends[f->backend]->kind;
    int64_t now = sb_clock_mono_ms();

    sb_lru_remove(b->flights, f->key, f->klen);
    if (b->cache) {
        sb_cache_key key = cache_key(f->leader, f->backend);
        if (res->err == SB_OK)
            sb_cache_put(b->cache, &key, res->doc, now);
        else if (res->err == SB_E_NOT_FOUND)
            sb_cache_put_absent(b->cache, &key, now);
    }
    if (res->err == SB_OK)
        sb_metrics_fetched(kind);
    else if (res->err != SB_E_NOT_FOUND && res->authz != SB_FETCH_AUTHZ_DENIED)
        sb_metrics_backend_error(kind, res->err);

    record_upstream_decision(f->leader, res, now);
    sb_broker_req *waiters = f->waiters;
    deliver(f->leader, res);
    for (sb_broker_req *w = waiters, *next; w; w = next) {
        next = w->priv.next;
        deliver_to_waiter(w, res);
    }
    sb_doc_unref(res->doc);
    free(f);
}

static size_t flight_key(char *buf, const sb_broker_req *req, size_t backend)
{
    const char *parts[] = {req->ns, req->name, req->version_stage, req->version_id};
    size_t pos = 0;

    buf[pos++] = (char)('0' + backend);
    for (size_t i = 0; i < 4; i++) {
        size_t n = strlen(parts[i]);
        memcpy(buf + pos, parts[i], n);
        pos += n;
        buf[pos++] = '\0';
    }
    return pos;
}

static void fetch_from(sb_broker_req *req, size_t backend)
{
    sb_broker *b = req->priv.b;
    sb_backend *be = b->backends[backend];
    char key[FLIGHT_KEY_MAX];

    req->priv.backend = backend;
    /* A backend that does not read as the caller must not be asked before
     * the caller is known to be allowed (the AWS half of DESIGN.md 4). */
    if (!be->reads_as_caller && req->decision != SB_DECISION_ALLOW) {
        review_then(req, AFTER_FETCH);
        return;
    }

    size_t klen = flight_key(key, req, backend);
    struct flight *f = sb_lru_get(b->flights, key, klen);
    if (f) {
        req->priv.next = f->waiters;
        f->waiters = req;
        return;
    }

    f = sb_xcalloc(1, sizeof(*f));
    f->b = b;
    f->backend = backend;
    memcpy(f->key, key, klen);
    f->klen = klen;
    f->leader = req;
    f->fetch = (sb_fetch){.ns = req->ns,
                          .name = req->name,
                          .version_stage = req->version_stage[0] ? req->version_stage : NULL,
                          .version_id = req->version_id[0] ? req->version_id : NULL,
                          .caller_ns = req->caller.ns,
                          .caller_sa = req->caller.sa,
                          .request_id = req->request_id,
                          .deadline_ms = req->deadline_ms};
    sb_lru_put(b->flights, key, klen, f);
    sb_backend_fetch(be, &f->fetch, on_fetched, f);
}

static void start(sb_broker_req *req)
{
    sb_broker *b = req->priv.b;
    int64_t now = sb_clock_mono_ms();
    sb_secret_doc *doc = NULL;
    size_t first_miss = 0;

    req->decision = sb_authz_lookup(b->authz, &req->caller, req->ns, req->name, now);
    if (req->decision == SB_DECISION_DENY) {
        sb_metrics_authz(false, SB_METRICS_AUTHZ_CACHE);
        deny(req);
        return;
    }
    if (!b->cache || req->refresh) {
        fetch_from(req, 0);
        return;
    }

    bool allowed = req->decision == SB_DECISION_ALLOW;
    switch (chain_lookup(b, req, now, &doc, &first_miss)) {
    case SB_CACHE_HIT:
        req->doc = doc;
        req->cache_hit = true;
        if (allowed)
            finish_err(req, SB_OK, "allowed", NULL);
        else
            review_then(req, AFTER_SERVE_CACHED);
        return;
    case SB_CACHE_ABSENT:
        if (allowed)
            finish_err(req, SB_E_NOT_FOUND, "not_found", "no backend has this secret");
        else
            review_then(req, AFTER_NOT_FOUND);
        return;
    case SB_CACHE_MISS:
        fetch_from(req, first_miss);
        return;
    }
}

static void submit_task(void *ud)
{
    start(ud);
}

void sb_broker_submit(sb_broker *b, sb_broker_req *req, sb_broker_done_fn done, void *ud)
{
    req->priv.b = b;
    req->priv.done = done;
    req->priv.ud = ud;
    req->err = SB_OK;
    req->detail = "";
    req->retry_after_s = -1;
    sb_http_call_at(b->http, 0, submit_task, req);
}
