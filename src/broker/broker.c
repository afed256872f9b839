/* The request path (see broker.h). Everything after sb_broker_submit runs
 * on the http loop thread, so the flight table needs no lock; the caches
 * are shared with the HTTP threads' fast path and lock themselves.
 *
 * A flight is one backend call for one key. Its leader's own read decides
 * the leader's authorization when the backend reads as the caller; every
 * waiter is authorized on its own before it sees the result.
 *
 * The order within a request (DESIGN.md section 2): the decision cache
 * first; a caller without a fresh decision learns nothing from the value
 * cache until a SubjectAccessReview allows it (the cache is only peeked at
 * to choose between "review, then answer from the cache" and "read from
 * the backend as the caller", which authorizes by itself).
 *
 * When a backend fails (DESIGN.md section 6), its circuit breaker counts
 * it; an open breaker fails calls at once. Either way a caller still
 * allowed may get its cached value up to STALE_IF_ERROR_SECONDS old, else
 * 503 naming the backend. */
#include "broker/broker.h"

#include <stdlib.h>
#include <string.h>

#include "broker/breaker.h"
#include "broker/ratelimit.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/lru.h"
#include "obs/metrics.h"

#define FLIGHT_KEY_MAX                                                                             \
    (4 + SB_MAX_NAMESPACE + SB_MAX_SECRET_NAME + SB_MAX_VERSION_STAGE + SB_MAX_VERSION_ID + 4)
#define SWEEP_MS 10000 /* how often expired values are dropped from memory */

struct flight {
    sb_broker *b;
    size_t backend;
    char key[FLIGHT_KEY_MAX];
    size_t klen;
    bool keep_out;              /* the secret changed meanwhile: do not cache the answer */
    struct flight *prev, *next; /* every flight, for invalidation */
    sb_broker_req *leader;
    sb_broker_req *waiters;
    sb_breaker_ticket ticket; /* from the backend's breaker */
    sb_fetch fetch;
};

struct sb_broker {
    const sb_config *cfg;
    sb_http *http;
    sb_authz *authz;
    sb_cache *cache;
    sb_backend *backends[SB_MAX_BACKENDS];
    sb_breaker *breakers[SB_MAX_BACKENDS]; /* one per backend */
    size_t backend_count;
    sb_ratelimit *refresh_budget; /* NULL: refresh never bypasses the cache */
    sb_lru *flights;              /* key -> struct flight; loop thread only */
    struct flight *flying;        /* the same flights, listed */
};

static void start(sb_broker_req *req);
static void proceed(sb_broker_req *req, int64_t now);
static void fetch_from(sb_broker_req *req, size_t backend);

static void sweep_tick(void *ud)
{
    sb_broker *b = ud;
    int64_t now = sb_clock_mono_ms();

    sb_cache_sweep(b->cache, now);
    sb_http_call_at(b->http, now + SWEEP_MS, sweep_tick, b);
}

/* REFRESH_RATE_PER_MINUTE per caller, with a burst of a tenth of a minute's
 * worth (at least one); 0 turns refresh off. */
static sb_ratelimit *refresh_budget(const sb_config *cfg)
{
    double per_minute = cfg->refresh_per_minute;

    if (per_minute <= 0)
        return NULL;
    double burst = per_minute / 6 >= 1 ? per_minute / 6 : 1;
    return sb_ratelimit_new(per_minute / 60, burst, SB_MAX_RATE_KEYS);
}

sb_broker *sb_broker_new(const sb_broker_deps *deps)
{
    sb_broker *b = sb_xcalloc(1, sizeof(*b));

    b->cfg = deps->cfg;
    b->http = deps->http;
    b->authz = deps->authz;
    b->cache = deps->cache;
    b->backend_count = deps->backend_count;
    memcpy(b->backends, deps->backends, sizeof(b->backends));
    for (size_t i = 0; i < b->backend_count; i++)
        b->breakers[i] = sb_breaker_new(b->backends[i]->kind, deps->cfg->breaker_failures,
                                        deps->cfg->breaker_open_ms);
    b->refresh_budget = refresh_budget(deps->cfg);
    b->flights = sb_lru_new(SIZE_MAX, NULL);
    if (b->cache)
        sb_http_call_at(b->http, sb_clock_mono_ms() + SWEEP_MS, sweep_tick, b);
    return b;
}

void sb_broker_free(sb_broker *b)
{
    if (!b)
        return;
    sb_lru_free(b->flights);
    for (size_t i = 0; i < b->backend_count; i++)
        sb_breaker_free(b->breakers[i]);
    sb_ratelimit_free(b->refresh_budget);
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

static sb_backend_kind kind_of(const sb_broker *b, size_t backend)
{
    return b->backends[backend]->kind;
}

/* Looks the secret up through the backend chain: a cached absence moves to
 * the next backend; anything else stops the walk at *out_at. With out_doc
 * NULL it only peeks (no reference, no LRU touch). All absent: ABSENT,
 * *out_at the last backend. */
static sb_cache_state chain_lookup(sb_broker *b, const sb_broker_req *req, int64_t now,
                                   sb_secret_doc **out_doc, size_t *out_at)
{
    for (size_t i = 0; i < b->backend_count; i++) {
        sb_cache_key key = cache_key(req, i);
        sb_cache_state st = out_doc ? sb_cache_get(b->cache, &key, now, out_doc)
                                    : sb_cache_peek(b->cache, &key, now);
        *out_at = i;
        if (st != SB_CACHE_ABSENT)
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

/* The audit reason of a value served: how the request was allowed. */
static const char *served_reason(const sb_broker_req *req)
{
    if (req->priv.authz_stale)
        return "authz_stale_if_error";
    return req->priv.refresh_limited ? "refresh_limited" : "allowed";
}

static void set_denied(sb_broker_req *req)
{
    req->decision = SB_DECISION_DENY;
    set_outcome(req, SB_E_FORBIDDEN, "rbac_denied",
                "RBAC does not allow this caller to read this secret");
}

/* An authorized request answered by the value cache (a hit, or every
 * backend's absence). */
static void set_from_cache(sb_broker_req *req, sb_cache_state st, sb_secret_doc *doc, size_t at)
{
    sb_metrics_cache(kind_of(req->priv.b, at), true);
    req->cache_hit = true;
    if (st == SB_CACHE_ABSENT) {
        set_outcome(req, SB_E_NOT_FOUND, "not_found", "no backend has this secret");
        return;
    }
    req->doc = doc;
    set_outcome(req, SB_OK, served_reason(req), NULL);
}

bool sb_broker_fast(sb_broker *b, sb_broker_req *req, int64_t now)
{
    sb_secret_doc *doc = NULL;
    size_t at = 0;

    req->priv.b = b;
    req->decision = sb_authz_lookup(b->authz, &req->caller, req->ns, req->name, now);
    if (req->decision == SB_DECISION_DENY) {
        sb_metrics_authz(false, SB_METRICS_AUTHZ_CACHE);
        set_denied(req);
        return true;
    }
    if (req->decision != SB_DECISION_ALLOW || req->refresh || !b->cache)
        return false;

    sb_cache_state st = chain_lookup(b, req, now, &doc, &at);
    if (st == SB_CACHE_MISS)
        return false; /* start() counts the miss */
    sb_metrics_authz(true, SB_METRICS_AUTHZ_CACHE);
    set_from_cache(req, st, doc, at);
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
    set_denied(req);
    finish(req);
}

/* What a request does once its SubjectAccessReview allows it. */
enum after_review {
    AFTER_PROCEED, /* consult the value cache, then the backends */
    AFTER_FETCH,   /* ask backend priv.backend */
    AFTER_DELIVER, /* a flight's result waits in priv.pending */
};

struct review_ctx {
    sb_broker_req *req;
    enum after_review after;
};

static void deliver(sb_broker_req *req, const sb_fetch_result *res);

/* What an upstream failure answers. A backend's own timeout, before the
 * request's deadline, is the backend being unavailable (503, DESIGN.md
 * section 6); 504 is for the request's deadline. */
static sb_err failure_code(const sb_broker_req *req, sb_err err)
{
    if (err == SB_E_FORBIDDEN)
        return SB_E_CREDENTIALS; /* a 403 to the broker itself */
    if (err == SB_E_TIMEOUT && sb_clock_mono_ms() < req->deadline_ms)
        return SB_E_UNAVAILABLE;
    return err;
}

static void on_review(sb_err err, bool allowed, bool stale, void *ud)
{
    struct review_ctx *rc = ud;
    sb_broker_req *req = rc->req;
    enum after_review after = rc->after;

    free(rc);
    if (err != SB_OK) {
        sb_broker_req_clear(req);
        finish_err(req, failure_code(req, err), "authz_unavailable",
                   "the API server could not be asked whether this caller may read the secret");
        return;
    }
    /* A stale allow (AUTHZ_STALE_IF_ERROR_SECONDS) came from the decision
     * cache, not from the review that failed. */
    req->priv.authz_stale |= stale;
    sb_metrics_authz(allowed, stale ? SB_METRICS_AUTHZ_CACHE : SB_METRICS_AUTHZ_SAR);
    if (!allowed) {
        sb_broker_req_clear(req);
        deny(req);
        return;
    }

    /* The review's answer decides this request even when the allow TTL is
     * 0 and nothing was cached. */
    req->decision = SB_DECISION_ALLOW;
    switch (after) {
    case AFTER_PROCEED:
        proceed(req, sb_clock_mono_ms());
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

/* Stale-if-error (STALE_IF_ERROR_SECONDS): the backend failed, and the
 * cache still holds a value it gave at most that long ago. */
static bool serve_stale(sb_broker_req *req)
{
    sb_broker *b = req->priv.b;
    int64_t now = sb_clock_mono_ms();

    if (!b->cache || b->cfg->stale_if_error_ms <= 0)
        return false;
    /* Only a caller allowed now may see an old value: the decision is
     * looked up again, since the backend call may have outlived it. When
     * the backend is the API server, the decision cannot be renewed: an
     * allow young enough for AUTHZ_STALE_IF_ERROR_SECONDS then counts. */
    if (!sb_authz_allowed_if_error(b->authz, &req->caller, req->ns, req->name, now))
        return false;
    sb_cache_key key = cache_key(req, req->priv.backend);
    sb_secret_doc *doc = sb_cache_get_stale(b->cache, &key, now, b->cfg->stale_if_error_ms);
    if (!doc)
        return false;
    req->doc = doc;
    req->cache_hit = true;
    req->decision = SB_DECISION_ALLOW;
    sb_metrics_cache(kind_of(b, req->priv.backend), true);
    finish_err(req, SB_OK, "stale_if_error", NULL);
    return true;
}

static void deliver(sb_broker_req *req, const sb_fetch_result *res)
{
    switch (res->err) {
    case SB_OK:
        req->doc = sb_doc_ref(res->doc);
        finish_err(req, SB_OK, served_reason(req), NULL);
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
        finish_err(req, failure_code(req, res->err), "backend_error", res->detail);
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

    /* A value, or "no such secret": only for a caller allowed now. */
    sb_decision d =
        sb_authz_lookup(w->priv.b->authz, &w->caller, w->ns, w->name, sb_clock_mono_ms());
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

static void record_upstream_decision(sb_broker_req *leader, const sb_fetch_result *res, int64_t now)
{
    if (res->authz == SB_FETCH_AUTHZ_NONE)
        return;
    /* A 403 replaces a cached allow at once (DESIGN.md section 4). */
    bool allowed = res->authz == SB_FETCH_AUTHZ_ALLOWED;
    sb_authz_record(leader->priv.b->authz, &leader->caller, leader->ns, leader->name, allowed, now);
    sb_metrics_authz(allowed, SB_METRICS_AUTHZ_UPSTREAM);
    leader->decision = allowed ? SB_DECISION_ALLOW : SB_DECISION_DENY;
}

static void flight_detach(sb_broker *b, struct flight *f)
{
    sb_lru_remove(b->flights, f->key, f->klen);
    if (f->prev)
        f->prev->next = f->next;
    else
        b->flying = f->next;
    if (f->next)
        f->next->prev = f->prev;
}

static void remember(sb_broker *b, const struct flight *f, const sb_fetch_result *res, int64_t now)
{
    if (!b->cache || f->keep_out)
        return;
    sb_cache_key key = cache_key(f->leader, f->backend);
    if (res->err == SB_OK)
        sb_cache_put(b->cache, &key, res->doc, now);
    else if (res->err == SB_E_NOT_FOUND)
        sb_cache_put_absent(b->cache, &key, now);
}

static void on_fetched(sb_fetch_result *res, void *ud)
{
    struct flight *f = ud;
    sb_broker *b = f->b;
    sb_backend_kind kind = kind_of(b, f->backend);
    int64_t now = sb_clock_mono_ms();

    flight_detach(b, f);
    sb_breaker_report(b->breakers[f->backend], f->ticket, sb_breaker_failure(res->err), now);
    remember(b, f, res, now);
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

    buf[0] = (char)('0' + backend);
    return sb_lru_key_join(buf, 1, parts, 4);
}

static struct flight *flight_new(sb_broker *b, sb_broker_req *req, size_t backend, const char *key,
                                 size_t klen)
{
    struct flight *f = sb_xcalloc(1, sizeof(*f));

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
    f->next = b->flying;
    if (b->flying)
        b->flying->prev = f;
    b->flying = f;
    return f;
}

/* Breaker-open answers name the backend (DESIGN.md section 6). */
static const char *breaker_detail(sb_backend_kind kind)
{
    switch (kind) {
    case SB_BACKEND_K8S:
        return "the kubernetes backend is failing; its circuit breaker is open";
    case SB_BACKEND_AWS:
        return "the aws-secrets-manager backend is failing; its circuit breaker is open";
    case SB_BACKEND_FILE:
        return "the file backend is failing; its circuit breaker is open";
    }
    return "the backend is failing; its circuit breaker is open";
}

/* Whether a new call to backend may start now; if not, req is answered
 * as that backend failing (stale-if-error still applies). Calls over
 * MAX_INFLIGHT_BACKEND_CALLS are refused here, before the breaker, so the
 * broker's own overload never counts against a backend. */
static bool may_call(sb_broker_req *req, size_t backend, sb_breaker_ticket *out_ticket)
{
    sb_broker *b = req->priv.b;
    int64_t now = sb_clock_mono_ms();
    int64_t retry_ms = 0;
    sb_fetch_result res = {.retry_after_s = 1};

    if (now >= req->deadline_ms) {
        finish_err(req, SB_E_TIMEOUT, "deadline", "the request's deadline passed");
        return false;
    }
    if (sb_http_inflight(b->http) >= b->cfg->max_inflight) {
        res.err = SB_E_UNAVAILABLE;
        res.detail = "too many backend calls in flight";
        deliver(req, &res);
        return false;
    }
    if (sb_breaker_admit(b->breakers[backend], now, out_ticket, &retry_ms))
        return true;
    res.err = SB_E_UNAVAILABLE;
    res.detail = breaker_detail(kind_of(b, backend));
    res.retry_after_s = (int)((retry_ms + 999) / 1000);
    deliver(req, &res);
    return false;
}

static void fetch_from(sb_broker_req *req, size_t backend)
{
    sb_broker *b = req->priv.b;
    sb_backend *be = b->backends[backend];
    char key[FLIGHT_KEY_MAX];
    sb_breaker_ticket ticket = 0;

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
    if (!may_call(req, backend, &ticket))
        return;
    f = flight_new(b, req, backend, key, klen);
    f->ticket = ticket;
    sb_backend_fetch(be, &f->fetch, on_fetched, f);
}

/* A refresh within the caller's budget bypasses the value cache; over it,
 * the request is answered like a plain read, from the cache when it can be
 * (docs/architecture.md, "Caching and authorization"). Weighed once per
 * request. */
static void settle_refresh(sb_broker_req *req, int64_t now)
{
    sb_broker *b = req->priv.b;

    if (!req->refresh || !b->cache || req->priv.refresh_settled)
        return;
    req->priv.refresh_settled = true;
    if (b->refresh_budget && sb_ratelimit_take_identity(b->refresh_budget, &req->caller, now, NULL))
        return;
    req->refresh = false;
    req->priv.refresh_limited = true;
}

/* After the decision cache: the value cache (authorized callers only),
 * then the backends. */
static void proceed(sb_broker_req *req, int64_t now)
{
    sb_broker *b = req->priv.b;
    sb_secret_doc *doc = NULL;
    size_t at = 0;

    if (!b->cache || req->refresh) {
        fetch_from(req, 0);
        return;
    }
    if (req->decision != SB_DECISION_ALLOW) {
        /* Something cached could answer: only once a review allows it. */
        if (chain_lookup(b, req, now, NULL, &at) != SB_CACHE_MISS) {
            review_then(req, AFTER_PROCEED);
            return;
        }
        sb_metrics_cache(kind_of(b, at), false);
        fetch_from(req, at);
        return;
    }

    sb_cache_state st = chain_lookup(b, req, now, &doc, &at);
    if (st == SB_CACHE_MISS) {
        sb_metrics_cache(kind_of(b, at), false);
        fetch_from(req, at);
        return;
    }
    set_from_cache(req, st, doc, at);
    finish(req);
}

static void start(sb_broker_req *req)
{
    sb_broker *b = req->priv.b;
    int64_t now = sb_clock_mono_ms();

    req->decision = sb_authz_lookup(b->authz, &req->caller, req->ns, req->name, now);
    if (req->decision == SB_DECISION_DENY) {
        sb_metrics_authz(false, SB_METRICS_AUTHZ_CACHE);
        deny(req);
        return;
    }
    if (req->decision == SB_DECISION_ALLOW)
        sb_metrics_authz(true, SB_METRICS_AUTHZ_CACHE);
    settle_refresh(req, now);
    proceed(req, now);
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
    req->priv.refresh_settled = false;
    req->priv.refresh_limited = false;
    req->priv.authz_stale = false;
    req->err = SB_OK;
    req->detail = "";
    req->retry_after_s = -1;
    sb_http_call_at(b->http, 0, submit_task, req);
}

static bool same_secret(const struct flight *f, const char *ns, const char *name)
{
    return !strcmp(f->fetch.ns, ns) && !strcmp(f->fetch.name, name);
}

void sb_broker_invalidate(sb_broker *b, const char *ns, const char *name)
{
    if (!b->cache)
        return;
    sb_cache_evict_secret(b->cache, ns, name);
    for (struct flight *f = b->flying; f; f = f->next) {
        if (same_secret(f, ns, name))
            f->keep_out = true;
    }
}

void sb_broker_invalidate_backend(sb_broker *b, sb_backend_kind kind)
{
    if (!b->cache)
        return;
    sb_cache_evict_backend(b->cache, kind);
    for (struct flight *f = b->flying; f; f = f->next) {
        if (kind_of(b, f->backend) == kind)
            f->keep_out = true;
    }
}

static void on_secret_changed(void *ud, const char *ns, const char *name)
{
    sb_broker_invalidate(ud, ns, name);
}

static void on_changes_lost(void *ud)
{
    sb_broker_invalidate_backend(ud, SB_BACKEND_K8S);
}

sb_watch_handler sb_broker_watch_handler(sb_broker *b)
{
    return (sb_watch_handler){.changed = on_secret_changed, .lost = on_changes_lost, .ud = b};
}

sb_breaker_state sb_broker_breaker_state(sb_broker *b, size_t i, int64_t now)
{
    return sb_breaker_state_at(b->breakers[i], now);
}
