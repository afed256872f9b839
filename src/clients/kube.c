/* Kubernetes API client (see kube.h). The broker's own token is re-read
 * when its file changes, at least every minute, and after a 401, because
 * projected tokens rotate (DESIGN.md section 6). A 429 with Retry-After
 * (API Priority and Fairness) is waited out and tried again within the
 * call's time, under a retry budget. */
#include "clients/kube.h"

#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clients/retry.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/limits.h"
#include "obs/log.h"

#define TOKEN_REREAD_MS 60000 /* re-read the token at least this often */
#define TOKEN_STAT_MS   1000  /* look at the file's metadata at most this often */
#define USER_AGENT      "secrets-broker/" SB_VERSION
#define MAX_ATTEMPTS    3   /* per call, when the API server answers 429 */
#define MIN_ATTEMPT_MS  250 /* room a retry needs before the call's time is up */
#define MAX_JITTER_MS   1000

struct token_source {
    char *path;         /* NULL for a fixed token */
    sb_secret *token;   /* NULL when there is none */
    int64_t read_ms;    /* when the file was last read */
    int64_t checked_ms; /* when its metadata was last looked at */
    struct stat st;
};

struct sb_kube {
    sb_http *http;
    char *server; /* https://host:port, no trailing slash */
    char *ca_file;
    char *cert_file;
    char *key_file;
    char *tmpdir; /* holds files written from KUBECONFIG *-data fields */
    struct token_source tok;
    int timeout_ms;
    sb_retry_budget retries; /* for 429 answers; loop thread */
};

struct call {
    sb_kube *k;
    char *method;
    char *path;
    char *body;
    char *impersonate;
    sb_secret *bearer;
    char *request_id;
    sb_kube_opts opts; /* opts.accept owned */
    sb_kube_done_fn done;
    void *ud;
    bool retried;        /* after a 401, with the token read again */
    int attempts;        /* sent so far */
    int64_t deadline_ms; /* the whole call, 429 waits included */
};

static sb_err read_small_file(const char *path, size_t max, sb_buf *out)
{
    char chunk[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return SB_E_IO;
    sb_buf_init(out, max);
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            sb_wipe(chunk, sizeof(chunk));
            close(fd);
            return n < 0 ? SB_E_IO : SB_OK;
        }
        if (sb_buf_append(out, chunk, (size_t)n) != SB_OK) {
            sb_wipe(chunk, sizeof(chunk));
            close(fd);
            sb_buf_free(out);
            return SB_E_TOO_LARGE;
        }
    }
}

/* Reads the token file; trailing whitespace is not part of the token. */
static sb_err token_reload(struct token_source *ts, int64_t now)
{
    sb_buf raw;
    sb_err err = read_small_file(ts->path, SB_MAX_BEARER_TOKEN, &raw);

    ts->checked_ms = now;
    if (err != SB_OK)
        return err;
    while (raw.len && (raw.data[raw.len - 1] == '\n' || raw.data[raw.len - 1] == '\r' ||
                       raw.data[raw.len - 1] == ' '))
        raw.len--;
    sb_secret_unref(ts->token);
    ts->token = sb_secret_new(raw.data, raw.len);
    sb_buf_free(&raw);
    ts->read_ms = now;
    stat(ts->path, &ts->st);
    return SB_OK;
}

static void token_refresh(struct token_source *ts, int64_t now, bool force)
{
    struct stat st;

    if (!ts->path)
        return;
    if (!force && now - ts->checked_ms < TOKEN_STAT_MS)
        return;
    ts->checked_ms = now;
    bool changed = stat(ts->path, &st) == 0 &&
                   (st.st_ino != ts->st.st_ino || st.st_mtim.tv_sec != ts->st.st_mtim.tv_sec ||
                    st.st_mtim.tv_nsec != ts->st.st_mtim.tv_nsec || st.st_size != ts->st.st_size);
    if (!force && !changed && now - ts->read_ms < TOKEN_REREAD_MS)
        return;
    if (token_reload(ts, now) != SB_OK)
        SB_WARN("kube", NULL, "cannot re-read the ServiceAccount token file; keeping the old one");
}

/* Writes base64 data from a KUBECONFIG *-data field into a private file. */
static sb_err write_data_file(sb_kube *k, const char *name, const char *b64, char **out_path)
{
    gnutls_datum_t in = {(unsigned char *)b64, (unsigned)strlen(b64)};
    gnutls_datum_t raw = {NULL, 0};

    if (gnutls_base64_decode2(&in, &raw) < 0)
        return SB_E_CONFIG;
    char *path = sb_xasprintf("%s/%s", k->tmpdir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && write(fd, raw.data, raw.size) == (ssize_t)raw.size;
    if (fd >= 0)
        close(fd);
    sb_wipe(raw.data, raw.size);
    gnutls_free(raw.data);
    if (!ok) {
        free(path);
        return SB_E_IO;
    }
    *out_path = path;
    return SB_OK;
}

static const json_t *named_entry(const json_t *root, const char *list, const char *name,
                                 const char *field)
{
    size_t i;
    json_t *item;

    json_array_foreach(json_object_get(root, list), i, item)
    {
        const char *n = sb_json_str(item, "name", NULL);
        if (n && name && !strcmp(n, name))
            return json_object_get(item, field);
    }
    return NULL;
}

static sb_err kubeconfig_file_field(sb_kube *k, const json_t *obj, const char *path_key,
                                    const char *data_key, const char *data_name, char **out)
{
    const char *path = sb_json_str(obj, path_key, NULL);
    const char *data = sb_json_str(obj, data_key, NULL);

    if (path) {
        *out = sb_xstrdup(path);
        return SB_OK;
    }
    if (!data)
        return SB_OK;
    if (!k->tmpdir) {
        const char *base = getenv("TMPDIR");
        char *tmpl = sb_xasprintf("%s/secrets-broker-kube-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(tmpl)) {
            free(tmpl);
            return SB_E_IO;
        }
        k->tmpdir = tmpl;
    }
    return write_data_file(k, data_name, data, out);
}

static sb_err load_kubeconfig(sb_kube *k, const char *file, char *err, size_t errlen)
{
    sb_buf raw;
    json_t *root = NULL;
    sb_err rc = read_small_file(file, 1024 * 1024, &raw);

    if (rc != SB_OK) {
        snprintf(err, errlen, "KUBECONFIG: cannot read %.200s", file);
        return SB_E_CONFIG;
    }
    rc = sb_json_parse(raw.data, raw.len, raw.len, &root);
    sb_buf_free(&raw);
    if (rc != SB_OK) {
        snprintf(err, errlen,
                 "KUBECONFIG: %.200s is not JSON; write it with "
                 "`kubectl config view --raw --flatten -o json`",
                 file);
        return SB_E_CONFIG;
    }

    const char *ctx_name = sb_json_str(root, "current-context", NULL);
    const json_t *ctx = named_entry(root, "contexts", ctx_name, "context");
    const json_t *cluster =
        named_entry(root, "clusters", sb_json_str(ctx, "cluster", NULL), "cluster");
    const json_t *user = named_entry(root, "users", sb_json_str(ctx, "user", NULL), "user");
    const char *server = sb_json_str(cluster, "server", NULL);
    if (!ctx || !cluster || !server) {
        snprintf(err, errlen, "KUBECONFIG: no current context with a cluster server in %.200s",
                 file);
        json_decref(root);
        return SB_E_CONFIG;
    }
    k->server = sb_xstrndup(server, strcspn(server, "\0"));
    if (k->server[0] && k->server[strlen(k->server) - 1] == '/')
        k->server[strlen(k->server) - 1] = '\0';

    rc = kubeconfig_file_field(k, cluster, "certificate-authority", "certificate-authority-data",
                               "ca.crt", &k->ca_file);
    if (rc == SB_OK)
        rc = kubeconfig_file_field(k, user, "client-certificate", "client-certificate-data",
                                   "client.crt", &k->cert_file);
    if (rc == SB_OK)
        rc = kubeconfig_file_field(k, user, "client-key", "client-key-data", "client.key",
                                   &k->key_file);
    if (rc != SB_OK) {
        snprintf(err, errlen, "KUBECONFIG: cannot use the certificate fields of %.200s", file);
        json_decref(root);
        return SB_E_CONFIG;
    }

    size_t toklen = 0;
    const char *token = sb_json_str(user, "token", &toklen);
    const char *token_file = sb_json_str(user, "tokenFile", NULL);
    if (token)
        k->tok.token = sb_secret_new(token, toklen);
    else if (token_file)
        k->tok.path = sb_xstrdup(token_file);
    json_decref(root);
    return SB_OK;
}

static sb_err load_in_cluster(sb_kube *k, const sb_config *cfg, char *err, size_t errlen)
{
    const char *host = cfg->k8s_host;
    const char *port = cfg->k8s_port ? cfg->k8s_port : "443";

    if (!host) {
        snprintf(err, errlen,
                 "KUBERNETES_SERVICE_HOST: not set and no KUBECONFIG given; "
                 "the k8s backend needs one of them");
        return SB_E_CONFIG;
    }
    /* An IPv6 literal goes in brackets in a URL (RFC 3986 section 3.2.2). */
    if (strchr(host, ':'))
        k->server = sb_xasprintf("https://[%s]:%s", host, port);
    else
        k->server = sb_xasprintf("https://%s:%s", host, port);
    k->ca_file = sb_xasprintf("%s/ca.crt", cfg->k8s_sa_dir);
    k->tok.path = sb_xasprintf("%s/token", cfg->k8s_sa_dir);
    return SB_OK;
}

sb_err sb_kube_new(const sb_config *cfg, sb_http *http, sb_kube **out, char *err, size_t errlen)
{
    sb_kube *k = sb_xcalloc(1, sizeof(*k));
    sb_err rc;

    k->http = http;
    k->timeout_ms = cfg->k8s_timeout_ms;
    sb_retry_init(&k->retries);
    if (cfg->kubeconfig)
        rc = load_kubeconfig(k, cfg->kubeconfig, err, errlen);
    else
        rc = load_in_cluster(k, cfg, err, errlen);
    if (rc == SB_OK && k->tok.path && token_reload(&k->tok, sb_clock_mono_ms()) != SB_OK) {
        snprintf(err, errlen, "cannot read the Kubernetes token file %.200s", k->tok.path);
        rc = SB_E_CONFIG;
    }
    if (rc != SB_OK) {
        sb_kube_free(k);
        return rc;
    }
    *out = k;
    return SB_OK;
}

void sb_kube_free(sb_kube *k)
{
    if (!k)
        return;
    if (k->tmpdir) {
        /* The files came from KUBECONFIG; remove the copies (key included). */
        char *files[] = {k->ca_file, k->cert_file, k->key_file};
        for (size_t i = 0; i < 3; i++) {
            if (files[i] && !strncmp(files[i], k->tmpdir, strlen(k->tmpdir)))
                unlink(files[i]);
        }
        rmdir(k->tmpdir);
    }
    free(k->server);
    free(k->ca_file);
    free(k->cert_file);
    free(k->key_file);
    free(k->tmpdir);
    free(k->tok.path);
    sb_secret_unref(k->tok.token);
    free(k);
}

const char *sb_kube_server(const sb_kube *k)
{
    return k->server;
}

static void call_free(struct call *c)
{
    free(c->method);
    free(c->path);
    if (c->body) {
        sb_wipe(c->body, strlen(c->body));
        free(c->body);
    }
    free(c->impersonate);
    sb_secret_unref(c->bearer);
    free(c->request_id);
    free((char *)c->opts.accept);
    free(c);
}

static sb_err map_status(long status)
{
    if (status >= 200 && status < 300)
        return SB_OK;
    switch (status) {
    case 401:
        return SB_E_CREDENTIALS;
    case 403:
        return SB_E_FORBIDDEN;
    case 404:
        return SB_E_NOT_FOUND;
    case 429:
        return SB_E_THROTTLED;
    default:
        return status >= 500 ? SB_E_UNAVAILABLE : SB_E_UPSTREAM;
    }
}

static void set_bearer(sb_http_req *req, const sb_secret *token)
{
    size_t n = sb_secret_len(token) + 8;
    char *value = sb_xmalloc(n);

    snprintf(value, n, "Bearer %s", (const char *)sb_secret_data(token));
    sb_http_req_header(req, "Authorization", value);
    sb_wipe(value, n);
    free(value);
}

static void on_response(sb_http_response *resp, void *ud);

static void call_submit(struct call *c)
{
    sb_kube *k = c->k;
    char *url = sb_xasprintf("%s%s", k->server, c->path);
    sb_http_req *req = sb_http_req_new(c->method, url);
    int64_t now = sb_clock_mono_ms();
    int64_t left = c->deadline_ms - now;

    free(url);
    c->attempts++;
    token_refresh(&k->tok, now, false);
    sb_http_req_timeout(req, (int)(left > 1 ? left : 1));
    sb_http_req_tls(req, k->ca_file, k->cert_file, k->key_file);
    sb_http_req_header(req, "Accept", c->opts.accept ? c->opts.accept : "application/json");
    if (c->opts.on_chunk)
        sb_http_req_stream(req, c->opts.on_chunk, c->opts.chunk_ud);
    sb_http_req_header(req, "User-Agent", USER_AGENT);
    if (c->request_id)
        sb_http_req_header(req, "Audit-ID", c->request_id);

    /* A caller's own token replaces the broker's; impersonation is made
     * with the broker's credentials and names only the user, so the API
     * server adds the ServiceAccount groups itself (DESIGN.md section 4). */
    if (c->bearer)
        set_bearer(req, c->bearer);
    else if (k->tok.token)
        set_bearer(req, k->tok.token);
    if (c->impersonate)
        sb_http_req_header(req, "Impersonate-User", c->impersonate);
    if (c->body)
        sb_http_req_body(req, c->body, strlen(c->body), "application/json");
    sb_http_submit(k->http, req, on_response, c);
}

static uint32_t random32(void)
{
    uint32_t r = 0;

    if (gnutls_rnd(GNUTLS_RND_NONCE, &r, sizeof(r)) != 0)
        r = (uint32_t)sb_clock_mono_us();
    return r;
}

static void resubmit_task(void *ud)
{
    call_submit(ud);
}

/* A 429 from API Priority and Fairness says when to come back
 * (Retry-After, RFC 9110 section 10.2.3): come back then, plus a little
 * jitter so throttled callers do not return in step, if the call's time
 * leaves room, it has attempts left and the retry budget a token. Streams
 * (watches) retry on their own terms. */
static bool retry_throttled(struct call *c, const sb_http_response *resp)
{
    int64_t now = sb_clock_mono_ms();

    if (resp->err != SB_OK || resp->status != 429 || resp->retry_after_s < 0 || c->opts.on_chunk ||
        c->attempts >= MAX_ATTEMPTS)
        return false;
    int64_t wait = (int64_t)resp->retry_after_s * 1000;
    int64_t jitter_max = wait / 10 < MAX_JITTER_MS ? wait / 10 + 50 : MAX_JITTER_MS;
    wait += (int64_t)(random32() % (uint32_t)jitter_max);
    if (now + wait + MIN_ATTEMPT_MS > c->deadline_ms || !sb_retry_take(&c->k->retries))
        return false;
    SB_DEBUG("kube", c->request_id, "API server throttled %s %s: trying again in %lld ms",
             c->method, c->path, (long long)wait);
    sb_http_call_at(c->k->http, now + wait, resubmit_task, c);
    return true;
}

static const char *transport_detail(sb_err err)
{
    switch (err) {
    case SB_OK:
        return "";
    case SB_E_TIMEOUT:
        return "the API server did not answer in time";
    case SB_E_SHUTDOWN:
        return "the broker is shutting down";
    case SB_E_UPSTREAM:
        return "the API server's answer could not be read";
    default:
        return "the API server could not be reached";
    }
}

static void on_response(sb_http_response *resp, void *ud)
{
    struct call *c = ud;
    sb_kube_result res = {.retry_after_s = resp->retry_after_s,
                          .detail = transport_detail(resp->err),
                          .elapsed_us = resp->elapsed_us,
                          .status = resp->status};

    /* Our own token may have rotated under us: read it again and retry
     * once. A caller's token is the caller's business. */
    if (resp->err == SB_OK && resp->status == 401 && !c->bearer && c->k->tok.path && !c->retried) {
        c->retried = true;
        token_refresh(&c->k->tok, sb_clock_mono_ms(), true);
        call_submit(c);
        return;
    }
    if (retry_throttled(c, resp))
        return;

    /* libcurl's own words live only as long as this callback and may
     * name hosts: they go to the debug log, callers get a fixed text. */
    if (resp->err != SB_OK)
        SB_DEBUG("kube", c->request_id, "%s %s: %s", c->method, c->path, resp->detail);
    res.err = resp->err != SB_OK ? resp->err : map_status(resp->status);
    if (resp->err == SB_OK && res.err != SB_OK)
        res.detail = "the API server refused the request";
    if (res.err == SB_OK && !c->opts.on_chunk &&
        sb_json_parse(resp->body.data, resp->body.len, SB_MAX_UPSTREAM_BODY, &res.json) != SB_OK) {
        res.err = SB_E_UPSTREAM;
        res.detail = "the API server's answer is not JSON";
    }
    c->done(&res, c->ud);
    json_decref(res.json);
    call_free(c);
}

void sb_kube_call(sb_kube *k, const char *method, const char *path, const char *body,
                  const sb_kube_as *as, const char *request_id, sb_kube_done_fn done, void *ud)
{
    sb_kube_call_ex(k, method, path, body, as, NULL, request_id, done, ud);
}

void sb_kube_call_ex(sb_kube *k, const char *method, const char *path, const char *body,
                     const sb_kube_as *as, const sb_kube_opts *opts, const char *request_id,
                     sb_kube_done_fn done, void *ud)
{
    struct call *c = sb_xcalloc(1, sizeof(*c));

    if (opts) {
        c->opts = *opts;
        c->opts.accept = opts->accept ? sb_xstrdup(opts->accept) : NULL;
    }

    c->k = k;
    c->deadline_ms = sb_clock_mono_ms() + (c->opts.timeout_ms ? c->opts.timeout_ms : k->timeout_ms);
    sb_retry_first(&k->retries);
    c->method = sb_xstrdup(method);
    c->path = sb_xstrdup(path);
    c->body = body ? sb_xstrdup(body) : NULL;
    c->request_id = request_id ? sb_xstrdup(request_id) : NULL;
    c->done = done;
    c->ud = ud;
    if (as && as->impersonate_user)
        c->impersonate = sb_xstrdup(as->impersonate_user);
    if (as && as->bearer)
        c->bearer = sb_secret_ref((sb_secret *)as->bearer);
    call_submit(c);
}

void sb_kube_get_secret(sb_kube *k, const char *ns, const char *name, const sb_kube_as *as,
                        const char *request_id, sb_kube_done_fn done, void *ud)
{
    /* Names are validated DNS names: nothing in them needs escaping. */
    char *path = sb_xasprintf("/api/v1/namespaces/%s/secrets/%s", ns, name);
    sb_kube_call(k, "GET", path, NULL, as, request_id, done, ud);
    free(path);
}

static void call_json(sb_kube *k, const char *path, json_t *body, const char *request_id,
                      sb_kube_done_fn done, void *ud)
{
    char *text = json_dumps(body, JSON_COMPACT);

    json_decref(body);
    sb_kube_call(k, "POST", path, text, NULL, request_id, done, ud);
    sb_json_free_dump(text);
}

void sb_kube_review_access(sb_kube *k, const char *sa_ns, const char *sa, const char *ns,
                           const char *name, const char *request_id, sb_kube_done_fn done, void *ud)
{
    char user[SB_MAX_NAMESPACE + SB_MAX_SA_NAME + 32];
    char ns_group[SB_MAX_NAMESPACE + 32];

    /* A SubjectAccessReview evaluates exactly the groups it is given; the
     * ServiceAccount groups are those the authenticator would add. */
    snprintf(user, sizeof(user), "system:serviceaccount:%s:%s", sa_ns, sa);
    snprintf(ns_group, sizeof(ns_group), "system:serviceaccounts:%s", sa_ns);
    json_t *review = json_pack(
        "{s:s, s:s, s:{s:s, s:[s,s,s], s:{s:s, s:s, s:s, s:s, s:s}}}", "apiVersion",
        "authorization.k8s.io/v1", "kind", "SubjectAccessReview", "spec", "user", user, "groups",
        "system:serviceaccounts", ns_group, "system:authenticated", "resourceAttributes",
        "namespace", ns, "verb", "get", "group", "", "resource", "secrets", "name", name);
    call_json(k, "/apis/authorization.k8s.io/v1/subjectaccessreviews", review, request_id, done,
              ud);
}

bool sb_kube_review_allowed(const json_t *review, const char **out_reason)
{
    const json_t *status = json_object_get(review, "status");
    const char *reason = sb_json_str(status, "reason", NULL);

    if (out_reason)
        *out_reason = reason ? reason : "";
    return json_is_true(json_object_get(status, "allowed")) &&
           !json_is_true(json_object_get(status, "denied"));
}

void sb_kube_request_token(sb_kube *k, const char *ns, const char *sa, const char *audience,
                           int expiration_s, const char *request_id, sb_kube_done_fn done, void *ud)
{
    char *path = sb_xasprintf("/api/v1/namespaces/%s/serviceaccounts/%s/token", ns, sa);
    /* No audience means the API server's own audiences. */
    json_t *audiences = audience ? json_pack("[s]", audience) : json_array();
    json_t *req = json_pack("{s:s, s:s, s:{s:o, s:i}}", "apiVersion", "authentication.k8s.io/v1",
                            "kind", "TokenRequest", "spec", "audiences", audiences,
                            "expirationSeconds", expiration_s);
    call_json(k, path, req, request_id, done, ud);
    free(path);
}

void sb_kube_review_token(sb_kube *k, const sb_secret *token, const char *audience,
                          const char *request_id, sb_kube_done_fn done, void *ud)
{
    json_t *review =
        json_pack("{s:s, s:s, s:{s:s%, s:[s]}}", "apiVersion", "authentication.k8s.io/v1", "kind",
                  "TokenReview", "spec", "token", (const char *)sb_secret_data(token),
                  sb_secret_len(token), "audiences", audience);
    call_json(k, "/apis/authentication.k8s.io/v1/tokenreviews", review, request_id, done, ud);
}
