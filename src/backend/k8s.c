/* Kubernetes backend (see k8s.h). In TokenRequest mode the caller's tokens
 * are cached per ServiceAccount until 80% of their life has passed, and
 * concurrent requests for one ServiceAccount share one TokenRequest. All
 * state here is touched on the http loop thread only. */
#include "backend/k8s.h"

#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/limits.h"
#include "obs/metrics.h"

struct fetch_ctx;

/* One cached or pending token of a caller's ServiceAccount. */
struct sa_token {
    char *key; /* "<ns>/<sa>" */
    sb_secret *token;
    int64_t refresh_ms; /* monotonic: ask again from here on (80% of life) */
    struct fetch_ctx *waiters;
    bool pending;
    struct sa_token *next;
};

struct k8s_backend {
    sb_backend base;
    sb_kube *kube;
    bool tokenrequest;
    int token_seconds;
    struct sa_token *tokens; /* small: one per calling ServiceAccount */
};

struct fetch_ctx {
    struct k8s_backend *kb;
    char *ns;
    char *name;
    char *user; /* system:serviceaccount:<ns>:<sa> */
    char *request_id;
    sb_backend_done_fn done;
    void *ud;
    struct fetch_ctx *next_waiter;
};

static sb_err add_item(sb_secret_doc *doc, const char *key, size_t key_len, const json_t *b64)
{
    gnutls_datum_t in, raw = {NULL, 0};

    if (!json_is_string(b64))
        return SB_E_UPSTREAM;
    in.data = (unsigned char *)json_string_value(b64);
    in.size = (unsigned)json_string_length(b64);
    if (in.size && gnutls_base64_decode2(&in, &raw) < 0)
        return SB_E_UPSTREAM;

    sb_err err = sb_doc_add(doc, key, key_len, raw.data, raw.size);
    if (raw.data) {
        sb_wipe(raw.data, raw.size);
        gnutls_free(raw.data);
    }
    return err;
}

sb_err sb_k8s_secret_to_doc(const json_t *secret, const char *ns, const char *name,
                            sb_secret_doc **out)
{
    const json_t *meta = json_object_get(secret, "metadata");
    const char *version = sb_json_str(meta, "resourceVersion", NULL);
    const json_t *data = json_object_get(secret, "data");
    const char *key;
    size_t key_len;
    json_t *value;

    if (!json_is_object(secret) || (data && !json_is_object(data)))
        return SB_E_UPSTREAM;
    sb_secret_doc *doc = sb_doc_new(SB_BACKEND_K8S, ns, name, version);
    json_object_keylen_foreach((json_t *)data, key, key_len, value)
    {
        sb_err err = add_item(doc, key, key_len, value);
        if (err != SB_OK) {
            sb_doc_unref(doc);
            return SB_E_UPSTREAM;
        }
    }
    sb_doc_seal(doc);
    *out = doc;
    return SB_OK;
}

static void ctx_free(struct fetch_ctx *ctx)
{
    free(ctx->ns);
    free(ctx->name);
    free(ctx->user);
    free(ctx->request_id);
    free(ctx);
}

static void finish(struct fetch_ctx *ctx, sb_fetch_result *res)
{
    ctx->done(res, ctx->ud);
    ctx_free(ctx);
}

static void on_secret(sb_kube_result *kr, void *ud)
{
    struct fetch_ctx *ctx = ud;
    sb_fetch_result res = {
        .err = kr->err, .retry_after_s = kr->retry_after_s, .detail = kr->detail ? kr->detail : ""};

    sb_metrics_upstream(SB_BACKEND_K8S, kr->err);
    /* The read was made as the caller: RBAC was evaluated before the
     * object was looked up, so 404 means allowed-but-absent. */
    if (kr->err == SB_OK || kr->err == SB_E_NOT_FOUND)
        res.authz = SB_FETCH_AUTHZ_ALLOWED;
    else if (kr->err == SB_E_FORBIDDEN)
        res.authz = SB_FETCH_AUTHZ_DENIED;

    if (kr->err == SB_OK && sb_k8s_secret_to_doc(kr->json, ctx->ns, ctx->name, &res.doc) != SB_OK) {
        res.err = SB_E_UPSTREAM;
        res.detail = "the API server returned a malformed Secret";
    }
    if (kr->err == SB_E_CREDENTIALS)
        res.detail = "the API server refused the broker's own credentials";
    finish(ctx, &res);
}

static void read_with_token(struct fetch_ctx *ctx, const sb_secret *token)
{
    sb_kube_as as = {.bearer = token};
    sb_kube_get_secret(ctx->kb->kube, ctx->ns, ctx->name, &as, ctx->request_id, on_secret, ctx);
}

static struct sa_token *token_slot(struct k8s_backend *kb, const char *key)
{
    for (struct sa_token *t = kb->tokens; t; t = t->next) {
        if (!strcmp(t->key, key))
            return t;
    }
    struct sa_token *t = sb_xcalloc(1, sizeof(*t));
    t->key = sb_xstrdup(key);
    t->next = kb->tokens;
    kb->tokens = t;
    return t;
}

static void fail_waiters(struct fetch_ctx *list, sb_err err, const char *detail)
{
    sb_fetch_result res = {.err = err, .retry_after_s = -1, .detail = detail};

    if (err == SB_E_FORBIDDEN)
        res.authz = SB_FETCH_AUTHZ_DENIED;
    for (struct fetch_ctx *c = list, *next; c; c = next) {
        next = c->next_waiter;
        finish(c, &res);
    }
}

static void on_token(sb_kube_result *kr, void *ud)
{
    struct sa_token *t = ud;
    struct fetch_ctx *waiters = t->waiters;
    const json_t *status = json_object_get(kr->json, "status");
    size_t len = 0;
    const char *token = sb_json_str(status, "token", &len);
    const char *expiry = sb_json_str(status, "expirationTimestamp", NULL);
    int64_t expires_wall = 0;

    t->waiters = NULL;
    t->pending = false;
    if (kr->err == SB_E_NOT_FOUND) {
        /* No such ServiceAccount: it holds no RBAC, so it may read nothing. */
        fail_waiters(waiters, SB_E_FORBIDDEN, "the caller's ServiceAccount does not exist");
        return;
    }
    if (kr->err != SB_OK || !token || !expiry ||
        sb_clock_parse_rfc3339(expiry, &expires_wall) != 0) {
        fail_waiters(waiters,
                     kr->err == SB_OK || kr->err == SB_E_FORBIDDEN ? SB_E_CREDENTIALS : kr->err,
                     "the TokenRequest for the caller failed");
        return;
    }

    /* Refresh at 80% of the life the API server granted (it may shorten
     * what was asked). */
    int64_t life_ms = expires_wall - sb_clock_wall_ms();
    sb_secret_unref(t->token);
    t->token = sb_secret_new(token, len);
    t->refresh_ms = sb_clock_mono_ms() + (life_ms > 0 ? life_ms * 8 / 10 : 0);
    for (struct fetch_ctx *c = waiters, *next; c; c = next) {
        next = c->next_waiter;
        read_with_token(c, t->token);
    }
}

static void fetch_by_token(struct fetch_ctx *ctx, const char *caller_ns, const char *caller_sa)
{
    struct k8s_backend *kb = ctx->kb;
    char key[SB_MAX_NAMESPACE + SB_MAX_SA_NAME + 2];

    snprintf(key, sizeof(key), "%s/%s", caller_ns, caller_sa);
    struct sa_token *t = token_slot(kb, key);
    if (t->token && sb_clock_mono_ms() < t->refresh_ms) {
        read_with_token(ctx, t->token);
        return;
    }
    ctx->next_waiter = t->waiters;
    t->waiters = ctx;
    if (t->pending)
        return;
    t->pending = true;
    /* The token's audience is the API server's own (empty list means the
     * API server's audiences); we ask for the issuer's default by naming
     * none. */
    sb_kube_request_token(kb->kube, caller_ns, caller_sa, NULL, kb->token_seconds, ctx->request_id,
                          on_token, t);
}

static void k8s_fetch(sb_backend *be, const sb_fetch *f, sb_backend_done_fn done, void *ud)
{
    struct k8s_backend *kb = (struct k8s_backend *)be;
    struct fetch_ctx *ctx = sb_xcalloc(1, sizeof(*ctx));

    ctx->kb = kb;
    ctx->ns = sb_xstrdup(f->ns);
    ctx->name = sb_xstrdup(f->name);
    ctx->user = sb_xasprintf("system:serviceaccount:%s:%s", f->caller_ns, f->caller_sa);
    ctx->request_id = f->request_id ? sb_xstrdup(f->request_id) : NULL;
    ctx->done = done;
    ctx->ud = ud;

    if (kb->tokenrequest) {
        fetch_by_token(ctx, f->caller_ns, f->caller_sa);
        return;
    }
    sb_kube_as as = {.impersonate_user = ctx->user};
    sb_kube_get_secret(kb->kube, ctx->ns, ctx->name, &as, ctx->request_id, on_secret, ctx);
}

static void k8s_destroy(sb_backend *be)
{
    struct k8s_backend *kb = (struct k8s_backend *)be;

    for (struct sa_token *t = kb->tokens, *next; t; t = next) {
        next = t->next;
        sb_secret_unref(t->token);
        free(t->key);
        free(t);
    }
    free(kb);
}

static const struct sb_backend_ops k8s_ops = {.fetch = k8s_fetch, .destroy = k8s_destroy};

sb_backend *sb_k8s_backend_new(const sb_config *cfg, sb_kube *kube)
{
    struct k8s_backend *kb = sb_xcalloc(1, sizeof(*kb));

    kb->base.ops = &k8s_ops;
    kb->base.kind = SB_BACKEND_K8S;
    kb->base.reads_as_caller = true;
    kb->kube = kube;
    kb->tokenrequest = cfg->auth_mode == SB_AUTH_TOKENREQUEST;
    kb->token_seconds = cfg->token_request_seconds;
    return &kb->base;
}
