/* AWS credential providers (see aws_creds.h). One fetch at a time: callers
 * that need a key while one runs wait on a list and are all answered when
 * it completes. Token files are re-read at every fetch, since the kubelet
 * rotates projected tokens. */
#include "clients/aws_creds.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "clients/aws_proto.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/limits.h"
#include "obs/log.h"

#define USER_AGENT "secrets-broker/" SB_VERSION
#define LOG_TAG    "aws-creds"

struct waiter {
    sb_aws_creds_fn fn;
    void *ud;
    struct waiter *next;
};

struct sb_aws_creds {
    sb_aws_source source;
    sb_http *http;
    char *ca_bundle;
    int timeout_ms;

    /* Web identity: the role, the token file, the session name and STS.
     * Container: the URI as given, its token file or fixed token. */
    char *role_arn;
    char *token_file;
    char *session_name;
    sb_aws_url sts;
    char *container_uri;
    sb_secret *container_token;

    sb_aws_key key; /* access_key_id NULL while there is none */
    bool stale;     /* AWS said the key expired */
    int64_t fetched_ms;
    bool fetching;
    int64_t next_try_ms; /* no new fetch before this (wall clock) */
    sb_err last_err;
    const char *last_detail;
    uint64_t serials;
    struct waiter *waiters; /* newest first */
};

const char *sb_aws_source_name(sb_aws_source source)
{
    switch (source) {
    case SB_AWS_SOURCE_ENV:
        return "environment";
    case SB_AWS_SOURCE_WEB_IDENTITY:
        return "web-identity";
    case SB_AWS_SOURCE_CONTAINER:
        return "container";
    }
    return "unknown";
}

void sb_aws_key_clear(sb_aws_key *key)
{
    if (!key)
        return;
    sb_secret_unref(key->access_key_id);
    sb_secret_unref(key->secret_key);
    sb_secret_unref(key->session_token);
    *key = (sb_aws_key){0};
}

void sb_aws_key_sigv4(const sb_aws_key *key, sb_sigv4_creds *out)
{
    out->access_key = (const char *)sb_secret_data(key->access_key_id);
    out->secret_key = (const char *)sb_secret_data(key->secret_key);
    out->session_token =
        key->session_token ? (const char *)sb_secret_data(key->session_token) : NULL;
}

sb_aws_plan sb_aws_creds_plan(bool have_key, int64_t expires_ms, bool fetching, int64_t next_try_ms,
                              int64_t now_ms)
{
    bool usable = have_key && (expires_ms == 0 || now_ms < expires_ms - SB_AWS_USABLE_BEFORE_MS);

    if (usable) {
        bool due = expires_ms != 0 && now_ms >= expires_ms - SB_AWS_REFRESH_BEFORE_MS;
        if (!due || fetching || now_ms < next_try_ms)
            return SB_AWS_PLAN_USE;
        return SB_AWS_PLAN_USE_AND_RENEW;
    }
    if (fetching)
        return SB_AWS_PLAN_WAIT;
    if (now_ms < next_try_ms)
        return SB_AWS_PLAN_FAIL;
    return SB_AWS_PLAN_FETCH_AND_WAIT;
}

/* Access key ids are [A-Za-z0-9] (the signer relies on it); secrets and
 * session tokens are visible ASCII (base64 and separators). */
static bool key_id_ok(const char *s, size_t n)
{
    if (n == 0 || n > SB_MAX_AWS_ACCESS_KEY_ID)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

static bool visible_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x21 || s[i] > 0x7e)
            return false;
    }
    return true;
}

/* Checks the parts and makes them a key. exp NULL: no Expiration given. */
static sb_err make_key(const char *ak, size_t akl, const char *sk, size_t skl, const char *tok,
                       size_t tokl, const char *exp, int64_t now_ms, sb_aws_key *out)
{
    int64_t expires = now_ms + SB_AWS_NO_EXPIRY_LIFE_MS;

    if (!ak || !key_id_ok(ak, akl) || !sk || !visible_ok(sk, skl, SB_MAX_AWS_SECRET_KEY))
        return SB_E_UPSTREAM;
    if (tok && tokl && !visible_ok(tok, tokl, SB_MAX_AWS_SESSION_TOKEN))
        return SB_E_UPSTREAM;
    if (exp && (sb_clock_parse_rfc3339(exp, &expires) != 0 || expires <= 0))
        return SB_E_UPSTREAM;

    *out = (sb_aws_key){
        .access_key_id = sb_secret_new(ak, akl),
        .secret_key = sb_secret_new(sk, skl),
        .session_token = tok && tokl ? sb_secret_new(tok, tokl) : NULL,
        .expires_ms = expires,
    };
    return SB_OK;
}

sb_err sb_aws_sts_parse(const void *xml, size_t len, sb_aws_key *out)
{
    static const char *const tags[4] = {"AccessKeyId", "SecretAccessKey", "SessionToken",
                                        "Expiration"};
    static const size_t max[4] = {SB_MAX_AWS_ACCESS_KEY_ID, SB_MAX_AWS_SECRET_KEY,
                                  SB_MAX_AWS_SESSION_TOKEN, SB_CLOCK_RFC3339_LEN * 2};
    const char *creds = NULL;
    size_t n = 0;
    sb_buf f[4];

    if (len > SB_MAX_AWS_CREDS_RESPONSE ||
        sb_aws_xml_element(xml, len, "Credentials", &creds, &n) != SB_OK)
        return SB_E_UPSTREAM;

    sb_err rc = SB_OK;
    for (int i = 0; i < 4; i++) {
        sb_buf_init(&f[i], max[i]);
        if (rc == SB_OK)
            rc = sb_aws_xml_text(creds, n, tags[i], &f[i]);
    }
    /* A session token is required here: STS keys never work without one. */
    if (rc == SB_OK && f[2].len && f[3].len)
        rc = make_key((const char *)f[0].data, f[0].len, (const char *)f[1].data, f[1].len,
                      (const char *)f[2].data, f[2].len, (const char *)f[3].data, 0, out);
    else if (rc == SB_OK)
        rc = SB_E_UPSTREAM;
    for (int i = 0; i < 4; i++)
        sb_buf_free(&f[i]);
    return rc == SB_OK ? SB_OK : SB_E_UPSTREAM;
}

sb_err sb_aws_container_parse(const void *json, size_t len, int64_t now_ms, sb_aws_key *out)
{
    json_t *root = NULL;
    size_t akl = 0, skl = 0, tokl = 0;

    if (sb_json_parse(json, len, SB_MAX_AWS_CREDS_RESPONSE, &root) != SB_OK)
        return SB_E_UPSTREAM;
    const char *ak = sb_json_str(root, "AccessKeyId", &akl);
    const char *sk = sb_json_str(root, "SecretAccessKey", &skl);
    const char *tok = sb_json_str(root, "Token", &tokl);
    const char *exp = sb_json_str(root, "Expiration", NULL);
    bool typed = json_is_object(root) && (tok || !json_object_get(root, "Token")) &&
                 (exp || !json_object_get(root, "Expiration"));

    sb_err rc = typed ? make_key(ak, akl, sk, skl, tok, tokl, exp, now_ms, out) : SB_E_UPSTREAM;
    json_decref(root);
    return rc;
}

/* Reads a small file and drops trailing whitespace (token files end in a
 * newline when written by hand). */
static sb_err read_token_file(const char *path, sb_buf *out)
{
    char chunk[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    sb_err rc = SB_OK;

    if (fd < 0)
        return SB_E_IO;
    sb_buf_init(out, SB_MAX_BEARER_TOKEN);
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? SB_E_IO : SB_OK;
            break;
        }
        rc = sb_buf_append(out, chunk, (size_t)n);
        if (rc != SB_OK)
            break;
    }
    sb_wipe(chunk, sizeof(chunk));
    close(fd);
    while (out->len && strchr(" \t\r\n", out->data[out->len - 1]))
        out->data[--out->len] = '\0';
    if (rc == SB_OK && out->len == 0)
        rc = SB_E_IO;
    if (rc != SB_OK)
        sb_buf_free(out);
    return rc;
}

static void add_waiter(sb_aws_creds *c, sb_aws_creds_fn fn, void *ud)
{
    struct waiter *w = sb_xmalloc(sizeof(*w));

    *w = (struct waiter){.fn = fn, .ud = ud, .next = c->waiters};
    c->waiters = w;
}

static struct waiter *take_waiters(sb_aws_creds *c)
{
    struct waiter *rev = NULL;

    /* Oldest first. */
    while (c->waiters) {
        struct waiter *w = c->waiters;
        c->waiters = w->next;
        w->next = rev;
        rev = w;
    }
    return rev;
}

static void log_fetch(const sb_aws_creds *c, sb_err err, const char *detail, const char *code,
                      bool usable)
{
    char until[SB_CLOCK_RFC3339_LEN];

    if (err == SB_OK) {
        sb_clock_rfc3339(c->key.expires_ms, until);
        SB_INFO(LOG_TAG, NULL, "AWS credentials from source %s obtained, valid until %s",
                sb_aws_source_name(c->source), until);
        return;
    }
    if (err == SB_E_SHUTDOWN)
        return;
    SB_LOG(usable ? SB_LOG_WARN : SB_LOG_ERROR, LOG_TAG, NULL,
           "AWS credentials from source %s could not be obtained: %s%s%s%s%s",
           sb_aws_source_name(c->source), detail, code[0] ? " (" : "", code, code[0] ? ")" : "",
           usable ? "; still using the current ones" : "");
}

/* Ends a fetch: keeps the new key (fresh, on success), decides when the
 * next fetch may start, and answers every waiter. */
static void finish_fetch(sb_aws_creds *c, sb_err err, const char *detail, const char *code,
                         sb_aws_key *fresh)
{
    int64_t now = sb_clock_wall_ms();

    c->fetching = false;
    if (err == SB_OK) {
        sb_aws_key_clear(&c->key); /* the old key's bytes are wiped here */
        c->key = *fresh;
        c->key.serial = ++c->serials;
        c->stale = false;
        c->fetched_ms = now;
    }
    bool have = c->key.access_key_id && !c->stale;
    sb_aws_plan plan = sb_aws_creds_plan(have, c->key.expires_ms, false, 0, now);
    bool usable = plan == SB_AWS_PLAN_USE || plan == SB_AWS_PLAN_USE_AND_RENEW;
    log_fetch(c, err, detail, code, usable);
    if (err == SB_OK && !usable) {
        err = SB_E_CREDENTIALS;
        detail = "the AWS credentials obtained expire within a minute";
    }
    if (err != SB_OK) {
        c->last_err = err;
        c->last_detail = detail;
    }
    bool settled = err == SB_OK && plan == SB_AWS_PLAN_USE;
    c->next_try_ms = settled ? 0 : now + (usable ? SB_AWS_RENEW_RETRY_MS : SB_AWS_FAILED_RETRY_MS);

    for (struct waiter *w = take_waiters(c), *next; w; w = next) {
        next = w->next;
        if (usable)
            w->fn(SB_OK, &c->key, "", w->ud);
        else
            w->fn(err, NULL, detail, w->ud);
        free(w);
    }
}

/* How a refusal by STS or the container endpoint reads for the client. */
static sb_err refusal(long status, const char *code)
{
    if (status == 429 || !strncmp(code, "Throttling", 10))
        return SB_E_THROTTLED;
    if (status >= 500 || !strcmp(code, "IDPCommunicationError"))
        return SB_E_UNAVAILABLE;
    return SB_E_CREDENTIALS;
}

static void prepare(const sb_aws_creds *c, sb_http_req *req, size_t max_body)
{
    sb_http_req_timeout(req, c->timeout_ms);
    sb_http_req_max_body(req, max_body);
    if (c->ca_bundle)
        sb_http_req_tls(req, c->ca_bundle, NULL, NULL);
    sb_http_req_header(req, "User-Agent", USER_AGENT);
    /* No "Expect: 100-continue" wait before a body: nothing here is big. */
    sb_http_req_header(req, "Expect", "");
}

static void on_sts(sb_http_response *resp, void *ud)
{
    sb_aws_creds *c = ud;
    sb_aws_key fresh = {0};
    char code[SB_AWS_ERROR_CODE_LEN] = "";

    if (resp->err != SB_OK) {
        finish_fetch(c, resp->err, "the STS endpoint could not be reached", code, NULL);
        return;
    }
    if (resp->status != 200) {
        sb_aws_error_code(resp->body.data, resp->body.len, code);
        finish_fetch(c, refusal(resp->status, code), "STS refused AssumeRoleWithWebIdentity", code,
                     NULL);
        return;
    }
    if (sb_aws_sts_parse(resp->body.data, resp->body.len, &fresh) != SB_OK) {
        finish_fetch(c, SB_E_UPSTREAM, "the STS answer holds no usable credentials", code, NULL);
        return;
    }
    finish_fetch(c, SB_OK, "", code, &fresh);
}

static sb_err form_field(sb_buf *body, const char *name, const char *value, size_t len)
{
    sb_err rc = sb_buf_append(body, "&", 1);

    if (rc == SB_OK)
        rc = sb_buf_append_str(body, name);
    if (rc == SB_OK)
        rc = sb_buf_append(body, "=", 1);
    if (rc == SB_OK)
        rc = sb_aws_form_append(body, value, len);
    return rc;
}

/* STS AssumeRoleWithWebIdentity, a query-protocol form POST that is not
 * signed: the web identity token is the proof
 * (https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html). */
static void fetch_web_identity(sb_aws_creds *c)
{
    sb_buf token, body;

    if (read_token_file(c->token_file, &token) != SB_OK) {
        finish_fetch(c, SB_E_CREDENTIALS, "the web identity token file cannot be read", "", NULL);
        return;
    }
    sb_buf_init(&body, SB_MAX_STS_REQUEST);
    sb_err rc = sb_buf_append_str(&body, "Action=AssumeRoleWithWebIdentity&Version=2011-06-15");
    if (rc == SB_OK)
        rc = form_field(&body, "RoleArn", c->role_arn, strlen(c->role_arn));
    if (rc == SB_OK)
        rc = form_field(&body, "RoleSessionName", c->session_name, strlen(c->session_name));
    if (rc == SB_OK)
        rc = form_field(&body, "WebIdentityToken", (const char *)token.data, token.len);
    sb_buf_free(&token);
    if (rc != SB_OK) {
        sb_buf_free(&body);
        finish_fetch(c, SB_E_CREDENTIALS, "the web identity token is too large", "", NULL);
        return;
    }

    char *url = sb_xasprintf("%s/", c->sts.base);
    sb_http_req *req = sb_http_req_new("POST", url);
    free(url);
    prepare(c, req, SB_MAX_AWS_CREDS_RESPONSE);
    sb_http_req_body(req, body.data, body.len, "application/x-www-form-urlencoded; charset=utf-8");
    sb_buf_free(&body);
    sb_http_submit(c->http, req, on_sts, c);
}

static void on_container(sb_http_response *resp, void *ud)
{
    sb_aws_creds *c = ud;
    sb_aws_key fresh = {0};
    char code[SB_AWS_ERROR_CODE_LEN] = "";

    if (resp->err != SB_OK) {
        finish_fetch(c, resp->err, "the container credentials endpoint could not be reached", code,
                     NULL);
        return;
    }
    if (resp->status != 200) {
        sb_aws_error_code(resp->body.data, resp->body.len, code);
        finish_fetch(c, refusal(resp->status, code),
                     "the container credentials endpoint refused the request", code, NULL);
        return;
    }
    if (sb_aws_container_parse(resp->body.data, resp->body.len, sb_clock_wall_ms(), &fresh) !=
        SB_OK) {
        finish_fetch(c, SB_E_UPSTREAM, "the container credentials answer is malformed", code, NULL);
        return;
    }
    finish_fetch(c, SB_OK, "", code, &fresh);
}

/* EKS Pod Identity and ECS: a GET with the authorization token, re-read
 * from its file each time, as the header's whole value
 * (https://docs.aws.amazon.com/sdkref/latest/guide/feature-container-credentials.html). */
static void fetch_container(sb_aws_creds *c)
{
    sb_buf token = {0};
    sb_http_req *req;

    if (c->token_file && read_token_file(c->token_file, &token) != SB_OK) {
        finish_fetch(c, SB_E_CREDENTIALS, "the container authorization token file cannot be read",
                     "", NULL);
        return;
    }
    const void *tok = c->token_file ? token.data : NULL;
    size_t tokl = c->token_file ? token.len : 0;
    if (c->container_token) {
        tok = sb_secret_data(c->container_token);
        tokl = sb_secret_len(c->container_token);
    }
    if (tok && (memchr(tok, '\n', tokl) || memchr(tok, '\r', tokl) || memchr(tok, '\0', tokl))) {
        sb_buf_free(&token);
        finish_fetch(c, SB_E_CREDENTIALS, "the container authorization token holds a line break",
                     "", NULL);
        return;
    }

    req = sb_http_req_new("GET", c->container_uri);
    prepare(c, req, SB_MAX_AWS_CREDS_RESPONSE);
    sb_http_req_header(req, "Accept", "application/json");
    if (tok)
        sb_http_req_header(req, "Authorization", tok);
    sb_buf_free(&token);
    sb_http_submit(c->http, req, on_container, c);
}

static void start_fetch(sb_aws_creds *c)
{
    c->fetching = true;
    if (c->source == SB_AWS_SOURCE_WEB_IDENTITY)
        fetch_web_identity(c);
    else
        fetch_container(c);
}

void sb_aws_creds_get(sb_aws_creds *c, sb_aws_creds_fn fn, void *ud)
{
    int64_t now = sb_clock_wall_ms();
    bool have = c->key.access_key_id && !c->stale;

    switch (sb_aws_creds_plan(have, c->key.expires_ms, c->fetching, c->next_try_ms, now)) {
    case SB_AWS_PLAN_USE_AND_RENEW:
        start_fetch(c);
        fn(SB_OK, &c->key, "", ud);
        return;
    case SB_AWS_PLAN_USE:
        fn(SB_OK, &c->key, "", ud);
        return;
    case SB_AWS_PLAN_FAIL:
        fn(c->last_err, NULL, c->last_detail, ud);
        return;
    case SB_AWS_PLAN_WAIT:
        add_waiter(c, fn, ud);
        return;
    case SB_AWS_PLAN_FETCH_AND_WAIT:
        add_waiter(c, fn, ud); /* first: the fetch may end at once */
        start_fetch(c);
        return;
    }
}

static void ignore_key(sb_err err, const sb_aws_key *key, const char *detail, void *ud)
{
}

static void prefetch_task(void *ud)
{
    sb_aws_creds_get(ud, ignore_key, NULL);
}

void sb_aws_creds_prefetch(sb_aws_creds *c)
{
    if (c->source != SB_AWS_SOURCE_ENV)
        sb_http_call_at(c->http, 0, prefetch_task, c);
}

void sb_aws_creds_expire(sb_aws_creds *c, uint64_t serial)
{
    if (c->source == SB_AWS_SOURCE_ENV || serial != c->key.serial)
        return;
    /* A key fetched moments ago that AWS calls expired points at a clock
     * problem, not at the key: asking STS again per request would not help. */
    if (sb_clock_wall_ms() - c->fetched_ms < SB_AWS_RENEW_RETRY_MS)
        return;
    c->stale = true;
}

static const char *env_get(sb_env_lookup env, const char *name)
{
    const char *v = env(name);
    return v && v[0] ? v : NULL;
}

static sb_err setup_env_keys(sb_aws_creds *c, sb_env_lookup env, char *err, size_t errlen)
{
    const char *ak = env_get(env, "AWS_ACCESS_KEY_ID");
    const char *sk = env_get(env, "AWS_SECRET_ACCESS_KEY");
    const char *tok = env_get(env, "AWS_SESSION_TOKEN");
    const char *why = NULL;

    if (!ak || !sk)
        why = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both or neither";
    else if (!key_id_ok(ak, strlen(ak)))
        why = "AWS_ACCESS_KEY_ID: not an access key id (letters and digits, at most 128)";
    else if (!visible_ok(sk, strlen(sk), SB_MAX_AWS_SECRET_KEY))
        why = "AWS_SECRET_ACCESS_KEY: not a secret access key (visible ASCII, at most 128)";
    else if (tok && !visible_ok(tok, strlen(tok), SB_MAX_AWS_SESSION_TOKEN))
        why = "AWS_SESSION_TOKEN: not a session token (visible ASCII)";
    if (why) {
        snprintf(err, errlen, "%s", why);
        return SB_E_CONFIG;
    }
    c->key = (sb_aws_key){.access_key_id = sb_secret_new(ak, strlen(ak)),
                          .secret_key = sb_secret_new(sk, strlen(sk)),
                          .session_token = tok ? sb_secret_new(tok, strlen(tok)) : NULL,
                          .serial = ++c->serials};
    return SB_OK;
}

/* STS RoleSessionName: 2 to 64 of [\w+=,.@-]. */
static bool session_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("_+=,.@-", c));
}

static bool session_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < 2 || n > SB_MAX_AWS_SESSION_NAME)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!session_char(s[i]))
            return false;
    }
    return true;
}

/* "secrets-broker-<host name>": the pod's name shows in CloudTrail. */
static char *default_session_name(void)
{
    char host[256] = "";
    char name[SB_MAX_AWS_SESSION_NAME + 1] = "secrets-broker";
    size_t pos = strlen(name);

    if (gethostname(host, sizeof(host) - 1) != 0 || !host[0])
        return sb_xstrdup(name);
    name[pos++] = '-';
    for (size_t i = 0; host[i] && pos < SB_MAX_AWS_SESSION_NAME; i++)
        name[pos++] = session_char(host[i]) ? host[i] : '-';
    name[pos] = '\0';
    return sb_xstrdup(name);
}

static sb_err setup_web_identity(sb_aws_creds *c, const sb_aws_creds_options *opt, char *err,
                                 size_t errlen)
{
    const char *role = env_get(opt->env, "AWS_ROLE_ARN");
    const char *file = env_get(opt->env, "AWS_WEB_IDENTITY_TOKEN_FILE");
    const char *session = env_get(opt->env, "AWS_ROLE_SESSION_NAME");
    const char *why = NULL;

    if (!role)
        why = "AWS_ROLE_ARN: required with AWS_WEB_IDENTITY_TOKEN_FILE (IRSA)";
    else if (!file)
        why = "AWS_WEB_IDENTITY_TOKEN_FILE: required with AWS_ROLE_ARN (IRSA)";
    else if (strncmp(role, "arn:", 4) != 0 || !visible_ok(role, strlen(role), SB_MAX_AWS_ROLE_ARN))
        why = "AWS_ROLE_ARN: not a role ARN (arn:aws:iam::<account>:role/<name>)";
    else if (session && !session_name_ok(session))
        why = "AWS_ROLE_SESSION_NAME: must be 2 to 64 of [A-Za-z0-9_+=,.@-]";
    if (why) {
        snprintf(err, errlen, "%s", why);
        return SB_E_CONFIG;
    }
    if (access(file, R_OK) != 0) {
        snprintf(err, errlen, "AWS_WEB_IDENTITY_TOKEN_FILE: cannot read %.200s", file);
        return SB_E_CONFIG;
    }
    c->role_arn = sb_xstrdup(role);
    c->token_file = sb_xstrdup(file);
    c->session_name = session ? sb_xstrdup(session) : default_session_name();
    return sb_aws_endpoint(opt->env, "STS", "sts", opt->region, &c->sts, err, errlen);
}

/* Plain http only where the credentials cannot leave the node: loopback
 * and the EKS Pod Identity Agent's link-local addresses, as the SDKs
 * allow (ECS's 169.254.170.2 too). */
static bool container_host_ok(const sb_aws_url *u)
{
    static const char *const hosts[] = {"localhost", "[::1]", "169.254.170.2", "169.254.170.23",
                                        "[fd00:ec2::23]"};

    if (u->https)
        return true;
    if (!strncmp(u->host, "127.", 4) && strspn(u->host, "0123456789.") == strlen(u->host))
        return true;
    for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
        if (!strcmp(u->host, hosts[i]))
            return true;
    }
    return false;
}

static sb_err setup_container(sb_aws_creds *c, sb_env_lookup env, char *err, size_t errlen)
{
    const char *rel = env_get(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    const char *name =
        rel ? "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" : "AWS_CONTAINER_CREDENTIALS_FULL_URI";
    const char *file = env_get(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    const char *token = env_get(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN");
    sb_aws_url u;

    /* The SDKs prefer the ECS relative URI when both are set. */
    c->container_uri = rel ? sb_xasprintf("http://169.254.170.2%s", rel)
                           : sb_xstrdup(env_get(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI"));
    if ((rel && rel[0] != '/') || sb_aws_url_parse(c->container_uri, &u) != SB_OK) {
        snprintf(err, errlen, "%s: not an http(s) URL of a host with an optional port and path",
                 name);
        return SB_E_CONFIG;
    }
    bool ok = container_host_ok(&u);
    sb_aws_url_free(&u);
    if (!ok) {
        snprintf(err, errlen,
                 "%s: plain http is allowed only to loopback or the EKS Pod Identity "
                 "Agent (169.254.170.23, [fd00:ec2::23]); use https",
                 name);
        return SB_E_CONFIG;
    }
    if (file && access(file, R_OK) != 0) {
        snprintf(err, errlen, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: cannot read %.200s", file);
        return SB_E_CONFIG;
    }
    c->token_file = file ? sb_xstrdup(file) : NULL;
    if (!file && token)
        c->container_token = sb_secret_new(token, strlen(token));
    return SB_OK;
}

sb_err sb_aws_creds_new(const sb_aws_creds_options *opt, sb_aws_creds **out, char *err,
                        size_t errlen)
{
    sb_env_lookup env = opt->env;
    sb_aws_creds *c = sb_xcalloc(1, sizeof(*c));
    sb_err rc;

    c->http = opt->http;
    c->ca_bundle = opt->ca_bundle ? sb_xstrdup(opt->ca_bundle) : NULL;
    c->timeout_ms = opt->timeout_ms;
    /* The SDKs' order:
     * https://docs.aws.amazon.com/sdkref/latest/guide/standardized-credentials.html */
    if (env_get(env, "AWS_ACCESS_KEY_ID") || env_get(env, "AWS_SECRET_ACCESS_KEY")) {
        c->source = SB_AWS_SOURCE_ENV;
        rc = setup_env_keys(c, env, err, errlen);
    } else if (env_get(env, "AWS_ROLE_ARN") || env_get(env, "AWS_WEB_IDENTITY_TOKEN_FILE")) {
        c->source = SB_AWS_SOURCE_WEB_IDENTITY;
        rc = setup_web_identity(c, opt, err, errlen);
    } else if (env_get(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI") ||
               env_get(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")) {
        c->source = SB_AWS_SOURCE_CONTAINER;
        rc = setup_container(c, env, err, errlen);
    } else {
        snprintf(err, errlen,
                 "AWS credentials: none found; set AWS_ACCESS_KEY_ID and "
                 "AWS_SECRET_ACCESS_KEY, or AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE "
                 "(IRSA), or AWS_CONTAINER_CREDENTIALS_FULL_URI (EKS Pod Identity)");
        rc = SB_E_CONFIG;
    }
    if (rc != SB_OK) {
        sb_aws_creds_free(c);
        return rc;
    }
    *out = c;
    return SB_OK;
}

sb_aws_source sb_aws_creds_source(const sb_aws_creds *c)
{
    return c->source;
}

void sb_aws_creds_free(sb_aws_creds *c)
{
    if (!c)
        return;
    for (struct waiter *w = c->waiters, *next; w; w = next) {
        next = w->next;
        free(w);
    }
    sb_aws_key_clear(&c->key);
    sb_secret_unref(c->container_token);
    sb_aws_url_free(&c->sts);
    free(c->container_uri);
    free(c->role_arn);
    free(c->token_file);
    free(c->session_name);
    free(c->ca_bundle);
    free(c);
}
