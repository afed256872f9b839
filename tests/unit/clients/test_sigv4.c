/* Tests of src/clients/sigv4: examples of the AWS SigV4 test suite and
 * documentation (AKIDEXAMPLE key, 20150830T123600Z), Secrets Manager and STS
 * shapes, and the refusals. Every expected value was computed with botocore
 * 1.43 (SigV4Auth) and agrees with the published ones where AWS publishes
 * one; tests/integration/test_sigv4_botocore.py compares many more. */
#include "clients/sigv4.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/secmem.h"

#define AKID   "AKIDEXAMPLE"
#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define DATE   "20150830T123600Z"
#define HOST                                                                                       \
    {                                                                                              \
        "Host", "example.amazonaws.com"                                                            \
    }
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static const sb_sigv4_creds CREDS = {.access_key = AKID, .secret_key = SECRET};

/* Signs a request to the test suite's "service" in us-east-1. */
static sb_err sign(const char *method, const char *path, const char *query,
                   const sb_sigv4_header *hdrs, size_t n, sb_sigv4_result *res)
{
    sb_sigv4_request req = {
        .method = method, .path = path, .query = query, .headers = hdrs, .header_count = n};
    return sb_sigv4_sign(&req, &CREDS, "us-east-1", "service", DATE, res);
}

static void expect_signature(const char *method, const char *path, const char *query,
                             const sb_sigv4_header *hdrs, size_t n, const char *signature)
{
    sb_sigv4_result res;

    assert_int_equal(sign(method, path, query, hdrs, n, &res), SB_OK);
    assert_string_equal(res.signature, signature);
    sb_sigv4_result_free(&res);
}

/* The IAM ListUsers example of the AWS documentation, end to end. */
static void test_documented_iam_example(void **state)
{
    const sb_sigv4_header hdrs[] = {
        {"Host", "iam.amazonaws.com"},
        {"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"},
    };
    sb_sigv4_request req = {.method = "GET",
                            .path = "/",
                            .query = "Action=ListUsers&Version=2010-05-08",
                            .headers = hdrs,
                            .header_count = 2};
    sb_sigv4_result res;

    assert_int_equal(sb_sigv4_sign(&req, &CREDS, "us-east-1", "iam", DATE, &res), SB_OK);
    assert_string_equal(res.canonical_request,
                        "GET\n/\nAction=ListUsers&Version=2010-05-08\n"
                        "content-type:application/x-www-form-urlencoded; charset=utf-8\n"
                        "host:iam.amazonaws.com\nx-amz-date:" DATE "\n\n"
                        "content-type;host;x-amz-date\n" EMPTY_SHA256);
    assert_string_equal(res.string_to_sign,
                        "AWS4-HMAC-SHA256\n" DATE "\n20150830/us-east-1/iam/aws4_request\n"
                        "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
    assert_string_equal(res.signature,
                        "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
    assert_string_equal(
        res.authorization,
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/"
        "aws4_request, SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
    sb_sigv4_result_free(&res);
}

/* get-vanilla, post-vanilla and get-vanilla-query-order-key-case. */
static void test_suite_vanilla(void **state)
{
    const sb_sigv4_header hdrs[] = {HOST};

    expect_signature("GET", "/", NULL, hdrs, 1,
                     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
    expect_signature("POST", "/", "", hdrs, 1,
                     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
    expect_signature("GET", "/", "Param2=value2&Param1=value1", hdrs, 1,
                     "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
}

/* get-relative-relative and get-space: dot segments go, a space is
 * encoded (and the empty path is "/"). */
static void test_suite_paths(void **state)
{
    const sb_sigv4_header hdrs[] = {HOST};

    expect_signature("GET", "/example1/example2/../..", NULL, hdrs, 1,
                     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
    expect_signature("GET", "", NULL, hdrs, 1,
                     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
    expect_signature("GET", "/example space/", NULL, hdrs, 1,
                     "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741");
}

/* botocore's normalization: empty and dot segments dropped, '%' encoded
 * again, UTF-8 bytes encoded, the trailing '/' kept. */
static void test_path_normalization(void **state)
{
    const sb_sigv4_header hdrs[] = {HOST};
    sb_sigv4_result res;

    assert_int_equal(sign("get", "//a/./b%2F/../c d/\xc3\xa9/", NULL, hdrs, 1, &res), SB_OK);
    assert_string_equal(res.canonical_request,
                        "GET\n/a/c%20d/%C3%A9/\n\n"
                        "host:example.amazonaws.com\n"
                        "x-amz-date:" DATE "\n\nhost;x-amz-date\n" EMPTY_SHA256);
    assert_string_equal(res.signature,
                        "09bf138f40a790fccf7b55ac65ed7ca04a2a10b1c0a43d12b0038bbd2f8202f3");
    sb_sigv4_result_free(&res);
}

/* get-header-key-duplicate and get-header-value-trim. */
static void test_suite_headers(void **state)
{
    const sb_sigv4_header dup[] = {
        HOST, {"My-Header1", "value2"}, {"My-Header1", "value2"}, {"My-Header1", "value1"}};
    const sb_sigv4_header trim[] = {
        HOST, {"My-Header1", " value1"}, {"My-Header2", " \"a   b   c\""}};
    sb_sigv4_result res;

    expect_signature("GET", "/", NULL, dup, 4,
                     "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea");

    assert_int_equal(sign("GET", "/", NULL, trim, 3, &res), SB_OK);
    assert_non_null(strstr(res.canonical_request, "\nmy-header1:value1\nmy-header2:\"a b c\"\n"));
    assert_string_equal(res.signature,
                        "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736");
    sb_sigv4_result_free(&res);
}

/* post-sts-header-after: the session token is signed as a header. */
static void test_suite_session_token(void **state)
{
    const sb_sigv4_header hdrs[] = {HOST};
    const sb_sigv4_creds creds = {
        .access_key = AKID,
        .secret_key = SECRET,
        .session_token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKW"
                         "HGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4"
                         "IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE"
                         "8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yj"
                         "c8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==",
    };
    sb_sigv4_request req = {.method = "POST", .path = "/", .headers = hdrs, .header_count = 1};
    sb_sigv4_result res;

    assert_int_equal(sb_sigv4_sign(&req, &creds, "us-east-1", "service", DATE, &res), SB_OK);
    assert_string_equal(res.signature,
                        "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead");
    assert_non_null(
        strstr(res.authorization, "SignedHeaders=host;x-amz-date;x-amz-security-token,"));
    sb_sigv4_result_free(&res);
}

/* A GetSecretValue call as the AWS client makes it: JSON 1.1 body, target
 * header, session token; User-Agent is sent but not signed. */
static void test_secrets_manager_request(void **state)
{
    static const char body[] = "{\"SecretId\":\"brokers/shop/db\"}";
    const sb_sigv4_header hdrs[] = {
        {"Host", "secretsmanager.us-east-1.amazonaws.com"},
        {"Content-Type", "application/x-amz-json-1.1"},
        {"X-Amz-Target", "secretsmanager.GetSecretValue"},
        {"User-Agent", "secrets-broker/0.1.0"},
    };
    const sb_sigv4_creds creds = {AKID, SECRET, "FwoGZXIvYXdzEXAMPLETOKEN"};
    sb_sigv4_request req = {.method = "POST",
                            .path = "/",
                            .headers = hdrs,
                            .header_count = 4,
                            .body = (const unsigned char *)body,
                            .body_len = strlen(body)};
    sb_sigv4_result res;

    assert_int_equal(sb_sigv4_sign(&req, &creds, "us-east-1", "secretsmanager", DATE, &res), SB_OK);
    assert_string_equal(res.canonical_request,
                        "POST\n/\n\ncontent-type:application/x-amz-json-1.1\n"
                        "host:secretsmanager.us-east-1.amazonaws.com\nx-amz-date:" DATE "\n"
                        "x-amz-security-token:FwoGZXIvYXdzEXAMPLETOKEN\n"
                        "x-amz-target:secretsmanager.GetSecretValue\n\n"
                        "content-type;host;x-amz-date;x-amz-security-token;x-amz-target\n"
                        "82fa3320111abe4ed9ba43e42d0959987e00137efc91c7b0b67440facc313b90");
    assert_string_equal(res.authorization,
                        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/"
                        "secretsmanager/aws4_request, SignedHeaders=content-type;host;"
                        "x-amz-date;x-amz-security-token;x-amz-target, Signature="
                        "efa029c956132ca6e60349f6a1708080c0907a1310f525c5ef525c6cdc1ec41b");
    sb_sigv4_result_free(&res);
}

/* An STS form POST (the shape of the web identity exchange). */
static void test_sts_form_post(void **state)
{
    static const char body[] = "Action=GetCallerIdentity&Version=2011-06-15";
    const sb_sigv4_header hdrs[] = {
        {"Host", "sts.amazonaws.com"},
        {"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"},
    };
    sb_sigv4_request req = {.method = "POST",
                            .path = "/",
                            .headers = hdrs,
                            .header_count = 2,
                            .body = (const unsigned char *)body,
                            .body_len = strlen(body)};
    sb_sigv4_result res;

    assert_int_equal(sb_sigv4_sign(&req, &CREDS, "us-east-1", "sts", DATE, &res), SB_OK);
    assert_string_equal(res.signature,
                        "6fb20d31f734d876c5682fdd2678d194cf68b862755f83b7ba1373c0874be25c");
    sb_sigv4_result_free(&res);
}

/* Any valid encoding of the same parameters signs the same: escaped
 * unreserved characters are decoded, a key without '=' has an empty value. */
static void test_query_encodings_agree(void **state)
{
    const sb_sigv4_header hdrs[] = {HOST};
    sb_sigv4_result res;

    assert_int_equal(sign("GET", "/", "b=%7e&a=%41&c", hdrs, 1, &res), SB_OK);
    assert_non_null(strstr(res.canonical_request, "\na=A&b=~&c=\n"));
    assert_string_equal(res.signature,
                        "e2abb9870ce9aa874094f158f0aba5034b60baf0ab7fdf552e666822b0e26c1c");
    sb_sigv4_result_free(&res);

    expect_signature("GET", "/", "c=&a=A&b=~", hdrs, 1,
                     "e2abb9870ce9aa874094f158f0aba5034b60baf0ab7fdf552e666822b0e26c1c");
}

/* Repeated names sort by value; '+' is a plus sign; raw UTF-8 and
 * reserved characters are encoded; empty pieces are empty names. */
static void test_query_details(void **state)
{
    const sb_sigv4_header hdrs[] = {HOST};
    sb_sigv4_result res;

    assert_int_equal(sign("GET", "/", "k=b&k=a&x=1+2&u=\xc3\xa9/?&&k", hdrs, 1, &res), SB_OK);
    assert_non_null(strstr(res.canonical_request, "\n=&k=&k=a&k=b&u=%C3%A9%2F%3F&x=1%2B2\n"));
    sb_sigv4_result_free(&res);
}

static void expect_refused(const sb_sigv4_request *req, const sb_sigv4_creds *creds,
                           const char *region, const char *date)
{
    sb_sigv4_result res = {.authorization = (char *)"untouched"};

    assert_int_equal(sb_sigv4_sign(req, creds, region, "service", date, &res), SB_E_INTERNAL);
    assert_string_equal(res.authorization, "untouched");
}

static void test_refusals(void **state)
{
    const sb_sigv4_header host[] = {HOST};
    const sb_sigv4_header owned[] = {HOST, {"X-Amz-Date", DATE}};
    const sb_sigv4_header auth[] = {HOST, {"authorization", "x"}};
    const sb_sigv4_header no_host[] = {{"Accept", "*/*"}};
    const sb_sigv4_header ctl[] = {HOST, {"X-A", "a\r\nb"}};
    const sb_sigv4_header utf8[] = {HOST, {"X-A", "\xc3\xa9"}};
    const sb_sigv4_header bad_name[] = {HOST, {"X A", "a"}};
    sb_sigv4_request req = {.method = "GET", .path = "/", .headers = host, .header_count = 1};
    const sb_sigv4_creds no_secret = {.access_key = AKID, .secret_key = ""};
    const sb_sigv4_creds bad_akid = {.access_key = "AKID/X", .secret_key = SECRET};

    expect_refused(&req, &CREDS, "us-east-1", "2015-08-30T12:36:00Z");
    expect_refused(&req, &CREDS, "us/east", DATE);
    expect_refused(&req, &no_secret, "us-east-1", DATE);
    expect_refused(&req, &bad_akid, "us-east-1", DATE);

    const sb_sigv4_header *bad_hdrs[] = {owned, auth, no_host, ctl, utf8, bad_name};
    const size_t counts[] = {2, 2, 1, 2, 2, 2};
    for (size_t i = 0; i < 6; i++) {
        sb_sigv4_request r = {
            .method = "GET", .path = "/", .headers = bad_hdrs[i], .header_count = counts[i]};
        expect_refused(&r, &CREDS, "us-east-1", DATE);
    }

    const char *bad_paths[] = {"a/b", "/a?b", "/a#b", "/a\tb"};
    for (size_t i = 0; i < 4; i++) {
        sb_sigv4_request r = {
            .method = "GET", .path = bad_paths[i], .headers = host, .header_count = 1};
        expect_refused(&r, &CREDS, "us-east-1", DATE);
    }

    const char *bad_queries[] = {"a=%", "a=%4", "a=%zz", "a#b", "a=\x01"};
    for (size_t i = 0; i < 5; i++) {
        sb_sigv4_request r = {.method = "GET",
                              .path = "/",
                              .query = bad_queries[i],
                              .headers = host,
                              .header_count = 1};
        expect_refused(&r, &CREDS, "us-east-1", DATE);
    }

    sb_sigv4_request bad_method = {
        .method = "GE T", .path = "/", .headers = host, .header_count = 1};
    expect_refused(&bad_method, &CREDS, "us-east-1", DATE);
}

/* Every secure-memory buffer the signer used (secret key copy, canonical
 * request, string to sign) is handed back, which wipes it. */
static void test_secure_memory_returned(void **state)
{
    const sb_sigv4_header hdrs[] = {HOST};
    size_t before = sb_secmem_in_use();
    sb_sigv4_result res;

    assert_int_equal(sign("GET", "/", "a=1", hdrs, 1, &res), SB_OK);
    assert_int_equal(sb_secmem_in_use(), before);
    sb_sigv4_result_free(&res);
    assert_null(res.canonical_request);
    sb_sigv4_result_free(&res);
    sb_sigv4_result_free(NULL);
}

static void test_amz_date(void **state)
{
    char out[SB_SIGV4_DATE_LEN];

    sb_sigv4_amz_date(1440938160000, out);
    assert_string_equal(out, DATE);
    sb_sigv4_amz_date(1440938160999, out);
    assert_string_equal(out, DATE);
    sb_sigv4_amz_date(0, out);
    assert_string_equal(out, "19700101T000000Z");
    sb_sigv4_amz_date(-1, out);
    assert_string_equal(out, "19691231T235959Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_documented_iam_example),
        cmocka_unit_test(test_suite_vanilla),
        cmocka_unit_test(test_suite_paths),
        cmocka_unit_test(test_path_normalization),
        cmocka_unit_test(test_suite_headers),
        cmocka_unit_test(test_suite_session_token),
        cmocka_unit_test(test_secrets_manager_request),
        cmocka_unit_test(test_sts_form_post),
        cmocka_unit_test(test_query_encodings_agree),
        cmocka_unit_test(test_query_details),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_secure_memory_returned),
        cmocka_unit_test(test_amz_date),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
