/* Unit tests of src/broker/ratelimit: a burst, then refusals with the right
 * wait, refill over (passed-in) time, keys independent of each other, the
 * bound on remembered keys, and a clock that goes back. */
#include "broker/ratelimit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static bool take(sb_ratelimit *rl, const char *key, int64_t now, int64_t *retry)
{
    return sb_ratelimit_take(rl, key, strlen(key), now, retry);
}

static void test_burst_then_refusal(void **state)
{
    sb_ratelimit *rl = sb_ratelimit_new(1.0, 10, 100); /* 60 a minute, 10 at once */
    int64_t retry = 0;

    for (int i = 0; i < 10; i++)
        assert_true(take(rl, "ns/a", 1000, NULL));
    assert_false(take(rl, "ns/a", 1000, &retry));
    assert_int_equal(retry, 1000);
    assert_false(take(rl, "ns/a", 1400, &retry));
    assert_int_equal(retry, 600);
    assert_true(take(rl, "ns/a", 2000, NULL));
    assert_false(take(rl, "ns/a", 2000, NULL));
    sb_ratelimit_free(rl);
}

static void test_refill_caps_at_burst(void **state)
{
    sb_ratelimit *rl = sb_ratelimit_new(2.0, 3, 100);

    for (int i = 0; i < 3; i++)
        assert_true(take(rl, "k", 0, NULL));
    assert_false(take(rl, "k", 0, NULL));
    /* An hour of rest still gives only a burst. */
    for (int i = 0; i < 3; i++)
        assert_true(take(rl, "k", 3600 * 1000, NULL));
    assert_false(take(rl, "k", 3600 * 1000, NULL));
    assert_true(take(rl, "k", 3600 * 1000 + 500, NULL)); /* 2 a second */
    sb_ratelimit_free(rl);
}

static void test_keys_are_independent(void **state)
{
    sb_ratelimit *rl = sb_ratelimit_new(1.0, 1, 100);
    sb_identity a = {.ns = "shop", .sa = "app"};
    sb_identity b = {.ns = "shop", .sa = "batch"};

    assert_true(sb_ratelimit_take_identity(rl, &a, 0, NULL));
    assert_false(sb_ratelimit_take_identity(rl, &a, 0, NULL));
    assert_true(sb_ratelimit_take_identity(rl, &b, 0, NULL));
    assert_int_equal(sb_ratelimit_keys(rl), 2);
    sb_ratelimit_free(rl);
}

static void test_memory_is_bounded(void **state)
{
    sb_ratelimit *rl = sb_ratelimit_new(1.0, 1, 160);
    char key[32];

    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof(key), "ns/sa-%d", i);
        assert_true(take(rl, key, 0, NULL));
    }
    assert_true(sb_ratelimit_keys(rl) <= 160);
    sb_ratelimit_free(rl);
}

static void test_never_and_clock_back(void **state)
{
    sb_ratelimit *off = sb_ratelimit_new(0, 0, 10);
    sb_ratelimit *rl = sb_ratelimit_new(1.0, 1, 10);
    int64_t retry = 0;

    assert_false(take(off, "k", 0, &retry));
    assert_int_equal(retry, -1);

    assert_true(take(rl, "k", 5000, NULL));
    assert_false(take(rl, "k", 1000, &retry)); /* earlier than the last take */
    assert_int_equal(retry, 1000);
    assert_false(take(rl, "k", 2000, NULL)); /* time before 5000 was already counted */
    assert_true(take(rl, "k", 6000, NULL));
    sb_ratelimit_free(off);
    sb_ratelimit_free(rl);
    sb_ratelimit_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refusal),   cmocka_unit_test(test_refill_caps_at_burst),
        cmocka_unit_test(test_keys_are_independent), cmocka_unit_test(test_memory_is_bounded),
        cmocka_unit_test(test_never_and_clock_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
