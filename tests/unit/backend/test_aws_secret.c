/* Tests of src/backend/aws_secret: the secret id template, the response
 * mapping of DESIGN.md section 5, the error classes, and the retry
 * arithmetic with the clock and the random draw passed in. */
#include "backend/aws_secret.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/json.h"
#include "core/limits.h"

static void expect_id(const char *tmpl, const char *prefix, const char *id)
{
    char out[SB_MAX_AWS_SECRET_ID + 1];

    assert_int_equal(sb_aws_secret_id(tmpl, prefix, "shop", "db.main", out), SB_OK);
    assert_string_equal(out, id);
}

static void test_template(void **state)
{
    char out[SB_MAX_AWS_SECRET_ID + 1];
    char long_name[300];

    expect_id("{prefix}/{namespace}/{name}", "secrets-broker", "secrets-broker/shop/db.main");
    /* An empty prefix takes its slash with it. */
    expect_id("{prefix}/{namespace}/{name}", "", "shop/db.main");
    expect_id("{prefix}-{namespace}/{name}", "", "-shop/db.main");
    expect_id("prod/{namespace}_{name}", "ignored", "prod/shop_db.main");
    expect_id("{name}", "p", "db.main");
    expect_id("{name}{name}", "p", "db.maindb.main");

    assert_int_equal(sb_aws_secret_id("{prefix}/{nam}", "p", "a", "b", out), SB_E_CONFIG);
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    assert_int_equal(sb_aws_secret_id("{name}/{name}", "p", "a", long_name, out), SB_E_TOO_LARGE);
    assert_int_equal(sb_aws_secret_id("x{name}", "p", "a", long_name, out), SB_OK);
}

static void test_template_checks(void **state)
{
    assert_null(sb_aws_template_problem("{prefix}/{namespace}/{name}"));
    assert_null(sb_aws_template_problem("team+a=b@c.d_e-{name}"));
    assert_non_null(sb_aws_template_problem("{prefix}/{namespace}"));
    assert_non_null(sb_aws_template_problem("{prefix}/{ns}/{name}"));
    assert_non_null(sb_aws_template_problem("{prefix} {name}"));
    assert_non_null(sb_aws_template_problem("{name}{"));
    assert_null(sb_aws_prefix_problem(""));
    assert_null(sb_aws_prefix_problem("prod/team-a"));
    assert_non_null(sb_aws_prefix_problem("prod team"));
    assert_non_null(sb_aws_prefix_problem("{name}"));
}

/* The document for one GetSecretValue answer given as JSON text. */
static sb_secret_doc *doc_of(const char *answer)
{
    json_t *root = NULL;
    sb_secret_doc *doc = NULL;

    assert_int_equal(sb_json_parse(answer, strlen(answer), SB_MAX_UPSTREAM_BODY, &root), SB_OK);
    sb_err rc = sb_aws_value_to_doc(root, "shop", "db", &doc);
    json_decref(root);
    return rc == SB_OK ? doc : NULL;
}

static void expect_item(const sb_secret_doc *doc, const char *key, const char *value, size_t len)
{
    const sb_secret_item *it = sb_doc_find(doc, key, strlen(key));

    if (!it)
        fail_msg("no item %s", key);
    assert_int_equal(sb_secret_len(it->value), len);
    assert_memory_equal(sb_secret_data(it->value), value, len);
}

static void test_flat_json_string(void **state)
{
    sb_secret_doc *doc =
        doc_of("{\"Name\":\"secrets-broker/shop/db\",\"VersionId\":\"v-1\",\"VersionStages\":"
               "[\"AWSCURRENT\"],\"SecretString\":\"{\\\"user\\\":\\\"app\\\",\\\"port\\\":5432,"
               "\\\"ratio\\\":1.5,\\\"tls\\\":true,\\\"old\\\":false,\\\"note\\\":null,"
               "\\\"pi\\\":0.1,\\\"big\\\":-9007199254740993,\\\"k\\\":1e3,"
               "\\\"half\\\":2.50,\\\"tiny\\\":1e-7}\"}");

    assert_non_null(doc);
    assert_int_equal(doc->backend, SB_BACKEND_AWS);
    assert_string_equal(doc->version, "v-1");
    assert_false(doc->binary_only);
    assert_int_equal(doc->count, 11);
    expect_item(doc, "user", "app", 3);
    expect_item(doc, "port", "5432", 4);
    expect_item(doc, "ratio", "1.5", 3);
    expect_item(doc, "pi", "0.1", 3);
    expect_item(doc, "tls", "true", 4);
    expect_item(doc, "old", "false", 5);
    expect_item(doc, "note", "null", 4);
    expect_item(doc, "big", "-9007199254740993", 17);
    expect_item(doc, "k", "1000", 4);
    expect_item(doc, "half", "2.5", 3);
    expect_item(doc, "tiny", "1e-07", 5);
    sb_doc_unref(doc);
}

static void expect_whole_value(const char *answer, const char *value)
{
    sb_secret_doc *doc = doc_of(answer);

    if (!doc)
        fail_msg("refused: %s", answer);
    assert_int_equal(doc->count, 1);
    assert_false(doc->binary_only);
    expect_item(doc, "value", value, strlen(value));
    sb_doc_unref(doc);
}

static void test_other_strings(void **state)
{
    expect_whole_value("{\"SecretString\":\"hunter2\"}", "hunter2");
    expect_whole_value("{\"SecretString\":\"\"}", "");
    expect_whole_value("{\"SecretString\":\"[1,2]\"}", "[1,2]");
    expect_whole_value("{\"SecretString\":\"42\"}", "42");
    expect_whole_value("{\"SecretString\":\"{not json\"}", "{not json");
    /* Not flat: nested values, keys a Secret may not have, repeated keys. */
    expect_whole_value("{\"SecretString\":\"{\\\"a\\\":{\\\"b\\\":1}}\"}", "{\"a\":{\"b\":1}}");
    expect_whole_value("{\"SecretString\":\"{\\\"a\\\":[1]}\"}", "{\"a\":[1]}");
    expect_whole_value("{\"SecretString\":\"{\\\"db user\\\":\\\"x\\\"}\"}", "{\"db user\":\"x\"}");
    expect_whole_value("{\"SecretString\":\"{\\\"..\\\":\\\"x\\\"}\"}", "{\"..\":\"x\"}");
    expect_whole_value("{\"SecretString\":\"{\\\"a\\\":1,\\\"a\\\":2}\"}", "{\"a\":1,\"a\":2}");
    expect_whole_value("{\"SecretString\":\"caf\\u00e9\"}", "caf\xc3\xa9");

    sb_secret_doc *doc = doc_of("{\"SecretString\":\" {} \"}");
    assert_non_null(doc);
    assert_int_equal(doc->count, 0);
    sb_doc_unref(doc);
}

static void test_binary(void **state)
{
    sb_secret_doc *doc = doc_of("{\"VersionId\":\"v2\",\"SecretBinary\":\"/wBoaQ==\"}");

    assert_non_null(doc);
    assert_true(doc->binary_only);
    assert_string_equal(doc->version, "v2");
    expect_item(doc, "value", "\xff\x00hi", 4);
    sb_doc_unref(doc);

    /* Binary that happens to be text is still binary. */
    doc = doc_of("{\"SecretBinary\":\"dGV4dA==\"}");
    assert_non_null(doc);
    assert_true(doc->binary_only);
    expect_item(doc, "value", "text", 4);
    sb_doc_unref(doc);
}

static void test_malformed_answers(void **state)
{
    assert_null(doc_of("{\"Name\":\"x\"}"));
    assert_null(doc_of("{\"SecretString\":5}"));
    assert_null(doc_of("{\"SecretBinary\":\"not base64!\"}"));
    assert_null(doc_of("[\"SecretString\"]"));
    assert_null(doc_of("{\"SecretString\":\"x\",\"VersionId\":\"" /* 65 characters */
                       "01234567890123456789012345678901234567890123456789012345678901234\"}"));
}

static void expect_class(long status, const char *code, sb_err err, bool retry, bool creds)
{
    sb_aws_outcome o = sb_aws_classify(SB_OK, status, code);

    if (o.err != err || o.retry != retry || o.credentials != creds)
        fail_msg("%ld %s: err %d retry %d credentials %d", status, code, o.err, o.retry,
                 o.credentials);
    assert_non_null(o.detail);
}

static void test_classes(void **state)
{
    expect_class(200, "", SB_OK, false, false);
    expect_class(400, "ResourceNotFoundException", SB_E_NOT_FOUND, false, false);
    expect_class(400, "ThrottlingException", SB_E_THROTTLED, true, false);
    expect_class(429, "", SB_E_THROTTLED, true, false);
    expect_class(500, "InternalServiceError", SB_E_UNAVAILABLE, true, false);
    expect_class(503, "", SB_E_UNAVAILABLE, true, false);
    expect_class(502, "SomethingNew", SB_E_UNAVAILABLE, true, false);
    expect_class(400, "UnrecognizedClientException", SB_E_CREDENTIALS, false, true);
    expect_class(400, "InvalidSignatureException", SB_E_CREDENTIALS, false, true);
    expect_class(403, "SignatureDoesNotMatch", SB_E_CREDENTIALS, false, true);
    expect_class(403, "InvalidClientTokenId", SB_E_CREDENTIALS, false, true);
    expect_class(400, "ExpiredTokenException", SB_E_CREDENTIALS, false, true);
    expect_class(400, "AccessDeniedException", SB_E_CREDENTIALS, false, true);
    expect_class(400, "DecryptionFailure", SB_E_CREDENTIALS, false, true);
    expect_class(403, "", SB_E_CREDENTIALS, false, true);
    expect_class(400, "InvalidRequestException", SB_E_UPSTREAM, false, false);
    expect_class(400, "", SB_E_UPSTREAM, false, false);
    expect_class(404, "", SB_E_UPSTREAM, false, false);

    assert_true(sb_aws_classify(SB_OK, 400, "ExpiredTokenException").expired);
    assert_false(sb_aws_classify(SB_OK, 403, "SignatureDoesNotMatch").expired);
    assert_true(sb_aws_classify(SB_OK, 400, "AccessDeniedException").denied);

    sb_aws_outcome o = sb_aws_classify(SB_E_UNAVAILABLE, 0, "");
    assert_int_equal(o.err, SB_E_UNAVAILABLE);
    assert_true(o.retry);
    assert_true(sb_aws_classify(SB_E_TIMEOUT, 0, "").retry);
    assert_false(sb_aws_classify(SB_E_SHUTDOWN, 0, "").retry);
    assert_false(sb_aws_classify(SB_E_UPSTREAM, 0, "").retry);
}

static void test_retry_timing(void **state)
{
    const int64_t now = 1000, far = 100000;

    /* Full jitter over [0, 100] after one attempt, [0, 200] after two. */
    assert_int_equal(sb_aws_retry_at(1, now, far, -1, 0), now);
    assert_int_equal(sb_aws_retry_at(1, now, far, -1, 100), now + 100);
    assert_int_equal(sb_aws_retry_at(1, now, far, -1, 101), now);
    assert_int_equal(sb_aws_retry_at(1, now, far, -1, UINT64_MAX), now + UINT64_MAX % 101);
    assert_int_equal(sb_aws_retry_at(2, now, far, -1, 200), now + 200);
    assert_int_equal(sb_aws_retry_at(2, now, far, -1, 201), now);
    for (uint64_t r = 0; r < 1000; r += 7) {
        int64_t due = sb_aws_retry_at(2, now, far, -1, r * 2654435761u);
        assert_true(due >= now && due <= now + 200);
    }

    /* At most three attempts in all. */
    assert_int_equal(sb_aws_retry_at(3, now, far, -1, 5), -1);
    assert_int_equal(sb_aws_retry_at(0, now, far, -1, 5), -1);

    /* Retry-After is a floor. */
    assert_int_equal(sb_aws_retry_at(1, now, far, 2, 5), now + 2000);

    /* The next attempt must fit before the deadline. */
    assert_int_equal(sb_aws_retry_at(1, now, now + 150, -1, 50), now + 50);
    assert_int_equal(sb_aws_retry_at(1, now, now + 150, -1, 51), -1);
    assert_int_equal(sb_aws_retry_at(1, now, now + 1000, 1, 0), -1);
    assert_int_equal(sb_aws_retry_at(1, now, now, -1, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_template),         cmocka_unit_test(test_template_checks),
        cmocka_unit_test(test_flat_json_string), cmocka_unit_test(test_other_strings),
        cmocka_unit_test(test_binary),           cmocka_unit_test(test_malformed_answers),
        cmocka_unit_test(test_classes),          cmocka_unit_test(test_retry_timing),
    };
    sb_json_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
