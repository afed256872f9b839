/* The libcurl multi loop behind http.h. Submissions and timers arrive on a
 * mutex-protected list and wake the loop with curl_multi_wakeup; the loop
 * owns every easy handle from then on. */
#include "clients/http.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/limits.h"
#include "obs/metrics.h"

struct sb_http_req {
    CURL *easy;
    struct curl_slist *headers;
    sb_buf body;
    size_t max_body;
    sb_http_response resp;
    sb_http_done_fn done;
    void *ud;
    sb_http_chunk_fn on_chunk; /* streams a 2xx body when set */
    void *chunk_ud;
    bool reader_stopped; /* on_chunk asked to end the transfer */
    int64_t started_us;
    char errbuf[CURL_ERROR_SIZE];
    sb_http_req *next;                /* on the pending list */
    sb_http_req *act_prev, *act_next; /* on the active list (loop thread only) */
};

struct timer {
    int64_t due_ms;
    sb_http_task_fn fn;
    void *ud;
};

struct sb_http {
    CURLM *multi;
    pthread_t thread;
    pthread_mutex_t lock; /* guards pending, timers and stopping */
    sb_http_req *pending;
    sb_http_req *active;  /* transfers added to the multi handle; loop thread only */
    struct timer *timers; /* a binary min-heap on due_ms */
    size_t ntimers, captimers;
    bool stopping;
    atomic_int inflight;
    int max_inflight;
};

static void heap_push(sb_http *h, struct timer t)
{
    if (h->ntimers == h->captimers) {
        h->captimers = h->captimers ? h->captimers * 2 : 64;
        h->timers = sb_xrealloc(h->timers, h->captimers * sizeof(*h->timers));
    }
    size_t i = h->ntimers++;
    while (i > 0 && h->timers[(i - 1) / 2].due_ms > t.due_ms) {
        h->timers[i] = h->timers[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->timers[i] = t;
}

static struct timer heap_pop(sb_http *h)
{
    struct timer top = h->timers[0];
    struct timer last = h->timers[--h->ntimers];
    size_t i = 0;

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->ntimers)
            break;
        if (c + 1 < h->ntimers && h->timers[c + 1].due_ms < h->timers[c].due_ms)
            c++;
        if (last.due_ms <= h->timers[c].due_ms)
            break;
        h->timers[i] = h->timers[c];
        i = c;
    }
    if (h->ntimers)
        h->timers[i] = last;
    return top;
}

/* A streamed answer's body goes to its reader; the status is known by
 * the time the first body byte arrives. */
static bool streams(sb_http_req *req)
{
    long status = 0;

    if (!req->on_chunk)
        return false;
    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
    return status >= 200 && status < 300;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    sb_http_req *req = ud;
    size_t n = size * nmemb;

    if (streams(req)) {
        if (req->on_chunk(data, n, req->chunk_ud))
            return n;
        req->reader_stopped = true;
        return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
    }
    req->resp.body.max = req->max_body;
    if (sb_buf_append(&req->resp.body, data, n) != SB_OK)
        return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud)
{
    sb_http_req *req = ud;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";

    /* RFC 9110 section 10.2.3: delay-seconds or an HTTP date; only the
     * seconds form is used by the API server and AWS. */
    if (n > sizeof(name) && strncasecmp(data, name, sizeof(name) - 1) == 0) {
        long secs = 0;
        size_t i = sizeof(name) - 1;
        while (i < n && data[i] == ' ')
            i++;
        for (; i < n && data[i] >= '0' && data[i] <= '9' && secs < 86400; i++)
            secs = secs * 10 + (data[i] - '0');
        req->resp.retry_after_s = (int)secs;
    }
    return n;
}

sb_http_req *sb_http_req_new(const char *method, const char *url)
{
    sb_http_req *req = sb_xcalloc(1, sizeof(*req));

    req->easy = curl_easy_init();
    if (!req->easy)
        abort(); /* only fails on OOM: the project's policy */
    req->max_body = SB_MAX_UPSTREAM_BODY;
    req->resp.retry_after_s = -1;
    req->resp.detail = "";
    sb_buf_init(&req->resp.body, SB_MAX_UPSTREAM_BODY);

    curl_easy_setopt(req->easy, CURLOPT_URL, url);
    curl_easy_setopt(req->easy, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "GET") != 0)
        curl_easy_setopt(req->easy, CURLOPT_POSTFIELDSIZE, 0L);
    curl_easy_setopt(req->easy, CURLOPT_PRIVATE, req);
    curl_easy_setopt(req->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(req->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(req->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(req->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(req->easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(req->easy, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(req->easy, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(req->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(req->easy, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(req->easy, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_ERRORBUFFER, req->errbuf);
    curl_easy_setopt(req->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    return req;
}

void sb_http_req_header(sb_http_req *req, const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 3;
    char *line = sb_xmalloc(n);

    snprintf(line, n, "%s: %s", name, value);
    req->headers = curl_slist_append(req->headers, line);
    sb_wipe(line, n);
    free(line);
    if (!req->headers)
        abort();
}

void sb_http_req_body(sb_http_req *req, const void *body, size_t len, const char *content_type)
{
    sb_buf_init(&req->body, len + 1);
    if (sb_buf_append(&req->body, body, len) != SB_OK)
        abort(); /* cannot happen: the maximum is the length */
    curl_easy_setopt(req->easy, CURLOPT_POSTFIELDS, req->body.data);
    curl_easy_setopt(req->easy, CURLOPT_POSTFIELDSIZE, (long)len);
    if (content_type)
        sb_http_req_header(req, "Content-Type", content_type);
}

void sb_http_req_timeout(sb_http_req *req, int timeout_ms)
{
    long connect = timeout_ms < 3000 ? timeout_ms : 3000;
    curl_easy_setopt(req->easy, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(req->easy, CURLOPT_CONNECTTIMEOUT_MS, connect);
}

void sb_http_req_max_body(sb_http_req *req, size_t max)
{
    req->max_body = max;
}

void sb_http_req_stream(sb_http_req *req, sb_http_chunk_fn on_chunk, void *ud)
{
    req->on_chunk = on_chunk;
    req->chunk_ud = ud;
}

void sb_http_req_tls(sb_http_req *req, const char *ca_file, const char *cert_file,
                     const char *key_file)
{
    /* A CA file given is the whole trust: without clearing CAPATH, libcurl
     * (GnuTLS) also trusts the system's certificate directory, and loading
     * it costs every connection's first handshake about 7 MB of memory. */
    if (ca_file) {
        curl_easy_setopt(req->easy, CURLOPT_CAINFO, ca_file);
        curl_easy_setopt(req->easy, CURLOPT_CAPATH, NULL);
    }
    if (cert_file)
        curl_easy_setopt(req->easy, CURLOPT_SSLCERT, cert_file);
    if (key_file)
        curl_easy_setopt(req->easy, CURLOPT_SSLKEY, key_file);
}

static void req_free(sb_http_req *req)
{
    for (struct curl_slist *l = req->headers; l; l = l->next)
        sb_wipe(l->data, strlen(l->data));
    curl_slist_free_all(req->headers);
    curl_easy_cleanup(req->easy);
    sb_buf_free(&req->body);
    sb_buf_free(&req->resp.body);
    free(req);
}

static void active_add(sb_http *h, sb_http_req *req)
{
    req->act_prev = NULL;
    req->act_next = h->active;
    if (h->active)
        h->active->act_prev = req;
    h->active = req;
}

static void active_remove(sb_http *h, sb_http_req *req)
{
    if (req->act_prev)
        req->act_prev->act_next = req->act_next;
    else if (h->active == req)
        h->active = req->act_next;
    if (req->act_next)
        req->act_next->act_prev = req->act_prev;
    req->act_prev = req->act_next = NULL;
}

static void complete(sb_http *h, sb_http_req *req)
{
    req->resp.elapsed_us = sb_clock_mono_us() - req->started_us;
    req->done(&req->resp, req->ud);
    atomic_fetch_sub(&h->inflight, 1);
    sb_metrics_gauge_add(SB_METRICS_INFLIGHT_CALLS, -1);
    req_free(req);
}

static sb_err map_curl_error(CURLcode rc)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return SB_E_TIMEOUT;
    case CURLE_WRITE_ERROR:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_WEIRD_SERVER_REPLY:
        return SB_E_UPSTREAM;
    default:
        return SB_E_UNAVAILABLE;
    }
}

static void finish_transfer(sb_http *h, CURLMsg *msg)
{
    sb_http_req *req = NULL;

    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&req);
    curl_multi_remove_handle(h->multi, msg->easy_handle);
    active_remove(h, req);
    if (msg->data.result == CURLE_OK) {
        curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &req->resp.status);
    } else {
        req->resp.err = map_curl_error(msg->data.result);
        req->resp.status = 0;
        req->resp.detail = req->errbuf[0] ? req->errbuf : curl_easy_strerror(msg->data.result);
        if (msg->data.result == CURLE_WRITE_ERROR)
            req->resp.detail = req->reader_stopped ? "the stream was ended by its reader"
                                                   : "response body over its size limit";
        sb_buf_reset(&req->resp.body);
    }
    complete(h, req);
}

static sb_http_req *reverse(sb_http_req *list)
{
    sb_http_req *rev = NULL;
    while (list) {
        sb_http_req *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    return rev;
}

static void fail_all(sb_http *h, sb_http_req *list, sb_err err, const char *detail)
{
    for (sb_http_req *req = list, *next; req; req = next) {
        next = req->next;
        req->resp.err = err;
        req->resp.detail = detail;
        complete(h, req);
    }
}

static void start_pending(sb_http *h, sb_http_req *list)
{
    /* The list was pushed newest first; start oldest first. */
    for (sb_http_req *req = reverse(list), *next; req; req = next) {
        next = req->next;
        if (atomic_load(&h->inflight) > h->max_inflight) {
            req->resp.err = SB_E_UNAVAILABLE;
            req->resp.detail = "too many backend calls in flight";
            complete(h, req);
            continue;
        }
        curl_easy_setopt(req->easy, CURLOPT_HTTPHEADER, req->headers);
        if (curl_multi_add_handle(h->multi, req->easy) != CURLM_OK) {
            req->resp.err = SB_E_INTERNAL;
            req->resp.detail = "curl refused the transfer";
            complete(h, req);
            continue;
        }
        active_add(h, req);
    }
}

static int run_timers(sb_http *h, int64_t now)
{
    for (;;) {
        pthread_mutex_lock(&h->lock);
        if (h->ntimers == 0 || h->timers[0].due_ms > now) {
            int wait = h->ntimers ? (int)(h->timers[0].due_ms - now) : 1000;
            pthread_mutex_unlock(&h->lock);
            return wait < 1000 ? wait : 1000;
        }
        struct timer t = heap_pop(h);
        pthread_mutex_unlock(&h->lock);
        t.fn(t.ud);
    }
}

static _Thread_local const sb_http *loop_self;

static void *loop_main(void *arg)
{
    sb_http *h = arg;
    int running = 0;

    loop_self = h;
    for (;;) {
        pthread_mutex_lock(&h->lock);
        bool stopping = h->stopping;
        sb_http_req *pending = h->pending;
        h->pending = NULL;
        pthread_mutex_unlock(&h->lock);
        if (stopping) {
            fail_all(h, reverse(pending), SB_E_SHUTDOWN, "shutting down");
            break;
        }
        start_pending(h, pending);

        int wait = run_timers(h, sb_clock_mono_ms());
        curl_multi_perform(h->multi, &running);

        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
            if (msg->msg == CURLMSG_DONE)
                finish_transfer(h, msg);
        }
        curl_multi_poll(h->multi, NULL, 0, wait, NULL);
    }
    return NULL;
}

sb_err sb_http_start(int max_inflight, sb_http **out)
{
    sb_http *h = sb_xcalloc(1, sizeof(*h));

    h->multi = curl_multi_init();
    if (!h->multi)
        abort();
    h->max_inflight = max_inflight;
    curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 32L);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 64L);
    pthread_mutex_init(&h->lock, NULL);

    if (pthread_create(&h->thread, NULL, loop_main, h) != 0) {
        curl_multi_cleanup(h->multi);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return SB_E_INTERNAL;
    }
    *out = h;
    return SB_OK;
}

static void cancel_all(sb_http *h)
{
    while (h->active) {
        sb_http_req *req = h->active;
        curl_multi_remove_handle(h->multi, req->easy);
        active_remove(h, req);
        req->resp.err = SB_E_SHUTDOWN;
        req->resp.detail = "shutting down";
        complete(h, req);
    }
}

/* After the loop thread ended: fails what was submitted, cancels what was
 * in flight and runs the timers, round after round, so every request a
 * caller is waiting for completes (with SB_E_SHUTDOWN) before the caller
 * tears down. Tasks that re-arm themselves end with the rounds. */
static void drain(sb_http *h)
{
    for (int round = 0; round < 16; round++) {
        pthread_mutex_lock(&h->lock);
        sb_http_req *pending = h->pending;
        struct timer *timers = h->timers;
        size_t ntimers = h->ntimers;
        h->pending = NULL;
        h->timers = NULL;
        h->ntimers = h->captimers = 0;
        pthread_mutex_unlock(&h->lock);

        bool idle = !pending && !ntimers && !h->active;
        fail_all(h, reverse(pending), SB_E_SHUTDOWN, "shutting down");
        cancel_all(h);
        for (size_t i = 0; i < ntimers; i++)
            timers[i].fn(timers[i].ud);
        free(timers);
        if (idle)
            return;
    }
}

void sb_http_stop(sb_http *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stopping = true;
    pthread_mutex_unlock(&h->lock);
    curl_multi_wakeup(h->multi);
    pthread_join(h->thread, NULL);

    loop_self = h; /* callbacks and tasks run on this thread now */
    drain(h);
    loop_self = NULL;
    curl_multi_cleanup(h->multi);
    free(h->timers);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

void sb_http_submit(sb_http *h, sb_http_req *req, sb_http_done_fn done, void *ud)
{
    req->done = done;
    req->ud = ud;
    req->started_us = sb_clock_mono_us();
    atomic_fetch_add(&h->inflight, 1);
    sb_metrics_gauge_add(SB_METRICS_INFLIGHT_CALLS, 1);

    pthread_mutex_lock(&h->lock);
    req->next = h->pending;
    h->pending = req;
    pthread_mutex_unlock(&h->lock);
    curl_multi_wakeup(h->multi);
}

void sb_http_call_at(sb_http *h, int64_t due_ms, sb_http_task_fn fn, void *ud)
{
    pthread_mutex_lock(&h->lock);
    heap_push(h, (struct timer){.due_ms = due_ms, .fn = fn, .ud = ud});
    pthread_mutex_unlock(&h->lock);
    /* From the loop too: the poll that follows a completion callback was
     * sized before the callback added this timer, and would sleep past it
     * (up to a second) unless woken. */
    curl_multi_wakeup(h->multi);
}

int sb_http_inflight(const sb_http *h)
{
    return atomic_load(&((sb_http *)h)->inflight);
}

bool sb_http_on_loop(const sb_http *h)
{
    return loop_self == h;
}
