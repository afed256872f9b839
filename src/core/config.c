/* Configuration from the environment (see config.h). Every variable is
 * parsed by one small function; the first bad value ends the load with a
 * line naming it. Cross-field rules come last. */
#include "core/config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/names.h"

struct loader {
    sb_env_lookup lookup;
    char *err;
    size_t errlen;
    bool failed;
};

static void fail(struct loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(struct loader *ld, const char *fmt, ...)
{
    va_list ap;

    if (ld->failed)
        return;
    ld->failed = true;
    va_start(ap, fmt);
    vsnprintf(ld->err, ld->errlen, fmt, ap);
    va_end(ap);
}

static const char *get(struct loader *ld, const char *name)
{
    const char *v = ld->lookup(name);
    return (v && v[0]) ? v : NULL;
}

static void set_str(char **field, const char *value)
{
    free(*field);
    *field = value ? sb_xstrdup(value) : NULL;
}

static void read_str(struct loader *ld, const char *name, char **field)
{
    const char *v = get(ld, name);
    if (v)
        set_str(field, v);
}

static void read_bool(struct loader *ld, const char *name, bool *field)
{
    const char *v = get(ld, name);

    if (!v)
        return;
    if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes"))
        *field = true;
    else if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no"))
        *field = false;
    else
        fail(ld, "%s: expected true or false, got \"%.40s\"", name, v);
}

static void read_long(struct loader *ld, const char *name, long min, long max, long *out)
{
    const char *v = get(ld, name);
    char *end = NULL;

    if (!v)
        return;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end) {
        fail(ld, "%s: expected a whole number, got \"%.40s\"", name, v);
        return;
    }
    if (n < min || n > max) {
        fail(ld, "%s: %ld is outside the allowed range %ld..%ld", name, n, min, max);
        return;
    }
    *out = n;
}

static void read_int(struct loader *ld, const char *name, long min, long max, int *field)
{
    long n = *field;
    read_long(ld, name, min, max, &n);
    *field = (int)n;
}

static void read_size(struct loader *ld, const char *name, long min, long max, size_t *field)
{
    long n = (long)*field;
    read_long(ld, name, min, max, &n);
    *field = (size_t)n;
}

/* Seconds in the environment, milliseconds in the struct. */
static void read_secs(struct loader *ld, const char *name, long min, long max, int *field_ms)
{
    long n = *field_ms / 1000;
    read_long(ld, name, min, max, &n);
    *field_ms = (int)(n * 1000);
}

static void read_double(struct loader *ld, const char *name, double min, double max, double *field)
{
    const char *v = get(ld, name);
    char *end = NULL;

    if (!v)
        return;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || d < min || d > max) {
        fail(ld, "%s: expected a number from %g to %g, got \"%.40s\"", name, min, max, v);
        return;
    }
    *field = d;
}

static void read_backends(struct loader *ld, sb_config *cfg)
{
    const char *v = get(ld, "SECRETS_BACKEND");
    char list[128];

    if (!v)
        return;
    if (strlen(v) >= sizeof(list)) {
        fail(ld, "SECRETS_BACKEND: too long");
        return;
    }
    strncpy(list, v, sizeof(list) - 1);
    list[sizeof(list) - 1] = '\0';
    cfg->backend_count = 0;

    char *save = NULL;
    for (char *tok = strtok_r(list, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        sb_backend_kind kind;
        if (!strcmp(tok, "k8s") || !strcmp(tok, "kubernetes"))
            kind = SB_BACKEND_K8S;
        else if (!strcmp(tok, "aws-secrets-manager") || !strcmp(tok, "aws"))
            kind = SB_BACKEND_AWS;
        else if (!strcmp(tok, "file"))
            kind = SB_BACKEND_FILE;
        else {
            fail(ld, "SECRETS_BACKEND: unknown backend \"%.40s\" (k8s, aws-secrets-manager, file)",
                 tok);
            return;
        }
        for (size_t i = 0; i < cfg->backend_count; i++) {
            if (cfg->backends[i] == kind) {
                fail(ld, "SECRETS_BACKEND: \"%s\" is listed twice", tok);
                return;
            }
        }
        if (cfg->backend_count == SB_MAX_BACKENDS) {
            fail(ld, "SECRETS_BACKEND: at most %d backends", SB_MAX_BACKENDS);
            return;
        }
        cfg->backends[cfg->backend_count++] = kind;
    }
    if (cfg->backend_count == 0)
        fail(ld, "SECRETS_BACKEND: no backend listed");
}

static void read_enum(struct loader *ld, const char *name, const char *const *words, int count,
                      int *field)
{
    const char *v = get(ld, name);

    if (!v)
        return;
    for (int i = 0; i < count; i++) {
        if (!strcasecmp(v, words[i])) {
            *field = i;
            return;
        }
    }
    fail(ld, "%s: unknown value \"%.40s\"", name, v);
}

static void read_log_level(struct loader *ld, sb_config *cfg)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    int level = (int)cfg->log_level;
    bool debug = false;
    const char *v = get(ld, "LOG_LEVEL");

    /* Python's names (WARNING, CRITICAL) are accepted: the ADR used them. */
    if (v && !strcasecmp(v, "warning"))
        level = SB_LOG_WARN;
    else if (v && !strcasecmp(v, "critical"))
        level = SB_LOG_ERROR;
    else
        read_enum(ld, "LOG_LEVEL", levels, 4, &level);
    read_bool(ld, "DEBUG_MODE", &debug);
    cfg->log_level = debug ? SB_LOG_DEBUG : (sb_log_level)level;
}

static void read_identity(struct loader *ld, sb_config *cfg)
{
    static const char *const bearer[] = {"off", "optional", "required"};
    static const char *const tls[] = {"1.3", "1.2"};
    int mode = (int)cfg->bearer;
    int tlsv = cfg->tls12_allowed ? 1 : 0;

    read_bool(ld, "MTLS_ENABLED", &cfg->mtls_enabled);
    read_bool(ld, "INSECURE_DEVELOPMENT_MODE", &cfg->insecure_dev);
    read_str(ld, "MTLS_CA_CERT_PATH", &cfg->ca_path);
    read_str(ld, "MTLS_SERVER_CERT_PATH", &cfg->cert_path);
    read_str(ld, "MTLS_SERVER_KEY_PATH", &cfg->key_path);
    read_enum(ld, "TLS_MIN_VERSION", tls, 2, &tlsv);
    cfg->tls12_allowed = tlsv == 1;
    read_str(ld, "SPIFFE_TRUST_DOMAIN", &cfg->trust_domain);
    read_bool(ld, "IDENTITY_CN_FALLBACK", &cfg->cn_fallback);
    read_enum(ld, "BEARER_TOKEN", bearer, 3, &mode);
    cfg->bearer = (sb_bearer_mode)mode;
    read_str(ld, "BEARER_TOKEN_AUDIENCE", &cfg->token_audience);
    read_secs(ld, "TLS_RELOAD_INTERVAL_SECONDS", 1, 3600, &cfg->tls_reload_ms);
}

static void read_backend_settings(struct loader *ld, sb_config *cfg)
{
    static const char *const modes[] = {"impersonate", "tokenrequest"};
    int mode = (int)cfg->auth_mode;

    read_backends(ld, cfg);
    read_str(ld, "K8S_NAMESPACE", &cfg->pinned_namespace);
    read_enum(ld, "AUTH_MODE", modes, 2, &mode);
    cfg->auth_mode = (sb_auth_mode)mode;
    read_str(ld, "FILE_BACKEND_DIR", &cfg->file_backend_dir);
    read_str(ld, "KUBECONFIG", &cfg->kubeconfig);
    read_str(ld, "KUBERNETES_SERVICE_HOST", &cfg->k8s_host);
    read_str(ld, "KUBERNETES_SERVICE_PORT", &cfg->k8s_port);
    read_str(ld, "K8S_SERVICEACCOUNT_DIR", &cfg->k8s_sa_dir);
    read_secs(ld, "K8S_TIMEOUT_SECONDS", 1, 300, &cfg->k8s_timeout_ms);
    read_int(ld, "TOKEN_REQUEST_EXPIRATION_SECONDS", 600, 86400, &cfg->token_request_seconds);

    const char *region = get(ld, "AWS_REGION");
    set_str(&cfg->aws_region, region ? region : get(ld, "AWS_DEFAULT_REGION"));
    if (ld->lookup("AWS_SECRETS_MANAGER_PREFIX"))
        set_str(&cfg->aws_prefix, ld->lookup("AWS_SECRETS_MANAGER_PREFIX"));
    read_str(ld, "AWS_SECRET_ID_TEMPLATE", &cfg->aws_id_template);
    read_secs(ld, "AWS_TIMEOUT_SECONDS", 1, 300, &cfg->aws_timeout_ms);
    read_int(ld, "AWS_BATCH_WINDOW_MS", 0, 100, &cfg->aws_batch_window_ms);
}

static void read_cache_settings(struct loader *ld, sb_config *cfg)
{
    static const char *const inval[] = {"ttl", "watch"};
    int watch = cfg->cache_watch ? 1 : 0;

    read_secs(ld, "AUTHZ_ALLOW_TTL_SECONDS", 0, 30, &cfg->authz_allow_ttl_ms);
    read_secs(ld, "AUTHZ_DENY_TTL_SECONDS", 0, 5, &cfg->authz_deny_ttl_ms);
    read_secs(ld, "AUTHZ_STALE_IF_ERROR_SECONDS", 0, 3600, &cfg->authz_stale_ms);
    read_bool(ld, "CACHE_ENABLED", &cfg->cache_enabled);
    read_secs(ld, "CACHE_TTL_SECONDS", 0, 86400, &cfg->cache_ttl_ms);
    read_size(ld, "CACHE_MAX_SIZE", 1, 10000000, &cfg->cache_max_entries);
    read_size(ld, "CACHE_MAX_BYTES", 4096, 64L * 1024 * 1024 * 1024, &cfg->cache_max_bytes);
    read_secs(ld, "CACHE_NEGATIVE_TTL_SECONDS", 0, 60, &cfg->negative_ttl_ms);
    read_enum(ld, "CACHE_INVALIDATION", inval, 2, &watch);
    cfg->cache_watch = watch == 1;
    read_secs(ld, "STALE_IF_ERROR_SECONDS", 0, 86400, &cfg->stale_if_error_ms);
}

static void read_server_settings(struct loader *ld, sb_config *cfg)
{
    static const char *const failure[] = {"closed", "open"};
    int open = cfg->audit_fail_open ? 1 : 0;

    read_bool(ld, "AUDIT_LOG_ENABLED", &cfg->audit_enabled);
    read_str(ld, "AUDIT_LOG_PATH", &cfg->audit_path);
    read_enum(ld, "AUDIT_FAILURE_MODE", failure, 2, &open);
    cfg->audit_fail_open = open == 1;
    read_log_level(ld, cfg);

    read_str(ld, "BIND_ADDRESS", &cfg->bind_address);
    read_int(ld, "SERVER_PORT", 1, 65535, &cfg->port);
    read_str(ld, "OPS_BIND_ADDRESS", &cfg->ops_bind_address);
    read_int(ld, "OPS_PORT", 1, 65535, &cfg->ops_port);
    read_int(ld, "WORKERS", 1, 256, &cfg->workers);
    read_int(ld, "MAX_CONNECTIONS", 16, 1000000, &cfg->max_connections);
    read_int(ld, "MAX_INFLIGHT_BACKEND_CALLS", 1, 100000, &cfg->max_inflight);
    read_secs(ld, "REQUEST_TIMEOUT_SECONDS", 1, 300, &cfg->request_timeout_ms);
    read_int(ld, "CONNECTION_IDLE_TIMEOUT_SECONDS", 1, 3600, &cfg->idle_timeout_s);
    read_double(ld, "RATE_LIMIT_PER_SECOND", 0, 1e6, &cfg->rate_per_second);
    read_int(ld, "RATE_LIMIT_BURST", 1, 1000000, &cfg->rate_burst);
    read_double(ld, "REFRESH_RATE_PER_MINUTE", 0, 1e6, &cfg->refresh_per_minute);
    read_int(ld, "BREAKER_FAILURE_THRESHOLD", 1, 1000, &cfg->breaker_failures);
    read_secs(ld, "BREAKER_OPEN_SECONDS", 1, 3600, &cfg->breaker_open_ms);
    read_secs(ld, "SHUTDOWN_GRACE_SECONDS", 0, 3600, &cfg->shutdown_grace_ms);
}

static void check_rules(struct loader *ld, sb_config *cfg)
{
    bool has_k8s = false, has_file = false;

    for (size_t i = 0; i < cfg->backend_count; i++) {
        has_k8s |= cfg->backends[i] == SB_BACKEND_K8S;
        has_file |= cfg->backends[i] == SB_BACKEND_FILE;
    }
    if (has_file && !cfg->file_backend_dir)
        fail(ld, "FILE_BACKEND_DIR: required when SECRETS_BACKEND lists file");
    if (has_file && cfg->backend_count > 1)
        fail(ld, "SECRETS_BACKEND: file is for local development and cannot be combined");
    if (has_file)
        cfg->auth_mode = SB_AUTH_OWN_NAMESPACE;
    if (!has_k8s && !has_file && cfg->auth_mode == SB_AUTH_TOKENREQUEST)
        fail(ld, "AUTH_MODE: tokenrequest needs the k8s backend in SECRETS_BACKEND");
    if (cfg->pinned_namespace &&
        !sb_name_is_label(cfg->pinned_namespace, strlen(cfg->pinned_namespace)))
        fail(ld, "K8S_NAMESPACE: \"%.70s\" is not a valid namespace name", cfg->pinned_namespace);

    if (cfg->mtls_enabled && (!cfg->ca_path || !cfg->cert_path || !cfg->key_path))
        fail(ld, "MTLS_CA_CERT_PATH, MTLS_SERVER_CERT_PATH and MTLS_SERVER_KEY_PATH: "
                 "all three are required when MTLS_ENABLED=true");
    /* DESIGN.md section 3: without mTLS, identity must come from a reviewed
     * token, unless a developer says loudly that none is wanted. */
    if (!cfg->mtls_enabled && cfg->bearer != SB_BEARER_REQUIRED && !cfg->insecure_dev)
        fail(ld, "MTLS_ENABLED: false is allowed only with BEARER_TOKEN=required "
                 "(or INSECURE_DEVELOPMENT_MODE=true)");
    if (cfg->bearer != SB_BEARER_OFF && !has_k8s)
        fail(ld, "BEARER_TOKEN: token review needs the k8s backend in SECRETS_BACKEND");
    if (!sb_name_is_trust_domain(cfg->trust_domain, strlen(cfg->trust_domain)))
        fail(ld, "SPIFFE_TRUST_DOMAIN: \"%.70s\" is not a trust domain ([a-z0-9._-], at most 255)",
             cfg->trust_domain);
    if (cfg->audit_enabled && !cfg->audit_path)
        fail(ld, "AUDIT_LOG_PATH: required when AUDIT_LOG_ENABLED=true (use - for stdout)");
    if (cfg->port == cfg->ops_port)
        fail(ld, "OPS_PORT: must differ from SERVER_PORT (%d)", cfg->port);
    if (cfg->aws_id_template && !strstr(cfg->aws_id_template, "{name}"))
        fail(ld, "AWS_SECRET_ID_TEMPLATE: must contain {name}");
}

void sb_config_defaults(sb_config *cfg)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    memset(cfg, 0, sizeof(*cfg));
    cfg->backends[0] = SB_BACKEND_K8S;
    cfg->backends[1] = SB_BACKEND_AWS;
    cfg->backend_count = 2;
    cfg->auth_mode = SB_AUTH_IMPERSONATE;
    cfg->k8s_sa_dir = sb_xstrdup("/var/run/secrets/kubernetes.io/serviceaccount");
    cfg->k8s_timeout_ms = 5000;
    cfg->token_request_seconds = 600;
    cfg->aws_prefix = sb_xstrdup("secrets-broker");
    cfg->aws_id_template = sb_xstrdup("{prefix}/{namespace}/{name}");
    cfg->aws_timeout_ms = 5000;
    cfg->aws_batch_window_ms = 2;
    cfg->mtls_enabled = true;
    cfg->trust_domain = sb_xstrdup("cluster.local");
    cfg->bearer = SB_BEARER_OFF;
    cfg->token_audience = sb_xstrdup("secrets-broker");
    cfg->tls_reload_ms = 2000;
    cfg->authz_allow_ttl_ms = 30000;
    cfg->authz_deny_ttl_ms = 5000;
    cfg->cache_enabled = true;
    cfg->cache_ttl_ms = 300000;
    cfg->cache_max_entries = 1000;
    cfg->cache_max_bytes = 64 * 1024 * 1024;
    cfg->negative_ttl_ms = 2000;
    cfg->audit_enabled = true;
    cfg->audit_path = sb_xstrdup("-");
    cfg->log_level = SB_LOG_INFO;
    cfg->bind_address = sb_xstrdup("0.0.0.0");
    cfg->port = 8443;
    cfg->ops_bind_address = sb_xstrdup("0.0.0.0");
    cfg->ops_port = 8081;
    cfg->workers = cpus > 0 ? (int)(cpus < 64 ? cpus : 64) : 1;
    cfg->max_connections = 10000;
    cfg->max_inflight = 512;
    cfg->request_timeout_ms = 10000;
    cfg->idle_timeout_s = 90;
    cfg->rate_per_second = 0;
    cfg->rate_burst = 200;
    cfg->refresh_per_minute = 60;
    cfg->breaker_failures = 5;
    cfg->breaker_open_ms = 10000;
    cfg->shutdown_grace_ms = 20000;
}

sb_err sb_config_load(sb_config *out, sb_env_lookup lookup, char *err, size_t errlen)
{
    struct loader ld = {.lookup = lookup, .err = err, .errlen = errlen};
    sb_config cfg;

    sb_config_defaults(&cfg);
    read_backend_settings(&ld, &cfg);
    read_identity(&ld, &cfg);
    read_cache_settings(&ld, &cfg);
    read_server_settings(&ld, &cfg);
    if (!ld.failed)
        check_rules(&ld, &cfg);

    if (ld.failed) {
        sb_config_free(&cfg);
        return SB_E_CONFIG;
    }
    *out = cfg;
    return SB_OK;
}

void sb_config_free(sb_config *cfg)
{
    if (!cfg)
        return;
    char **strs[] = {&cfg->pinned_namespace, &cfg->file_backend_dir, &cfg->kubeconfig,
                     &cfg->k8s_host,         &cfg->k8s_port,         &cfg->k8s_sa_dir,
                     &cfg->aws_region,       &cfg->aws_prefix,       &cfg->aws_id_template,
                     &cfg->ca_path,          &cfg->cert_path,        &cfg->key_path,
                     &cfg->trust_domain,     &cfg->token_audience,   &cfg->audit_path,
                     &cfg->bind_address,     &cfg->ops_bind_address};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        free(*strs[i]);
        *strs[i] = NULL;
    }
}

const char *sb_backend_kind_name(sb_backend_kind kind)
{
    switch (kind) {
    case SB_BACKEND_K8S:
        return "kubernetes";
    case SB_BACKEND_AWS:
        return "aws-secrets-manager";
    case SB_BACKEND_FILE:
        return "file";
    }
    return "unknown";
}

const char *sb_log_level_name(sb_log_level level)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    return (unsigned)level < 4 ? names[level] : "info";
}
