/* Tests of src/auth/token: the Authorization header parser, cache keys and
 * expiry (the clock is passed in), the TTL read from a token's exp claim,
 * reading TokenReview answers, and the certificate/token comparison. */
#include "auth/token.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"

#define AUD "secrets-broker"

static sb_config cfg;

/* ---- the Authorization header ----------------------------------------- */

static sb_err parse(const char *value, const char **tok, size_t *len, const char **why)
{
    return sb_token_parse_header(value, strlen(value), tok, len, why);
}

static void assert_token(const char *value, const char *want)
{
    const char *tok = NULL, *why = NULL;
    size_t len = 0;

    assert_int_equal(parse(value, &tok, &len, &why), SB_OK);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(tok, want, len);
    assert_null(why);
}

static void test_header_valid(void **state)
{
    assert_token("Bearer abc.def.ghi", "abc.def.ghi");
    assert_token("bearer abc", "abc");
    assert_token("BEARER abc", "abc");
    assert_token("bEaReR abc", "abc");
    assert_token("Bearer    abc", "abc");
    assert_token("  Bearer abc \t ", "abc");
    assert_token("Bearer a-b_c~d+e/f.g==", "a-b_c~d+e/f.g==");
}

static void test_header_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Bearerabc",
        "Bearer\tabc",
        "Basic abc",
        "Bearer a b",
        "Bearer ab=c",
        "Bearer =abc",
        "Bearer a,b",
        "Bearer a\"b",
        "Bearer abc\r",
        "Token abc",
        "Bear abc",
    };
    const char *tok = "unchanged", *why = NULL;
    size_t len = 99;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        assert_int_equal(parse(bad[i], &tok, &len, &why), SB_E_UNAUTHORIZED);
        assert_non_null(why);
        assert_string_equal(tok, "unchanged");
        assert_int_equal(len, 99);
    }
}

static void test_header_nul_and_length(void **state)
{
    static const char nul[] = "Bearer ab\0cd";
    const char *tok = NULL, *why = NULL;
    size_t len = 0;

    assert_int_equal(sb_token_parse_header(nul, sizeof(nul) - 1, &tok, &len, &why),
                     SB_E_UNAUTHORIZED);
    /* The length given is all that is read. */
    assert_int_equal(sb_token_parse_header(nul, 9, &tok, &len, &why), SB_OK);
    assert_int_equal(len, 2);
}

static void test_header_size_limit(void **state)
{
    size_t n = 7 + SB_MAX_BEARER_TOKEN + 1;
    char *value = malloc(n + 1);
    const char *tok = NULL, *why = NULL;
    size_t len = 0;

    memcpy(value, "Bearer ", 7);
    memset(value + 7, 'a', SB_MAX_BEARER_TOKEN + 1);
    value[n] = '\0';
    assert_int_equal(sb_token_parse_header(value, n, &tok, &len, &why), SB_E_UNAUTHORIZED);
    assert_string_equal(why, "the bearer token is too long");

    assert_int_equal(sb_token_parse_header(value, n - 1, &tok, &len, &why), SB_OK);
    assert_int_equal(len, SB_MAX_BEARER_TOKEN);
    free(value);
}

/* ---- cache keys and the cache ----------------------------------------- */

static void test_key_is_sha256(void **state)
{
    /* FIPS 180-2 appendix B.1. */
    static const unsigned char abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                          0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                          0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                          0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    sb_token_key a, b, c;

    assert_int_equal(sb_token_key_of("abc", 3, &a), SB_OK);
    assert_memory_equal(a.bytes, abc, sizeof(abc));
    assert_int_equal(sb_token_key_of("abc", 3, &b), SB_OK);
    assert_memory_equal(a.bytes, b.bytes, sizeof(a.bytes));
    assert_int_equal(sb_token_key_of("abd", 3, &c), SB_OK);
    assert_memory_not_equal(a.bytes, c.bytes, sizeof(a.bytes));
    assert_int_equal(sb_token_key_of("ab", 2, &c), SB_OK);
    assert_memory_not_equal(a.bytes, c.bytes, sizeof(a.bytes));
}

static sb_token_result allowed(const char *ns, const char *sa, const char *pod)
{
    sb_token_result res = {.err = SB_OK, .why = ""};

    snprintf(res.id.ns, sizeof(res.id.ns), "%s", ns);
    snprintf(res.id.sa, sizeof(res.id.sa), "%s", sa);
    snprintf(res.id.source, sizeof(res.id.source), "token");
    snprintf(res.pod, sizeof(res.pod), "%s", pod);
    return res;
}

static void test_cache_expiry(void **state)
{
    sb_token *t = sb_token_new(&cfg, NULL, NULL);
    sb_token_result res = allowed("shop", "web", "web-1"), out;
    sb_token_key key, other;

    assert_int_equal(sb_token_key_of("tok-1", 5, &key), SB_OK);
    assert_int_equal(sb_token_key_of("tok-2", 5, &other), SB_OK);
    assert_false(sb_token_lookup(t, &key, 5000, &out));

    sb_token_record(t, &key, &res, 1000, 5000);
    assert_true(sb_token_lookup(t, &key, 5000, &out));
    assert_string_equal(out.id.sa, "web");
    assert_string_equal(out.pod, "web-1");
    assert_true(sb_token_lookup(t, &key, 5999, &out));
    assert_false(sb_token_lookup(t, &key, 6000, &out));
    assert_false(sb_token_lookup(t, &other, 5500, &out));

    /* A refusal is cached like an answer; a zero TTL caches nothing. */
    res.err = SB_E_UNAUTHORIZED;
    sb_token_record(t, &key, &res, SB_TOKEN_DENY_TTL_MS, 7000);
    assert_true(sb_token_lookup(t, &key, 7000 + SB_TOKEN_DENY_TTL_MS - 1, &out));
    assert_int_equal(out.err, SB_E_UNAUTHORIZED);
    sb_token_record(t, &other, &res, 0, 7000);
    assert_false(sb_token_lookup(t, &other, 7000, &out));
    sb_token_free(t);
}

static void test_cache_is_bounded(void **state)
{
    sb_token *t = sb_token_new(&cfg, NULL, NULL);
    sb_token_result res = allowed("shop", "web", ""), out;
    sb_token_key key, first;
    char tok[32];

    for (int i = 0; i < SB_MAX_TOKEN_CACHE + 10; i++) {
        int n = snprintf(tok, sizeof(tok), "tok-%d", i);
        assert_int_equal(sb_token_key_of(tok, (size_t)n, &key), SB_OK);
        if (i == 0)
            first = key;
        sb_token_record(t, &key, &res, 60000, 0);
    }
    assert_int_equal(sb_token_cached(t), SB_MAX_TOKEN_CACHE);
    assert_false(sb_token_lookup(t, &first, 1, &out)); /* the oldest went */
    assert_true(sb_token_lookup(t, &key, 1, &out));
    sb_token_free(t);
    sb_token_free(NULL);
}

/* ---- the TTL from the exp claim --------------------------------------- */

/* A JWT-shaped token whose payload is `claims` (the signature is junk: the
 * TTL never depends on it). */
static char *jwt(const char *claims)
{
    gnutls_datum_t in = {(unsigned char *)claims, (unsigned)strlen(claims)}, out;
    size_t n = 0;

    assert_true(gnutls_base64_encode2(&in, &out) >= 0);
    char *tok = malloc(out.size + 64);
    n = (size_t)snprintf(tok, out.size + 64, "eyJhbGciOiJSUzI1NiJ9.");
    for (unsigned i = 0; i < out.size && out.data[i] != '='; i++)
        tok[n++] = out.data[i] == '+' ? '-' : out.data[i] == '/' ? '_' : (char)out.data[i];
    memcpy(tok + n, ".c2ln", 6);
    gnutls_free(out.data);
    return tok;
}

static int64_t ttl_of(const char *claims, int64_t wall_ms)
{
    char *tok = jwt(claims);
    int64_t ttl = sb_token_cache_ttl_ms(tok, strlen(tok), wall_ms);

    free(tok);
    return ttl;
}

static void test_ttl_from_exp(void **state)
{
    const int64_t now = 1700000000000; /* ms */

    assert_int_equal(ttl_of("{\"exp\":1700000030}", now), 30000);
    assert_int_equal(ttl_of("{\"exp\":1700000030}", now + 29999), 1);
    assert_int_equal(ttl_of("{\"exp\":1700000030}", now + 30000), 0);
    assert_int_equal(ttl_of("{\"exp\":1600000000}", now), 0);
    assert_int_equal(ttl_of("{\"exp\":1700003600}", now), SB_TOKEN_ALLOW_TTL_MS);
    assert_int_equal(ttl_of("{\"exp\":1700000010.5}", now), 10500);
    assert_int_equal(ttl_of("{\"exp\":1e300}", now), SB_TOKEN_ALLOW_TTL_MS);
    assert_int_equal(ttl_of("{\"sub\":\"x\",\"aud\":[\"a\"],\"exp\":1700000001,"
                            "\"kubernetes.io\":{\"namespace\":\"shop\"}}",
                            now),
                     1000);
}

static void test_ttl_without_exp_is_the_cap(void **state)
{
    static const char *const odd[] = {"abc", "a.b", "a..c", ".x.", "a.!!!.c", "a.e30.c"};
    const int64_t now = 1700000000000;

    assert_int_equal(ttl_of("{\"iat\":1}", now), SB_TOKEN_ALLOW_TTL_MS);
    assert_int_equal(ttl_of("{\"exp\":\"soon\"}", now), SB_TOKEN_ALLOW_TTL_MS);
    assert_int_equal(ttl_of("[1,2]", now), SB_TOKEN_ALLOW_TTL_MS);
    assert_int_equal(ttl_of("not json", now), SB_TOKEN_ALLOW_TTL_MS);
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++)
        assert_int_equal(sb_token_cache_ttl_ms(odd[i], strlen(odd[i]), now), SB_TOKEN_ALLOW_TTL_MS);
}

/* ---- reading TokenReview answers -------------------------------------- */

static sb_token_result review(const char *json)
{
    json_error_t jerr;
    json_t *j = json_loads(json, 0, &jerr);
    sb_token_result res;

    assert_non_null(j);
    sb_token_read_review(j, AUD, &res);
    json_decref(j);
    return res;
}

#define USER_SHOP_WEB "\"username\":\"system:serviceaccount:shop:web\""
#define EXTRA_POD                                                                                  \
    "\"extra\":{\"authentication.kubernetes.io/pod-name\":[\"web-7d9f\"],"                         \
    "\"authentication.kubernetes.io/pod-uid\":[\"0f8fad5b-d9cb-469f-a165-70867728950e\"],"         \
    "\"authentication.kubernetes.io/credential-id\":[\"JTI=1\"]}"

static void test_review_pod_bound(void **state)
{
    sb_token_result res = review("{\"status\":{\"authenticated\":true,\"audiences\":[\"" AUD
                                 "\"],\"user\":{" USER_SHOP_WEB ",\"uid\":\"u\",\"groups\":["
                                 "\"system:serviceaccounts\"]," EXTRA_POD "}}}");

    assert_int_equal(res.err, SB_OK);
    assert_string_equal(res.id.ns, "shop");
    assert_string_equal(res.id.sa, "web");
    assert_string_equal(res.id.source, "token");
    assert_string_equal(res.pod, "web-7d9f");
    assert_string_equal(res.pod_uid, "0f8fad5b-d9cb-469f-a165-70867728950e");
}

static void test_review_not_pod_bound(void **state)
{
    sb_token_result res =
        review("{\"status\":{\"authenticated\":true,\"audiences\":[\"other\",\"" AUD
               "\"],\"user\":{" USER_SHOP_WEB "}}}");

    assert_int_equal(res.err, SB_OK);
    assert_string_equal(res.pod, "");
    assert_string_equal(res.pod_uid, "");
}

static void test_review_refusals(void **state)
{
    static const char *const bad[] = {
        "{}",
        "{\"status\":{}}",
        "{\"status\":{\"authenticated\":false,\"audiences\":[\"" AUD "\"],\"user\":{" USER_SHOP_WEB
        "}}}",
        "{\"status\":{\"authenticated\":\"true\",\"audiences\":[\"" AUD
        "\"],\"user\":{" USER_SHOP_WEB "}}}",
        /* audience: absent, empty, another, not a list */
        "{\"status\":{\"authenticated\":true,\"user\":{" USER_SHOP_WEB "}}}",
        "{\"status\":{\"authenticated\":true,\"audiences\":[],\"user\":{" USER_SHOP_WEB "}}}",
        "{\"status\":{\"authenticated\":true,\"audiences\":[\"secrets-broker2\"],\"user\":"
        "{" USER_SHOP_WEB "}}}",
        "{\"status\":{\"authenticated\":true,\"audiences\":\"" AUD "\",\"user\":{" USER_SHOP_WEB
        "}}}",
        /* not a ServiceAccount */
        "{\"status\":{\"authenticated\":true,\"audiences\":[\"" AUD "\"],\"user\":{\"username\":"
        "\"alice\"}}}",
        "{\"status\":{\"authenticated\":true,\"audiences\":[\"" AUD "\"],\"user\":{\"username\":"
        "\"system:serviceaccount:Shop:web\"}}}",
        "{\"status\":{\"authenticated\":true,\"audiences\":[\"" AUD "\"],\"user\":{}}}",
        /* pod fields: one without the other, two values, a bad name or uid */
        "{\"status\":{\"authenticated\":true,\"audiences\":[\"" AUD "\"],\"user\":{" USER_SHOP_WEB
        ",\"extra\":{\"authentication.kubernetes.io/pod-name\":[\"p\"]}}}}",
        "{\"status\":{\"authenticated\":true,\"audiences\":[\"" AUD "\"],\"user\":{" USER_SHOP_WEB
        ",\"extra\":{\"authentication.kubernetes.io/pod-name\":[\"p\",\"q\"],"
        "\"authentication.kubernetes.io/pod-uid\":[\"1\"]}}}}",
        "{\"status\":{\"authenticated\":true,\"audiences\":[\"" AUD "\"],\"user\":{" USER_SHOP_WEB
        ",\"extra\":{\"authentication.kubernetes.io/pod-name\":[\"P_1\"],"
        "\"authentication.kubernetes.io/pod-uid\":[\"1\"]}}}}",
        "{\"status\":{\"authenticated\":true,\"audiences\":[\"" AUD "\"],\"user\":{" USER_SHOP_WEB
        ",\"extra\":{\"authentication.kubernetes.io/pod-name\":[\"p\"],"
        "\"authentication.kubernetes.io/pod-uid\":[\"1/2\"]}}}}",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sb_token_result res = review(bad[i]);
        assert_int_equal(res.err, SB_E_UNAUTHORIZED);
        assert_non_null(res.why);
        assert_string_equal(res.pod, "");
    }
}

/* ---- the certificate and the token ------------------------------------ */

static sb_identity cert_id(const char *ns, const char *sa)
{
    sb_identity id = {.serial = "01ab", .source = "spiffe"};

    snprintf(id.ns, sizeof(id.ns), "%s", ns);
    snprintf(id.sa, sizeof(id.sa), "%s", sa);
    return id;
}

static void test_check_same_account(void **state)
{
    sb_token_result res = allowed("shop", "web", "web-1");
    sb_identity cert = cert_id("shop", "web"), out;
    const char *why = NULL;

    assert_int_equal(sb_token_check(&res, &cert, &out, &why), SB_OK);
    assert_string_equal(out.source, "spiffe");
    assert_string_equal(out.serial, "01ab");
    assert_string_equal(out.sa, "web");
}

static void test_check_other_account(void **state)
{
    sb_token_result res = allowed("shop", "web", "");
    const struct {
        const char *ns, *sa;
    } others[] = {{"shop", "web2"}, {"shop", "we"}, {"shop2", "web"}, {"web", "shop"}};
    sb_identity out = cert_id("unchanged", "unchanged");
    const char *why = NULL;

    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        sb_identity cert = cert_id(others[i].ns, others[i].sa);
        assert_int_equal(sb_token_check(&res, &cert, &out, &why), SB_E_UNAUTHORIZED);
        assert_non_null(why);
        assert_string_equal(out.ns, "unchanged");
    }
}

static void test_check_token_alone(void **state)
{
    sb_token_result res = allowed("shop", "web", "web-1");
    sb_identity out;
    const char *why = NULL;

    assert_int_equal(sb_token_check(&res, NULL, &out, &why), SB_OK);
    assert_string_equal(out.ns, "shop");
    assert_string_equal(out.sa, "web");
    assert_string_equal(out.source, "token");
    assert_string_equal(out.serial, "");
}

static void test_check_passes_failures_on(void **state)
{
    sb_token_result res = {.err = SB_E_UNAVAILABLE, .why = "no answer"};
    sb_identity cert = cert_id("shop", "web"), out;
    const char *why = NULL;

    assert_int_equal(sb_token_check(&res, &cert, &out, &why), SB_E_UNAVAILABLE);
    assert_string_equal(why, "no answer");
    res.err = SB_E_UNAUTHORIZED;
    assert_int_equal(sb_token_check(&res, NULL, &out, &why), SB_E_UNAUTHORIZED);
}

static int setup(void **state)
{
    sb_json_init();
    sb_config_defaults(&cfg);
    return 0;
}

static int teardown(void **state)
{
    sb_config_free(&cfg);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_valid),
        cmocka_unit_test(test_header_rejects),
        cmocka_unit_test(test_header_nul_and_length),
        cmocka_unit_test(test_header_size_limit),
        cmocka_unit_test(test_key_is_sha256),
        cmocka_unit_test(test_cache_expiry),
        cmocka_unit_test(test_cache_is_bounded),
        cmocka_unit_test(test_ttl_from_exp),
        cmocka_unit_test(test_ttl_without_exp_is_the_cap),
        cmocka_unit_test(test_review_pod_bound),
        cmocka_unit_test(test_review_not_pod_bound),
        cmocka_unit_test(test_review_refusals),
        cmocka_unit_test(test_check_same_account),
        cmocka_unit_test(test_check_other_account),
        cmocka_unit_test(test_check_token_alone),
        cmocka_unit_test(test_check_passes_failures_on),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
