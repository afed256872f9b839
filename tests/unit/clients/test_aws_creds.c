/* Tests of src/clients/aws_creds: the renewal plan as arithmetic on the
 * clock, the STS and container answers, and which source the environment
 * selects (with the one-line refusals of half-configured ones). */
#include "clients/aws_creds.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/json.h"
#include "core/limits.h"
#include "core/secmem.h"

#include "../fake_env.h"

#define MIN (60 * 1000)
/* 2026-01-01T12:00:00Z */
#define EXPIRY_MS 1767268800000LL

static void test_plan(void **state)
{
    const int64_t exp = 100 * MIN;

    /* Long-term keys never need renewing. */
    assert_int_equal(sb_aws_creds_plan(true, 0, false, 0, exp), SB_AWS_PLAN_USE);
    /* Fresh until five minutes before expiry, then renewed while used. */
    assert_int_equal(sb_aws_creds_plan(true, exp, false, 0, exp - 5 * MIN - 1), SB_AWS_PLAN_USE);
    assert_int_equal(sb_aws_creds_plan(true, exp, false, 0, exp - 5 * MIN),
                     SB_AWS_PLAN_USE_AND_RENEW);
    assert_int_equal(sb_aws_creds_plan(true, exp, true, 0, exp - 2 * MIN), SB_AWS_PLAN_USE);
    assert_int_equal(sb_aws_creds_plan(true, exp, false, exp - 2 * MIN + 1, exp - 2 * MIN),
                     SB_AWS_PLAN_USE);
    /* From one minute before expiry on, callers wait for the new key. */
    assert_int_equal(sb_aws_creds_plan(true, exp, true, 0, exp - MIN), SB_AWS_PLAN_WAIT);
    assert_int_equal(sb_aws_creds_plan(true, exp, false, 0, exp - MIN), SB_AWS_PLAN_FETCH_AND_WAIT);
    assert_int_equal(sb_aws_creds_plan(true, exp, false, 0, exp + MIN), SB_AWS_PLAN_FETCH_AND_WAIT);
    /* No key: join, start, or repeat a failure of moments ago. */
    assert_int_equal(sb_aws_creds_plan(false, 0, true, 0, 5), SB_AWS_PLAN_WAIT);
    assert_int_equal(sb_aws_creds_plan(false, 0, false, 0, 5), SB_AWS_PLAN_FETCH_AND_WAIT);
    assert_int_equal(sb_aws_creds_plan(false, 0, false, 1000, 999), SB_AWS_PLAN_FAIL);
    assert_int_equal(sb_aws_creds_plan(false, 0, false, 1000, 1000), SB_AWS_PLAN_FETCH_AND_WAIT);
}

static const char *const STS_DOC =
    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n"
    "  <AssumeRoleWithWebIdentityResult>\n"
    "    <SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken>\n"
    "    <Audience>sts.amazonaws.com</Audience>\n"
    "    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/R/s</Arn>"
    "<AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser>\n"
    "    <Credentials>\n"
    "      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>\n"
    "      <SecretAccessKey>wJalr/K7+MDENG</SecretAccessKey>\n"
    "      <SessionToken>FwoGZXIvYXdzE//+token==</SessionToken>\n"
    "      <Expiration>2026-01-01T12:00:00Z</Expiration>\n"
    "    </Credentials>\n"
    "  </AssumeRoleWithWebIdentityResult>\n"
    "</AssumeRoleWithWebIdentityResponse>\n";

static void expect_key(const sb_aws_key *k, const char *ak, const char *sk, const char *tok,
                       int64_t expires)
{
    assert_string_equal((const char *)sb_secret_data(k->access_key_id), ak);
    assert_string_equal((const char *)sb_secret_data(k->secret_key), sk);
    if (tok)
        assert_string_equal((const char *)sb_secret_data(k->session_token), tok);
    else
        assert_null(k->session_token);
    assert_int_equal(k->expires_ms, expires);
}

static void test_sts_answer(void **state)
{
    sb_aws_key k = {0};
    sb_sigv4_creds sc;

    assert_int_equal(sb_aws_sts_parse(STS_DOC, strlen(STS_DOC), &k), SB_OK);
    expect_key(&k, "ASIAEXAMPLE", "wJalr/K7+MDENG", "FwoGZXIvYXdzE//+token==", EXPIRY_MS);
    sb_aws_key_sigv4(&k, &sc);
    assert_string_equal(sc.access_key, "ASIAEXAMPLE");
    assert_string_equal(sc.session_token, "FwoGZXIvYXdzE//+token==");
    sb_aws_key_clear(&k);
    assert_null(k.access_key_id);

    /* moto's shape: milliseconds, no Subject, Audience or Provider. */
    const char *moto = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>"
                       "<Credentials><AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s&amp;k"
                       "</SecretAccessKey><SessionToken>t</SessionToken><Expiration>"
                       "2026-01-01T12:00:00.250Z</Expiration></Credentials>"
                       "</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
    assert_int_equal(sb_aws_sts_parse(moto, strlen(moto), &k), SB_OK);
    expect_key(&k, "ASIA1", "s&k", "t", EXPIRY_MS + 250);
    sb_aws_key_clear(&k);
}

static void expect_sts_refused(const char *xml)
{
    sb_aws_key k = {0};

    if (sb_aws_sts_parse(xml, strlen(xml), &k) != SB_E_UPSTREAM)
        fail_msg("accepted: %s", xml);
    assert_null(k.access_key_id); /* untouched */
}

#define CREDS(inner) "<R><Credentials>" inner "</Credentials></R>"
#define AK           "<AccessKeyId>ASIA1</AccessKeyId>"
#define SK           "<SecretAccessKey>s</SecretAccessKey>"
#define TOK          "<SessionToken>t</SessionToken>"
#define EXP          "<Expiration>2026-01-01T12:00:00Z</Expiration>"

static void test_sts_refusals(void **state)
{
    expect_sts_refused("");
    expect_sts_refused("<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>");
    expect_sts_refused(CREDS(SK TOK EXP));
    expect_sts_refused(CREDS(AK TOK EXP));
    expect_sts_refused(CREDS(AK SK EXP));
    expect_sts_refused(CREDS(AK SK TOK));
    expect_sts_refused(CREDS(AK AK SK TOK EXP));
    expect_sts_refused(CREDS(AK SK TOK "<Expiration>tomorrow</Expiration>"));
    expect_sts_refused(CREDS("<AccessKeyId>AS/IA</AccessKeyId>" SK TOK EXP));
    expect_sts_refused(CREDS("<AccessKeyId></AccessKeyId>" SK TOK EXP));
    expect_sts_refused(CREDS(AK "<SecretAccessKey>a b</SecretAccessKey>" TOK EXP));
    expect_sts_refused(CREDS(AK SK "<SessionToken>t&#10;</SessionToken>" EXP));
    expect_sts_refused(CREDS(AK SK "<SessionToken></SessionToken>" EXP));
    expect_sts_refused(CREDS(AK SK TOK EXP) CREDS(AK SK TOK EXP));
    /* Fields outside <Credentials> do not count. */
    expect_sts_refused("<R>" AK SK TOK EXP "<Credentials></Credentials></R>");

    /* A token over its limit. */
    size_t big = SB_MAX_AWS_SESSION_TOKEN + 1;
    char *xml = calloc(1, big + 256);
    char *p = xml + snprintf(xml, 256, "<Credentials>" AK SK EXP "<SessionToken>");
    memset(p, 'A', big);
    memcpy(p + big, "</SessionToken></Credentials>", 30);
    expect_sts_refused(xml);
    free(xml);
}

static void test_container_answer(void **state)
{
    const char *eks = "{\"AccessKeyId\":\"ASIA2\",\"SecretAccessKey\":\"sk\",\"Token\":\"tok\","
                      "\"AccountId\":\"123456789012\",\"Expiration\":\"2026-01-01T12:00:00Z\"}";
    const char *bare = "{\"AccessKeyId\":\"AKIA3\",\"SecretAccessKey\":\"sk\"}";
    sb_aws_key k = {0};

    assert_int_equal(sb_aws_container_parse(eks, strlen(eks), 5, &k), SB_OK);
    expect_key(&k, "ASIA2", "sk", "tok", EXPIRY_MS);
    sb_aws_key_clear(&k);
    assert_int_equal(sb_aws_container_parse(bare, strlen(bare), 5, &k), SB_OK);
    expect_key(&k, "AKIA3", "sk", NULL, 5 + SB_AWS_NO_EXPIRY_LIFE_MS);
    sb_aws_key_clear(&k);

    static const char *const bad[] = {
        "",
        "[]",
        "{\"SecretAccessKey\":\"sk\"}",
        "{\"AccessKeyId\":\"A\"}",
        "{\"AccessKeyId\":5,\"SecretAccessKey\":\"sk\"}",
        "{\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"sk\",\"Token\":7}",
        "{\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"sk\",\"Expiration\":\"soon\"}",
        "{\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"sk\",\"Expiration\":null}",
        "{\"AccessKeyId\":\"A\",\"AccessKeyId\":\"B\",\"SecretAccessKey\":\"sk\"}",
        "{\"AccessKeyId\":\"A-1\",\"SecretAccessKey\":\"sk\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (sb_aws_container_parse(bad[i], strlen(bad[i]), 5, &k) != SB_E_UPSTREAM)
            fail_msg("accepted: %s", bad[i]);
    }
}

/* Builds a provider from the fake environment; returns its source, or -1
 * with the error line in err. */
static int source_of(char *err, size_t errlen)
{
    sb_aws_creds_options opt = {.env = lookup, .region = "eu-west-1", .timeout_ms = 1000};
    sb_aws_creds *c = NULL;

    err[0] = '\0';
    if (sb_aws_creds_new(&opt, &c, err, errlen) != SB_OK)
        return -1;
    int src = (int)sb_aws_creds_source(c);
    sb_aws_creds_free(c);
    return src;
}

static void expect_refused(const char *var)
{
    char err[512];

    assert_int_equal(source_of(err, sizeof(err)), -1);
    if (!strstr(err, var))
        fail_msg("the error does not name %s: %s", var, err);
}

static void test_source_order(void **state)
{
    char err[512];
    char token_file[] = "/tmp/sb-test-token-XXXXXX";
    int fd = mkstemp(token_file);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, "jwt\n", 4), 4);
    close(fd);

    nvars = 0;
    expect_refused("AWS_ACCESS_KEY_ID");
    set("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://169.254.170.23/v1/credentials");
    assert_int_equal(source_of(err, sizeof(err)), SB_AWS_SOURCE_CONTAINER);
    set("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/broker");
    set("AWS_WEB_IDENTITY_TOKEN_FILE", token_file);
    assert_int_equal(source_of(err, sizeof(err)), SB_AWS_SOURCE_WEB_IDENTITY);
    set("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE");
    set("AWS_SECRET_ACCESS_KEY", "secret/key+value");
    assert_int_equal(source_of(err, sizeof(err)), SB_AWS_SOURCE_ENV);
    unlink(token_file);
}

static void test_half_configured(void **state)
{
    char token_file[] = "/tmp/sb-test-token-XXXXXX";
    int fd = mkstemp(token_file);

    assert_true(fd >= 0);
    close(fd);
    nvars = 0;
    set("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE");
    expect_refused("AWS_SECRET_ACCESS_KEY");
    nvars = 0;
    set("AWS_ACCESS_KEY_ID", "AKIA EXAMPLE");
    set("AWS_SECRET_ACCESS_KEY", "s");
    expect_refused("AWS_ACCESS_KEY_ID");

    nvars = 0;
    set("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/broker");
    expect_refused("AWS_WEB_IDENTITY_TOKEN_FILE");
    set("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token");
    expect_refused("AWS_WEB_IDENTITY_TOKEN_FILE");
    nvars = 0;
    set("AWS_WEB_IDENTITY_TOKEN_FILE", token_file);
    expect_refused("AWS_ROLE_ARN");
    set("AWS_ROLE_ARN", "role/broker");
    expect_refused("AWS_ROLE_ARN");
    nvars = 1;
    set("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/broker");
    set("AWS_ROLE_SESSION_NAME", "has space");
    expect_refused("AWS_ROLE_SESSION_NAME");
    nvars = 2;
    set("AWS_ENDPOINT_URL_STS", "sts.example");
    expect_refused("AWS_ENDPOINT_URL_STS");

    /* Plain http only to loopback or the Pod Identity Agent. */
    static const char *const refused_uris[] = {
        "http://169.254.169.254/latest", "http://127.evil.example/creds", "http://10.0.0.1/creds",
        "ftp://127.0.0.1/creds", "http://127.0.0.1/c?x=1"};
    for (size_t i = 0; i < sizeof(refused_uris) / sizeof(refused_uris[0]); i++) {
        nvars = 0;
        set("AWS_CONTAINER_CREDENTIALS_FULL_URI", refused_uris[i]);
        expect_refused("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    }
    static const char *const allowed_uris[] = {
        "http://127.0.0.1:8080/creds", "http://[::1]/creds", "http://localhost/creds",
        "http://[fd00:ec2::23]/v1/credentials", "https://creds.internal.example/v1"};
    char err[512];
    for (size_t i = 0; i < sizeof(allowed_uris) / sizeof(allowed_uris[0]); i++) {
        nvars = 0;
        set("AWS_CONTAINER_CREDENTIALS_FULL_URI", allowed_uris[i]);
        if (source_of(err, sizeof(err)) != SB_AWS_SOURCE_CONTAINER)
            fail_msg("refused %s: %s", allowed_uris[i], err);
    }
    set("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/nonexistent/token");
    expect_refused("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    nvars = 0;
    set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "v2/credentials");
    expect_refused("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    unlink(token_file);
}

static void got_key(sb_err err, const sb_aws_key *key, const char *detail, void *ud)
{
    assert_int_equal(err, SB_OK);
    assert_string_equal((const char *)sb_secret_data(key->access_key_id), "AKIAEXAMPLE");
    assert_null(key->session_token);
    assert_int_equal(key->expires_ms, 0);
    (*(int *)ud)++;
}

/* Static keys answer at once, with no loop and no network. */
static void test_static_keys(void **state)
{
    sb_aws_creds_options opt = {.env = lookup, .region = "eu-west-1", .timeout_ms = 1000};
    sb_aws_creds *c = NULL;
    size_t before = sb_secmem_in_use();
    char err[256];
    int calls = 0;

    nvars = 0;
    set("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE");
    set("AWS_SECRET_ACCESS_KEY", "secret");
    assert_int_equal(sb_aws_creds_new(&opt, &c, err, sizeof(err)), SB_OK);
    sb_aws_creds_get(c, got_key, &calls);
    sb_aws_creds_expire(c, 1); /* ignored for static keys */
    sb_aws_creds_get(c, got_key, &calls);
    assert_int_equal(calls, 2);
    sb_aws_creds_free(c);
    sb_aws_creds_free(NULL);
    assert_int_equal(sb_secmem_in_use(), before); /* the keys were handed back */
}

static void test_source_names(void **state)
{
    assert_string_equal(sb_aws_source_name(SB_AWS_SOURCE_ENV), "environment");
    assert_string_equal(sb_aws_source_name(SB_AWS_SOURCE_WEB_IDENTITY), "web-identity");
    assert_string_equal(sb_aws_source_name(SB_AWS_SOURCE_CONTAINER), "container");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan),         cmocka_unit_test(test_sts_answer),
        cmocka_unit_test(test_sts_refusals), cmocka_unit_test(test_container_answer),
        cmocka_unit_test(test_source_order), cmocka_unit_test(test_half_configured),
        cmocka_unit_test(test_static_keys),  cmocka_unit_test(test_source_names),
    };
    sb_json_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
