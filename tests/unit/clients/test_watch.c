/* Unit tests of src/clients/watch's stream reader: events split anywhere
 * across pieces, each change reported once with its namespace and name,
 * bookmarks moving the resourceVersion without a change, 410 Gone (list
 * again) told apart from other ERROR events (resume), and unreadable or
 * oversized events refused. The network side is exercised by the
 * integration tests against a real API server. */
#include "clients/watch.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/json.h"
#include "core/limits.h"

struct seen {
    char log[4096];
    int lost;
};

static void on_changed(void *ud, const char *ns, const char *name)
{
    struct seen *s = ud;
    size_t n = strlen(s->log);

    snprintf(s->log + n, sizeof(s->log) - n, "%s/%s;", ns, name);
}

static void on_lost(void *ud)
{
    ((struct seen *)ud)->lost++;
}

static sb_watch *new_watch(struct seen *s)
{
    memset(s, 0, sizeof(*s));
    return sb_watch_new(NULL, NULL, NULL,
                        (sb_watch_handler){.changed = on_changed, .lost = on_lost, .ud = s});
}

static const char *event(const char *type, const char *ns, const char *name, const char *rv)
{
    static char buf[1024];

    snprintf(buf, sizeof(buf),
             "{\"type\":\"%s\",\"object\":{\"kind\":\"PartialObjectMetadata\","
             "\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":{\"name\":\"%s\","
             "\"namespace\":\"%s\",\"resourceVersion\":\"%s\"}}}\n",
             type, name, ns, rv);
    return buf;
}

static void append(char *buf, size_t size, const char *text)
{
    size_t n = strlen(buf);

    snprintf(buf + n, size - n, "%s", text);
}

static void test_changes_and_versions(void **state)
{
    struct seen s;
    sb_watch *w = new_watch(&s);
    char stream[4096] = "";

    append(stream, sizeof(stream), event("ADDED", "shop", "db", "100"));
    append(stream, sizeof(stream), event("MODIFIED", "shop", "api-key", "101"));
    append(stream, sizeof(stream), "\n"); /* blank lines are ignored */
    append(stream, sizeof(stream), event("DELETED", "team-b", "tls.cert", "102"));
    append(stream, sizeof(stream), event("SOMETHING-NEW", "x", "y", "103"));

    /* Fed one byte at a time: events complete across pieces. */
    for (size_t i = 0; stream[i]; i++)
        assert_int_equal(sb_watch_feed(w, stream + i, 1), SB_OK);
    assert_string_equal(s.log, "shop/db;shop/api-key;team-b/tls.cert;");
    assert_string_equal(sb_watch_resource_version(w), "102");
    assert_int_equal(s.lost, 0);
    sb_watch_free(w);
}

static void test_bookmark_moves_the_version_only(void **state)
{
    struct seen s;
    sb_watch *w = new_watch(&s);
    const char *bookmark = "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"PartialObjectMetadata\","
                           "\"metadata\":{\"resourceVersion\":\"12345\","
                           "\"annotations\":{\"k8s.io/initial-events-end\":\"true\"}}}}\n";

    assert_string_equal(sb_watch_resource_version(w), "");
    assert_int_equal(sb_watch_feed(w, bookmark, strlen(bookmark)), SB_OK);
    assert_string_equal(sb_watch_resource_version(w), "12345");
    assert_string_equal(s.log, "");
    sb_watch_free(w);
}

static void test_error_events(void **state)
{
    struct seen s;
    sb_watch *w = new_watch(&s);
    const char *gone = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\","
                       "\"status\":\"Failure\",\"message\":\"too old resource version: 1 (5)\","
                       "\"reason\":\"Expired\",\"code\":410}}\n";
    const char *other = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\","
                        "\"status\":\"Failure\",\"reason\":\"InternalError\",\"code\":500}}\n";
    char both[2048];

    assert_int_equal(sb_watch_feed(w, gone, strlen(gone)), SB_E_UPSTREAM);
    assert_int_equal(sb_watch_feed(w, other, strlen(other)), SB_E_UNAVAILABLE);

    /* Events before the error in the same piece are applied first. */
    snprintf(both, sizeof(both), "%s%s", event("MODIFIED", "shop", "db", "7"), gone);
    assert_int_equal(sb_watch_feed(w, both, strlen(both)), SB_E_UPSTREAM);
    assert_string_equal(s.log, "shop/db;");
    sb_watch_free(w);
}

static void test_unreadable_events(void **state)
{
    const char *bad[] = {
        "not json\n",
        "{\"type\":\"ADDED\"}\n",
        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"db\",\"resourceVersion\":\"1\"}}}"
        "\n",
        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"DB\",\"namespace\":\"shop\","
        "\"resourceVersion\":\"1\"}}}\n",
        "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"db\",\"namespace\":\"shop\","
        "\"resourceVersion\":\"1&watch=0\"}}}\n",
        "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{}}}\n",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct seen s;
        sb_watch *w = new_watch(&s);
        assert_int_equal(sb_watch_feed(w, bad[i], strlen(bad[i])), SB_E_UPSTREAM);
        assert_string_equal(sb_watch_resource_version(w), "");
        sb_watch_free(w);
    }
}

static void test_oversized_event(void **state)
{
    struct seen s;
    sb_watch *w = new_watch(&s);
    size_t n = SB_MAX_WATCH_EVENT + 10;
    char *big = malloc(n);

    memset(big, ' ', n);
    assert_int_equal(sb_watch_feed(w, big, n), SB_E_UPSTREAM);
    /* The reader starts clean after it. */
    const char *ok = event("ADDED", "shop", "db", "9");
    assert_int_equal(sb_watch_feed(w, ok, strlen(ok)), SB_OK);
    assert_string_equal(s.log, "shop/db;");
    free(big);
    sb_watch_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_changes_and_versions),
        cmocka_unit_test(test_bookmark_moves_the_version_only),
        cmocka_unit_test(test_error_events),
        cmocka_unit_test(test_unreadable_events),
        cmocka_unit_test(test_oversized_event),
    };

    sb_json_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
