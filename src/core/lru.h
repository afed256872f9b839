/* A bounded map from byte-string keys to values with least-recently-used
 * eviction: the storage behind the value cache and the decision cache.
 * Keys are hashed with SipHash under a per-process random key, since they
 * contain names callers choose. Not thread-safe: the owner locks. */
#ifndef SB_CORE_LRU_H
#define SB_CORE_LRU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sb_lru sb_lru;

/* Called when the map lets go of a value (eviction, replacement, removal,
 * free). */
typedef void (*sb_lru_free_fn)(void *value);

/* A map holding at most max_entries entries. */
sb_lru *sb_lru_new(size_t max_entries, sb_lru_free_fn free_value);
void sb_lru_free(sb_lru *l); /* accepts NULL */

/* The value under key, marked most recently used; NULL when absent. */
void *sb_lru_get(sb_lru *l, const void *key, size_t klen);

/* The value under key, leaving the recency order as it is; NULL when
 * absent. */
void *sb_lru_peek(const sb_lru *l, const void *key, size_t klen);

/* Stores value under key (a copy of the key is kept), replacing and
 * freeing any previous value, then evicts from the old end while over the
 * entry bound. */
void sb_lru_put(sb_lru *l, const void *key, size_t klen, void *value);

/* Removes key; true when it was there. */
bool sb_lru_remove(sb_lru *l, const void *key, size_t klen);

/* Removes the least recently used entry; false when empty. */
bool sb_lru_evict_oldest(sb_lru *l);

/* Removes every entry for which pred returns true. */
typedef bool (*sb_lru_pred_fn)(const void *key, size_t klen, void *value, void *ud);
size_t sb_lru_remove_if(sb_lru *l, sb_lru_pred_fn pred, void *ud);

size_t sb_lru_count(const sb_lru *l);

/* The memory one entry with a key of klen bytes takes in the map, besides
 * its value (for byte budgets that must be exact). */
size_t sb_lru_entry_bytes(size_t klen);

/* Appends each of the n parts to buf at pos, each followed by a NUL, and
 * returns the new length. No part can contain a NUL, so two lists of parts
 * never make the same key. buf must have room for them all: the callers'
 * parts are bounded names. */
size_t sb_lru_key_join(char *buf, size_t pos, const char *const *parts, size_t n);

/* SipHash-2-4 of data under the process key (set once, from GnuTLS's
 * random generator, on first use). */
uint64_t sb_hash(const void *data, size_t len);

#endif
