/* Unit tests of src/clients/retry: a quiet client may retry from the
 * reserve; under constant failure retries stay within the ratio of first
 * attempts plus the reserve; good times bank no more than the reserve. */
#include "clients/retry.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void test_reserve_allows_a_few_retries(void **state)
{
    sb_retry_budget rb;

    sb_retry_init(&rb);
    for (int i = 0; i < (int)SB_RETRY_RESERVE; i++)
        assert_true(sb_retry_take(&rb));
    assert_false(sb_retry_take(&rb));
}

/* Every call fails and wants two retries: the calls made stay within
 * (1 + ratio) times the first attempts, plus the reserve. */
static void test_no_storm_under_constant_failure(void **state)
{
    sb_retry_budget rb;
    int firsts = 0, retries = 0;

    sb_retry_init(&rb);
    for (int i = 0; i < 1000; i++) {
        sb_retry_first(&rb);
        firsts++;
        for (int r = 0; r < 2 && sb_retry_take(&rb); r++)
            retries++;
    }
    assert_true(retries <= SB_RETRY_RESERVE + SB_RETRY_RATIO * firsts);
    assert_true(retries >= SB_RETRY_RATIO * firsts); /* and the share is used */
}

static void test_good_times_bank_only_the_reserve(void **state)
{
    sb_retry_budget rb;
    int retries = 0;

    sb_retry_init(&rb);
    for (int i = 0; i < 100000; i++)
        sb_retry_first(&rb);
    while (sb_retry_take(&rb))
        retries++;
    assert_int_equal(retries, (int)SB_RETRY_RESERVE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_allows_a_few_retries),
        cmocka_unit_test(test_no_storm_under_constant_failure),
        cmocka_unit_test(test_good_times_bank_only_the_reserve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
