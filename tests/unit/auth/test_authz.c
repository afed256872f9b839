/* Unit tests of src/auth/authz's decision cache: allow and deny TTLs
 * (including 0, which caches nothing), a deny replacing an allow at once
 * (an upstream 403), forgetting, keys that cannot be confused, the
 * development mode's own-namespace rule, the stale allow kept for when the
 * API server cannot answer, and many threads at once. The
 * clock is a number passed in. SubjectAccessReviews are exercised by the
 * integration tests against a real API server. */
#include "auth/authz.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static sb_authz *authz_stale(int allow_ms, int deny_ms, int stale_ms)
{
    sb_config cfg;

    sb_config_defaults(&cfg);
    sb_config_free(&cfg); /* numbers only from here */
    cfg.authz_allow_ttl_ms = allow_ms;
    cfg.authz_deny_ttl_ms = deny_ms;
    cfg.authz_stale_ms = stale_ms;
    return sb_authz_new(&cfg, NULL);
}

static sb_authz *authz_with(int allow_ms, int deny_ms)
{
    return authz_stale(allow_ms, deny_ms, 0);
}

static const sb_identity alice = {.ns = "shop", .sa = "alice"};
static const sb_identity bob = {.ns = "shop", .sa = "bob"};

static void test_defaults_are_the_design_maxima(void **state)
{
    sb_config cfg;

    sb_config_defaults(&cfg);
    sb_config_free(&cfg); /* numbers only from here */
    assert_int_equal(cfg.authz_allow_ttl_ms, 30000);
    assert_int_equal(cfg.authz_deny_ttl_ms, 5000);
}

static void test_allow_and_deny_ttls(void **state)
{
    sb_authz *a = authz_with(30000, 5000);

    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db", 0), SB_DECISION_UNKNOWN);
    sb_authz_record(a, &alice, "shop", "db", true, 1000);
    sb_authz_record(a, &bob, "shop", "db", false, 1000);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db", 1000), SB_DECISION_ALLOW);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db", 30999), SB_DECISION_ALLOW);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db", 31000), SB_DECISION_UNKNOWN);
    assert_int_equal(sb_authz_lookup(a, &bob, "shop", "db", 5999), SB_DECISION_DENY);
    assert_int_equal(sb_authz_lookup(a, &bob, "shop", "db", 6000), SB_DECISION_UNKNOWN);
    assert_int_equal(sb_authz_cached(a), 2);
    sb_authz_free(a);
}

static void test_zero_ttls_cache_nothing(void **state)
{
    sb_authz *a = authz_with(0, 0);

    sb_authz_record(a, &alice, "shop", "db", true, 0);
    sb_authz_record(a, &bob, "shop", "db", false, 0);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db", 0), SB_DECISION_UNKNOWN);
    assert_int_equal(sb_authz_lookup(a, &bob, "shop", "db", 0), SB_DECISION_UNKNOWN);
    assert_int_equal(sb_authz_cached(a), 0);
    sb_authz_free(a);
}

static void test_upstream_403_ends_the_allow_at_once(void **state)
{
    sb_authz *a = authz_with(30000, 5000);
    sb_authz *nodeny = authz_with(30000, 0);

    sb_authz_record(a, &alice, "shop", "db", true, 0);
    sb_authz_record(a, &alice, "shop", "db", false, 10);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db", 10), SB_DECISION_DENY);

    /* With deny decisions not cached, the allow is still gone. */
    sb_authz_record(nodeny, &alice, "shop", "db", true, 0);
    sb_authz_record(nodeny, &alice, "shop", "db", false, 10);
    assert_int_equal(sb_authz_lookup(nodeny, &alice, "shop", "db", 10), SB_DECISION_UNKNOWN);

    sb_authz_record(a, &bob, "shop", "db", true, 0);
    sb_authz_forget(a, &bob, "shop", "db");
    assert_int_equal(sb_authz_lookup(a, &bob, "shop", "db", 1), SB_DECISION_UNKNOWN);
    sb_authz_free(a);
    sb_authz_free(nodeny);
}

static void test_no_stale_allow_by_default(void **state)
{
    sb_authz *a = authz_with(30000, 5000);

    sb_authz_record(a, &alice, "shop", "db", true, 0);
    assert_true(sb_authz_allowed_if_error(a, &alice, "shop", "db", 29999));
    assert_false(sb_authz_allowed_if_error(a, &alice, "shop", "db", 30000));
    assert_false(sb_authz_allowed_if_error(a, &bob, "shop", "db", 0));
    sb_authz_free(a);
}

static void test_stale_allow_within_its_window(void **state)
{
    sb_authz *a = authz_stale(30000, 5000, 300000);

    sb_authz_record(a, &alice, "shop", "db", true, 1000);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db", 31000), SB_DECISION_UNKNOWN);
    /* Counted from the decision, as STALE_IF_ERROR_SECONDS is for values. */
    assert_true(sb_authz_allowed_if_error(a, &alice, "shop", "db", 301000));
    assert_false(sb_authz_allowed_if_error(a, &alice, "shop", "db", 301001));

    /* A deny since, even one not cached, ends it; so does forgetting. */
    sb_authz_record(a, &alice, "shop", "db", false, 2000);
    assert_false(sb_authz_allowed_if_error(a, &alice, "shop", "db", 2000));
    sb_authz *nodeny = authz_stale(30000, 0, 300000);
    sb_authz_record(nodeny, &alice, "shop", "db", true, 0);
    sb_authz_record(nodeny, &alice, "shop", "db", false, 10);
    assert_false(sb_authz_allowed_if_error(nodeny, &alice, "shop", "db", 10));
    sb_authz_record(a, &bob, "shop", "db", true, 0);
    sb_authz_forget(a, &bob, "shop", "db");
    assert_false(sb_authz_allowed_if_error(a, &bob, "shop", "db", 1));
    sb_authz_free(a);
    sb_authz_free(nodeny);
}

static void test_stale_allow_with_allow_ttl_zero(void **state)
{
    sb_authz *a = authz_stale(0, 5000, 60000);

    /* Never fresh, but kept for the API server's outages. */
    sb_authz_record(a, &alice, "shop", "db", true, 0);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db", 0), SB_DECISION_UNKNOWN);
    assert_true(sb_authz_allowed_if_error(a, &alice, "shop", "db", 60000));
    assert_false(sb_authz_allowed_if_error(a, &alice, "shop", "db", 60001));
    sb_authz_free(a);
}

static void test_keys_do_not_collide(void **state)
{
    sb_authz *a = authz_with(30000, 5000);
    sb_identity ab = {.ns = "a", .sa = "b"};
    sb_identity a_ = {.ns = "ab", .sa = ""};

    sb_authz_record(a, &alice, "shop", "db", true, 0);
    assert_int_equal(sb_authz_lookup(a, &bob, "shop", "db", 1), SB_DECISION_UNKNOWN);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop2", "db", 1), SB_DECISION_UNKNOWN);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db2", 1), SB_DECISION_UNKNOWN);
    assert_int_equal(sb_authz_lookup(a, &alice, "sho", "pdb", 1), SB_DECISION_UNKNOWN);

    sb_authz_record(a, &ab, "x", "y", true, 0);
    assert_int_equal(sb_authz_lookup(a, &a_, "bx", "y", 1), SB_DECISION_UNKNOWN);
    assert_int_equal(sb_authz_lookup(a, &a_, "x", "y", 1), SB_DECISION_UNKNOWN);
    sb_authz_free(a);
}

static void test_own_namespace_mode(void **state)
{
    sb_config cfg;

    sb_config_defaults(&cfg);
    sb_config_free(&cfg); /* numbers only from here */
    cfg.auth_mode = SB_AUTH_OWN_NAMESPACE;
    sb_authz *a = sb_authz_new(&cfg, NULL);
    assert_int_equal(sb_authz_lookup(a, &alice, "shop", "db", 0), SB_DECISION_ALLOW);
    assert_int_equal(sb_authz_lookup(a, &alice, "other", "db", 0), SB_DECISION_DENY);
    sb_authz_record(a, &alice, "other", "db", true, 0); /* nothing overrides the rule */
    assert_int_equal(sb_authz_lookup(a, &alice, "other", "db", 0), SB_DECISION_DENY);
    sb_authz_free(a);
}

static void *churn(void *arg)
{
    sb_authz *a = arg;
    char name[32];
    sb_identity id = {.ns = "shop"};

    for (int i = 0; i < 50000; i++) {
        snprintf(id.sa, sizeof(id.sa), "sa-%d", i % 50);
        snprintf(name, sizeof(name), "s-%d", i % 97);
        if (i % 3 == 0)
            sb_authz_record(a, &id, "shop", name, i % 2, i);
        else
            (void)sb_authz_lookup(a, &id, "shop", name, i);
    }
    return NULL;
}

static void test_threads(void **state)
{
    sb_authz *a = authz_with(30000, 5000);
    pthread_t t[4];

    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, churn, a), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_true(sb_authz_cached(a) <= 50 * 97);
    sb_authz_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_the_design_maxima),
        cmocka_unit_test(test_allow_and_deny_ttls),
        cmocka_unit_test(test_zero_ttls_cache_nothing),
        cmocka_unit_test(test_upstream_403_ends_the_allow_at_once),
        cmocka_unit_test(test_no_stale_allow_by_default),
        cmocka_unit_test(test_stale_allow_within_its_window),
        cmocka_unit_test(test_stale_allow_with_allow_ttl_zero),
        cmocka_unit_test(test_keys_do_not_collide),
        cmocka_unit_test(test_own_namespace_mode),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
