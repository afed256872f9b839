/* Bearer token reviews (see token.h). The cache is one LRU behind one lock:
 * HTTP threads only copy a result out of it. Reviews in flight live in a
 * map of their own that only the loop thread touches. */
#include "auth/token.h"

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/lru.h"
#include "core/names.h"
#include "core/secret.h"
#include "obs/log.h"

#define EXTRA_POD_NAME "authentication.kubernetes.io/pod-name"
#define EXTRA_POD_UID  "authentication.kubernetes.io/pod-uid"

struct entry {
    sb_token_result res;
    int64_t expires_ms;
};

struct waiter {
    sb_token_done_fn done;
    void *ud;
    struct waiter *next;
};

/* One TokenReview in flight, shared by every request with the token. */
struct review {
    sb_token *t;
    sb_token_key key;
    sb_secret *tok;
    char request_id[SB_MAX_REQUEST_ID + 1];
    struct waiter *waiters;
};

/* A request for a review on its way from an HTTP thread to the loop. */
struct hop {
    sb_token *t;
    sb_token_key key;
    sb_secret *tok;
    char request_id[SB_MAX_REQUEST_ID + 1];
    sb_token_done_fn done;
    void *ud;
};

struct sb_token {
    pthread_mutex_t lock;
    sb_lru *cache;   /* key -> struct entry; under lock */
    sb_lru *pending; /* key -> struct review; loop thread only */
    sb_kube *kube;
    sb_http *http;
    const char *audience;
};

sb_token *sb_token_new(const sb_config *cfg, sb_kube *kube, sb_http *http)
{
    sb_token *t = sb_xcalloc(1, sizeof(*t));

    pthread_mutex_init(&t->lock, NULL);
    t->cache = sb_lru_new(SB_MAX_TOKEN_CACHE, free);
    t->pending = sb_lru_new(SIZE_MAX, NULL);
    t->kube = kube;
    t->http = http;
    t->audience = cfg->token_audience;
    return t;
}

void sb_token_free(sb_token *t)
{
    if (!t)
        return;
    sb_lru_free(t->cache);
    sb_lru_free(t->pending);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* ---- the Authorization header ---------------------------------------- */

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool scheme_is_bearer(const char *s)
{
    static const char bearer[] = "bearer";

    for (size_t i = 0; i < sizeof(bearer) - 1; i++) {
        char c = s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] + 32) : s[i];
        if (c != bearer[i])
            return false;
    }
    return true;
}

static bool is_b64token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

/* b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
 * (RFC 6750 section 2.1). */
static bool is_b64token(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len && is_b64token_char(s[i]))
        i++;
    if (i == 0)
        return false;
    while (i < len && s[i] == '=')
        i++;
    return i == len;
}

sb_err sb_token_parse_header(const char *value, size_t len, const char **out_tok, size_t *out_len,
                             const char **why)
{
    size_t start = 0, end = len;

    while (start < end && is_ows(value[start]))
        start++;
    while (end > start && is_ows(value[end - 1]))
        end--;

    /* The scheme is case-insensitive (RFC 7235 section 2.1); then 1*SP. */
    if (end - start < 7 || !scheme_is_bearer(value + start) || value[start + 6] != ' ') {
        *why = "the Authorization header is not a Bearer token";
        return SB_E_UNAUTHORIZED;
    }
    start += 6;
    while (start < end && value[start] == ' ')
        start++;

    if (end - start > SB_MAX_BEARER_TOKEN) {
        *why = "the bearer token is too long";
        return SB_E_UNAUTHORIZED;
    }
    if (!is_b64token(value + start, end - start)) {
        *why = "the bearer token is empty or malformed";
        return SB_E_UNAUTHORIZED;
    }
    *out_tok = value + start;
    *out_len = end - start;
    return SB_OK;
}

sb_err sb_token_key_of(const char *tok, size_t len, sb_token_key *out)
{
    sb_token_key key;

    if (gnutls_hash_fast(GNUTLS_DIG_SHA256, tok, len, key.bytes) < 0)
        return SB_E_CRYPTO;
    *out = key;
    return SB_OK;
}

/* ---- the token's own expiry ------------------------------------------ */

/* The JWT's payload segment (RFC 7519 section 3: header.payload.signature),
 * base64url without padding (RFC 7515 section 2), decoded into out. */
static sb_err jwt_payload(const char *tok, size_t len, gnutls_datum_t *out)
{
    const char *dot1 = memchr(tok, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - tok)) : NULL;
    sb_buf b64;
    sb_err rc = SB_E_BAD_REQUEST;

    if (!dot2 || dot2 == dot1 + 1)
        return SB_E_BAD_REQUEST;
    sb_buf_init(&b64, SB_MAX_BEARER_TOKEN + 4);
    for (const char *p = dot1 + 1; p < dot2; p++) {
        char c = *p == '-' ? '+' : *p == '_' ? '/' : *p;
        if (sb_buf_append(&b64, &c, 1) != SB_OK)
            goto out_free;
    }
    while (b64.len % 4) {
        if (sb_buf_append(&b64, "=", 1) != SB_OK)
            goto out_free;
    }

    gnutls_datum_t in = {b64.data, (unsigned)b64.len};
    if (gnutls_base64_decode2(&in, out) >= 0)
        rc = SB_OK;
out_free:
    sb_buf_free(&b64);
    return rc;
}

/* The `exp` claim in seconds since the epoch. */
static sb_err jwt_exp(const char *tok, size_t len, double *out)
{
    gnutls_datum_t payload = {NULL, 0};
    json_t *claims = NULL;
    sb_err rc = jwt_payload(tok, len, &payload);

    if (rc != SB_OK)
        return rc;
    rc = sb_json_parse(payload.data, payload.size, SB_MAX_BEARER_TOKEN, &claims);
    sb_wipe(payload.data, payload.size);
    gnutls_free(payload.data);
    if (rc != SB_OK)
        return rc;

    const json_t *exp = json_object_get(claims, "exp");
    rc = json_is_number(exp) ? SB_OK : SB_E_BAD_REQUEST;
    if (rc == SB_OK)
        *out = json_number_value(exp);
    json_decref(claims);
    return rc;
}

int64_t sb_token_cache_ttl_ms(const char *tok, size_t len, int64_t wall_ms)
{
    double exp_s;

    /* No readable exp: the API server has just vouched for the token, and
     * the cap bounds how long that is believed. */
    if (jwt_exp(tok, len, &exp_s) != SB_OK)
        return SB_TOKEN_ALLOW_TTL_MS;

    double left_ms = exp_s * 1000.0 - (double)wall_ms;
    if (left_ms <= 0)
        return 0;
    return left_ms < SB_TOKEN_ALLOW_TTL_MS ? (int64_t)left_ms : SB_TOKEN_ALLOW_TTL_MS;
}

/* ---- reading a TokenReview ------------------------------------------- */

static bool has_audience(const json_t *audiences, const char *want)
{
    size_t i;
    const json_t *a;

    json_array_foreach(audiences, i, a)
    {
        if (json_is_string(a) && strcmp(json_string_value(a), want) == 0)
            return true;
    }
    return false;
}

/* The single string value of user.extra[key]: NULL with *present false
 * when absent, NULL with *present true when not exactly one string. */
static const char *extra_value(const json_t *extra, const char *key, size_t *len, bool *present)
{
    const json_t *values = json_object_get(extra, key);
    const json_t *v = json_array_get(values, 0);

    *present = values != NULL;
    if (!json_is_array(values) || json_array_size(values) != 1 || !json_is_string(v))
        return NULL;
    *len = json_string_length(v);
    return json_string_value(v);
}

static bool is_uid(const char *s, size_t len)
{
    if (len == 0 || len > SB_MAX_K8S_UID)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '-'))
            return false;
    }
    return true;
}

/* Pod name and uid, present only for pod-bound tokens (Kubernetes
 * k8s.io/apiserver/pkg/authentication/serviceaccount user extras). */
static bool read_pod(const json_t *extra, sb_token_result *out)
{
    size_t nlen = 0, ulen = 0;
    bool has_name, has_uid;
    const char *name = extra_value(extra, EXTRA_POD_NAME, &nlen, &has_name);
    const char *uid = extra_value(extra, EXTRA_POD_UID, &ulen, &has_uid);

    if (!has_name && !has_uid)
        return true;
    if (!name || !uid || nlen > SB_MAX_POD_NAME || !sb_name_is_subdomain(name, nlen) ||
        !is_uid(uid, ulen))
        return false;
    memcpy(out->pod, name, nlen + 1);
    memcpy(out->pod_uid, uid, ulen + 1);
    return true;
}

void sb_token_read_review(const json_t *review, const char *audience, sb_token_result *out)
{
    const json_t *status = json_object_get(review, "status");
    const json_t *user = json_object_get(status, "user");
    size_t nlen = 0;
    const char *name = sb_json_str(user, "username", &nlen);

    memset(out, 0, sizeof(*out));
    out->err = SB_E_UNAUTHORIZED;
    if (!json_is_true(json_object_get(status, "authenticated"))) {
        out->why = "the API server did not authenticate the token";
        return;
    }
    /* With spec.audiences sent, status.audiences is the intersection, and
     * an authenticator that ignores audiences returns none (TokenReview v1
     * reference): the token must be for the broker. */
    if (!has_audience(json_object_get(status, "audiences"), audience)) {
        out->why = "the token is not for this audience";
        return;
    }
    if (!name || sb_identity_parse_username(name, nlen, &out->id, NULL) != SB_OK) {
        out->why = "the token does not belong to a ServiceAccount";
        return;
    }
    if (!read_pod(json_object_get(user, "extra"), out)) {
        out->why = "the review names the pod in an unexpected form";
        return;
    }
    snprintf(out->id.source, sizeof(out->id.source), "token");
    out->err = SB_OK;
    out->why = "";
}

sb_err sb_token_check(const sb_token_result *res, const sb_identity *cert, sb_identity *out,
                      const char **why)
{
    if (res->err != SB_OK) {
        *why = res->why;
        return res->err;
    }
    if (!cert) {
        *out = res->id;
        return SB_OK;
    }
    /* DESIGN.md section 3: the token must name the certificate's account. */
    if (strcmp(cert->ns, res->id.ns) != 0 || strcmp(cert->sa, res->id.sa) != 0) {
        *why = "the token names another ServiceAccount than the certificate";
        return SB_E_UNAUTHORIZED;
    }
    *out = *cert;
    return SB_OK;
}

/* ---- the cache ------------------------------------------------------- */

bool sb_token_lookup(sb_token *t, const sb_token_key *key, int64_t now, sb_token_result *out)
{
    bool found = false;

    pthread_mutex_lock(&t->lock);
    struct entry *e = sb_lru_get(t->cache, key->bytes, sizeof(key->bytes));
    if (e && now < e->expires_ms) {
        *out = e->res;
        found = true;
    }
    pthread_mutex_unlock(&t->lock);
    return found;
}

void sb_token_record(sb_token *t, const sb_token_key *key, const sb_token_result *res,
                     int64_t ttl_ms, int64_t now)
{
    if (ttl_ms <= 0)
        return;

    struct entry *e = sb_xmalloc(sizeof(*e));
    *e = (struct entry){.res = *res, .expires_ms = now + ttl_ms};
    pthread_mutex_lock(&t->lock);
    sb_lru_put(t->cache, key->bytes, sizeof(key->bytes), e);
    pthread_mutex_unlock(&t->lock);
}

size_t sb_token_cached(sb_token *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = sb_lru_count(t->cache);
    pthread_mutex_unlock(&t->lock);
    return n;
}

/* ---- reviews --------------------------------------------------------- */

static void finish(struct review *rv, const sb_token_result *res)
{
    /* Detach before calling back: a waiter may start a new review. */
    sb_lru_remove(rv->t->pending, rv->key.bytes, sizeof(rv->key.bytes));
    for (struct waiter *w = rv->waiters, *next; w; w = next) {
        next = w->next;
        w->done(res, w->ud);
        free(w);
    }
    sb_secret_unref(rv->tok);
    free(rv);
}

static void on_review(sb_kube_result *kr, void *ud)
{
    struct review *rv = ud;
    sb_token *t = rv->t;
    sb_token_result res = {.err = SB_E_UNAVAILABLE,
                           .why = "the token could not be reviewed: the Kubernetes API did not "
                                  "answer"};

    /* No answer is not a refusal: the caller hears 503, and nothing is
     * cached, so the next request asks again. */
    if (kr->err != SB_OK) {
        SB_WARN("token", rv->request_id, "TokenReview failed: %s (HTTP %ld)", kr->detail,
                kr->status);
        finish(rv, &res);
        return;
    }

    sb_token_read_review(kr->json, t->audience, &res);
    int64_t ttl = res.err == SB_OK
                      ? sb_token_cache_ttl_ms((const char *)sb_secret_data(rv->tok),
                                              sb_secret_len(rv->tok), sb_clock_wall_ms())
                      : SB_TOKEN_DENY_TTL_MS;
    sb_token_record(t, &rv->key, &res, ttl, sb_clock_mono_ms());
    finish(rv, &res);
}

static void add_waiter(struct review *rv, sb_token_done_fn done, void *ud)
{
    struct waiter *w = sb_xmalloc(sizeof(*w));

    *w = (struct waiter){.done = done, .ud = ud, .next = rv->waiters};
    rv->waiters = w;
}

static void start_task(void *ud)
{
    struct hop *h = ud;
    sb_token *t = h->t;
    sb_token_result res;
    struct review *rv = sb_lru_get(t->pending, h->key.bytes, sizeof(h->key.bytes));

    if (rv) {
        add_waiter(rv, h->done, h->ud);
        goto out_free_hop;
    }
    /* A review may have finished since the HTTP thread looked. */
    if (sb_token_lookup(t, &h->key, sb_clock_mono_ms(), &res)) {
        h->done(&res, h->ud);
        goto out_free_hop;
    }

    rv = sb_xcalloc(1, sizeof(*rv));
    *rv = (struct review){.t = t, .key = h->key, .tok = h->tok};
    memcpy(rv->request_id, h->request_id, sizeof(rv->request_id));
    h->tok = NULL;
    add_waiter(rv, h->done, h->ud);
    sb_lru_put(t->pending, rv->key.bytes, sizeof(rv->key.bytes), rv);
    sb_kube_review_token(t->kube, rv->tok, t->audience, rv->request_id[0] ? rv->request_id : NULL,
                         on_review, rv);
out_free_hop:
    sb_secret_unref(h->tok);
    free(h);
}

void sb_token_review(sb_token *t, const sb_token_key *key, const char *tok, size_t len,
                     const char *request_id, sb_token_done_fn done, void *ud)
{
    struct hop *h = sb_xcalloc(1, sizeof(*h));

    *h = (struct hop){.t = t, .key = *key, .tok = sb_secret_new(tok, len), .done = done, .ud = ud};
    snprintf(h->request_id, sizeof(h->request_id), "%s", request_id ? request_id : "");
    sb_http_call_at(t->http, 0, start_task, h);
}
