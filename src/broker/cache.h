/* The value cache: secret documents keyed by (backend, namespace, name,
 * version selector), with a TTL, an entry bound and a byte budget, least
 * recently used evicted first (DESIGN.md section 7). It also remembers
 * "this backend has no such secret" for a short negative TTL. The cache
 * knows nothing of callers: the broker authorizes every request before it
 * asks the cache. Thread-safe. */
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
    const char *version_stage; /* "" when absent */
    const char *version_id;    /* "" when absent */
} sb_cache_key;

typedef enum sb_cache_state {
    SB_CACHE_MISS,   /* nothing fresh: ask the backend */
    SB_CACHE_HIT,    /* *out_doc holds a reference for the caller */
    SB_CACHE_ABSENT, /* the backend said "no such secret" within the negative TTL */
} sb_cache_state;

/* A cache sized by cfg (CACHE_TTL_SECONDS, CACHE_MAX_SIZE, CACHE_MAX_BYTES,
 * CACHE_NEGATIVE_TTL_SECONDS). */
sb_cache *sb_cache_new(const sb_config *cfg);
void sb_cache_free(sb_cache *c); /* wipes every value; accepts NULL */

sb_cache_state sb_cache_get(sb_cache *c, const sb_cache_key *key, int64_t now,
                            sb_secret_doc **out_doc);

/* The entry under key even if its TTL has passed, when it was stored at
 * most max_age_ms ago (stale-if-error). NULL when there is none. */
sb_secret_doc *sb_cache_get_stale(sb_cache *c, const sb_cache_key *key, int64_t now,
                                  int64_t max_age_ms);

/* Stores a document (the cache takes its own reference) / an absence. */
void sb_cache_put(sb_cache *c, const sb_cache_key *key, sb_secret_doc *doc, int64_t now);
void sb_cache_put_absent(sb_cache *c, const sb_cache_key *key, int64_t now);

/* Drops every entry of ns/name, whatever backend or selector (a watch saw
 * it change). Returns the number dropped. */
size_t sb_cache_evict_secret(sb_cache *c, const char *ns, const char *name);

void sb_cache_stats(sb_cache *c, size_t *out_entries, size_t *out_bytes);

#endif
