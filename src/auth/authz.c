/* Authorization decisions (see authz.h). The decision cache is split in
 * shards, each with its own lock, so HTTP threads answering from cache do
 * not queue behind each other. */
#include "auth/authz.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/limits.h"
#include "core/lru.h"
#include "obs/log.h"

#define SHARDS        16
#define MAX_DECISIONS 100000 /* cached decisions in all shards together */
#define KEY_MAX       (SB_MAX_NAMESPACE * 2 + SB_MAX_SA_NAME + SB_MAX_SECRET_NAME + 4)

struct decision {
    bool allowed;
    int64_t decided_ms;
    int64_t expires_ms;
};

struct waiter {
    sb_authz_done_fn done;
    void *ud;
    struct waiter *next;
};

struct review {
    sb_authz *a;
    sb_identity id;
    char ns[SB_MAX_NAMESPACE + 1];
    char name[SB_MAX_SECRET_NAME + 1];
    char key[KEY_MAX];
    size_t klen;
    struct waiter *waiters;
};

struct shard {
    pthread_mutex_t lock;
    sb_lru *map;
};

struct sb_authz {
    struct shard shards[SHARDS];
    sb_kube *kube;
    bool own_namespace;
    int allow_ttl_ms;
    int deny_ttl_ms;
    int stale_ms;    /* AUTHZ_STALE_IF_ERROR_SECONDS */
    sb_lru *pending; /* key -> struct review; loop thread only */
};

static size_t make_key(char *buf, const sb_identity *id, const char *ns, const char *name)
{
    const char *parts[] = {id->ns, id->sa, ns, name};

    return sb_lru_key_join(buf, 0, parts, 4);
}

static struct shard *shard_of(sb_authz *a, const char *key, size_t klen)
{
    return &a->shards[sb_hash(key, klen) % SHARDS];
}

sb_authz *sb_authz_new(const sb_config *cfg, sb_kube *kube)
{
    sb_authz *a = sb_xcalloc(1, sizeof(*a));

    for (size_t i = 0; i < SHARDS; i++) {
        pthread_mutex_init(&a->shards[i].lock, NULL);
        a->shards[i].map = sb_lru_new(MAX_DECISIONS / SHARDS, free);
    }
    a->kube = kube;
    a->own_namespace = cfg->auth_mode == SB_AUTH_OWN_NAMESPACE;
    a->allow_ttl_ms = cfg->authz_allow_ttl_ms;
    a->deny_ttl_ms = cfg->authz_deny_ttl_ms;
    a->stale_ms = cfg->authz_stale_ms;
    a->pending = sb_lru_new(SIZE_MAX, NULL);
    return a;
}

void sb_authz_free(sb_authz *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < SHARDS; i++) {
        sb_lru_free(a->shards[i].map);
        pthread_mutex_destroy(&a->shards[i].lock);
    }
    sb_lru_free(a->pending);
    free(a);
}

sb_decision sb_authz_lookup(sb_authz *a, const sb_identity *id, const char *ns, const char *name,
                            int64_t now)
{
    char key[KEY_MAX];
    sb_decision out = SB_DECISION_UNKNOWN;

    /* Development mode: the namespace is the whole rule. */
    if (a->own_namespace)
        return strcmp(id->ns, ns) == 0 ? SB_DECISION_ALLOW : SB_DECISION_DENY;

    size_t klen = make_key(key, id, ns, name);
    struct shard *s = shard_of(a, key, klen);
    pthread_mutex_lock(&s->lock);
    struct decision *d = sb_lru_get(s->map, key, klen);
    if (d && now < d->expires_ms)
        out = d->allowed ? SB_DECISION_ALLOW : SB_DECISION_DENY;
    pthread_mutex_unlock(&s->lock);
    return out;
}

void sb_authz_record(sb_authz *a, const sb_identity *id, const char *ns, const char *name,
                     bool allowed, int64_t now)
{
    char key[KEY_MAX];
    int ttl = allowed ? a->allow_ttl_ms : a->deny_ttl_ms;

    if (a->own_namespace)
        return;
    size_t klen = make_key(key, id, ns, name);
    struct shard *s = shard_of(a, key, klen);
    /* A TTL of 0 caches nothing, but still drops an older decision: an
     * upstream 403 must end a cached allow at once (DESIGN.md section 4).
     * An allow is still kept, never fresh, when it may serve while the
     * API server is down. */
    if (ttl <= 0 && !(allowed && a->stale_ms > 0)) {
        pthread_mutex_lock(&s->lock);
        sb_lru_remove(s->map, key, klen);
        pthread_mutex_unlock(&s->lock);
        return;
    }

    struct decision *d = sb_xmalloc(sizeof(*d));
    *d = (struct decision){
        .allowed = allowed, .decided_ms = now, .expires_ms = now + (ttl > 0 ? ttl : 0)};
    pthread_mutex_lock(&s->lock);
    sb_lru_put(s->map, key, klen, d);
    pthread_mutex_unlock(&s->lock);
}

void sb_authz_forget(sb_authz *a, const sb_identity *id, const char *ns, const char *name)
{
    char key[KEY_MAX];
    size_t klen = make_key(key, id, ns, name);
    struct shard *s = shard_of(a, key, klen);

    pthread_mutex_lock(&s->lock);
    sb_lru_remove(s->map, key, klen);
    pthread_mutex_unlock(&s->lock);
}

bool sb_authz_allowed_if_error(sb_authz *a, const sb_identity *id, const char *ns, const char *name,
                               int64_t now)
{
    char key[KEY_MAX];
    bool out = false;

    if (a->own_namespace)
        return strcmp(id->ns, ns) == 0;

    size_t klen = make_key(key, id, ns, name);
    struct shard *s = shard_of(a, key, klen);
    pthread_mutex_lock(&s->lock);
    struct decision *d = sb_lru_get(s->map, key, klen);
    if (d && d->allowed)
        out = now < d->expires_ms || now - d->decided_ms <= a->stale_ms;
    pthread_mutex_unlock(&s->lock);
    return out;
}

static void on_review(sb_kube_result *kr, void *ud)
{
    struct review *rv = ud;
    sb_authz *a = rv->a;
    int64_t now = sb_clock_mono_ms();
    bool allowed = false;
    bool stale = false;
    sb_err err = kr->err;
    const char *reason = "";

    if (kr->err == SB_OK) {
        allowed = sb_kube_review_allowed(kr->json, &reason);
        sb_authz_record(a, &rv->id, rv->ns, rv->name, allowed, now);
    } else {
        SB_WARN("authz", NULL, "SubjectAccessReview failed: %s (HTTP %ld)", kr->detail, kr->status);
        stale = a->stale_ms > 0 && sb_authz_allowed_if_error(a, &rv->id, rv->ns, rv->name, now);
    }
    if (stale) {
        err = SB_OK;
        allowed = true;
    }

    /* Detach before calling back: a waiter may start a new review. */
    sb_lru_remove(a->pending, rv->key, rv->klen);
    for (struct waiter *w = rv->waiters, *next; w; w = next) {
        next = w->next;
        w->done(err, allowed, stale, w->ud);
        free(w);
    }
    free(rv);
}

void sb_authz_review(sb_authz *a, const sb_identity *id, const char *ns, const char *name,
                     const char *request_id, sb_authz_done_fn done, void *ud)
{
    struct waiter *w = sb_xmalloc(sizeof(*w));
    char key[KEY_MAX];
    size_t klen = make_key(key, id, ns, name);

    *w = (struct waiter){.done = done, .ud = ud};
    struct review *rv = sb_lru_get(a->pending, key, klen);
    if (rv) {
        w->next = rv->waiters;
        rv->waiters = w;
        return;
    }

    rv = sb_xcalloc(1, sizeof(*rv));
    rv->a = a;
    rv->id = *id;
    snprintf(rv->ns, sizeof(rv->ns), "%s", ns);
    snprintf(rv->name, sizeof(rv->name), "%s", name);
    memcpy(rv->key, key, klen);
    rv->klen = klen;
    rv->waiters = w;
    sb_lru_put(a->pending, key, klen, rv);
    sb_kube_review_access(a->kube, id->ns, id->sa, ns, name, request_id, on_review, rv);
}

size_t sb_authz_cached(sb_authz *a)
{
    size_t n = 0;

    for (size_t i = 0; i < SHARDS; i++) {
        pthread_mutex_lock(&a->shards[i].lock);
        n += sb_lru_count(a->shards[i].map);
        pthread_mutex_unlock(&a->shards[i].lock);
    }
    return n;
}
