/* Value cache (see cache.h). Each shard is an LRU map under one mutex.
 * Entries hold a reference to their document; the last reference wipes the
 * values. Entries the map lets go of while the lock is held are put on the
 * shard's graveyard and released after the lock is dropped, so wiping a
 * large document never holds up readers of the shard. */
#include "broker/cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/limits.h"
#include "core/lru.h"
#include "obs/metrics.h"

#define KEY_MAX                                                                                    \
    (1 + SB_MAX_NAMESPACE + SB_MAX_SECRET_NAME + SB_MAX_VERSION_STAGE + SB_MAX_VERSION_ID + 4)

#define MAX_SHARDS        16
#define MIN_SHARD_ENTRIES 64
#define MIN_SHARD_BYTES   (4 * 1024 * 1024) /* holds a 1 MiB Kubernetes Secret twice */

struct shard;

struct entry {
    struct shard *shard;
    sb_secret_doc *doc; /* NULL for an absence */
    int64_t stored_ms;
    int64_t expires_ms; /* fresh before this */
    int64_t keep_ms;    /* dropped from this on */
    size_t bytes;
    struct entry *next_dead;
};

struct shard {
    pthread_mutex_t lock;
    sb_lru *map;
    size_t bytes;
    size_t max_bytes;
    struct entry *graveyard;
} __attribute__((aligned(64)));

struct sb_cache {
    struct shard *shards;
    size_t nshards; /* a power of two */
    int64_t ttl_ms;
    int64_t negative_ttl_ms;
    int64_t stale_ms;
};

/* A key, and the length of its "<ns>\0<name>\0" part (after the backend
 * byte), which picks the shard. */
struct key {
    char bytes[KEY_MAX];
    size_t len;
    size_t name_len;
};

static void make_key(struct key *out, const sb_cache_key *k)
{
    const char *names[] = {k->ns, k->name};
    const char *version[] = {k->version_stage ? k->version_stage : "",
                             k->version_id ? k->version_id : ""};

    out->bytes[0] = (char)('0' + k->backend);
    out->len = sb_lru_key_join(out->bytes, 1, names, 2);
    out->name_len = out->len - 1;
    out->len = sb_lru_key_join(out->bytes, out->len, version, 2);
}

static struct shard *shard_of(sb_cache *c, const struct key *k)
{
    return &c->shards[sb_hash(k->bytes + 1, k->name_len) & (c->nshards - 1)];
}

/* The map's free callback: runs with the shard locked. */
static void entry_drop(void *value)
{
    struct entry *e = value;
    struct shard *s = e->shard;

    s->bytes -= e->bytes;
    sb_metrics_gauge_add(SB_METRICS_CACHE_ENTRIES, -1);
    sb_metrics_gauge_add(SB_METRICS_CACHE_BYTES, -(int64_t)e->bytes);
    e->next_dead = s->graveyard;
    s->graveyard = e;
}

static void unlock_and_reap(struct shard *s)
{
    struct entry *dead = s->graveyard;

    s->graveyard = NULL;
    pthread_mutex_unlock(&s->lock);
    for (struct entry *next; dead; dead = next) {
        next = dead->next_dead;
        sb_doc_unref(dead->doc);
        free(dead);
    }
}

static size_t shard_count(const sb_config *cfg)
{
    size_t n = MAX_SHARDS;

    while (n > 1 && (cfg->cache_max_entries / n < MIN_SHARD_ENTRIES ||
                     cfg->cache_max_bytes / n < MIN_SHARD_BYTES))
        n /= 2;
    return n;
}

sb_cache *sb_cache_new(const sb_config *cfg)
{
    sb_cache *c = sb_xcalloc(1, sizeof(*c));

    c->nshards = shard_count(cfg);
    c->shards = sb_xcalloc(c->nshards, sizeof(*c->shards));
    c->ttl_ms = cfg->cache_ttl_ms;
    c->negative_ttl_ms = cfg->negative_ttl_ms;
    c->stale_ms = cfg->stale_if_error_ms;

    /* The bounds are divided exactly: the shards together hold at most
     * CACHE_MAX_SIZE entries and CACHE_MAX_BYTES bytes. */
    for (size_t i = 0; i < c->nshards; i++) {
        struct shard *s = &c->shards[i];
        size_t entries =
            cfg->cache_max_entries / c->nshards + (i < cfg->cache_max_entries % c->nshards);
        pthread_mutex_init(&s->lock, NULL);
        s->map = sb_lru_new(entries, entry_drop);
        s->max_bytes = cfg->cache_max_bytes / c->nshards;
    }
    return c;
}

void sb_cache_free(sb_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nshards; i++) {
        struct shard *s = &c->shards[i];
        pthread_mutex_lock(&s->lock);
        sb_lru_free(s->map);
        unlock_and_reap(s);
        pthread_mutex_destroy(&s->lock);
    }
    free(c->shards);
    free(c);
}

/* The entry under k if it is still worth anything at now; one past its
 * keep time is dropped on the way. Shard locked. */
static struct entry *lookup(struct shard *s, const struct key *k, int64_t now, bool touch)
{
    struct entry *e =
        touch ? sb_lru_get(s->map, k->bytes, k->len) : sb_lru_peek(s->map, k->bytes, k->len);

    if (e && now >= e->keep_ms) {
        sb_lru_remove(s->map, k->bytes, k->len);
        return NULL;
    }
    return e;
}

static sb_cache_state state_of(const struct entry *e, int64_t now)
{
    if (!e || now >= e->expires_ms)
        return SB_CACHE_MISS;
    return e->doc ? SB_CACHE_HIT : SB_CACHE_ABSENT;
}

sb_cache_state sb_cache_get(sb_cache *c, const sb_cache_key *key, int64_t now,
                            sb_secret_doc **out_doc)
{
    struct key k;

    make_key(&k, key);
    struct shard *s = shard_of(c, &k);
    pthread_mutex_lock(&s->lock);
    struct entry *e = lookup(s, &k, now, true);
    sb_cache_state state = state_of(e, now);
    if (state == SB_CACHE_HIT)
        *out_doc = sb_doc_ref(e->doc);
    unlock_and_reap(s);
    return state;
}

sb_cache_state sb_cache_peek(sb_cache *c, const sb_cache_key *key, int64_t now)
{
    struct key k;

    make_key(&k, key);
    struct shard *s = shard_of(c, &k);
    pthread_mutex_lock(&s->lock);
    sb_cache_state state = state_of(lookup(s, &k, now, false), now);
    unlock_and_reap(s);
    return state;
}

sb_secret_doc *sb_cache_get_stale(sb_cache *c, const sb_cache_key *key, int64_t now,
                                  int64_t max_age_ms)
{
    struct key k;
    sb_secret_doc *doc = NULL;

    make_key(&k, key);
    struct shard *s = shard_of(c, &k);
    pthread_mutex_lock(&s->lock);
    struct entry *e = lookup(s, &k, now, false);
    if (e && e->doc && now - e->stored_ms <= max_age_ms)
        doc = sb_doc_ref(e->doc);
    unlock_and_reap(s);
    return doc;
}

static void store(sb_cache *c, const sb_cache_key *key, sb_secret_doc *doc, int64_t ttl_ms,
                  int64_t now)
{
    struct key k;

    make_key(&k, key);
    struct shard *s = shard_of(c, &k);
    size_t bytes = sizeof(struct entry) + sb_lru_entry_bytes(k.len) + (doc ? doc->bytes : 0);

    /* A document over half the shard's budget would push out nearly
     * everything else: not kept. What key held goes anyway (cache.h). */
    if (ttl_ms <= 0 || bytes > s->max_bytes / 2) {
        pthread_mutex_lock(&s->lock);
        sb_lru_remove(s->map, k.bytes, k.len);
        unlock_and_reap(s);
        return;
    }

    struct entry *e = sb_xcalloc(1, sizeof(*e));
    int64_t keep = doc && c->stale_ms > ttl_ms ? c->stale_ms : ttl_ms;
    *e = (struct entry){.shard = s,
                        .doc = sb_doc_ref(doc),
                        .stored_ms = now,
                        .expires_ms = now + ttl_ms,
                        .keep_ms = now + keep,
                        .bytes = bytes};

    pthread_mutex_lock(&s->lock);
    s->bytes += bytes;
    sb_metrics_gauge_add(SB_METRICS_CACHE_ENTRIES, 1);
    sb_metrics_gauge_add(SB_METRICS_CACHE_BYTES, (int64_t)bytes);
    sb_lru_put(s->map, k.bytes, k.len, e);
    while (s->bytes > s->max_bytes && sb_lru_evict_oldest(s->map))
        ;
    unlock_and_reap(s);
}

void sb_cache_put(sb_cache *c, const sb_cache_key *key, sb_secret_doc *doc, int64_t now)
{
    store(c, key, doc, c->ttl_ms, now);
}

void sb_cache_put_absent(sb_cache *c, const sb_cache_key *key, int64_t now)
{
    store(c, key, NULL, c->negative_ttl_ms, now);
}

struct name_match {
    const char *ns_name; /* "<ns>\0<name>\0": names, not secret material */
    size_t len;
};

static bool matches_name(const void *key, size_t klen, void *value, void *ud)
{
    const struct name_match *m = ud;

    /* Past the backend byte: the namespace and name, each with its NUL. */
    return klen > m->len && !memcmp((const char *)key + 1, m->ns_name, m->len);
}

size_t sb_cache_evict_secret(sb_cache *c, const char *ns, const char *name)
{
    sb_cache_key ck = {.ns = ns, .name = name};
    struct key k;

    make_key(&k, &ck);
    struct name_match m = {k.bytes + 1, k.name_len};
    struct shard *s = shard_of(c, &k);
    pthread_mutex_lock(&s->lock);
    size_t n = sb_lru_remove_if(s->map, matches_name, &m);
    unlock_and_reap(s);
    return n;
}

static size_t remove_everywhere(sb_cache *c, sb_lru_pred_fn pred, void *ud)
{
    size_t n = 0;

    for (size_t i = 0; i < c->nshards; i++) {
        struct shard *s = &c->shards[i];
        pthread_mutex_lock(&s->lock);
        n += sb_lru_remove_if(s->map, pred, ud);
        unlock_and_reap(s);
    }
    return n;
}

static bool matches_backend(const void *key, size_t klen, void *value, void *ud)
{
    return ((const char *)key)[0] == *(const char *)ud;
}

size_t sb_cache_evict_backend(sb_cache *c, sb_backend_kind backend)
{
    char tag = (char)('0' + backend);
    return remove_everywhere(c, matches_backend, &tag);
}

static bool past_keep(const void *key, size_t klen, void *value, void *ud)
{
    const struct entry *e = value;
    return *(const int64_t *)ud >= e->keep_ms;
}

size_t sb_cache_sweep(sb_cache *c, int64_t now)
{
    return remove_everywhere(c, past_keep, &now);
}

void sb_cache_stats(sb_cache *c, size_t *out_entries, size_t *out_bytes)
{
    size_t entries = 0, bytes = 0;

    for (size_t i = 0; i < c->nshards; i++) {
        struct shard *s = &c->shards[i];
        pthread_mutex_lock(&s->lock);
        entries += sb_lru_count(s->map);
        bytes += s->bytes;
        pthread_mutex_unlock(&s->lock);
    }
    *out_entries = entries;
    *out_bytes = bytes;
}
