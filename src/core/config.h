/* The broker's configuration, read from the environment once at start-up
 * and validated as a whole. A bad value stops the process with one line
 * naming the variable (DESIGN.md section 9). The struct is read-only after
 * sb_config_load returns and may be shared by every thread. */
#ifndef SB_CORE_CONFIG_H
#define SB_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define SB_MAX_BACKENDS 3

typedef enum sb_backend_kind {
    SB_BACKEND_K8S,
    SB_BACKEND_AWS,
    SB_BACKEND_FILE,
} sb_backend_kind;

typedef enum sb_auth_mode {
    SB_AUTH_IMPERSONATE,   /* Kubernetes reads made as the caller (default) */
    SB_AUTH_TOKENREQUEST,  /* reads made with a TokenRequest token of the caller */
    SB_AUTH_OWN_NAMESPACE, /* file backend: a caller reads its own namespace only */
} sb_auth_mode;

typedef enum sb_bearer_mode {
    SB_BEARER_OFF,      /* an Authorization header is ignored */
    SB_BEARER_OPTIONAL, /* reviewed when sent; must name the certificate's SA */
    SB_BEARER_REQUIRED, /* every request must carry one */
} sb_bearer_mode;

typedef enum sb_log_level {
    SB_LOG_DEBUG,
    SB_LOG_INFO,
    SB_LOG_WARN,
    SB_LOG_ERROR,
} sb_log_level;

typedef struct sb_config {
    /* Backends, in priority order. */
    sb_backend_kind backends[SB_MAX_BACKENDS];
    size_t backend_count;
    char *pinned_namespace; /* K8S_NAMESPACE; NULL when callers choose */
    sb_auth_mode auth_mode;
    char *file_backend_dir; /* FILE_BACKEND_DIR */

    /* Kubernetes API client. */
    char *kubeconfig;          /* KUBECONFIG; NULL means in-cluster */
    char *k8s_host;            /* KUBERNETES_SERVICE_HOST */
    char *k8s_port;            /* KUBERNETES_SERVICE_PORT */
    char *k8s_sa_dir;          /* K8S_SERVICEACCOUNT_DIR: token, ca.crt, namespace */
    int k8s_timeout_ms;        /* K8S_TIMEOUT_SECONDS */
    int token_request_seconds; /* TOKEN_REQUEST_EXPIRATION_SECONDS */

    /* AWS Secrets Manager (credentials and endpoints are read by the AWS
     * client from the SDKs' own variables). */
    char *aws_region;
    char *aws_prefix;        /* AWS_SECRETS_MANAGER_PREFIX */
    char *aws_id_template;   /* AWS_SECRET_ID_TEMPLATE */
    int aws_timeout_ms;      /* AWS_TIMEOUT_SECONDS */
    int aws_batch_window_ms; /* AWS_BATCH_WINDOW_MS: coalescing, 0 off */

    /* TLS and identity. */
    bool mtls_enabled;
    bool insecure_dev;     /* INSECURE_DEVELOPMENT_MODE */
    char *ca_path;         /* MTLS_CA_CERT_PATH */
    char *cert_path;       /* MTLS_SERVER_CERT_PATH */
    char *key_path;        /* MTLS_SERVER_KEY_PATH */
    bool tls12_allowed;    /* TLS_MIN_VERSION=1.2 */
    char *trust_domain;    /* SPIFFE_TRUST_DOMAIN */
    bool cn_fallback;      /* IDENTITY_CN_FALLBACK */
    sb_bearer_mode bearer; /* BEARER_TOKEN */
    char *token_audience;  /* BEARER_TOKEN_AUDIENCE */
    int tls_reload_ms;     /* TLS_RELOAD_INTERVAL_SECONDS */

    /* Authorization decisions. */
    int authz_allow_ttl_ms; /* AUTHZ_ALLOW_TTL_SECONDS, at most 30 */
    int authz_deny_ttl_ms;  /* AUTHZ_DENY_TTL_SECONDS, at most 5 */
    int authz_stale_ms;     /* AUTHZ_STALE_IF_ERROR_SECONDS; 0 denies */

    /* Value cache. */
    bool cache_enabled;
    int cache_ttl_ms;         /* CACHE_TTL_SECONDS */
    size_t cache_max_entries; /* CACHE_MAX_SIZE */
    size_t cache_max_bytes;   /* CACHE_MAX_BYTES */
    int negative_ttl_ms;      /* CACHE_NEGATIVE_TTL_SECONDS */
    bool cache_watch;         /* CACHE_INVALIDATION=watch */
    int stale_if_error_ms;    /* STALE_IF_ERROR_SECONDS */

    /* Audit, logs, metrics. */
    bool audit_enabled;
    char *audit_path;     /* "-" for stdout */
    bool audit_fail_open; /* AUDIT_FAILURE_MODE=open */
    sb_log_level log_level;

    /* Server and limits. */
    char *bind_address;        /* BIND_ADDRESS */
    int port;                  /* SERVER_PORT */
    char *ops_bind_address;    /* OPS_BIND_ADDRESS */
    int ops_port;              /* OPS_PORT */
    int workers;               /* WORKERS */
    int max_connections;       /* MAX_CONNECTIONS */
    int max_inflight;          /* MAX_INFLIGHT_BACKEND_CALLS */
    int request_timeout_ms;    /* REQUEST_TIMEOUT_SECONDS */
    int idle_timeout_s;        /* CONNECTION_IDLE_TIMEOUT_SECONDS */
    double rate_per_second;    /* RATE_LIMIT_PER_SECOND, per identity; 0 off */
    int rate_burst;            /* RATE_LIMIT_BURST */
    double refresh_per_minute; /* REFRESH_RATE_PER_MINUTE, per identity */
    int breaker_failures;      /* BREAKER_FAILURE_THRESHOLD */
    int breaker_open_ms;       /* BREAKER_OPEN_SECONDS */
    int shutdown_grace_ms;     /* SHUTDOWN_GRACE_SECONDS */

    /* Development mode (--dev): set by main, not by the environment. */
    bool dev_mode;
} sb_config;

/* Looks up one environment variable; NULL when unset. Tests pass their own. */
typedef const char *(*sb_env_lookup)(const char *name);

/* Reads and validates every setting. On failure returns SB_E_CONFIG and
 * writes one line naming the variable and what is wrong into err (never a
 * secret: values of credential variables are not echoed). On success the
 * config owns its strings; free them with sb_config_free. */
SB_MUST_CHECK sb_err sb_config_load(sb_config *out, sb_env_lookup lookup, char *err, size_t errlen);

/* Fills the defaults only (what sb_config_load starts from). */
void sb_config_defaults(sb_config *cfg);

/* Frees the strings; accepts a zeroed or NULL config. */
void sb_config_free(sb_config *cfg);

/* Names used in logs, metrics and responses. */
const char *sb_backend_kind_name(sb_backend_kind kind);
const char *sb_log_level_name(sb_log_level level);

#endif
