/* Unit tests of src/broker/cache: TTL, LRU order, entry bound and byte
 * budget, negative entries, eviction by secret and by backend, stale
 * lookups, sweeping, shards, and memory hygiene: a value planted in the
 * cache is gone from the secret arena once the cache lets go of it, however
 * it leaves (LRU, replacement, TTL sweep, watch eviction, shutdown). The
 * clock is a number passed in: no test sleeps. */
#include "broker/cache.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/secmem.h"

#define TTL     10000
#define NEG_TTL 2000

static sb_config small_config(size_t entries, size_t bytes)
{
    sb_config cfg;

    sb_config_defaults(&cfg);
    sb_config_free(&cfg); /* the cache reads numbers only */
    cfg.cache_max_entries = entries;
    cfg.cache_max_bytes = bytes;
    cfg.cache_ttl_ms = TTL;
    cfg.negative_ttl_ms = NEG_TTL;
    cfg.stale_if_error_ms = 0;
    return cfg;
}

static sb_secret_doc *doc_with(const char *ns, const char *name, const char *value, size_t len)
{
    sb_secret_doc *doc = sb_doc_new(SB_BACKEND_K8S, ns, name, "1");

    assert_int_equal(sb_doc_add(doc, "password", 8, value, len), SB_OK);
    sb_doc_seal(doc);
    return doc;
}

static sb_cache_key key_of(const char *ns, const char *name)
{
    return (sb_cache_key){.backend = SB_BACKEND_K8S, .ns = ns, .name = name};
}

/* Stores a fresh document with a small value under ns/name at now. */
static void put_named(sb_cache *c, const char *ns, const char *name, int64_t now)
{
    sb_cache_key k = key_of(ns, name);
    sb_secret_doc *doc = doc_with(ns, name, "v", 1);

    sb_cache_put(c, &k, doc, now);
    sb_doc_unref(doc);
}

static sb_cache_state state_at(sb_cache *c, const char *ns, const char *name, int64_t now)
{
    sb_cache_key k = key_of(ns, name);
    sb_secret_doc *doc = NULL;
    sb_cache_state st = sb_cache_get(c, &k, now, &doc);

    sb_doc_unref(doc);
    return st;
}

static size_t entries_of(sb_cache *c)
{
    size_t entries, bytes;

    sb_cache_stats(c, &entries, &bytes);
    return entries;
}

static size_t bytes_of(sb_cache *c)
{
    size_t entries, bytes;

    sb_cache_stats(c, &entries, &bytes);
    return bytes;
}

static void test_ttl(void **state)
{
    sb_config cfg = small_config(10, 1 << 20);
    sb_cache *c = sb_cache_new(&cfg);
    sb_secret_doc *doc = doc_with("ns1", "db", "hunter2", 7);
    sb_secret_doc *got = NULL;
    sb_cache_key k = key_of("ns1", "db");

    assert_int_equal(sb_cache_get(c, &k, 0, &got), SB_CACHE_MISS);
    sb_cache_put(c, &k, doc, 1000);
    assert_int_equal(sb_cache_get(c, &k, 1000 + TTL - 1, &got), SB_CACHE_HIT);
    assert_ptr_equal(got, doc);
    sb_doc_unref(got);
    assert_int_equal(sb_cache_peek(c, &k, 1000 + TTL - 1), SB_CACHE_HIT);
    assert_int_equal(sb_cache_get(c, &k, 1000 + TTL, &got), SB_CACHE_MISS);
    assert_int_equal(sb_cache_peek(c, &k, 1000 + TTL), SB_CACHE_MISS);

    /* Keys differ by backend and selector. */
    sb_cache_put(c, &k, doc, 0);
    sb_cache_key aws = k, staged = k;
    aws.backend = SB_BACKEND_AWS;
    staged.version_stage = "AWSPREVIOUS";
    assert_int_equal(sb_cache_peek(c, &aws, 1), SB_CACHE_MISS);
    assert_int_equal(sb_cache_peek(c, &staged, 1), SB_CACHE_MISS);
    sb_doc_unref(doc);
    sb_cache_free(c);
}

static void test_ttl_zero_caches_nothing(void **state)
{
    sb_config cfg = small_config(10, 1 << 20);
    cfg.cache_ttl_ms = 0;
    sb_cache *c = sb_cache_new(&cfg);

    put_named(c, "ns1", "db", 0);
    assert_int_equal(state_at(c, "ns1", "db", 0), SB_CACHE_MISS);
    assert_int_equal(entries_of(c), 0);
    sb_cache_free(c);
}

static void test_lru_order(void **state)
{
    sb_config cfg = small_config(3, 1 << 20);
    sb_cache *c = sb_cache_new(&cfg);

    put_named(c, "ns", "a", 0);
    put_named(c, "ns", "b", 0);
    put_named(c, "ns", "c", 0);
    assert_int_equal(state_at(c, "ns", "a", 1), SB_CACHE_HIT); /* a is now the newest */
    put_named(c, "ns", "d", 2);                                /* b goes */
    assert_int_equal(entries_of(c), 3);
    assert_int_equal(state_at(c, "ns", "b", 3), SB_CACHE_MISS);
    assert_int_equal(state_at(c, "ns", "a", 3), SB_CACHE_HIT);
    assert_int_equal(state_at(c, "ns", "c", 3), SB_CACHE_HIT);
    assert_int_equal(state_at(c, "ns", "d", 3), SB_CACHE_HIT);
    sb_cache_free(c);
}

static void test_peek_leaves_lru_order(void **state)
{
    sb_config cfg = small_config(2, 1 << 20);
    sb_cache *c = sb_cache_new(&cfg);
    sb_cache_key a = key_of("ns", "a");

    put_named(c, "ns", "a", 0);
    put_named(c, "ns", "b", 0);
    assert_int_equal(sb_cache_peek(c, &a, 1), SB_CACHE_HIT);
    put_named(c, "ns", "c", 2); /* a is still the oldest */
    assert_int_equal(sb_cache_peek(c, &a, 3), SB_CACHE_MISS);
    sb_cache_free(c);
}

static void test_byte_budget_is_exact(void **state)
{
    char value[1024];
    sb_config cfg = small_config(1000, 8 * 1024);
    sb_cache *c = sb_cache_new(&cfg);

    memset(value, 'x', sizeof(value));
    sb_secret_doc *doc = doc_with("ns", "a", value, sizeof(value));

    /* What an entry costs: the document's own accounting (each value at
     * its size class in the arena) plus an overhead that grows only with
     * the key. */
    size_t before = sb_secmem_in_use();
    sb_secret_doc *probe = doc_with("ns", "a", value, sizeof(value));
    assert_int_equal(sb_secmem_in_use() - before, sb_secmem_footprint(16 + sizeof(value) + 1));
    sb_doc_unref(probe);

    sb_cache_key k1 = key_of("ns", "a");
    sb_cache_put(c, &k1, doc, 0);
    size_t one = bytes_of(c);
    assert_true(one > doc->bytes);
    sb_cache_key k2 = key_of("ns", "abcde"); /* four bytes longer */
    sb_cache_put(c, &k2, doc, 0);
    assert_int_equal(bytes_of(c), 2 * one + 4);

    /* Replacing an entry does not count it twice. */
    sb_cache_put(c, &k1, doc, 1);
    assert_int_equal(bytes_of(c), 2 * one + 4);

    /* Filling past the budget evicts the oldest, never exceeding it. */
    char name[16];
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof(name), "n%02d", i);
        sb_cache_key k = key_of("ns", name);
        sb_cache_put(c, &k, doc, 2 + i);
        assert_true(bytes_of(c) <= cfg.cache_max_bytes);
    }
    assert_int_equal(state_at(c, "ns", "a", 30), SB_CACHE_MISS);
    assert_int_equal(state_at(c, "ns", "n19", 30), SB_CACHE_HIT);
    assert_int_equal(bytes_of(c), entries_of(c) * (one + 2));

    /* Emptied, the count is back to zero exactly. */
    sb_cache_evict_backend(c, SB_BACKEND_K8S);
    assert_int_equal(entries_of(c), 0);
    assert_int_equal(bytes_of(c), 0);
    sb_doc_unref(doc);
    sb_cache_free(c);
}

static void test_too_large_drops_the_old_answer(void **state)
{
    static char big[6000];
    sb_config cfg = small_config(10, 8 * 1024);
    sb_cache *c = sb_cache_new(&cfg);
    sb_cache_key k = key_of("ns", "grew");

    put_named(c, "ns", "grew", 0);
    assert_int_equal(state_at(c, "ns", "grew", 1), SB_CACHE_HIT);
    sb_secret_doc *doc = doc_with("ns", "grew", big, sizeof(big));
    sb_cache_put(c, &k, doc, 2); /* over half the budget: not kept */
    assert_int_equal(state_at(c, "ns", "grew", 3), SB_CACHE_MISS);
    assert_int_equal(bytes_of(c), 0);
    sb_doc_unref(doc);
    sb_cache_free(c);
}

static void test_negative_entries(void **state)
{
    sb_config cfg = small_config(10, 1 << 20);
    sb_cache *c = sb_cache_new(&cfg);
    sb_cache_key k = key_of("ns", "missing");
    sb_secret_doc *got = NULL;

    sb_cache_put_absent(c, &k, 100);
    assert_int_equal(sb_cache_get(c, &k, 100 + NEG_TTL - 1, &got), SB_CACHE_ABSENT);
    assert_null(got);
    assert_int_equal(sb_cache_get(c, &k, 100 + NEG_TTL, &got), SB_CACHE_MISS);

    /* An absence replaces a value: a deleted secret is not served on. */
    put_named(c, "ns", "gone", 0);
    sb_cache_key g = key_of("ns", "gone");
    sb_cache_put_absent(c, &g, 1);
    assert_int_equal(state_at(c, "ns", "gone", 2), SB_CACHE_ABSENT);
    assert_null(sb_cache_get_stale(c, &g, 2, 1000000));
    sb_cache_free(c);
}

static void test_negative_ttl_zero_still_forgets_the_value(void **state)
{
    sb_config cfg = small_config(10, 1 << 20);
    cfg.negative_ttl_ms = 0;
    sb_cache *c = sb_cache_new(&cfg);
    sb_cache_key k = key_of("ns", "gone");

    put_named(c, "ns", "gone", 0);
    sb_cache_put_absent(c, &k, 1);
    assert_int_equal(state_at(c, "ns", "gone", 2), SB_CACHE_MISS);
    assert_int_equal(entries_of(c), 0);
    sb_cache_free(c);
}

static void test_evict_secret(void **state)
{
    sb_config cfg = small_config(100, 1 << 20);
    sb_cache *c = sb_cache_new(&cfg);
    sb_secret_doc *doc = doc_with("ns", "db", "v", 1);
    sb_cache_key k8s = key_of("ns", "db");
    sb_cache_key aws = {.backend = SB_BACKEND_AWS, .ns = "ns", .name = "db"};
    sb_cache_key staged = {
        .backend = SB_BACKEND_AWS, .ns = "ns", .name = "db", .version_stage = "AWSPREVIOUS"};

    sb_cache_put(c, &k8s, doc, 0);
    sb_cache_put(c, &aws, doc, 0);
    sb_cache_put(c, &staged, doc, 0);
    put_named(c, "ns", "db2", 0); /* same prefix, another secret */
    put_named(c, "ns2", "db", 0); /* same name, another namespace */
    put_named(c, "n", "sdb", 0);  /* "n\0sdb" vs "ns\0db": no confusion */

    assert_int_equal(sb_cache_evict_secret(c, "ns", "db"), 3);
    assert_int_equal(sb_cache_peek(c, &k8s, 1), SB_CACHE_MISS);
    assert_int_equal(sb_cache_peek(c, &staged, 1), SB_CACHE_MISS);
    assert_int_equal(state_at(c, "ns", "db2", 1), SB_CACHE_HIT);
    assert_int_equal(state_at(c, "ns2", "db", 1), SB_CACHE_HIT);
    assert_int_equal(state_at(c, "n", "sdb", 1), SB_CACHE_HIT);
    assert_int_equal(sb_cache_evict_secret(c, "ns", "db"), 0);
    assert_int_equal(sb_cache_evict_backend(c, SB_BACKEND_AWS), 0);
    assert_int_equal(sb_cache_evict_backend(c, SB_BACKEND_K8S), 3);
    sb_doc_unref(doc);
    sb_cache_free(c);
}

static void test_stale_lookup_and_sweep(void **state)
{
    sb_config cfg = small_config(10, 1 << 20);
    cfg.stale_if_error_ms = 3 * TTL;
    sb_cache *c = sb_cache_new(&cfg);
    sb_cache_key k = key_of("ns", "db");
    sb_secret_doc *doc = doc_with("ns", "db", "v", 1);

    sb_cache_put(c, &k, doc, 0);
    sb_doc_unref(doc);
    assert_int_equal(state_at(c, "ns", "db", TTL), SB_CACHE_MISS);
    sb_secret_doc *stale = sb_cache_get_stale(c, &k, 2 * TTL, 2 * TTL);
    assert_non_null(stale);
    sb_doc_unref(stale);
    assert_null(sb_cache_get_stale(c, &k, 2 * TTL + 1, 2 * TTL)); /* older than asked */

    put_named(c, "ns", "fresh", 2 * TTL);
    assert_int_equal(sb_cache_sweep(c, 3 * TTL - 1), 0); /* db still within its stale window */
    assert_int_equal(sb_cache_sweep(c, 3 * TTL), 1);
    assert_null(sb_cache_get_stale(c, &k, 3 * TTL, 10 * TTL));
    assert_int_equal(entries_of(c), 1);
    sb_cache_free(c);
}

static void test_shards_hold_the_bounds(void **state)
{
    sb_config cfg = small_config(1000, 64 * 1024 * 1024);
    sb_cache *c = sb_cache_new(&cfg);
    char name[32];

    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof(name), "secret-%d", i);
        put_named(c, "ns", name, i);
    }
    assert_true(entries_of(c) <= 1000);
    assert_true(entries_of(c) > 900); /* shards fill about evenly */
    assert_int_equal(state_at(c, "ns", "secret-4999", 5000), SB_CACHE_HIT);
    assert_int_equal(state_at(c, "ns", "secret-0", 5000), SB_CACHE_MISS);
    sb_cache_free(c);
}

/* The canary leaves the arena however the cache lets go of it. */
enum way_out { BY_LRU, BY_REPLACEMENT, BY_SWEEP, BY_WATCH, BY_SHUTDOWN };

static void plant_and_remove(enum way_out how)
{
    char canary[64];
    sb_config cfg = small_config(2, 1 << 20);
    sb_cache *c = sb_cache_new(&cfg);
    sb_cache_key k = key_of("ns", "db");

    snprintf(canary, sizeof(canary), "sbcanary-cache-%d-%08x", (int)how, (unsigned)getpid());
    size_t n = strlen(canary);
    sb_secret_doc *doc = doc_with("ns", "db", canary, n);
    sb_cache_put(c, &k, doc, 0);
    sb_doc_unref(doc);
    assert_int_equal(sb_secmem_count(canary, n), 1);

    switch (how) {
    case BY_LRU:
        put_named(c, "ns", "x", 1);
        put_named(c, "ns", "y", 2);
        break;
    case BY_REPLACEMENT:
        put_named(c, "ns", "db", 1);
        break;
    case BY_SWEEP:
        assert_int_equal(sb_cache_sweep(c, TTL), 1);
        break;
    case BY_WATCH:
        assert_int_equal(sb_cache_evict_secret(c, "ns", "db"), 1);
        break;
    case BY_SHUTDOWN:
        sb_cache_free(c);
        c = NULL;
        break;
    }
    assert_int_equal(sb_secmem_count(canary, n), 0);
    sb_cache_free(c);
}

static void test_canary_gone_after_eviction(void **state)
{
    plant_and_remove(BY_LRU);
    plant_and_remove(BY_REPLACEMENT);
    plant_and_remove(BY_SWEEP);
    plant_and_remove(BY_WATCH);
    plant_and_remove(BY_SHUTDOWN);
}

/* A served document outlives its eviction, then goes too. */
static void test_reference_outlives_eviction(void **state)
{
    char canary[64];
    sb_config cfg = small_config(2, 1 << 20);
    sb_cache *c = sb_cache_new(&cfg);
    sb_cache_key k = key_of("ns", "db");
    sb_secret_doc *served = NULL;

    snprintf(canary, sizeof(canary), "sbcanary-served-%08x", (unsigned)getpid());
    size_t n = strlen(canary);
    sb_secret_doc *doc = doc_with("ns", "db", canary, n);
    sb_cache_put(c, &k, doc, 0);
    sb_doc_unref(doc);
    assert_int_equal(sb_cache_get(c, &k, 1, &served), SB_CACHE_HIT);
    sb_cache_evict_secret(c, "ns", "db");
    assert_int_equal(sb_secmem_count(canary, n), 1); /* a response still holds it */
    sb_doc_unref(served);
    assert_int_equal(sb_secmem_count(canary, n), 0);
    sb_cache_free(c);
}

struct worker {
    sb_cache *c;
    unsigned seed;
};

static void *hammer(void *arg)
{
    struct worker *w = arg;
    char name[32];

    for (int i = 0; i < 20000; i++) {
        w->seed = w->seed * 1103515245u + 12345u;
        snprintf(name, sizeof(name), "s%u", (w->seed >> 8) % 300);
        if (w->seed % 7 == 0)
            put_named(w->c, "ns", name, i);
        else if (w->seed % 101 == 0)
            sb_cache_evict_secret(w->c, "ns", name);
        else
            (void)state_at(w->c, "ns", name, i);
    }
    return NULL;
}

static void test_threads(void **state)
{
    sb_config cfg = small_config(256, 64 * 1024 * 1024);
    sb_cache *c = sb_cache_new(&cfg);
    pthread_t t[4];
    struct worker w[4];

    for (unsigned i = 0; i < 4; i++) {
        w[i] = (struct worker){c, i + 1};
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_true(entries_of(c) <= 256);
    sb_cache_evict_backend(c, SB_BACKEND_K8S);
    assert_int_equal(bytes_of(c), 0);
    sb_cache_free(c);
}

static long rss_kib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* The benchmark's budget is 25 MB of RSS for 10,000 cached 1 KiB secrets:
 * the cache itself must stay well inside it. */
static void test_memory_per_1k_secret(void **state)
{
    enum { N = 10000 };
    static char value[1024];
    sb_config cfg = small_config(2 * N, 64 * 1024 * 1024);
    sb_cache *c = sb_cache_new(&cfg);
    char name[48];

    memset(value, 'v', sizeof(value));
    long rss0 = rss_kib();
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "app-secret-%05d", i);
        sb_secret_doc *doc = doc_with("team-namespace", name, value, sizeof(value));
        sb_cache_key k = key_of("team-namespace", name);
        sb_cache_put(c, &k, doc, 0);
        sb_doc_unref(doc);
    }
    long rss1 = rss_kib();
    size_t bytes = bytes_of(c);
    assert_int_equal(entries_of(c), N);
    print_message("cache: %d entries, %zu bytes counted (%zu per entry), RSS +%ld KiB "
                  "(%ld bytes per entry)\n",
                  N, bytes, bytes / N, rss1 - rss0, (rss1 - rss0) * 1024 / N);
    assert_true(bytes / N < 1700);
    if (rss0 > 0)
        assert_true((rss1 - rss0) * 1024 / N < 2000);
    sb_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_ttl_zero_caches_nothing),
        cmocka_unit_test(test_lru_order),
        cmocka_unit_test(test_peek_leaves_lru_order),
        cmocka_unit_test(test_byte_budget_is_exact),
        cmocka_unit_test(test_too_large_drops_the_old_answer),
        cmocka_unit_test(test_negative_entries),
        cmocka_unit_test(test_negative_ttl_zero_still_forgets_the_value),
        cmocka_unit_test(test_evict_secret),
        cmocka_unit_test(test_stale_lookup_and_sweep),
        cmocka_unit_test(test_shards_hold_the_bounds),
        cmocka_unit_test(test_canary_gone_after_eviction),
        cmocka_unit_test(test_reference_outlives_eviction),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_memory_per_1k_secret),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
