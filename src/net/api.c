/* API request handling (see api.h). A request moves through: first call
 * (headers: refuse smuggling shapes and oversized bodies, parse the
 * target), body calls (batch only), final call (identify, authorize and
 * fetch through the broker, maybe suspended), then one response after its
 * audit record is written. Identifying suspends too when a bearer token
 * needs a TokenReview. libmicrohttpd calls the handler on the connection's
 * HTTP thread; token reviews and broker completions run on the loop thread
 * and only resume the connection.
 *
 * Deadlines (REQUEST_TIMEOUT_SECONDS): a timer on the loop resumes a
 * request still waiting at its deadline, which then answers 504 for what
 * is not done. The broker may complete those later: the request object
 * is counted (one reference for libmicrohttpd, one for the loop while any
 * broker request is out) and freed by whichever lets go last. Everything
 * that decides when to resume runs on the loop thread, so the connection
 * is resumed exactly once. */
#include "net/api.h"

#include <gnutls/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth/token.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "net/render.h"
#include "net/request.h"
#include "obs/log.h"
#include "obs/metrics.h"

#define JSON_TYPE "application/json"

enum phase {
    PHASE_HEADERS,     /* nothing seen yet */
    PHASE_BODY,        /* headers accepted; reading the body */
    PHASE_IDENTIFYING, /* suspended while a bearer token is reviewed */
    PHASE_WAITING,     /* suspended while the broker works */
    PHASE_DONE,        /* a response is queued */
};

struct sb_api_req {
    sb_server *srv;
    struct MHD_Connection *conn;
    enum phase phase;
    int64_t start_us;
    int64_t wall_ms;
    char request_id[SB_MAX_REQUEST_ID + 1];
    char method[16];
    char *raw_uri;
    size_t raw_len;

    sb_err early_err; /* a refusal decided before the final call */
    const char *early_why;
    bool close_after;

    sb_request parsed;
    sb_metrics_endpoint endpoint;
    sb_identity caller;
    bool identified;
    char pod[SB_MAX_POD_NAME + 1]; /* from a reviewed bearer token; "" if none */
    char pod_uid[SB_MAX_K8S_UID + 1];
    sb_token_result token; /* the review's answer, while identifying */
    sb_buf body;

    /* One broker request per asked-for secret: one for a GET, one per
     * item for a batch. */
    sb_target *targets;
    sb_broker_req *breqs;
    size_t count;
    atomic_size_t pending;

    /* While waiting on the loop (see the top of the file). done[i]: the
     * broker has answered item i (loop thread). ready[i]: item i may be
     * read to answer, fixed before the connection resumes. */
    atomic_int refs;
    int64_t deadline_ms;
    bool *done;
    bool *ready;
    bool resumed;              /* loop thread */
    struct deadline *deadline; /* the armed timer's link to this request */
};

/* The deadline timer's half of the link: timers cannot be cancelled, so
 * the timer owns this, and finds it empty when the request got its answers
 * in time. Loop thread only. */
struct deadline {
    sb_api_req *r;
};

static void new_request_id(char out[SB_MAX_REQUEST_ID + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[16];

    if (gnutls_rnd(GNUTLS_RND_NONCE, raw, sizeof(raw)) != 0)
        abort();
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[32] = '\0';
}

sb_api_req *sb_api_begin(sb_server *s, struct MHD_Connection *conn, const char *raw_uri)
{
    sb_api_req *r = sb_xcalloc(1, sizeof(*r));

    r->srv = s;
    r->conn = conn;
    r->start_us = sb_clock_mono_us();
    r->wall_ms = sb_clock_wall_ms();
    new_request_id(r->request_id);
    r->raw_len = strnlen(raw_uri, SB_MAX_URI + 1);
    r->raw_uri = sb_xstrndup(raw_uri, r->raw_len);
    sb_buf_init(&r->body, SB_MAX_BATCH_BODY);
    r->endpoint = SB_METRICS_EP_OTHER;
    atomic_init(&r->refs, 1);
    return r;
}

static void req_unref(sb_api_req *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < r->count; i++)
        sb_broker_req_clear(&r->breqs[i]);
    free(r->breqs);
    free(r->done);
    free(r->ready);
    free(r->targets);
    free(r->raw_uri);
    sb_buf_free(&r->body);
    free(r);
}

void sb_api_end(sb_api_req *r, enum MHD_RequestTerminationCode toe)
{
    req_unref(r);
}

/* Item i's broker answer may be read: always, unless the deadline passed
 * before it came. */
static bool item_ready(const sb_api_req *r, size_t i)
{
    return !r->ready || r->ready[i];
}

static sb_audit_decision audit_decision(sb_decision d)
{
    return d == SB_DECISION_ALLOW  ? SB_AUDIT_ALLOW
           : d == SB_DECISION_DENY ? SB_AUDIT_DENY
                                   : SB_AUDIT_NONE;
}

static const char *backend_of(const sb_broker_req *b)
{
    return b->doc ? sb_backend_kind_name(b->doc->backend) : NULL;
}

static void fill_items(const sb_api_req *r, sb_audit_item *items)
{
    for (size_t i = 0; i < r->count; i++) {
        const sb_broker_req *b = &r->breqs[i];
        const sb_target *t = &r->targets[i];
        if (!item_ready(r, i)) {
            /* Still with the broker: only its inputs may be read. */
            items[i] = (sb_audit_item){.secret_name = sb_audit_cstr(t->name),
                                       .ns = sb_audit_cstr(b->ns),
                                       .key = sb_audit_cstr(t->key[0] ? t->key : NULL),
                                       .status_code = sb_err_http_status(SB_E_TIMEOUT),
                                       .decision = SB_AUDIT_NONE,
                                       .reason = sb_err_code(SB_E_TIMEOUT)};
            continue;
        }
        items[i] = (sb_audit_item){
            .secret_name = sb_audit_cstr(t->name),
            .ns = sb_audit_cstr(b->ns),
            .key = sb_audit_cstr(t->key[0] ? t->key : NULL),
            .version = sb_audit_cstr(b->doc ? b->doc->version : NULL),
            .status_code = sb_err_http_status(b->err),
            .backend = backend_of(b),
            .cache_hit = b->cache_hit,
            .decision = audit_decision(b->decision),
            /* As for single requests: an error's code, else the broker's note. */
            .reason = b->err != SB_OK ? sb_err_code(b->err) : b->reason,
        };
    }
}

/* Writes the request's audit record. status is what will be sent. */
static sb_err audit(sb_api_req *r, int status, const char *reason)
{
    const sb_server_deps *deps = sb_server_deps_of(r->srv);
    const sb_broker_req *one =
        r->count == 1 && r->parsed.route != SB_ROUTE_BATCH && item_ready(r, 0) ? r->breqs : NULL;
    sb_audit_item items[SB_MAX_BATCH_ITEMS];
    sb_audit_record rec = {.wall_ms = r->wall_ms, .request_id = sb_audit_cstr(r->request_id)};

    if (r->identified) {
        rec.caller.service_account = sb_audit_cstr(r->caller.sa);
        rec.caller.ns = sb_audit_cstr(r->caller.ns);
        rec.caller.cert_serial = sb_audit_cstr(r->caller.serial[0] ? r->caller.serial : NULL);
        rec.caller.pod = sb_audit_cstr(r->pod[0] ? r->pod : NULL);
        rec.caller.pod_uid = sb_audit_cstr(r->pod_uid[0] ? r->pod_uid : NULL);
        rec.caller.identity_source = r->caller.source;
    } else if (r->caller.serial[0]) {
        /* A certificate that named no usable identity: its serial alone. */
        rec.caller.cert_serial = sb_audit_cstr(r->caller.serial);
    }
    rec.request.method = sb_audit_cstr(r->method);
    rec.request.path = (sb_audit_str){r->raw_uri, r->raw_len};
    rec.request.refresh = r->parsed.refresh;
    if (r->parsed.route != SB_ROUTE_BATCH && r->parsed.target.name[0]) {
        const sb_target *t = &r->parsed.target;
        rec.request.secret_name = sb_audit_cstr(t->name);
        rec.request.ns = sb_audit_cstr(one ? one->ns : (t->ns[0] ? t->ns : NULL));
        rec.request.key = sb_audit_cstr(t->key[0] ? t->key : NULL);
        rec.request.version_stage = sb_audit_cstr(t->version_stage[0] ? t->version_stage : NULL);
        rec.request.version_id = sb_audit_cstr(t->version_id[0] ? t->version_id : NULL);
    }
    if (r->parsed.route == SB_ROUTE_BATCH) {
        rec.request.batch = true;
        rec.request.batch_items = r->count;
        fill_items(r, items);
        rec.items = items;
        rec.item_count = r->count;
    }
    rec.response.status_code = status;
    if (one) {
        rec.response.backend = backend_of(one);
        rec.response.cache_hit = one->cache_hit;
        rec.response.version = sb_audit_cstr(one->doc ? one->doc->version : NULL);
        rec.decision = audit_decision(one->decision);
    }
    rec.reason = reason;
    rec.duration_us = sb_clock_mono_us() - r->start_us;
    return sb_audit_write(deps->audit, &rec);
}

static enum MHD_Result queue_error(sb_api_req *r, sb_err err, const char *why);

/* Audits, then queues resp with status; when the audit record cannot be
 * written the response is dropped unsent (fail-closed, DESIGN.md 8). */
static enum MHD_Result send_answer(sb_api_req *r, int status, struct MHD_Response *resp,
                                   const char *reason)
{
    const sb_server_deps *deps = sb_server_deps_of(r->srv);
    sb_err audited = audit(r, status, reason);

    if (audited != SB_OK && !deps->cfg->audit_fail_open) {
        MHD_destroy_response(resp);
        SB_ERROR("audit", r->request_id, "audit record not written; answering 503");
        r->close_after = true;
        return queue_error(r, SB_E_AUDIT, "the audit log cannot be written");
    }
    /* Fail-open (AUDIT_FAILURE_MODE=open): this line is the only trace. */
    if (audited != SB_OK)
        SB_ERROR("audit", r->request_id, "audit record not written; answering %d anyway", status);
    r->phase = PHASE_DONE;
    sb_metrics_request(r->endpoint, status, sb_clock_mono_us() - r->start_us);
    SB_DEBUG("api", r->request_id, "%s answered %d", r->method, status);
    return sb_server_queue(r->conn, status, resp, r->close_after);
}

/* The error body and headers every error answer shares. */
static struct MHD_Response *error_response(sb_api_req *r, sb_err err, const char *why)
{
    sb_buf buf;

    sb_buf_init(&buf, 4096);
    if (sb_render_error(&buf, err, why, r->request_id) != SB_OK)
        sb_buf_reset(&buf);
    struct MHD_Response *resp = sb_server_response_buf(&buf, JSON_TYPE, r->request_id);
    if (err == SB_E_METHOD)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, POST");
    return resp;
}

/* An error answer without an audit record (used when auditing failed). */
static enum MHD_Result queue_error(sb_api_req *r, sb_err err, const char *why)
{
    int status = sb_err_http_status(err);
    struct MHD_Response *resp = error_response(r, err, why);

    r->phase = PHASE_DONE;
    sb_metrics_request(r->endpoint, status, sb_clock_mono_us() - r->start_us);
    return sb_server_queue(r->conn, status, resp, r->close_after);
}

static enum MHD_Result respond_error(sb_api_req *r, sb_err err, const char *why, int retry_after)
{
    char secs[16];
    int status = sb_err_http_status(err);
    struct MHD_Response *resp = error_response(r, err, why);

    if (retry_after >= 0 && (status == 429 || status == 503)) {
        snprintf(secs, sizeof(secs), "%d", retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, secs);
    }
    if (status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    return send_answer(r, status, resp, sb_err_code(err));
}

#define DEADLINE_WHY "no answer within the request's deadline (REQUEST_TIMEOUT_SECONDS)"

static enum MHD_Result respond_single(sb_api_req *r)
{
    sb_broker_req *b = &r->breqs[0];
    const sb_target *t = &r->targets[0];
    sb_buf buf;

    if (!item_ready(r, 0))
        return respond_error(r, SB_E_TIMEOUT, DEADLINE_WHY, -1);
    if (b->err != SB_OK)
        return respond_error(r, b->err, b->detail, b->retry_after_s);

    if (t->key[0]) {
        const sb_secret_item *it = sb_doc_find(b->doc, t->key, strlen(t->key));
        if (!it)
            return respond_error(r, SB_E_NOT_FOUND, "the secret has no such key", -1);
        bool text = !b->doc->binary_only &&
                    sb_render_is_utf8(sb_secret_data(it->value), sb_secret_len(it->value));
        struct MHD_Response *resp = sb_server_response_secret(
            sb_secret_ref(it->value),
            text ? "text/plain; charset=utf-8" : "application/octet-stream", r->request_id);
        return send_answer(r, 200, resp, b->reason);
    }

    sb_buf_init(&buf, SB_MAX_BATCH_RESPONSE);
    if (sb_render_secret(&buf, b->doc, b->cache_hit) != SB_OK) {
        sb_buf_free(&buf);
        return respond_error(r, SB_E_INTERNAL, "the secret could not be rendered", -1);
    }
    return send_answer(r, 200, sb_server_response_buf(&buf, JSON_TYPE, r->request_id), b->reason);
}

static sb_err render_late_item(sb_buf *buf, const sb_target *t, const sb_broker_req *b)
{
    sb_err rc = sb_render_item_head(buf, t->name, b->ns, t->key, sb_err_http_status(SB_E_TIMEOUT));

    if (rc == SB_OK)
        rc = sb_render_item_error(buf, SB_E_TIMEOUT, DEADLINE_WHY);
    if (rc == SB_OK)
        rc = sb_buf_append(buf, "}", 1);
    return rc;
}

static sb_err render_item(sb_buf *buf, const sb_target *t, sb_broker_req *b)
{
    const sb_secret_item *it = NULL;
    sb_err err = b->err;
    const char *detail = b->detail;

    if (err == SB_OK && t->key[0]) {
        it = sb_doc_find(b->doc, t->key, strlen(t->key));
        if (!it) {
            err = SB_E_NOT_FOUND;
            detail = "the secret has no such key";
        }
    }
    /* The item's status becomes what the audit record shows too. */
    b->err = err;
    sb_err rc = sb_render_item_head(buf, t->name, b->ns, t->key, sb_err_http_status(err));
    if (rc == SB_OK && err != SB_OK)
        rc = sb_render_item_error(buf, err, detail);
    else if (rc == SB_OK && it)
        rc = sb_render_item_value(buf, it->value);
    else if (rc == SB_OK)
        rc = sb_render_item_secret(buf, b->doc, b->cache_hit);
    if (rc == SB_OK)
        rc = sb_buf_append(buf, "}", 1);
    return rc;
}

static enum MHD_Result respond_batch(sb_api_req *r)
{
    sb_buf buf;
    sb_err rc;

    sb_buf_init(&buf, SB_MAX_BATCH_RESPONSE);
    rc = sb_buf_append_str(&buf, "{\"results\":[");
    for (size_t i = 0; i < r->count && rc == SB_OK; i++) {
        if (i)
            rc = sb_buf_append(&buf, ",", 1);
        if (rc == SB_OK && !item_ready(r, i))
            rc = render_late_item(&buf, &r->targets[i], &r->breqs[i]);
        else if (rc == SB_OK)
            rc = render_item(&buf, &r->targets[i], &r->breqs[i]);
    }
    if (rc == SB_OK)
        rc = sb_buf_append_str(&buf, "]}");
    if (rc != SB_OK) {
        sb_buf_free(&buf);
        return respond_error(r, rc == SB_E_TOO_LARGE ? SB_E_TOO_LARGE : SB_E_INTERNAL,
                             "the batch answer is over its size limit", -1);
    }
    return send_answer(r, 200, sb_server_response_buf(&buf, JSON_TYPE, r->request_id), "batch");
}

static enum MHD_Result respond_results(sb_api_req *r)
{
    if (r->parsed.route == SB_ROUTE_BATCH)
        return respond_batch(r);
    return respond_single(r);
}

/* Loop thread: lets the handler answer. ready[] is fixed from here on. */
static void resume(sb_api_req *r)
{
    r->resumed = true;
    if (r->deadline) {
        r->deadline->r = NULL;
        r->deadline = NULL;
    }
    MHD_resume_connection(r->conn);
}

static void on_broker_done(sb_broker_req *b, void *ud)
{
    sb_api_req *r = ud;

    r->done[b - r->breqs] = true;
    if (atomic_fetch_sub(&r->pending, 1) != 1)
        return;
    /* The last completion resumes the connection (unless the deadline
     * did); the handler then runs again on its HTTP thread and answers. */
    if (!r->resumed) {
        memcpy(r->ready, r->done, r->count * sizeof(*r->done));
        resume(r);
    }
    req_unref(r); /* the loop's reference */
}

/* Loop thread, at the request's deadline: answer now with what is done;
 * the rest is 504. */
static void on_deadline(void *ud)
{
    struct deadline *dl = ud;
    sb_api_req *r = dl->r;

    free(dl);
    if (!r)
        return; /* answered in time */
    r->deadline = NULL;
    SB_INFO("api", r->request_id, "deadline passed with %zu of %zu answers missing",
            atomic_load(&r->pending), r->count);
    memcpy(r->ready, r->done, r->count * sizeof(*r->done));
    resume(r);
}

/* The namespace to read from (DESIGN.md section 4): the one asked for,
 * else the pinned one, else the caller's own. */
static sb_err resolve_ns(const sb_api_req *r, const sb_target *t, char *out, const char **why)
{
    const char *pinned = sb_server_deps_of(r->srv)->cfg->pinned_namespace;

    if (pinned && t->ns[0] && strcmp(t->ns, pinned) != 0) {
        *why = "this broker serves only its configured namespace (K8S_NAMESPACE)";
        return SB_E_BAD_REQUEST;
    }
    const char *ns = t->ns[0] ? t->ns : pinned ? pinned : r->caller.ns;
    snprintf(out, SB_MAX_NAMESPACE + 1, "%s", ns);
    return SB_OK;
}

static sb_err prepare(sb_api_req *r, const char **why)
{
    const sb_server_deps *deps = sb_server_deps_of(r->srv);
    int64_t deadline = r->start_us / 1000 + deps->cfg->request_timeout_ms;

    r->breqs = sb_xcalloc(r->count, sizeof(*r->breqs));
    for (size_t i = 0; i < r->count; i++) {
        sb_broker_req *b = &r->breqs[i];
        const sb_target *t = &r->targets[i];
        sb_err err = resolve_ns(r, t, b->ns, why);
        if (err != SB_OK)
            return err;
        b->caller = r->caller;
        memcpy(b->name, t->name, sizeof(b->name));
        memcpy(b->version_stage, t->version_stage, sizeof(b->version_stage));
        memcpy(b->version_id, t->version_id, sizeof(b->version_id));
        b->refresh = r->parsed.refresh;
        b->request_id = r->request_id;
        b->deadline_ms = deadline;
        b->retry_after_s = -1;
        b->detail = "";
    }
    r->deadline_ms = deadline;
    return SB_OK;
}

/* Runs every broker request: from the caches on this thread when possible,
 * the rest on the loop with the connection suspended. */
static enum MHD_Result dispatch(sb_api_req *r)
{
    const sb_server_deps *deps = sb_server_deps_of(r->srv);
    int64_t now = sb_clock_mono_ms();
    size_t slow = 0;
    bool *needs_loop = sb_xcalloc(r->count, sizeof(bool));

    for (size_t i = 0; i < r->count; i++) {
        needs_loop[i] = !sb_broker_fast(deps->broker, &r->breqs[i], now);
        slow += needs_loop[i];
    }
    if (slow == 0) {
        free(needs_loop);
        return respond_results(r);
    }

    r->done = sb_xcalloc(r->count, sizeof(*r->done));
    r->ready = sb_xcalloc(r->count, sizeof(*r->ready));
    for (size_t i = 0; i < r->count; i++)
        r->done[i] = !needs_loop[i];
    r->deadline = sb_xmalloc(sizeof(*r->deadline));
    r->deadline->r = r;
    atomic_store(&r->pending, slow);
    atomic_fetch_add(&r->refs, 1); /* the loop's, until the last completion */
    r->phase = PHASE_WAITING;
    MHD_suspend_connection(r->conn);
    /* The timer first: submissions may complete before this returns. */
    sb_http_call_at(deps->http, r->deadline_ms, on_deadline, r->deadline);
    for (size_t i = 0; i < r->count; i++) {
        if (needs_loop[i])
            sb_broker_submit(deps->broker, &r->breqs[i], on_broker_done, r);
    }
    free(needs_loop);
    return MHD_YES;
}

static sb_metrics_id_reason id_reason(const char *why)
{
    if (strstr(why, "trust domain does not match"))
        return SB_METRICS_ID_FOREIGN_TRUST_DOMAIN;
    if (strstr(why, "more than one URI SAN"))
        return SB_METRICS_ID_MANY_URI_SANS;
    if (strstr(why, "no URI SAN"))
        return SB_METRICS_ID_NO_URI_SAN;
    return SB_METRICS_ID_BAD_SPIFFE_ID;
}

/* RATE_LIMIT_PER_SECOND per caller (DESIGN.md section 10): over it, 429
 * with Retry-After, before anything is parsed or asked of the broker. */
static bool rate_limited(sb_api_req *r, int *out_retry_s)
{
    const sb_server_deps *deps = sb_server_deps_of(r->srv);
    int64_t retry_ms = 0;

    if (!deps->rate ||
        sb_ratelimit_take_identity(deps->rate, &r->caller, sb_clock_mono_ms(), &retry_ms))
        return false;
    sb_metrics_inc(SB_METRICS_RATE_LIMITED);
    *out_retry_s = retry_ms > 0 ? (int)((retry_ms + 999) / 1000) : 1;
    return true;
}

/* The rest of the final call, once the caller is known. */
static enum MHD_Result serve(sb_api_req *r)
{
    const char *why = NULL;
    sb_err err = SB_OK;
    int retry_s = 0;

    if (rate_limited(r, &retry_s))
        return respond_error(r, SB_E_RATE_LIMITED, "too many requests from this caller", retry_s);

    if (r->parsed.route == SB_ROUTE_BATCH) {
        err = sb_request_parse_batch(r->body.data, r->body.len, &r->parsed.target, &r->targets,
                                     &r->count, &why);
        sb_buf_free(&r->body);
    } else {
        r->targets = sb_xmalloc(sizeof(*r->targets));
        r->targets[0] = r->parsed.target;
        r->count = 1;
    }
    if (err == SB_OK)
        err = prepare(r, &why);
    if (err != SB_OK) {
        r->count = 0; /* nothing was asked of the broker */
        return respond_error(r, err, why, -1);
    }
    return dispatch(r);
}

/* Every bearer token refusal gets one answer, so a caller learns nothing
 * about why; the log says. */
static enum MHD_Result reject_token(sb_api_req *r, const char *why)
{
    SB_INFO("api", r->request_id, "bearer token refused: %s", why);
    sb_metrics_identity_rejected(SB_METRICS_ID_TOKEN);
    return respond_error(r, SB_E_UNAUTHORIZED, "a valid bearer token is required", -1);
}

/* A reviewed token: the caller (no certificate), or the certificate's
 * caller with the pod it runs in. */
static enum MHD_Result apply_token(sb_api_req *r)
{
    const char *why = NULL;
    sb_identity id;
    sb_err err = sb_token_check(&r->token, r->identified ? &r->caller : NULL, &id, &why);

    if (err == SB_E_UNAUTHORIZED)
        return reject_token(r, why);
    if (err != SB_OK)
        return respond_error(r, err, why, 1);
    r->caller = id;
    r->identified = true;
    memcpy(r->pod, r->token.pod, sizeof(r->pod));
    memcpy(r->pod_uid, r->token.pod_uid, sizeof(r->pod_uid));
    return serve(r);
}

static void on_token_done(const sb_token_result *res, void *ud)
{
    sb_api_req *r = ud;

    r->token = *res;
    MHD_resume_connection(r->conn);
}

static enum MHD_Result count_authorization(void *cls, enum MHD_ValueKind kind, const char *key,
                                           const char *value)
{
    if (strcasecmp(key, MHD_HTTP_HEADER_AUTHORIZATION) == 0)
        ++*(int *)cls;
    return MHD_YES;
}

/* The bearer token step (DESIGN.md section 3): answered from the review
 * cache on this thread when possible, else suspended while the loop runs
 * a TokenReview. Forwarded-identity headers (X-Forwarded-Client-Cert...)
 * are never read. */
static enum MHD_Result identify_token(sb_api_req *r)
{
    const sb_server_deps *deps = sb_server_deps_of(r->srv);
    const char *value = NULL, *tok = NULL, *why = NULL;
    size_t vlen = 0, tlen = 0;
    int headers = 0;
    sb_token_key key;

    if (MHD_lookup_connection_value_n(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION,
                                      strlen(MHD_HTTP_HEADER_AUTHORIZATION), &value,
                                      &vlen) != MHD_YES) {
        if (deps->cfg->bearer == SB_BEARER_OPTIONAL && r->identified)
            return serve(r);
        return reject_token(r, "no bearer token");
    }
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, count_authorization, &headers);
    if (headers != 1)
        return reject_token(r, "more than one Authorization header");
    if (sb_token_parse_header(value, vlen, &tok, &tlen, &why) != SB_OK)
        return reject_token(r, why);
    if (sb_token_key_of(tok, tlen, &key) != SB_OK)
        return respond_error(r, SB_E_INTERNAL, "the bearer token could not be hashed", -1);
    if (sb_token_lookup(deps->tokens, &key, sb_clock_mono_ms(), &r->token))
        return apply_token(r);

    r->phase = PHASE_IDENTIFYING;
    MHD_suspend_connection(r->conn);
    sb_token_review(deps->tokens, &key, tok, tlen, r->request_id, on_token_done, r);
    return MHD_YES;
}

static enum MHD_Result final_call(sb_api_req *r)
{
    const sb_server_deps *deps = sb_server_deps_of(r->srv);
    const char *why = NULL;

    if (r->early_err != SB_OK) {
        /* The refusal's audit record still names a verified caller: who
         * sends malformed requests is worth knowing. */
        if (deps->tls && sb_server_identity(r->conn, &r->caller, &why) == SB_OK)
            r->identified = true;
        return respond_error(r, r->early_err, r->early_why, -1);
    }

    /* No identity, no further: nothing below runs for an unknown caller.
     * Without mTLS (deps->tls NULL) a bearer token is the only identity. */
    if (deps->tls || deps->cfg->bearer == SB_BEARER_OFF) {
        sb_err err = sb_server_identity(r->conn, &r->caller, &why);
        if (err != SB_OK) {
            sb_metrics_identity_rejected(id_reason(why));
            return respond_error(r, err, why, -1);
        }
        r->identified = true;
    }
    if (deps->cfg->bearer != SB_BEARER_OFF)
        return identify_token(r);
    return serve(r);
}

static void refuse_early(sb_api_req *r, sb_err err, const char *why, bool close)
{
    if (r->early_err == SB_OK) {
        r->early_err = err;
        r->early_why = why;
    }
    r->close_after |= close;
}

/* The first call: headers are complete, no body byte has been read. */
static enum MHD_Result headers_call(sb_api_req *r, const char *method)
{
    const char *cl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    const char *why = NULL;

    snprintf(r->method, sizeof(r->method), "%s", method);
    r->phase = PHASE_BODY;

    /* Both framings at once is the request-smuggling shape (RFC 9112
     * section 6.3): refuse and close rather than pick one. */
    if (cl && te) {
        refuse_early(r, SB_E_BAD_REQUEST, "Content-Length and Transfer-Encoding together", true);
        return MHD_YES;
    }
    sb_err err = sb_request_parse(method, r->raw_uri, r->raw_len, &r->parsed, &why);
    if (err != SB_OK) {
        refuse_early(r, err, why, err == SB_E_URI_TOO_LONG);
        return MHD_YES;
    }
    r->endpoint = r->parsed.route == SB_ROUTE_BATCH ? SB_METRICS_EP_BATCH
                  : r->parsed.route == SB_ROUTE_KEY ? SB_METRICS_EP_KEY
                                                    : SB_METRICS_EP_SECRET;

    bool has_body = te || (cl && strcmp(cl, "0") != 0);
    if (r->parsed.route != SB_ROUTE_BATCH && has_body)
        refuse_early(r, SB_E_BAD_REQUEST, "a GET request must not have a body", true);
    if (r->parsed.route == SB_ROUTE_BATCH && cl && strtoull(cl, NULL, 10) > SB_MAX_BATCH_BODY)
        refuse_early(r, SB_E_TOO_LARGE, "the batch body is over 128 KiB", true);
    return MHD_YES;
}

static enum MHD_Result body_call(sb_api_req *r, const char *data, size_t *size)
{
    size_t n = *size;

    *size = 0;
    if (r->early_err != SB_OK)
        return MHD_YES; /* discarded; the refusal closes the connection */
    if (sb_buf_append(&r->body, data, n) != SB_OK)
        refuse_early(r, SB_E_TOO_LARGE, "the batch body is over 128 KiB", true);
    return MHD_YES;
}

/* Runs a step that may hand work to the http loop, unless the server is
 * stopping (the loop may be gone): then the answer is 503. */
static enum MHD_Result guarded(sb_api_req *r, enum MHD_Result (*step)(sb_api_req *))
{
    if (!sb_server_begin_work(r->srv))
        return respond_error(r, SB_E_SHUTDOWN, "the broker is shutting down", 1);
    enum MHD_Result rc = step(r);
    sb_server_end_work(r->srv);
    return rc;
}

enum MHD_Result sb_api_handle(sb_api_req *r, struct MHD_Connection *conn, const char *method,
                              const char *upload_data, size_t *upload_data_size)
{
    if (!r)
        return MHD_NO;
    switch (r->phase) {
    case PHASE_HEADERS:
        /* Answering now would make libmicrohttpd close the connection:
         * wait for the final call even for refusals that keep it open. */
        return headers_call(r, method);
    case PHASE_BODY:
        if (*upload_data_size)
            return body_call(r, upload_data, upload_data_size);
        return guarded(r, final_call);
    case PHASE_IDENTIFYING:
        return guarded(r, apply_token);
    case PHASE_WAITING:
        return respond_results(r);
    case PHASE_DONE:
        break;
    }
    return MHD_YES;
}
