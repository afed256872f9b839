/* Token buckets (see ratelimit.h), in shards of LRU maps so callers on
 * different HTTP threads rarely share a lock. */
#include "broker/ratelimit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/limits.h"
#include "core/lru.h"

#define SHARDS 16

struct bucket {
    double tokens;
    int64_t updated_ms;
};

struct shard {
    pthread_mutex_t lock;
    sb_lru *buckets;
} __attribute__((aligned(64)));

struct sb_ratelimit {
    struct shard shards[SHARDS];
    double per_ms;
    double burst;
};

sb_ratelimit *sb_ratelimit_new(double per_second, double burst, size_t max_keys)
{
    sb_ratelimit *rl = sb_xcalloc(1, sizeof(*rl));
    size_t per_shard = max_keys / SHARDS ? max_keys / SHARDS : 1;

    rl->per_ms = per_second > 0 ? per_second / 1000.0 : 0;
    rl->burst = burst;
    for (size_t i = 0; i < SHARDS; i++) {
        pthread_mutex_init(&rl->shards[i].lock, NULL);
        rl->shards[i].buckets = sb_lru_new(per_shard, free);
    }
    return rl;
}

void sb_ratelimit_free(sb_ratelimit *rl)
{
    if (!rl)
        return;
    for (size_t i = 0; i < SHARDS; i++) {
        sb_lru_free(rl->shards[i].buckets);
        pthread_mutex_destroy(&rl->shards[i].lock);
    }
    free(rl);
}

/* Refills b for the time since its last update. A clock that went back
 * adds nothing and moves nothing, so it cannot mint tokens twice. */
static void refill(const sb_ratelimit *rl, struct bucket *b, int64_t now)
{
    if (now <= b->updated_ms)
        return;
    b->tokens += (double)(now - b->updated_ms) * rl->per_ms;
    if (b->tokens > rl->burst)
        b->tokens = rl->burst;
    b->updated_ms = now;
}

static int64_t wait_for_token(const sb_ratelimit *rl, const struct bucket *b)
{
    if (rl->per_ms <= 0 || rl->burst < 1)
        return -1;
    double ms = (1.0 - b->tokens) / rl->per_ms;
    int64_t whole = (int64_t)ms;
    return whole < ms ? whole + 1 : whole;
}

bool sb_ratelimit_take(sb_ratelimit *rl, const void *key, size_t klen, int64_t now,
                       int64_t *out_retry_ms)
{
    struct shard *s = &rl->shards[sb_hash(key, klen) % SHARDS];
    bool taken = false;
    int64_t retry = -1;

    pthread_mutex_lock(&s->lock);
    struct bucket *b = sb_lru_get(s->buckets, key, klen);
    if (!b) {
        b = sb_xmalloc(sizeof(*b));
        *b = (struct bucket){.tokens = rl->burst, .updated_ms = now};
        sb_lru_put(s->buckets, key, klen, b);
    }
    refill(rl, b, now);
    if (b->tokens >= 1) {
        b->tokens -= 1;
        taken = true;
    } else {
        retry = wait_for_token(rl, b);
    }
    pthread_mutex_unlock(&s->lock);

    if (!taken && out_retry_ms)
        *out_retry_ms = retry;
    return taken;
}

bool sb_ratelimit_take_identity(sb_ratelimit *rl, const sb_identity *id, int64_t now,
                                int64_t *out_retry_ms)
{
    char key[SB_MAX_NAMESPACE + SB_MAX_SA_NAME + 2];
    size_t ns = strlen(id->ns), sa = strlen(id->sa);

    /* Namespaces cannot contain '/', so "<ns>/<sa>" names one identity. */
    memcpy(key, id->ns, ns);
    key[ns] = '/';
    memcpy(key + ns + 1, id->sa, sa);
    return sb_ratelimit_take(rl, key, ns + 1 + sa, now, out_retry_ms);
}

size_t sb_ratelimit_keys(sb_ratelimit *rl)
{
    size_t n = 0;

    for (size_t i = 0; i < SHARDS; i++) {
        pthread_mutex_lock(&rl->shards[i].lock);
        n += sb_lru_count(rl->shards[i].buckets);
        pthread_mutex_unlock(&rl->shards[i].lock);
    }
    return n;
}
