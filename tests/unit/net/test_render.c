/* Unit tests of net/render: response bodies stay valid JSON whatever the
 * secret bytes, and UTF-8 is judged strictly. */
#include "net/render.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "core/json.h"

static json_t *parse_buf(const sb_buf *buf)
{
    json_t *doc = NULL;
    assert_int_equal(sb_json_parse(buf->data, buf->len, buf->len, &doc), SB_OK);
    return doc;
}

static void test_utf8(void **state)
{
    assert_true(sb_render_is_utf8((const unsigned char *)"", 0));
    assert_true(sb_render_is_utf8((const unsigned char *)"plain", 5));
    assert_true(
        sb_render_is_utf8((const unsigned char *)"\xc3\xa9\xe2\x82\xac\xf0\x9f\x94\x91", 9));
    assert_false(sb_render_is_utf8((const unsigned char *)"\xc0\xaf", 2));         /* overlong */
    assert_false(sb_render_is_utf8((const unsigned char *)"\xe0\x80\xaf", 3));     /* overlong */
    assert_false(sb_render_is_utf8((const unsigned char *)"\xed\xa0\x80", 3));     /* surrogate */
    assert_false(sb_render_is_utf8((const unsigned char *)"\xf4\x90\x80\x80", 4)); /* > 10FFFF */
    assert_false(sb_render_is_utf8((const unsigned char *)"\xc3", 1));             /* cut */
    assert_false(sb_render_is_utf8((const unsigned char *)"\xff", 1));
    assert_true(sb_render_is_utf8((const unsigned char *)"a\0b", 3)); /* NUL is UTF-8 */
}

static void test_secret_document(void **state)
{
    sb_secret_doc *doc = sb_doc_new(SB_BACKEND_K8S, "shop", "db", "42");
    static const unsigned char binary[] = {0xff, 0x00, 0x80, 0x01};
    sb_buf buf;

    assert_int_equal(sb_doc_add(doc, "user", 4, "app", 3), SB_OK);
    assert_int_equal(sb_doc_add(doc, "quote", 5, "a\"b\\c\n\x01", 7), SB_OK);
    assert_int_equal(sb_doc_add(doc, "cert.der", 8, binary, sizeof(binary)), SB_OK);
    sb_doc_seal(doc);

    sb_buf_init(&buf, 4096);
    assert_int_equal(sb_render_secret(&buf, doc, true), SB_OK);
    json_t *j = parse_buf(&buf);
    assert_string_equal(json_string_value(json_object_get(j, "backend")), "kubernetes");
    assert_string_equal(json_string_value(json_object_get(j, "version")), "42");
    json_t *data = json_object_get(j, "data");
    assert_string_equal(json_string_value(json_object_get(data, "user")), "app");
    assert_string_equal(json_string_value(json_object_get(data, "quote")), "a\"b\\c\n\x01");
    json_t *bin = json_object_get(j, "binary_data");
    assert_string_equal(json_string_value(json_object_get(bin, "cert.der")), "/wCAAQ==");
    assert_true(json_is_true(json_object_get(j, "cache_hit")));
    json_decref(j);
    sb_buf_free(&buf);
    sb_doc_unref(doc);
}

static void test_binary_only_document(void **state)
{
    sb_secret_doc *doc = sb_doc_new(SB_BACKEND_AWS, "shop", "blob", "v1");
    sb_buf buf;

    doc->binary_only = true;
    assert_int_equal(sb_doc_add(doc, "value", 5, "text", 4), SB_OK);
    sb_doc_seal(doc);
    sb_buf_init(&buf, 4096);
    assert_int_equal(sb_render_secret(&buf, doc, false), SB_OK);
    json_t *j = parse_buf(&buf);
    assert_int_equal(json_object_size(json_object_get(j, "data")), 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "binary_data"), "value")), "dGV4dA==");
    json_decref(j);
    sb_buf_free(&buf);
    sb_doc_unref(doc);
}

static void test_error_and_items(void **state)
{
    sb_buf buf;
    sb_secret *v = sb_secret_new("\xff", 1);

    sb_buf_init(&buf, 4096);
    assert_int_equal(sb_render_error(&buf, SB_E_FORBIDDEN, "no \"way\"", "abc"), SB_OK);
    json_t *j = parse_buf(&buf);
    json_t *e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "forbidden");
    assert_string_equal(json_string_value(json_object_get(e, "message")), "no \"way\"");
    json_decref(j);

    sb_buf_reset(&buf);
    assert_int_equal(sb_render_item_head(&buf, "db", "ns", "k", 200), SB_OK);
    assert_int_equal(sb_render_item_value(&buf, v), SB_OK);
    assert_int_equal(sb_buf_append(&buf, "}", 1), SB_OK);
    j = parse_buf(&buf);
    assert_string_equal(json_string_value(json_object_get(j, "value_base64")), "/w==");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 200);
    json_decref(j);

    sb_buf_reset(&buf);
    assert_int_equal(sb_render_item_head(&buf, "db", "ns", "", 404), SB_OK);
    assert_int_equal(sb_render_item_error(&buf, SB_E_NOT_FOUND, "gone"), SB_OK);
    assert_int_equal(sb_buf_append(&buf, "}", 1), SB_OK);
    j = parse_buf(&buf);
    assert_null(json_object_get(j, "key"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                        "not_found");
    json_decref(j);

    sb_secret_unref(v);
    sb_buf_free(&buf);
}

static void test_size_limit(void **state)
{
    sb_secret_doc *doc = sb_doc_new(SB_BACKEND_K8S, "shop", "big", "1");
    char value[512];
    sb_buf buf;

    memset(value, 'x', sizeof(value));
    assert_int_equal(sb_doc_add(doc, "v", 1, value, sizeof(value)), SB_OK);
    sb_doc_seal(doc);
    sb_buf_init(&buf, 256);
    assert_int_equal(sb_render_secret(&buf, doc, false), SB_E_TOO_LARGE);
    sb_buf_free(&buf);
    sb_doc_unref(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_secret_document),
        cmocka_unit_test(test_binary_only_document),
        cmocka_unit_test(test_error_and_items),
        cmocka_unit_test(test_size_limit),
    };
    sb_json_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
