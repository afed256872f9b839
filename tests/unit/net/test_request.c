/* Unit tests of net/request: the request target and batch body parsing
 * that stands between clients and every cache and backend. */
#include "net/request.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/json.h"

static sb_err parse(const char *method, const char *target, sb_request *out)
{
    const char *why = NULL;
    sb_err err = sb_request_parse(method, target, strlen(target), out, &why);
    if (err != SB_OK)
        assert_non_null(why);
    return err;
}

static void test_routes(void **state)
{
    sb_request r;

    assert_int_equal(parse("GET", "/v1/secrets/db", &r), SB_OK);
    assert_int_equal(r.route, SB_ROUTE_SECRET);
    assert_string_equal(r.target.name, "db");
    assert_string_equal(r.target.key, "");

    assert_int_equal(parse("GET", "/v1/secrets/db.prod-1/pass_word.v2", &r), SB_OK);
    assert_int_equal(r.route, SB_ROUTE_KEY);
    assert_string_equal(r.target.name, "db.prod-1");
    assert_string_equal(r.target.key, "pass_word.v2");

    assert_int_equal(parse("POST", "/v1/secrets/batch", &r), SB_OK);
    assert_int_equal(r.route, SB_ROUTE_BATCH);
    /* "batch" is also a valid secret name. */
    assert_int_equal(parse("GET", "/v1/secrets/batch", &r), SB_OK);
    assert_int_equal(r.route, SB_ROUTE_SECRET);
}

static void test_query(void **state)
{
    sb_request r;

    assert_int_equal(parse("GET", "/v1/secrets/db?namespace=shop&refresh=true", &r), SB_OK);
    assert_string_equal(r.target.ns, "shop");
    assert_true(r.refresh);
    assert_int_equal(parse("GET", "/v1/secrets/db?version_stage=AWSPREVIOUS", &r), SB_OK);
    assert_string_equal(r.target.version_stage, "AWSPREVIOUS");
    assert_int_equal(parse("GET", "/v1/secrets/db?version_id=a1b2-c3", &r), SB_OK);
    assert_int_equal(parse("GET", "/v1/secrets/db?refresh=false", &r), SB_OK);
    assert_false(r.refresh);
}

static void test_bad_targets(void **state)
{
    static const char *const bad[] = {
        "/v1/secrets/../x",
        "/v1/secrets/./db",
        "/v1/secrets/db/..",
        "/v1/secrets/db/.",
        "/v1/secrets//db",
        "/v1/secrets/db//k",
        "/v1/secrets/a%2Fb",
        "/v1/secrets/%64b",
        "/v1/secrets/db%00",
        "/v1/secrets/DB",
        "/v1/secrets/-db",
        "/v1/secrets/db-",
        "/v1/secrets/db..x",
        "/v1/secrets/db/k/extra",
        "/v1/secrets/db/",
        "/v1/secrets/db#frag",
        "/v1/secrets/db\\k",
        "/v1/secrets/d b",
        "/v1/secrets/db?",
        "/v1/secrets/db?x=1",
        "/v1/secrets/db?namespace=A",
        "/v1/secrets/db?namespace",
        "/v1/secrets/db?refresh=1",
        "/v1/secrets/db?namespace=a&namespace=b",
        "/v1/secrets/db?version_stage=x&version_id=y",
        "/v1/secrets/db?version_id=a_b",
        "/v1/secrets/db?&",
        "/v1/secrets/db?namespace=a%20b",
        "https://host/v1/secrets/db",
        "*",
        "",
        "/v1/secrets/db/k?version_stage=%41",
    };
    sb_request r;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sb_err err = parse("GET", bad[i], &r);
        if (err != SB_E_BAD_REQUEST)
            fail_msg("%s: got %d, want 400", bad[i], err);
    }
}

static void test_not_found_and_methods(void **state)
{
    sb_request r;

    assert_int_equal(parse("GET", "/v1/secret/db", &r), SB_E_NOT_FOUND);
    assert_int_equal(parse("GET", "/healthz", &r), SB_E_NOT_FOUND);
    assert_int_equal(parse("GET", "/v1/secrets", &r), SB_E_NOT_FOUND);
    assert_int_equal(parse("PUT", "/v1/secrets/db", &r), SB_E_METHOD);
    assert_int_equal(parse("HEAD", "/v1/secrets/db", &r), SB_E_METHOD);
    assert_int_equal(parse("DELETE", "/v1/secrets/batch", &r), SB_E_METHOD);
    assert_int_equal(parse("POST", "/v1/secrets/db", &r), SB_E_METHOD);
    assert_int_equal(parse("GET", "/v1/secrets/batch?version_id=a", &r), SB_OK);
    assert_int_equal(parse("POST", "/v1/secrets/batch?version_id=a", &r), SB_E_BAD_REQUEST);
}

static void test_limits(void **state)
{
    char name[SB_MAX_SECRET_NAME + 32];
    char key[SB_MAX_KEY + 32];
    char target[8192];
    sb_request r;

    memset(name, 'a', SB_MAX_SECRET_NAME);
    name[SB_MAX_SECRET_NAME] = '\0';
    snprintf(target, sizeof(target), "/v1/secrets/%s", name);
    assert_int_equal(parse("GET", target, &r), SB_OK);
    snprintf(target, sizeof(target), "/v1/secrets/%sa", name);
    assert_int_equal(parse("GET", target, &r), SB_E_BAD_REQUEST);

    memset(key, 'K', SB_MAX_KEY + 1);
    key[SB_MAX_KEY + 1] = '\0';
    snprintf(target, sizeof(target), "/v1/secrets/db/%s", key);
    assert_int_equal(parse("GET", target, &r), SB_E_BAD_REQUEST);

    memset(target, 'a', sizeof(target) - 1);
    memcpy(target, "/v1/secrets/", 12);
    target[sizeof(target) - 1] = '\0';
    assert_int_equal(parse("GET", target, &r), SB_E_URI_TOO_LONG);
}

static sb_err batch(const char *body, sb_target **items, size_t *n)
{
    sb_target defaults = {.ns = "home"};
    const char *why = NULL;
    return sb_request_parse_batch(body, strlen(body), &defaults, items, n, &why);
}

static void test_batch(void **state)
{
    sb_target *items = NULL;
    size_t n = 0;

    assert_int_equal(batch("{\"secrets\":[{\"name\":\"db\",\"key\":\"user\"},"
                           "{\"name\":\"api\",\"namespace\":\"x\",\"version_stage\":\"S\"}]}",
                           &items, &n),
                     SB_OK);
    assert_int_equal(n, 2);
    assert_string_equal(items[0].ns, "home");
    assert_string_equal(items[0].key, "user");
    assert_string_equal(items[1].ns, "x");
    assert_string_equal(items[1].version_stage, "S");
    free(items);
}

static void test_bad_batches(void **state)
{
    static const char *const bad[] = {
        "",
        "[]",
        "{}",
        "{\"secrets\":[]}",
        "{\"secrets\":{}}",
        "{\"secrets\":[1]}",
        "{\"secrets\":[{}]}",
        "{\"secrets\":[{\"name\":\"DB\"}]}",
        "{\"secrets\":[{\"name\":\"db\",\"extra\":1}]}",
        "{\"secrets\":[{\"name\":5}]}",
        "{\"secrets\":[{\"name\":\"db\",\"key\":\"..\"}]}",
        "{\"secrets\":[{\"name\":\"db\"}],\"more\":1}",
        "{\"secrets\":[{\"name\":\"db\",\"name\":\"x\"}]}",
        "{\"secrets\":[{\"name\":\"db\",\"version_stage\":\"a\",\"version_id\":\"b\"}]}",
        "{\"secrets\":[{\"name\":\"d\\u0000b\"}]}",
        "{\"secrets\":[{\"name\":\"db\"}]",
    };
    sb_target *items = NULL;
    size_t n = 0;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (batch(bad[i], &items, &n) != SB_E_BAD_REQUEST)
            fail_msg("batch %zu accepted: %s", i, bad[i]);
    }
}

static void test_batch_item_limit(void **state)
{
    char body[8192] = "{\"secrets\":[";
    sb_target *items = NULL;
    size_t n = 0;

    for (int i = 0; i < SB_MAX_BATCH_ITEMS + 1; i++)
        memcpy(body + strlen(body), i ? ",{\"name\":\"a\"}" : "{\"name\":\"a\"}", i ? 13 : 12);
    memcpy(body + strlen(body), "]}", 2);
    assert_int_equal(batch(body, &items, &n), SB_E_TOO_LARGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),      cmocka_unit_test(test_query),
        cmocka_unit_test(test_bad_targets), cmocka_unit_test(test_not_found_and_methods),
        cmocka_unit_test(test_limits),      cmocka_unit_test(test_batch),
        cmocka_unit_test(test_bad_batches), cmocka_unit_test(test_batch_item_limit),
    };
    sb_json_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
