/* Unit tests of src/broker/breaker: opening after failures in a row, the
 * open period, one probe when half-open, the probe's answer deciding, late
 * reports from an earlier period ignored, a lost probe replaced, and the
 * state seen by /readyz. Time is passed in: no sleeping. */
#include "broker/breaker.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static sb_breaker_ticket admit(sb_breaker *b, int64_t now)
{
    sb_breaker_ticket t = 0;

    assert_true(sb_breaker_admit(b, now, &t, NULL));
    return t;
}

static void refused(sb_breaker *b, int64_t now, int64_t want_retry_ms)
{
    sb_breaker_ticket t = 0;
    int64_t retry = -1;

    assert_false(sb_breaker_admit(b, now, &t, &retry));
    assert_int_equal(retry, want_retry_ms);
}

static void fail_calls(sb_breaker *b, int n, int64_t now)
{
    for (int i = 0; i < n; i++)
        sb_breaker_report(b, admit(b, now), true, now);
}

static void test_opens_after_threshold_failures_in_a_row(void **state)
{
    sb_breaker *b = sb_breaker_new(SB_BACKEND_K8S, 3, 10000);

    fail_calls(b, 2, 0);
    sb_breaker_report(b, admit(b, 0), false, 0); /* a success resets the count */
    fail_calls(b, 2, 1);
    assert_int_equal(sb_breaker_state_at(b, 1), SB_BREAKER_CLOSED);
    fail_calls(b, 1, 2);
    assert_int_equal(sb_breaker_state_at(b, 2), SB_BREAKER_OPEN);
    refused(b, 2, 10000);
    refused(b, 9002, 1000);
    sb_breaker_free(b);
}

static void test_half_open_lets_one_probe_through(void **state)
{
    sb_breaker *b = sb_breaker_new(SB_BACKEND_AWS, 1, 5000);

    fail_calls(b, 1, 0);
    assert_int_equal(sb_breaker_state_at(b, 4999), SB_BREAKER_OPEN);
    /* Time is up: /readyz already sees it half-open, before any call. */
    assert_int_equal(sb_breaker_state_at(b, 5000), SB_BREAKER_HALF_OPEN);
    sb_breaker_ticket probe = admit(b, 5000);
    refused(b, 5001, 1000);
    refused(b, 6000, 1000);

    sb_breaker_report(b, probe, false, 6500);
    assert_int_equal(sb_breaker_state_at(b, 6500), SB_BREAKER_CLOSED);
    admit(b, 6500);
    admit(b, 6500);
    sb_breaker_free(b);
}

static void test_failed_probe_opens_again(void **state)
{
    sb_breaker *b = sb_breaker_new(SB_BACKEND_K8S, 2, 1000);

    fail_calls(b, 2, 0);
    sb_breaker_ticket probe = admit(b, 1000);
    sb_breaker_report(b, probe, true, 1200);
    assert_int_equal(sb_breaker_state_at(b, 1200), SB_BREAKER_OPEN);
    refused(b, 1200, 1000); /* a whole open period from the probe's failure */
    refused(b, 2199, 1);
    admit(b, 2200);
    sb_breaker_free(b);
}

static void test_late_reports_of_an_earlier_period_are_ignored(void **state)
{
    sb_breaker *b = sb_breaker_new(SB_BACKEND_K8S, 2, 1000);
    sb_breaker_ticket slow = admit(b, 0); /* admitted while closed, answers late */

    fail_calls(b, 2, 10);
    sb_breaker_report(b, slow, false, 20); /* must not close the open breaker */
    assert_int_equal(sb_breaker_state_at(b, 20), SB_BREAKER_OPEN);

    sb_breaker_ticket probe = admit(b, 1010);
    sb_breaker_report(b, slow, false, 1020); /* nor be taken for the probe */
    assert_int_equal(sb_breaker_state_at(b, 1020), SB_BREAKER_HALF_OPEN);
    refused(b, 1020, 1000);
    sb_breaker_report(b, probe, false, 1030);
    assert_int_equal(sb_breaker_state_at(b, 1030), SB_BREAKER_CLOSED);

    /* The probe's period is over: a second report of it counts for
     * nothing, while failures of the new closed period do. */
    sb_breaker_ticket now_closed = admit(b, 1030);
    fail_calls(b, 1, 1040);
    sb_breaker_report(b, probe, true, 1050);
    assert_int_equal(sb_breaker_state_at(b, 1050), SB_BREAKER_CLOSED);
    sb_breaker_report(b, now_closed, true, 1050);
    assert_int_equal(sb_breaker_state_at(b, 1050), SB_BREAKER_OPEN);
    sb_breaker_free(b);
}

static void test_lost_probe_is_replaced(void **state)
{
    sb_breaker *b = sb_breaker_new(SB_BACKEND_K8S, 1, 1000);

    fail_calls(b, 1, 0);
    sb_breaker_ticket lost = admit(b, 1000);
    refused(b, 1999, 1000);
    sb_breaker_ticket probe = admit(b, 2000); /* the first never reported */
    sb_breaker_report(b, lost, false, 2100);
    assert_int_equal(sb_breaker_state_at(b, 2100), SB_BREAKER_HALF_OPEN);
    sb_breaker_report(b, probe, false, 2200);
    assert_int_equal(sb_breaker_state_at(b, 2200), SB_BREAKER_CLOSED);
    sb_breaker_free(b);
}

static void test_what_counts_as_failing(void **state)
{
    assert_true(sb_breaker_failure(SB_E_UNAVAILABLE));
    assert_true(sb_breaker_failure(SB_E_TIMEOUT));
    assert_true(sb_breaker_failure(SB_E_THROTTLED));
    assert_true(sb_breaker_failure(SB_E_UPSTREAM));
    assert_false(sb_breaker_failure(SB_OK));
    assert_false(sb_breaker_failure(SB_E_NOT_FOUND));
    assert_false(sb_breaker_failure(SB_E_FORBIDDEN));
    assert_false(sb_breaker_failure(SB_E_CREDENTIALS));
    assert_false(sb_breaker_failure(SB_E_SHUTDOWN));
    assert_string_equal(sb_breaker_state_name(SB_BREAKER_HALF_OPEN), "half_open");
    sb_breaker_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opens_after_threshold_failures_in_a_row),
        cmocka_unit_test(test_half_open_lets_one_probe_through),
        cmocka_unit_test(test_failed_probe_opens_again),
        cmocka_unit_test(test_late_reports_of_an_earlier_period_are_ignored),
        cmocka_unit_test(test_lost_probe_is_replaced),
        cmocka_unit_test(test_what_counts_as_failing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
