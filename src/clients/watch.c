/* The Secret watch (see watch.h), following the Kubernetes API concepts
 * page ("Efficient detection of changes", "Watch bookmarks", "410 Gone
 * responses"): list for a resourceVersion, watch from it, keep the newest
 * version any event or bookmark carried, resume from it, and list again
 * only when the server no longer has it. */
#include "clients/watch.h"

#include <gnutls/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/limits.h"
#include "core/names.h"
#include "obs/log.h"

/* The metadata-only representations (meta.k8s.io/v1 PartialObjectMetadata):
 * the API server strips everything but metadata before answering. */
#define ACCEPT_LIST  "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
#define ACCEPT_WATCH "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

#define WATCH_MIN_S      240   /* server-side watch length, spread over a minute */
#define WATCH_SPREAD_S   60    /* so replicas do not reconnect in step */
#define WATCH_SLACK_MS   30000 /* our deadline beyond the server's */
#define BACKOFF_FIRST_MS 250
#define BACKOFF_MAX_MS   30000
#define STEADY_MS        10000 /* a stream this old was healthy: backoff starts over */

struct sb_watch {
    sb_kube *kube;
    sb_http *http;
    char *base; /* /api/v1/secrets or /api/v1/namespaces/<ns>/secrets */
    sb_watch_handler h;
    char rv[SB_MAX_RESOURCE_VERSION + 1];
    bool relist;  /* the next attempt lists first */
    sb_buf line;  /* the event being read (metadata can carry secret bytes) */
    int failures; /* in a row, for the backoff */
    bool failing; /* a failure was logged; say so when it works again */
    int64_t stream_started_ms;
    sb_err stream_err; /* why the reader ended the stream */
};

static void begin(sb_watch *w);

static uint32_t random_u32(void)
{
    uint32_t x = 0;

    if (gnutls_rnd(GNUTLS_RND_NONCE, &x, sizeof(x)) != 0)
        abort(); /* no randomness: nothing secure can run */
    return x;
}

sb_watch *sb_watch_new(sb_kube *kube, sb_http *http, const char *ns, sb_watch_handler handler)
{
    sb_watch *w = sb_xcalloc(1, sizeof(*w));

    w->kube = kube;
    w->http = http;
    w->h = handler;
    /* Namespaces are validated DNS labels: nothing to escape. */
    w->base =
        ns ? sb_xasprintf("/api/v1/namespaces/%s/secrets", ns) : sb_xstrdup("/api/v1/secrets");
    sb_buf_init(&w->line, SB_MAX_WATCH_EVENT);
    return w;
}

void sb_watch_free(sb_watch *w)
{
    if (!w)
        return;
    sb_buf_free(&w->line);
    free(w->base);
    free(w);
}

const char *sb_watch_resource_version(const sb_watch *w)
{
    return w->rv;
}

/* Keeps a resourceVersion if it is one: opaque to clients, but it goes
 * into a query string, so only unreserved URL characters are accepted. */
static bool set_version(sb_watch *w, const char *rv, size_t len)
{
    if (!rv || len == 0 || len > SB_MAX_RESOURCE_VERSION)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = rv[i];
        bool ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '.' || ch == '_';
        if (!ok)
            return false;
    }
    memcpy(w->rv, rv, len);
    w->rv[len] = '\0';
    return true;
}

static sb_err apply_object_event(sb_watch *w, const json_t *meta)
{
    size_t ns_len = 0, name_len = 0, rv_len = 0;
    const char *ns = sb_json_str(meta, "namespace", &ns_len);
    const char *name = sb_json_str(meta, "name", &name_len);
    const char *rv = sb_json_str(meta, "resourceVersion", &rv_len);

    if (!ns || !name || !sb_name_is_label(ns, ns_len) || !sb_name_is_subdomain(name, name_len))
        return SB_E_UPSTREAM;
    w->h.changed(w->h.ud, ns, name);
    return set_version(w, rv, rv_len) ? SB_OK : SB_E_UPSTREAM;
}

/* One event (a JSON object on one line): ADDED, MODIFIED, DELETED,
 * BOOKMARK (only a newer resourceVersion) or ERROR (a Status). */
static sb_err apply_event(sb_watch *w, const json_t *ev)
{
    const char *type = sb_json_str(ev, "type", NULL);
    const json_t *obj = json_object_get(ev, "object");
    const json_t *meta = json_object_get(obj, "metadata");
    size_t rv_len = 0;

    if (!type || !json_is_object(obj))
        return SB_E_UPSTREAM;
    if (!strcmp(type, "ERROR")) {
        /* 410 Gone: the version is older than the server keeps. */
        json_int_t code = json_integer_value(json_object_get(obj, "code"));
        return code == 410 ? SB_E_UPSTREAM : SB_E_UNAVAILABLE;
    }
    if (!strcmp(type, "BOOKMARK")) {
        const char *rv = sb_json_str(meta, "resourceVersion", &rv_len);
        return set_version(w, rv, rv_len) ? SB_OK : SB_E_UPSTREAM;
    }
    if (!strcmp(type, "ADDED") || !strcmp(type, "MODIFIED") || !strcmp(type, "DELETED"))
        return apply_object_event(w, meta);
    return SB_OK; /* a type this version does not know: nothing to evict */
}

static sb_err apply_line(sb_watch *w)
{
    json_t *ev = NULL;

    if (w->line.len == 0)
        return SB_OK;
    if (sb_json_parse(w->line.data, w->line.len, SB_MAX_WATCH_EVENT, &ev) != SB_OK)
        return SB_E_UPSTREAM;
    sb_err err = apply_event(w, ev);
    json_decref(ev);
    return err;
}

sb_err sb_watch_feed(sb_watch *w, const void *data, size_t len)
{
    const char *p = data;
    const char *end = p + len;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (sb_buf_append(&w->line, p, n) != SB_OK) {
            sb_buf_reset(&w->line);
            return SB_E_UPSTREAM; /* an event over SB_MAX_WATCH_EVENT */
        }
        if (!nl)
            return SB_OK;
        p = nl + 1;
        sb_err err = apply_line(w);
        sb_buf_reset(&w->line);
        if (err != SB_OK)
            return err;
    }
    return SB_OK;
}

static void begin_task(void *ud)
{
    begin(ud);
}

static void retry_later(sb_watch *w, const char *what, const char *detail, long status)
{
    int shift = w->failures < 8 ? w->failures : 8;
    int64_t cap = (int64_t)BACKOFF_FIRST_MS << shift;

    if (cap > BACKOFF_MAX_MS)
        cap = BACKOFF_MAX_MS;
    int64_t delay = cap / 2 + random_u32() % (uint32_t)(cap / 2 + 1);
    w->failures++;
    /* Logged when it starts failing and when it works again, not at every
     * retry; cached values still expire after CACHE_TTL_SECONDS meanwhile. */
    if (!w->failing)
        SB_WARN("watch", NULL,
                "%s failed: %s (HTTP %ld); retrying with backoff, cached values expire by "
                "their TTL meanwhile",
                what, detail, status);
    else
        SB_DEBUG("watch", NULL, "%s failed again: %s (HTTP %ld); next try in %lld ms", what, detail,
                 status, (long long)delay);
    w->failing = true;
    sb_http_call_at(w->http, sb_clock_mono_ms() + delay, begin_task, w);
}

static void working(sb_watch *w)
{
    if (!w->failing)
        return;
    w->failing = false;
    SB_INFO("watch", NULL, "the Secret watch works again (resourceVersion %s)", w->rv);
}

static bool on_chunk(const void *data, size_t len, void *ud)
{
    sb_watch *w = ud;
    sb_err err = sb_watch_feed(w, data, len);

    if (err != SB_OK) {
        w->stream_err = err;
        return false;
    }
    working(w);
    return true;
}

static void on_stream_end(sb_kube_result *res, void *ud)
{
    sb_watch *w = ud;
    bool steady = sb_clock_mono_ms() - w->stream_started_ms >= STEADY_MS;

    if (res->err == SB_E_SHUTDOWN)
        return;
    if (steady)
        w->failures = 0;
    if (w->stream_err == SB_E_UPSTREAM || res->status == 410) {
        SB_INFO("watch", NULL,
                "resourceVersion %s is gone or an event was unreadable: "
                "listing again and dropping cached Kubernetes values",
                w->rv);
        w->relist = true;
        begin(w);
        return;
    }
    if (w->stream_err == SB_E_UNAVAILABLE) {
        retry_later(w, "the Secret watch", "the API server ended it with an error", 200);
        return;
    }
    if (res->err != SB_OK) {
        retry_later(w, "the Secret watch", res->detail, res->status);
        return;
    }
    /* The server ended the watch on time (timeoutSeconds): resume. A
     * stream that ends at once, again and again, still backs off. */
    if (!steady) {
        retry_later(w, "the Secret watch", "the stream ended early", res->status);
        return;
    }
    begin(w);
}

static void watch_from_version(sb_watch *w)
{
    int timeout_s = WATCH_MIN_S + (int)(random_u32() % (WATCH_SPREAD_S + 1));
    char *path = sb_xasprintf("%s?watch=1&allowWatchBookmarks=true&resourceVersion=%s"
                              "&timeoutSeconds=%d",
                              w->base, w->rv, timeout_s);
    sb_kube_opts opts = {.accept = ACCEPT_WATCH,
                         .timeout_ms = timeout_s * 1000 + WATCH_SLACK_MS,
                         .on_chunk = on_chunk,
                         .chunk_ud = w};

    sb_buf_reset(&w->line);
    w->stream_err = SB_OK;
    w->stream_started_ms = sb_clock_mono_ms();
    sb_kube_call_ex(w->kube, "GET", path, NULL, NULL, &opts, NULL, on_stream_end, w);
    free(path);
}

static void on_listed(sb_kube_result *res, void *ud)
{
    sb_watch *w = ud;
    size_t len = 0;

    if (res->err == SB_E_SHUTDOWN)
        return;
    if (res->err != SB_OK) {
        retry_later(w, "listing Secrets for the watch", res->detail, res->status);
        return;
    }
    const char *rv = sb_json_str(json_object_get(res->json, "metadata"), "resourceVersion", &len);
    if (!set_version(w, rv, len)) {
        retry_later(w, "listing Secrets for the watch", "no usable resourceVersion", res->status);
        return;
    }

    /* Watch from the list's version; what was cached before it may predate
     * changes the watch will not replay, so it goes now. */
    w->relist = false;
    working(w);
    SB_DEBUG("watch", NULL, "watching Secrets from resourceVersion %s", w->rv);
    w->h.lost(w->h.ud);
    watch_from_version(w);
}

static void list_for_version(sb_watch *w)
{
    /* One item is enough: the list's own resourceVersion is what the
     * watch needs; the items are not kept. */
    char *path = sb_xasprintf("%s?limit=1", w->base);
    sb_kube_opts opts = {.accept = ACCEPT_LIST};

    sb_kube_call_ex(w->kube, "GET", path, NULL, NULL, &opts, NULL, on_listed, w);
    free(path);
}

static void begin(sb_watch *w)
{
    if (w->relist || !w->rv[0])
        list_for_version(w);
    else
        watch_from_version(w);
}

void sb_watch_start(sb_watch *w)
{
    SB_INFO("watch", NULL, "watching %s (metadata only) to invalidate cached values", w->base);
    sb_http_call_at(w->http, 0, begin_task, w);
}
