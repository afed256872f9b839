/* AWS Secrets Manager backend (see aws.h). A fetch becomes an op; ops go
 * out in calls (one GetSecretValue, or one BatchGetSecretValue for
 * several); a call gets a key, signs, sends, and retries or settles its
 * ops. Everything runs on the http loop thread. */
#include "backend/aws.h"

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/aws_secret.h"
#include "clients/aws_creds.h"
#include "clients/aws_proto.h"
#include "clients/retry.h"
#include "clients/sigv4.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/limits.h"
#include "obs/log.h"
#include "obs/metrics.h"

#define LOG_TAG        "aws"
#define USER_AGENT     "secrets-broker/" SB_VERSION
#define JSON_11        "application/x-amz-json-1.1"
#define TARGET_GET     "secretsmanager.GetSecretValue"
#define TARGET_BATCH   "secretsmanager.BatchGetSecretValue"
#define BATCH_OFF_MS   (5 * 60 * 1000) /* after the role was refused BatchGetSecretValue */
#define LOG_EVERY_MS   10000           /* one line per kind of failure this often */
#define WINDOW_STRETCH 5               /* a coalescing window lasts at most this many windows */

struct aws_backend;

/* One fetch, from the broker's call to its answer. */
struct op {
    struct aws_backend *ab;
    char *ns;
    char *name;
    char *version_stage; /* NULL when absent */
    char *version_id;
    char *request_id;
    char secret_id[SB_MAX_AWS_SECRET_ID + 1];
    int64_t deadline_ms;
    sb_backend_done_fn done;
    void *ud;
    struct op *next;
};

/* One request to AWS and its retries, for one op or a batch of them. */
struct call {
    struct aws_backend *ab;
    bool batch;
    struct op *ops;
    int attempts;
    bool renewed;        /* the key was renewed once after ExpiredToken */
    uint64_t key_serial; /* the key the last attempt was signed with */
    int64_t deadline_ms; /* the earliest of its ops' */
    int retry_after_s;   /* what AWS's last answer asked for; -1 when nothing */
    struct call *prev, *next;
};

struct throttled_log {
    int64_t last_ms;
    unsigned suppressed;
};

struct aws_backend {
    sb_backend base;
    sb_http *http;
    sb_aws_creds *creds;
    sb_aws_url endpoint;
    char *region;
    char *ca_bundle;
    char *tmpl;
    char *prefix;
    int timeout_ms;
    int window_ms;

    struct op *queue; /* fetches waiting for the window to close, newest first */
    size_t queued;
    int64_t queue_opened_ms;
    int64_t queue_due_ms;
    int64_t batch_off_until_ms;
    struct call *calls; /* every call alive, for destroy */
    struct throttled_log cred_log, fail_log;
    sb_retry_budget retries; /* retries add at most a tenth to the calls */
};

static uint64_t random64(void)
{
    uint64_t r = 0;

    if (gnutls_rnd(GNUTLS_RND_NONCE, &r, sizeof(r)) != 0)
        r = (uint64_t)sb_clock_mono_us();
    return r;
}

static void op_free(struct op *op)
{
    free(op->ns);
    free(op->name);
    free(op->version_stage);
    free(op->version_id);
    free(op->request_id);
    free(op);
}

static void op_finish(struct op *op, sb_err err, const char *detail, sb_secret_doc *doc)
{
    sb_fetch_result res = {.err = err, .doc = doc, .detail = detail, .retry_after_s = -1};

    op->done(&res, op->ud);
    op_free(op);
}

static struct call *call_new(struct aws_backend *ab, struct op *ops, bool batch)
{
    struct call *call = sb_xcalloc(1, sizeof(*call));

    call->ab = ab;
    call->batch = batch;
    call->ops = ops;
    call->deadline_ms = INT64_MAX;
    call->retry_after_s = -1;
    for (struct op *op = ops; op; op = op->next) {
        if (op->deadline_ms < call->deadline_ms)
            call->deadline_ms = op->deadline_ms;
    }
    call->next = ab->calls;
    if (ab->calls)
        ab->calls->prev = call;
    ab->calls = call;
    return call;
}

/* Unlinks and frees the call; returns its ops, which the caller now owns. */
static struct op *call_end(struct call *call)
{
    struct aws_backend *ab = call->ab;
    struct op *ops = call->ops;

    if (call->prev)
        call->prev->next = call->next;
    else
        ab->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    free(call);
    return ops;
}

/* Fails every op of the call, passing on the delay AWS asked for. */
static void call_fail(struct call *call, sb_err err, const char *detail)
{
    int retry_after_s = call->retry_after_s;

    for (struct op *op = call_end(call), *next; op; op = next) {
        sb_fetch_result res = {.err = err, .detail = detail, .retry_after_s = retry_after_s};
        next = op->next;
        op->done(&res, op->ud);
        op_free(op);
    }
}

/* Whether a line of this kind may be written now (at most one per
 * LOG_EVERY_MS); more says how many were skipped since the last. */
static bool log_due(struct throttled_log *tl, char more[64])
{
    int64_t now = sb_clock_mono_ms();

    more[0] = '\0';
    if (tl->last_ms && now - tl->last_ms < LOG_EVERY_MS) {
        tl->suppressed++;
        return false;
    }
    if (tl->suppressed)
        snprintf(more, 64, " (%u more like it since the last line)", tl->suppressed);
    tl->last_ms = now;
    tl->suppressed = 0;
    return true;
}

/* One line for the operator, naming the credential source, never a key. */
static void log_failure(struct aws_backend *ab, const struct call *call, const char *code,
                        const sb_aws_outcome *o)
{
    const char *rid = call->ops ? call->ops->request_id : NULL;
    const char *src = sb_aws_source_name(sb_aws_creds_source(ab->creds));
    const char *shown = code[0] ? code : "no error code";
    char more[64];

    if (o->credentials && log_due(&ab->cred_log, more))
        SB_ERROR(LOG_TAG, rid,
                 "AWS Secrets Manager refused the broker's credentials from source %s: %s "
                 "(%s)%s",
                 src, shown, o->detail, more);
    else if (!o->credentials && o->err != SB_E_NOT_FOUND && o->err != SB_E_SHUTDOWN &&
             log_due(&ab->fail_log, more))
        SB_WARN(LOG_TAG, rid, "AWS Secrets Manager call failed: %s (%s)%s", shown, o->detail, more);
}

static void call_start(struct call *call);

static void single_from(struct aws_backend *ab, struct op *op)
{
    op->next = NULL;
    call_start(call_new(ab, op, false));
}

static void deliver_single(struct call *call, const sb_buf *body)
{
    json_t *root = NULL;
    sb_secret_doc *doc = NULL;
    struct op *op = call_end(call);

    if (sb_json_parse(body->data, body->len, SB_MAX_UPSTREAM_BODY, &root) != SB_OK ||
        sb_aws_value_to_doc(root, op->ns, op->name, &doc) != SB_OK) {
        json_decref(root);
        op_finish(op, SB_E_UPSTREAM, "AWS Secrets Manager answered with a malformed secret", NULL);
        return;
    }
    json_decref(root);
    op_finish(op, SB_OK, "", doc);
}

static const json_t *entry_for(const json_t *list, const char *field, const char *id)
{
    size_t i;
    json_t *e;

    json_array_foreach(list, i, e)
    {
        const char *v = sb_json_str(e, field, NULL);
        if (v && !strcmp(v, id))
            return e;
    }
    return NULL;
}

/* Settles each op of a batch from the answer: its value, a not-found
 * error, or else a GetSecretValue of its own. */
static void deliver_batch(struct aws_backend *ab, struct call *call, const sb_buf *body)
{
    json_t *root = NULL;
    struct op *ops = call_end(call);
    bool parsed = sb_json_parse(body->data, body->len, SB_MAX_UPSTREAM_BODY, &root) == SB_OK;
    const json_t *values = json_object_get(root, "SecretValues");
    const json_t *errors = json_object_get(root, "Errors");

    for (struct op *op = ops, *next; op; op = next) {
        next = op->next;
        const json_t *v = parsed ? entry_for(values, "Name", op->secret_id) : NULL;
        const json_t *e = parsed ? entry_for(errors, "SecretId", op->secret_id) : NULL;
        const char *code = e ? sb_json_str(e, "ErrorCode", NULL) : NULL;
        sb_secret_doc *doc = NULL;

        if (v && sb_aws_value_to_doc(v, op->ns, op->name, &doc) == SB_OK)
            op_finish(op, SB_OK, "", doc);
        else if (!v && code && !strcmp(code, "ResourceNotFoundException"))
            op_finish(op, SB_E_NOT_FOUND, "no AWS secret has this id", NULL);
        else
            single_from(ab, op);
    }
    json_decref(root);
}

/* A batch AWS would not answer as a whole: each op goes alone. */
static void split(struct call *call)
{
    struct aws_backend *ab = call->ab;

    for (struct op *op = call_end(call), *next; op; op = next) {
        next = op->next;
        single_from(ab, op);
    }
}

static void retry_task(void *ud)
{
    call_start(ud);
}

static void on_response(sb_http_response *resp, void *ud)
{
    struct call *call = ud;
    struct aws_backend *ab = call->ab;
    char code[SB_AWS_ERROR_CODE_LEN] = "";

    if (resp->err == SB_OK && resp->status != 200)
        sb_aws_error_code(resp->body.data, resp->body.len, code);
    sb_aws_outcome o = sb_aws_classify(resp->err, resp->status, code);
    sb_metrics_upstream(SB_BACKEND_AWS, o.err);
    if (o.err == SB_OK && call->batch) {
        deliver_batch(ab, call, &resp->body);
        return;
    }
    if (o.err == SB_OK) {
        deliver_single(call, &resp->body);
        return;
    }

    if (o.expired && !call->renewed && call->attempts < SB_AWS_MAX_ATTEMPTS) {
        call->renewed = true;
        sb_aws_creds_expire(ab->creds, call->key_serial);
        call_start(call);
        return;
    }
    int64_t now = sb_clock_mono_ms();
    int64_t due = o.retry ? sb_aws_retry_at(call->attempts, now, call->deadline_ms,
                                            resp->retry_after_s, random64())
                          : -1;
    /* However many attempts a call may make, AWS sees no retry storm when
     * it throttles or fails every call: the budget runs dry. */
    if (due >= 0 && !sb_retry_take(&ab->retries)) {
        SB_DEBUG(LOG_TAG, NULL, "retry budget spent: not trying again");
        due = -1;
    }
    if (due >= 0) {
        sb_http_call_at(ab->http, due, retry_task, call);
        return;
    }
    /* A batch the role may not make, or one AWS calls invalid, says
     * nothing about its ids: ask for each alone. */
    if (call->batch && (o.denied || o.err == SB_E_UPSTREAM)) {
        if (o.denied) {
            ab->batch_off_until_ms = now + BATCH_OFF_MS;
            SB_WARN(LOG_TAG, NULL,
                    "the broker's AWS role may not call BatchGetSecretValue; "
                    "fetching secrets one by one for the next five minutes");
        }
        split(call);
        return;
    }
    log_failure(ab, call, code, &o);
    call->retry_after_s = resp->retry_after_s;
    call_fail(call, o.err, o.detail);
}

static char *request_body(const struct call *call)
{
    json_t *body;

    if (call->batch) {
        json_t *ids = json_array();
        for (const struct op *op = call->ops; op; op = op->next) {
            bool seen = false;
            for (const struct op *o = call->ops; o != op && !seen; o = o->next)
                seen = !strcmp(o->secret_id, op->secret_id);
            if (!seen)
                json_array_append_new(ids, json_string(op->secret_id));
        }
        body = json_pack("{s:o}", "SecretIdList", ids);
    } else {
        const struct op *op = call->ops;
        body = json_pack("{s:s}", "SecretId", op->secret_id);
        if (op->version_id)
            json_object_set_new(body, "VersionId", json_string(op->version_id));
        if (op->version_stage)
            json_object_set_new(body, "VersionStage", json_string(op->version_stage));
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return text;
}

/* SigV4 over the exact bytes and headers that go on the wire
 * (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html). */
static sb_err sign(const struct aws_backend *ab, const char *target, const char *body,
                   const sb_aws_key *key, char amz_date[SB_SIGV4_DATE_LEN], sb_sigv4_result *out)
{
    const sb_sigv4_header hdrs[] = {
        {"Host", ab->endpoint.authority},
        {"Content-Type", JSON_11},
        {"X-Amz-Target", target},
    };
    char *path = sb_xasprintf("%s/", ab->endpoint.path);
    sb_sigv4_request req = {.method = "POST",
                            .path = path,
                            .headers = hdrs,
                            .header_count = 3,
                            .body = (const unsigned char *)body,
                            .body_len = strlen(body)};
    sb_sigv4_creds creds;

    sb_aws_key_sigv4(key, &creds);
    sb_sigv4_amz_date(sb_clock_wall_ms(), amz_date);
    sb_err rc = sb_sigv4_sign(&req, &creds, ab->region, "secretsmanager", amz_date, out);
    free(path);
    return rc;
}

static void send_call(struct call *call, const sb_aws_key *key)
{
    struct aws_backend *ab = call->ab;
    const char *target = call->batch ? TARGET_BATCH : TARGET_GET;
    char amz_date[SB_SIGV4_DATE_LEN];
    sb_sigv4_result sig;
    char *body = request_body(call);

    if (!body || sign(ab, target, body, key, amz_date, &sig) != SB_OK) {
        sb_json_free_dump(body);
        call_fail(call, SB_E_INTERNAL, "the AWS request could not be signed");
        return;
    }
    int64_t left = call->deadline_ms - sb_clock_mono_ms();
    char *url = sb_xasprintf("%s/", ab->endpoint.base);
    sb_http_req *req = sb_http_req_new("POST", url);
    free(url);

    if (left < ab->timeout_ms)
        sb_http_req_timeout(req, (int)((left > 1 ? left : 1) + SB_AWS_DEADLINE_GRACE_MS));
    else
        sb_http_req_timeout(req, ab->timeout_ms);
    if (ab->ca_bundle)
        sb_http_req_tls(req, ab->ca_bundle, NULL, NULL);
    sb_http_req_header(req, "Host", ab->endpoint.authority);
    sb_http_req_header(req, "X-Amz-Target", target);
    sb_http_req_header(req, "X-Amz-Date", amz_date);
    if (key->session_token)
        sb_http_req_header(req, "X-Amz-Security-Token",
                           (const char *)sb_secret_data(key->session_token));
    sb_http_req_header(req, "Authorization", sig.authorization);
    sb_http_req_header(req, "User-Agent", USER_AGENT);
    sb_http_req_header(req, "Expect", ""); /* no 100-continue round trip */
    sb_http_req_body(req, body, strlen(body), JSON_11);
    sb_sigv4_result_free(&sig);
    sb_json_free_dump(body);

    if (call->attempts++ == 0)
        sb_retry_first(&ab->retries);
    call->key_serial = key->serial;
    sb_http_submit(ab->http, req, on_response, call);
}

static void on_key(sb_err err, const sb_aws_key *key, const char *detail, void *ud)
{
    struct call *call = ud;

    /* The provider has logged why it has no key. */
    if (err != SB_OK) {
        call_fail(call, err, detail);
        return;
    }
    send_call(call, key);
}

static void call_start(struct call *call)
{
    if (sb_clock_mono_ms() + SB_AWS_MIN_ATTEMPT_MS > call->deadline_ms) {
        call_fail(call, SB_E_TIMEOUT, "the request's deadline passed before AWS answered");
        return;
    }
    sb_aws_creds_get(call->ab->creds, on_key, call);
}

/* The coalescing window is over: what waited goes out. */
static void flush(struct aws_backend *ab)
{
    struct op *list = NULL;
    size_t n = ab->queued;

    while (ab->queue) {
        struct op *op = ab->queue;
        ab->queue = op->next;
        op->next = list;
        list = op;
    }
    ab->queued = 0;
    call_start(call_new(ab, list, n > 1));
}

static void window_task(void *ud)
{
    struct aws_backend *ab = ud;

    /* Timers cannot be cancelled: one of an earlier window finds the
     * queue emptied, or a later window not yet due. */
    if (ab->queued && sb_clock_mono_ms() >= ab->queue_due_ms)
        flush(ab);
}

/* The window closes window_ms after the latest arrival, so fetches that
 * trickle in (a batch's items, whose Kubernetes reads end a little apart)
 * stay together, but never later than WINDOW_STRETCH windows after the
 * first, so a steady stream still goes out. */
static void enqueue(struct aws_backend *ab, struct op *op)
{
    int64_t now = sb_clock_mono_ms();

    op->next = ab->queue;
    ab->queue = op;
    if (++ab->queued == SB_MAX_AWS_BATCH) {
        flush(ab);
        return;
    }
    if (ab->queued == 1)
        ab->queue_opened_ms = now;
    int64_t last = ab->queue_opened_ms + (int64_t)WINDOW_STRETCH * ab->window_ms;
    ab->queue_due_ms = now + ab->window_ms < last ? now + ab->window_ms : last;
    sb_http_call_at(ab->http, ab->queue_due_ms, window_task, ab);
}

static void aws_fetch(sb_backend *be, const sb_fetch *f, sb_backend_done_fn done, void *ud)
{
    struct aws_backend *ab = (struct aws_backend *)be;
    struct op *op = sb_xcalloc(1, sizeof(*op));

    op->ab = ab;
    op->ns = sb_xstrdup(f->ns);
    op->name = sb_xstrdup(f->name);
    op->version_stage = f->version_stage ? sb_xstrdup(f->version_stage) : NULL;
    op->version_id = f->version_id ? sb_xstrdup(f->version_id) : NULL;
    op->request_id = f->request_id ? sb_xstrdup(f->request_id) : NULL;
    op->deadline_ms = f->deadline_ms;
    op->done = done;
    op->ud = ud;
    if (sb_aws_secret_id(ab->tmpl, ab->prefix, f->ns, f->name, op->secret_id) != SB_OK) {
        op_finish(op, SB_E_BAD_REQUEST, "the AWS secret id would be over 512 characters", NULL);
        return;
    }

    bool alone = op->version_stage || op->version_id || ab->window_ms == 0 ||
                 sb_clock_mono_ms() < ab->batch_off_until_ms;
    if (alone)
        single_from(ab, op);
    else
        enqueue(ab, op);
}

static void free_ops(struct op *op)
{
    for (struct op *next; op; op = next) {
        next = op->next;
        op_free(op);
    }
}

/* After the http loop has stopped: ops still waiting for a timer or a
 * key are freed without an answer (the broker is gone). */
static void aws_destroy(sb_backend *be)
{
    struct aws_backend *ab = (struct aws_backend *)be;

    free_ops(ab->queue);
    while (ab->calls)
        free_ops(call_end(ab->calls));
    sb_aws_creds_free(ab->creds);
    sb_aws_url_free(&ab->endpoint);
    free(ab->region);
    free(ab->ca_bundle);
    free(ab->tmpl);
    free(ab->prefix);
    free(ab);
}

static const struct sb_backend_ops aws_ops = {.fetch = aws_fetch, .destroy = aws_destroy};

static sb_err check_settings(const sb_config *cfg, const char *ca, char *err, size_t errlen)
{
    const char *why;

    if (!sb_aws_region_ok(cfg->aws_region)) {
        snprintf(err, errlen,
                 "AWS_REGION: required when SECRETS_BACKEND lists "
                 "aws-secrets-manager: a region name such as eu-west-1 (AWS_DEFAULT_REGION is "
                 "read too)");
        return SB_E_CONFIG;
    }
    if ((why = sb_aws_template_problem(cfg->aws_id_template)) != NULL) {
        snprintf(err, errlen, "AWS_SECRET_ID_TEMPLATE: %s", why);
        return SB_E_CONFIG;
    }
    if ((why = sb_aws_prefix_problem(cfg->aws_prefix)) != NULL) {
        snprintf(err, errlen, "AWS_SECRETS_MANAGER_PREFIX: %s", why);
        return SB_E_CONFIG;
    }
    if (ca && access(ca, R_OK) != 0) {
        snprintf(err, errlen, "AWS_CA_BUNDLE: cannot read %.200s", ca);
        return SB_E_CONFIG;
    }
    return SB_OK;
}

sb_err sb_aws_backend_new(const sb_config *cfg, sb_http *http, sb_env_lookup env, sb_backend **out,
                          char *err, size_t errlen)
{
    const char *ca = env("AWS_CA_BUNDLE");
    ca = ca && ca[0] ? ca : NULL;

    sb_err rc = check_settings(cfg, ca, err, errlen);
    if (rc != SB_OK)
        return rc;
    struct aws_backend *ab = sb_xcalloc(1, sizeof(*ab));
    ab->base.ops = &aws_ops;
    ab->base.kind = SB_BACKEND_AWS;
    ab->base.reads_as_caller = false;
    ab->http = http;
    ab->region = sb_xstrdup(cfg->aws_region);
    ab->ca_bundle = ca ? sb_xstrdup(ca) : NULL;
    ab->tmpl = sb_xstrdup(cfg->aws_id_template);
    ab->prefix = sb_xstrdup(cfg->aws_prefix);
    ab->timeout_ms = cfg->aws_timeout_ms;
    sb_retry_init(&ab->retries);
    ab->window_ms = cfg->aws_batch_window_ms;

    sb_aws_creds_options co = {.env = env,
                               .http = http,
                               .region = cfg->aws_region,
                               .ca_bundle = ca,
                               .timeout_ms = cfg->aws_timeout_ms};
    rc = sb_aws_endpoint(env, "SECRETS_MANAGER", "secretsmanager", cfg->aws_region, &ab->endpoint,
                         err, errlen);
    if (rc == SB_OK)
        rc = sb_aws_creds_new(&co, &ab->creds, err, errlen);
    if (rc != SB_OK) {
        aws_destroy(&ab->base);
        return rc;
    }

    SB_INFO(LOG_TAG, NULL, "AWS Secrets Manager at %s (region %s), credentials from source %s",
            ab->endpoint.base, ab->region, sb_aws_source_name(sb_aws_creds_source(ab->creds)));
    if (!strstr(ab->tmpl, "{namespace}"))
        SB_WARN(LOG_TAG, NULL,
                "AWS_SECRET_ID_TEMPLATE has no {namespace}: callers of every "
                "namespace that RBAC allows a name read the same AWS secret");
    sb_aws_creds_prefetch(ab->creds);
    *out = &ab->base;
    return SB_OK;
}
