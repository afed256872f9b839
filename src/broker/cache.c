/* Value cache (see cache.h): one lock around an LRU map. Entries hold a
 * reference to their document; the last reference wipes the values. */
#include "broker/cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/limits.h"
#include "core/lru.h"
#include "obs/metrics.h"

#define KEY_MAX (1 + SB_MAX_NAMESPACE + SB_MAX_SECRET_NAME + SB_MAX_VERSION_STAGE + \
                 SB_MAX_VERSION_ID + 4)

struct entry {
    sb_cache *cache;
    sb_secret_doc *doc; /* NULL for an absence */
    int64_t stored_ms;
    int64_t expires_ms;
    size_t bytes;
};

struct sb_cache {
    pthread_mutex_t lock;
    sb_lru *map;
    size_t bytes;
    size_t max_bytes;
    int ttl_ms;
    int negative_ttl_ms;
};

static size_t make_key(char *buf, const sb_cache_key *k)
{
    const char *parts[] = {k->ns, k->name, k->version_stage ? k->version_stage : "",
                           k->version_id ? k->version_id : ""};
    size_t pos = 0;

    buf[pos++] = (char)('0' + k->backend);
    for (size_t i = 0; i < 4; i++) {
        size_t n = strlen(parts[i]);
        memcpy(buf + pos, parts[i], n);
        pos += n;
        buf[pos++] = '\0';
    }
    return pos;
}

static void entry_free(void *value)
{
    struct entry *e = value;

    e->cache->bytes -= e->bytes;
    sb_doc_unref(e->doc);
    free(e);
}

static void publish_stats(sb_cache *c)
{
    sb_metrics_gauge_set(SB_METRICS_CACHE_ENTRIES, (int64_t)sb_lru_count(c->map));
    sb_metrics_gauge_set(SB_METRICS_CACHE_BYTES, (int64_t)c->bytes);
}

sb_cache *sb_cache_new(const sb_config *cfg)
{
    sb_cache *c = sb_xcalloc(1, sizeof(*c));

    pthread_mutex_init(&c->lock, NULL);
    c->map = sb_lru_new(cfg->cache_max_entries, entry_free);
    c->max_bytes = cfg->cache_max_bytes;
    c->ttl_ms = cfg->cache_ttl_ms;
    c->negative_ttl_ms = cfg->negative_ttl_ms;
    return c;
}

void sb_cache_free(sb_cache *c)
{
    if (!c)
        return;
    sb_lru_free(c->map);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

sb_cache_state sb_cache_get(sb_cache *c, const sb_cache_key *key, int64_t now,
                            sb_secret_doc **out_doc)
{
    char k[KEY_MAX];
    size_t klen = make_key(k, key);
    sb_cache_state state = SB_CACHE_MISS;

    pthread_mutex_lock(&c->lock);
    struct entry *e = sb_lru_get(c->map, k, klen);
    if (e && now < e->expires_ms) {
        state = e->doc ? SB_CACHE_HIT : SB_CACHE_ABSENT;
        if (e->doc)
            *out_doc = sb_doc_ref(e->doc);
    }
    pthread_mutex_unlock(&c->lock);
    return state;
}

sb_secret_doc *sb_cache_get_stale(sb_cache *c, const sb_cache_key *key, int64_t now,
                                  int64_t max_age_ms)
{
    char k[KEY_MAX];
    size_t klen = make_key(k, key);
    sb_secret_doc *doc = NULL;

    pthread_mutex_lock(&c->lock);
    struct entry *e = sb_lru_get(c->map, k, klen);
    if (e && e->doc && now - e->stored_ms <= max_age_ms)
        doc = sb_doc_ref(e->doc);
    pthread_mutex_unlock(&c->lock);
    return doc;
}

static void store(sb_cache *c, const sb_cache_key *key, sb_secret_doc *doc, int ttl, int64_t now)
{
    char k[KEY_MAX];
    size_t klen = make_key(k, key);
    struct entry *e = sb_xcalloc(1, sizeof(*e));

    e->cache = c;
    e->doc = sb_doc_ref(doc);
    e->stored_ms = now;
    e->expires_ms = now + ttl;
    e->bytes = sizeof(*e) + klen + (doc ? doc->bytes : 0);

    pthread_mutex_lock(&c->lock);
    c->bytes += e->bytes;
    sb_lru_put(c->map, k, klen, e);
    while (c->bytes > c->max_bytes && sb_lru_evict_oldest(c->map))
        ;
    publish_stats(c);
    pthread_mutex_unlock(&c->lock);
}

void sb_cache_put(sb_cache *c, const sb_cache_key *key, sb_secret_doc *doc, int64_t now)
{
    /* A document larger than the whole budget would evict everything and
     * then itself: not worth storing. */
    if (c->ttl_ms <= 0 || doc->bytes > c->max_bytes / 2)
        return;
    store(c, key, doc, c->ttl_ms, now);
}

void sb_cache_put_absent(sb_cache *c, const sb_cache_key *key, int64_t now)
{
    if (c->negative_ttl_ms > 0)
        store(c, key, NULL, c->negative_ttl_ms, now);
}

struct secret_match {
    const char *ns;
    size_t ns_len;
    const char *name;
    size_t name_len;
};

static bool matches_secret(const void *key, size_t klen, void *value, void *ud)
{
    const struct secret_match *m = ud;
    const char *k = (const char *)key + 1; /* past the backend byte */
    size_t need = m->ns_len + 1 + m->name_len + 1;

    return klen > need && !memcmp(k, m->ns, m->ns_len + 1) &&
           !memcmp(k + m->ns_len + 1, m->name, m->name_len + 1);
}

size_t sb_cache_evict_secret(sb_cache *c, const char *ns, const char *name)
{
    struct secret_match m = {ns, strlen(ns), name, strlen(name)};

    pthread_mutex_lock(&c->lock);
    size_t n = sb_lru_remove_if(c->map, matches_secret, &m);
    publish_stats(c);
    pthread_mutex_unlock(&c->lock);
    return n;
}

void sb_cache_stats(sb_cache *c, size_t *out_entries, size_t *out_bytes)
{
    pthread_mutex_lock(&c->lock);
    *out_entries = sb_lru_count(c->map);
    *out_bytes = c->bytes;
    pthread_mutex_unlock(&c->lock);
}
