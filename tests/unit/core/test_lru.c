/* Unit tests of core/lru: lookup, recency, bounds, removal, and growth
 * past many entries. */
#include "core/lru.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static int freed;

static void count_free(void *v)
{
    freed++;
    free(v);
}

static int *num(int n)
{
    int *p = malloc(sizeof(*p));
    *p = n;
    return p;
}

static void test_put_get_replace(void **state)
{
    sb_lru *l = sb_lru_new(10, count_free);

    freed = 0;
    sb_lru_put(l, "a", 1, num(1));
    sb_lru_put(l, "a\0b", 3, num(2)); /* keys are bytes, NUL included */
    assert_int_equal(*(int *)sb_lru_get(l, "a", 1), 1);
    assert_int_equal(*(int *)sb_lru_get(l, "a\0b", 3), 2);
    assert_null(sb_lru_get(l, "b", 1));
    sb_lru_put(l, "a", 1, num(3));
    assert_int_equal(freed, 1);
    assert_int_equal(*(int *)sb_lru_get(l, "a", 1), 3);
    assert_int_equal(sb_lru_count(l), 2);
    assert_true(sb_lru_remove(l, "a", 1));
    assert_false(sb_lru_remove(l, "a", 1));
    sb_lru_free(l);
    assert_int_equal(freed, 3);
}

static void test_eviction_order(void **state)
{
    sb_lru *l = sb_lru_new(3, count_free);

    sb_lru_put(l, "1", 1, num(1));
    sb_lru_put(l, "2", 1, num(2));
    sb_lru_put(l, "3", 1, num(3));
    assert_non_null(sb_lru_get(l, "1", 1)); /* 2 is now the oldest */
    sb_lru_put(l, "4", 1, num(4));
    assert_null(sb_lru_get(l, "2", 1));
    assert_non_null(sb_lru_get(l, "1", 1));
    assert_true(sb_lru_evict_oldest(l)); /* 3 */
    assert_null(sb_lru_get(l, "3", 1));
    assert_int_equal(sb_lru_count(l), 2);
    sb_lru_free(l);
}

static bool is_even(const void *key, size_t klen, void *value, void *ud)
{
    return *(int *)value % 2 == 0;
}

static void test_many_and_remove_if(void **state)
{
    sb_lru *l = sb_lru_new(100000, count_free);
    char key[32];

    for (int i = 0; i < 20000; i++) {
        int n = snprintf(key, sizeof(key), "k%d", i);
        sb_lru_put(l, key, (size_t)n, num(i));
    }
    assert_int_equal(sb_lru_count(l), 20000);
    for (int i = 0; i < 20000; i += 997) {
        int n = snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(*(int *)sb_lru_get(l, key, (size_t)n), i);
    }
    assert_int_equal(sb_lru_remove_if(l, is_even, NULL), 10000);
    assert_int_equal(sb_lru_count(l), 10000);
    assert_null(sb_lru_get(l, "k2", 2));
    assert_non_null(sb_lru_get(l, "k3", 2));
    sb_lru_free(l);
}

static void test_hash_is_keyed(void **state)
{
    /* Same input, same process: same hash; different input: different. */
    assert_true(sb_hash("abc", 3) == sb_hash("abc", 3));
    assert_true(sb_hash("abc", 3) != sb_hash("abd", 3));
    assert_true(sb_hash("", 0) != sb_hash("\0", 1));
}

static void test_key_join(void **state)
{
    const char *ab_c[] = {"ab", "c"};
    const char *a_bc[] = {"a", "bc"};
    const char *empty[] = {"", ""};
    char x[16], y[16];
    size_t nx, ny;

    (void)state;
    x[0] = y[0] = '1';
    nx = sb_lru_key_join(x, 1, ab_c, 2);
    ny = sb_lru_key_join(y, 1, a_bc, 2);
    assert_int_equal(nx, 6);
    assert_memory_equal(x, "1ab\0c\0", 6);
    /* The same bytes, cut differently: different keys. */
    assert_int_equal(ny, 6);
    assert_memory_not_equal(x, y, 6);
    assert_int_equal(sb_lru_key_join(x, 0, empty, 2), 2);
    assert_memory_equal(x, "\0\0", 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_replace), cmocka_unit_test(test_key_join),
        cmocka_unit_test(test_eviction_order),  cmocka_unit_test(test_many_and_remove_if),
        cmocka_unit_test(test_hash_is_keyed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
