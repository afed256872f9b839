/* The LRU map (see lru.h): chained buckets for lookup, one doubly linked
 * list for recency. The table doubles when it fills past one entry per
 * bucket. */
#include "core/lru.h"

#include <gnutls/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

struct node {
    struct node *chain;         /* next in the bucket */
    struct node *newer, *older; /* recency list */
    uint64_t hash;
    void *value;
    size_t klen;
    unsigned char key[];
};

struct sb_lru {
    struct node **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    size_t max;
    struct node *newest, *oldest;
    sb_lru_free_fn free_value;
};

static uint64_t sip_key[2];
static pthread_once_t sip_once = PTHREAD_ONCE_INIT;

static void sip_init(void)
{
    if (gnutls_rnd(GNUTLS_RND_NONCE, sip_key, sizeof(sip_key)) != 0)
        abort(); /* no randomness: nothing secure can run */
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* SipHash-2-4 (Aumasson and Bernstein, 2012), little-endian words. */
uint64_t sb_hash(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t v0, v1, v2, v3, m;
    size_t i, blocks = len / 8;

    pthread_once(&sip_once, sip_init);
    v0 = sip_key[0] ^ 0x736f6d6570736575ULL;
    v1 = sip_key[1] ^ 0x646f72616e646f6dULL;
    v2 = sip_key[0] ^ 0x6c7967656e657261ULL;
    v3 = sip_key[1] ^ 0x7465646279746573ULL;
    for (i = 0; i < blocks; i++, p += 8) {
        memcpy(&m, p, 8);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }

    m = (uint64_t)len << 56;
    for (i = 0; i < len % 8; i++)
        m |= (uint64_t)p[i] << (8 * i);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

sb_lru *sb_lru_new(size_t max_entries, sb_lru_free_fn free_value)
{
    sb_lru *l = sb_xcalloc(1, sizeof(*l));

    l->nbuckets = 64;
    l->buckets = sb_xcalloc(l->nbuckets, sizeof(*l->buckets));
    l->max = max_entries ? max_entries : 1;
    l->free_value = free_value;
    return l;
}

static void list_unlink(sb_lru *l, struct node *n)
{
    if (n->newer)
        n->newer->older = n->older;
    else
        l->newest = n->older;
    if (n->older)
        n->older->newer = n->newer;
    else
        l->oldest = n->newer;
    n->newer = n->older = NULL;
}

static void list_push_newest(sb_lru *l, struct node *n)
{
    n->older = l->newest;
    n->newer = NULL;
    if (l->newest)
        l->newest->newer = n;
    l->newest = n;
    if (!l->oldest)
        l->oldest = n;
}

static struct node **find_slot(sb_lru *l, uint64_t hash, const void *key, size_t klen)
{
    struct node **slot = &l->buckets[hash & (l->nbuckets - 1)];

    for (; *slot; slot = &(*slot)->chain) {
        struct node *n = *slot;
        if (n->hash == hash && n->klen == klen && !memcmp(n->key, key, klen))
            return slot;
    }
    return slot;
}

static void grow(sb_lru *l)
{
    size_t nb = l->nbuckets * 2;
    struct node **b = sb_xcalloc(nb, sizeof(*b));

    for (size_t i = 0; i < l->nbuckets; i++) {
        for (struct node *n = l->buckets[i], *next; n; n = next) {
            next = n->chain;
            n->chain = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
        }
    }
    free(l->buckets);
    l->buckets = b;
    l->nbuckets = nb;
}

static void drop(sb_lru *l, struct node **slot)
{
    struct node *n = *slot;

    *slot = n->chain;
    list_unlink(l, n);
    l->count--;
    if (l->free_value)
        l->free_value(n->value);
    free(n);
}

void *sb_lru_get(sb_lru *l, const void *key, size_t klen)
{
    struct node *n = *find_slot(l, sb_hash(key, klen), key, klen);

    if (!n)
        return NULL;
    list_unlink(l, n);
    list_push_newest(l, n);
    return n->value;
}

void *sb_lru_peek(const sb_lru *l, const void *key, size_t klen)
{
    struct node *n = *find_slot((sb_lru *)l, sb_hash(key, klen), key, klen);

    return n ? n->value : NULL;
}

void sb_lru_put(sb_lru *l, const void *key, size_t klen, void *value)
{
    uint64_t hash = sb_hash(key, klen);
    struct node **slot = find_slot(l, hash, key, klen);

    if (*slot)
        drop(l, slot);
    struct node *n = sb_xmalloc(sizeof(*n) + klen);
    n->hash = hash;
    n->value = value;
    n->klen = klen;
    memcpy(n->key, key, klen);
    n->chain = l->buckets[hash & (l->nbuckets - 1)];
    l->buckets[hash & (l->nbuckets - 1)] = n;
    list_push_newest(l, n);
    l->count++;

    if (l->count > l->nbuckets)
        grow(l);
    while (l->count > l->max)
        sb_lru_evict_oldest(l);
}

bool sb_lru_remove(sb_lru *l, const void *key, size_t klen)
{
    struct node **slot = find_slot(l, sb_hash(key, klen), key, klen);

    if (!*slot)
        return false;
    drop(l, slot);
    return true;
}

bool sb_lru_evict_oldest(sb_lru *l)
{
    struct node *n = l->oldest;

    if (!n)
        return false;
    return sb_lru_remove(l, n->key, n->klen);
}

size_t sb_lru_remove_if(sb_lru *l, sb_lru_pred_fn pred, void *ud)
{
    size_t removed = 0;

    for (size_t i = 0; i < l->nbuckets; i++) {
        struct node **slot = &l->buckets[i];
        while (*slot) {
            struct node *n = *slot;
            if (pred(n->key, n->klen, n->value, ud)) {
                drop(l, slot);
                removed++;
            } else {
                slot = &n->chain;
            }
        }
    }
    return removed;
}

size_t sb_lru_count(const sb_lru *l)
{
    return l->count;
}

size_t sb_lru_key_join(char *buf, size_t pos, const char *const *parts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(parts[i]);
        memcpy(buf + pos, parts[i], len);
        pos += len;
        buf[pos++] = '\0';
    }
    return pos;
}

size_t sb_lru_entry_bytes(size_t klen)
{
    return sizeof(struct node) + klen;
}

void sb_lru_free(sb_lru *l)
{
    if (!l)
        return;
    while (sb_lru_evict_oldest(l))
        ;
    free(l->buckets);
    free(l);
}
