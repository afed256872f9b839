/* Tests of src/clients/aws_proto: endpoint URLs and how the SDK variables
 * choose them, the bounded XML reader, error codes of JSON and XML
 * answers, and form encoding. */
#include "clients/aws_proto.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/json.h"

#include "../fake_env.h"

static void expect_url(const char *url, const char *base, const char *authority, const char *path,
                       int port)
{
    sb_aws_url u;

    if (sb_aws_url_parse(url, &u) != SB_OK)
        fail_msg("refused: %s", url);
    assert_string_equal(u.base, base);
    assert_string_equal(u.authority, authority);
    assert_string_equal(u.path, path);
    assert_int_equal(u.port, port);
    sb_aws_url_free(&u);
}

static void test_url_parse(void **state)
{
    expect_url("https://secretsmanager.eu-west-1.amazonaws.com",
               "https://secretsmanager.eu-west-1.amazonaws.com",
               "secretsmanager.eu-west-1.amazonaws.com", "", 443);
    expect_url("HTTP://127.0.0.1:5000/", "http://127.0.0.1:5000", "127.0.0.1:5000", "", 5000);
    expect_url("https://VPCE-1.example:443/a/b/", "https://vpce-1.example/a/b", "vpce-1.example",
               "/a/b", 443);
    expect_url("http://[fd00:ec2::23]/v1/credentials", "http://[fd00:ec2::23]/v1/credentials",
               "[fd00:ec2::23]", "/v1/credentials", 80);
    expect_url("http://localhost:80", "http://localhost", "localhost", "", 80);
}

static void test_url_refusals(void **state)
{
    static const char *const bad[] = {
        "",
        "ftp://host",
        "https://",
        "https://user:pw@host",
        "https://host?x=1",
        "https://host/a?x",
        "https://host#f",
        "https://host:0",
        "https://host:65536",
        "https://host:12a",
        "https://host:",
        "https://[::1",
        "https://[]",
        "https://host/a//b",
        "https://host/./b",
        "https://host/a/..",
        "https://host/a%2fb",
        "https://host name",
        "host:443",
    };
    sb_aws_url u;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (sb_aws_url_parse(bad[i], &u) != SB_E_CONFIG)
            fail_msg("accepted: %s", bad[i]);
    }
    sb_aws_url_free(NULL);
}

static void test_region(void **state)
{
    assert_true(sb_aws_region_ok("us-east-1"));
    assert_true(sb_aws_region_ok("cn-north-1"));
    assert_false(sb_aws_region_ok(NULL));
    assert_false(sb_aws_region_ok(""));
    assert_false(sb_aws_region_ok("US-EAST-1"));
    assert_false(sb_aws_region_ok("us-east-1/"));
    assert_false(sb_aws_region_ok("-us"));
}

static void expect_endpoint(const char *region, const char *base)
{
    sb_aws_url u;
    char err[256] = "";

    assert_int_equal(
        sb_aws_endpoint(lookup, "SECRETS_MANAGER", "secretsmanager", region, &u, err, sizeof(err)),
        SB_OK);
    assert_string_equal(u.base, base);
    sb_aws_url_free(&u);
}

static void test_endpoint_choice(void **state)
{
    sb_aws_url u;
    char err[256] = "";

    nvars = 0;
    expect_endpoint("eu-central-1", "https://secretsmanager.eu-central-1.amazonaws.com");
    expect_endpoint("cn-north-1", "https://secretsmanager.cn-north-1.amazonaws.com.cn");

    set("AWS_ENDPOINT_URL", "http://127.0.0.1:4566");
    expect_endpoint("eu-central-1", "http://127.0.0.1:4566");
    expect_endpoint(NULL, "http://127.0.0.1:4566"); /* no region needed */
    set("AWS_ENDPOINT_URL_SECRETS_MANAGER", "https://vpce-0a.secretsmanager.example");
    expect_endpoint("eu-central-1", "https://vpce-0a.secretsmanager.example");
    set("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "TRUE");
    expect_endpoint("eu-central-1", "https://secretsmanager.eu-central-1.amazonaws.com");

    /* Without a region there is nothing to build; a bad URL is named. */
    assert_int_equal(sb_aws_endpoint(lookup, "STS", "sts", NULL, &u, err, sizeof(err)),
                     SB_E_CONFIG);
    assert_non_null(strstr(err, "AWS_REGION"));
    nvars = 0;
    set("AWS_ENDPOINT_URL_STS", "https://user:secret@sts.example");
    assert_int_equal(sb_aws_endpoint(lookup, "STS", "sts", "us-east-1", &u, err, sizeof(err)),
                     SB_E_CONFIG);
    assert_non_null(strstr(err, "AWS_ENDPOINT_URL_STS"));
    assert_null(strstr(err, "secret@")); /* the value is not echoed */
}

static sb_err text_of(const char *xml, const char *tag, char *out, size_t outlen)
{
    sb_buf buf;

    sb_buf_init(&buf, outlen - 1);
    sb_err rc = sb_aws_xml_text(xml, strlen(xml), tag, &buf);
    if (rc == SB_OK)
        memcpy(out, buf.data ? (const char *)buf.data : "", buf.len + 1);
    sb_buf_free(&buf);
    return rc;
}

static void test_xml_text(void **state)
{
    char out[64];

    assert_int_equal(text_of("<a><B>x</B><C>y</C></a>", "C", out, sizeof(out)), SB_OK);
    assert_string_equal(out, "y");
    assert_int_equal(text_of("<Cx>1</Cx><C>2</C>", "C", out, sizeof(out)), SB_OK);
    assert_string_equal(out, "2");
    assert_int_equal(
        text_of("<C xmlns=\"u\">\n  a&amp;b&lt;&gt;&quot;&apos; \n</C >", "C", out, sizeof(out)),
        SB_OK);
    assert_string_equal(out, "a&b<>\"'");
    assert_int_equal(text_of("<C></C>", "C", out, sizeof(out)), SB_OK);
    assert_string_equal(out, "");

    assert_int_equal(text_of("<a>no</a>", "C", out, sizeof(out)), SB_E_NOT_FOUND);
    assert_int_equal(text_of("<C>1</C><C>2</C>", "C", out, sizeof(out)), SB_E_UPSTREAM);
    assert_int_equal(text_of("<C><C>1</C></C>", "C", out, sizeof(out)), SB_E_UPSTREAM);
    assert_int_equal(text_of("<C>1", "C", out, sizeof(out)), SB_E_UPSTREAM);
    assert_int_equal(text_of("<C/>", "C", out, sizeof(out)), SB_E_UPSTREAM);
    assert_int_equal(text_of("<C a='1'/>", "C", out, sizeof(out)), SB_E_UPSTREAM);
    assert_int_equal(text_of("<C><D/></C>", "C", out, sizeof(out)), SB_E_UPSTREAM);
    assert_int_equal(text_of("<C><![CDATA[x]]></C>", "C", out, sizeof(out)), SB_E_UPSTREAM);
    assert_int_equal(text_of("<C>&#65;</C>", "C", out, sizeof(out)), SB_E_UPSTREAM);
    assert_int_equal(text_of("<C>&amp</C>", "C", out, sizeof(out)), SB_E_UPSTREAM);
    assert_int_equal(text_of("<C>0123456789</C>", "C", out, 8), SB_E_TOO_LARGE);
}

static void test_xml_element_is_bounded(void **state)
{
    /* The window stops at len, even when the bytes after it would close. */
    const char *xml = "<C>abc</C>";
    const char *inner;
    size_t n;

    assert_int_equal(sb_aws_xml_element(xml, 8, "C", &inner, &n), SB_E_UPSTREAM);
    assert_int_equal(sb_aws_xml_element(xml, 10, "C", &inner, &n), SB_OK);
    assert_int_equal(n, 3);
    assert_int_equal(sb_aws_xml_element(xml, 2, "C", &inner, &n), SB_E_NOT_FOUND);
}

static void expect_code(const char *body, const char *code)
{
    char out[SB_AWS_ERROR_CODE_LEN];

    sb_aws_error_code(body, strlen(body), out);
    assert_string_equal(out, code);
}

static void test_error_codes(void **state)
{
    expect_code("{\"__type\":\"ResourceNotFoundException\",\"message\":\"x\"}",
                "ResourceNotFoundException");
    expect_code("{\"__type\":\"com.amazonaws.secretsmanager#ThrottlingException\"}",
                "ThrottlingException");
    expect_code(" {\"__type\":\"AccessDeniedException:http://internal.amazon.com/\"}",
                "AccessDeniedException");
    expect_code("{\"code\":\"InvalidParameterException\"}", "InvalidParameterException");
    expect_code("<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>"
                "<Message>...</Message></Error></ErrorResponse>",
                "SignatureDoesNotMatch");
    expect_code("<?xml version=\"1.0\"?><Response><Errors><Error><Code>InvalidClientTokenId"
                "</Code></Error></Errors></Response>",
                "InvalidClientTokenId");
    expect_code("", "");
    expect_code("Service Unavailable", "");
    expect_code("{\"__type\": 5}", "");
    expect_code("{\"__type\":\"Bad Code\"}", "");
    expect_code("{\"__type\":\"\\u001b[31mred\"}", "");
    expect_code("<Code>"
                "0123456789012345678901234567890123456789012345678901234567890123456789"
                "</Code>",
                "");
    expect_code("{\"__type\":", "");
}

static void test_form_append(void **state)
{
    sb_buf b;
    const char raw[] = "aZ09-_.~ /+=&\xc3\xa9";

    sb_buf_init(&b, 256);
    assert_int_equal(sb_aws_form_append(&b, raw, sizeof(raw) - 1), SB_OK);
    assert_string_equal((const char *)b.data, "aZ09-_.~%20%2F%2B%3D%26%C3%A9");
    sb_buf_free(&b);

    sb_buf_init(&b, 4);
    assert_int_equal(sb_aws_form_append(&b, "a b", 3), SB_E_TOO_LARGE);
    sb_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse),   cmocka_unit_test(test_url_refusals),
        cmocka_unit_test(test_region),      cmocka_unit_test(test_endpoint_choice),
        cmocka_unit_test(test_xml_text),    cmocka_unit_test(test_xml_element_is_bounded),
        cmocka_unit_test(test_error_codes), cmocka_unit_test(test_form_append),
    };
    sb_json_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
