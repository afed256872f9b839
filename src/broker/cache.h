/* The value cache: secret documents keyed by (backend, namespace, name,
 * version selector), with a TTL, an entry bound and a byte budget, least
 * recently used evicted first (DESIGN.md section 7). It also remembers
 * "this backend has no such secret" for a short negative TTL. The cache
 * knows nothing of callers: the broker authorizes every request before it
 * reads a value from the cache.
 *
 * The cache is split into shards by (namespace, name), each with its own
 * lock, bound and budget (the configured ones divided among them), so the
 * HTTP threads answering from it do not queue behind one lock; LRU order is
 * kept per shard. Small caches have one shard. Every function is
 * thread-safe, and every decision by time takes `now` (monotonic ms). */
#ifndef SB_BROKER_CACHE_H
#define SB_BROKER_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "core/config.h"

typedef struct sb_cache sb_cache;

typedef struct sb_cache_key {
    sb_backend_kind backend;
    const char *ns;
    const char *name;
    const char *version_stage; /* "" or NULL when absent */
    const char *version_id;    /* "" or NULL when absent */
} sb_cache_key;

typedef enum sb_cache_state {
    SB_CACHE_MISS,   /* nothing fresh: ask the backend */
    SB_CACHE_HIT,    /* *out_doc holds a reference for the caller */
    SB_CACHE_ABSENT, /* the backend said "no such secret" within the negative TTL */
} sb_cache_state;

/* A cache sized by cfg: CACHE_TTL_SECONDS, CACHE_MAX_SIZE, CACHE_MAX_BYTES,
 * CACHE_NEGATIVE_TTL_SECONDS; an entry past its TTL is kept for
 * STALE_IF_ERROR_SECONDS after it was stored (for sb_cache_get_stale), then
 * dropped. */
sb_cache *sb_cache_new(const sb_config *cfg);
void sb_cache_free(sb_cache *c); /* wipes every value; accepts NULL */

/* The fresh entry under key, marked most recently used. On a hit *out_doc
 * receives a reference the caller releases. */
sb_cache_state sb_cache_get(sb_cache *c, const sb_cache_key *key, int64_t now,
                            sb_secret_doc **out_doc);

/* What sb_cache_get would answer, without taking a reference or changing
 * the LRU order: for deciding what to do before the caller is authorized. */
sb_cache_state sb_cache_peek(sb_cache *c, const sb_cache_key *key, int64_t now);

/* The value under key even if its TTL has passed, when it was stored at
 * most max_age_ms ago (stale-if-error). NULL when there is none. */
sb_secret_doc *sb_cache_get_stale(sb_cache *c, const sb_cache_key *key, int64_t now,
                                  int64_t max_age_ms);

/* Stores a document (the cache takes its own reference) / an absence,
 * replacing what key held. When the new answer cannot be kept (TTL 0, or a
 * document over half a shard's budget) the old one is dropped all the same,
 * so a later read never sees an answer older than the newest fetched. */
void sb_cache_put(sb_cache *c, const sb_cache_key *key, sb_secret_doc *doc, int64_t now);
void sb_cache_put_absent(sb_cache *c, const sb_cache_key *key, int64_t now);

/* Drops every entry of ns/name, whatever backend or selector (a watch saw
 * it change). Returns the number dropped. */
size_t sb_cache_evict_secret(sb_cache *c, const char *ns, const char *name);

/* Drops every entry of one backend (a watch lost track of changes). */
size_t sb_cache_evict_backend(sb_cache *c, sb_backend_kind backend);

/* Drops entries past their TTL and stale window, so expired values do not
 * linger in memory until the LRU reaches them. Returns the number dropped. */
size_t sb_cache_sweep(sb_cache *c, int64_t now);

/* Entries held and the bytes they take: the entry, the map's node and key,
 * the document with its strings, and each value's block in the secret
 * arena. */
void sb_cache_stats(sb_cache *c, size_t *out_entries, size_t *out_bytes);

#endif
