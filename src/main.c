/* secrets-broker: start-up, signals and wiring. Reads the configuration,
 * builds the layers from the inside out (logs and audit, the backend loop,
 * backends, authorization, cache, broker, TLS, servers), then waits for
 * signals: SIGHUP reopens the audit log, SIGTERM drains and exits. With
 * --dev it first makes a development PKI and example secrets and prints a
 * curl command that works. */
#include <curl/curl.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend/aws.h"
#include "backend/file.h"
#include "backend/k8s.h"
#include "broker/broker.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/secmem.h"
#include "dev/examples.h"
#include "dev/pki.h"
#include "net/server.h"
#include "obs/log.h"
#include "obs/metrics.h"

#define DEV_DIR       "dev-run"
#define DEV_NAMESPACE "dev"
#define DEV_SA        "demo-app"

struct app {
    sb_config cfg;
    sb_audit *audit;
    sb_http *http;
    sb_kube *kube;
    sb_backend *backends[SB_MAX_BACKENDS];
    sb_authz *authz;
    sb_token *tokens;
    sb_cache *cache;
    sb_broker *broker;
    sb_watch *watch; /* CACHE_INVALIDATION=watch */
    sb_tls *tls;
    sb_ratelimit *rate; /* RATE_LIMIT_PER_SECOND; NULL when 0 */
    sb_server *server;
};

/* Development mode layers its defaults under the real environment, so a
 * developer can still override any of them. */
static char dev_dir[4096];

static const char *dev_lookup(const char *name)
{
    static char paths[5][4200];
    const char *v = getenv(name);

    if (v)
        return v;
    struct {
        const char *name;
        const char *value;
    } defaults[] = {
        {"SECRETS_BACKEND", "file"},
        {"BIND_ADDRESS", "127.0.0.1"},
        {"OPS_BIND_ADDRESS", "127.0.0.1"},
        {"WORKERS", "2"},
    };
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        if (!strcmp(name, defaults[i].name))
            return defaults[i].value;
    }
    const char *files[][2] = {{"FILE_BACKEND_DIR", "secrets"},
                              {"MTLS_CA_CERT_PATH", "pki/ca.crt"},
                              {"MTLS_SERVER_CERT_PATH", "pki/server.crt"},
                              {"MTLS_SERVER_KEY_PATH", "pki/server.key"},
                              {"AUDIT_LOG_PATH", "audit.log"}};
    for (size_t i = 0; i < 5; i++) {
        if (!strcmp(name, files[i][0])) {
            snprintf(paths[i], sizeof(paths[i]), "%s/%s", dev_dir, files[i][1]);
            return paths[i];
        }
    }
    return NULL;
}

static const char *env_lookup(const char *name)
{
    return getenv(name);
}

static int fail(const char *what, const char *err)
{
    SB_ERROR("main", NULL, "%s: %s", what, err);
    return 2;
}

static sb_err prepare_dev(char *err, size_t errlen)
{
    char pki[4200], secrets[4200];
    const char *base = getenv("SB_DEV_DIR");

    snprintf(dev_dir, sizeof(dev_dir), "%s", base ? base : DEV_DIR);
    snprintf(pki, sizeof(pki), "%s/pki", dev_dir);
    snprintf(secrets, sizeof(secrets), "%s/secrets", dev_dir);
    if (mkdir(dev_dir, 0700) != 0 && access(dev_dir, W_OK) != 0) {
        snprintf(err, errlen, "cannot create the development directory %.200s", dev_dir);
        return SB_E_IO;
    }
    sb_err rc =
        sb_dev_pki_create(pki, "cluster.local", DEV_NAMESPACE, DEV_SA, time(NULL), err, errlen);
    if (rc == SB_OK)
        rc = sb_dev_examples_create(secrets, DEV_NAMESPACE, "other-team", err, errlen);
    return rc;
}

static void log_startup(const sb_config *cfg)
{
    char backends[64] = "";
    json_t *f;

    for (size_t i = 0; i < cfg->backend_count; i++) {
        size_t n = strlen(backends);
        snprintf(backends + n, sizeof(backends) - n, "%s%s", i ? "," : "",
                 sb_backend_kind_name(cfg->backends[i]));
    }
    /* Paths are named, never opened or quoted from: no key material. */
    f = json_pack("{s:s, s:s, s:s, s:s?, s:b, s:s, s:s, s:i, s:i, s:i, s:b, s:i, s:i, s:i, s:i,"
                  " s:b, s:b, s:s, s:s, s:b}",
                  "version", SB_VERSION, "backends", backends, "auth_mode",
                  cfg->auth_mode == SB_AUTH_TOKENREQUEST    ? "tokenrequest"
                  : cfg->auth_mode == SB_AUTH_OWN_NAMESPACE ? "own-namespace"
                                                            : "impersonate",
                  "pinned_namespace", cfg->pinned_namespace, "mtls", cfg->mtls_enabled, "tls_min",
                  cfg->tls12_allowed ? "1.2" : "1.3", "trust_domain", cfg->trust_domain, "port",
                  cfg->port, "ops_port", cfg->ops_port, "workers", cfg->workers, "cache",
                  cfg->cache_enabled, "cache_ttl_s", cfg->cache_ttl_ms / 1000, "cache_max_entries",
                  (int)cfg->cache_max_entries, "authz_allow_ttl_s", cfg->authz_allow_ttl_ms / 1000,
                  "authz_deny_ttl_s", cfg->authz_deny_ttl_ms / 1000, "audit", cfg->audit_enabled,
                  "audit_fail_open", cfg->audit_fail_open, "log_level",
                  sb_log_level_name(cfg->log_level), "gnutls", gnutls_check_version(NULL),
                  "dev_mode", cfg->dev_mode);
    char *text = json_dumps(f, JSON_COMPACT);
    sb_log_fields(SB_LOG_INFO, "main", NULL, "secrets-broker starting", text);
    sb_json_free_dump(text);
    json_decref(f);
}

static sb_err build_backends(struct app *a, char *err, size_t errlen)
{
    const sb_config *cfg = &a->cfg;

    for (size_t i = 0; i < cfg->backend_count; i++) {
        switch (cfg->backends[i]) {
        case SB_BACKEND_K8S:
            a->backends[i] = sb_k8s_backend_new(cfg, a->kube);
            break;
        case SB_BACKEND_FILE:
            a->backends[i] = sb_file_backend_new(cfg->file_backend_dir);
            break;
        case SB_BACKEND_AWS: {
            /* The AWS SDKs' own variables, read as the configuration was. */
            sb_env_lookup env = cfg->dev_mode ? dev_lookup : env_lookup;
            sb_err rc = sb_aws_backend_new(cfg, a->http, env, &a->backends[i], err, errlen);
            if (rc != SB_OK)
                return rc;
            break;
        }
        }
    }
    return SB_OK;
}

static bool needs_kube(const sb_config *cfg)
{
    for (size_t i = 0; i < cfg->backend_count; i++) {
        if (cfg->backends[i] != SB_BACKEND_FILE)
            return true; /* AWS reads are authorized by the API server too */
    }
    return cfg->bearer != SB_BEARER_OFF;
}

static sb_err build(struct app *a, char *err, size_t errlen)
{
    const sb_config *cfg = &a->cfg;
    sb_audit_options audit = {.enabled = cfg->audit_enabled, .path = cfg->audit_path};

    if (sb_audit_open(&audit, &a->audit) != SB_OK) {
        snprintf(err, errlen, "AUDIT_LOG_PATH: cannot open %.200s for appending", cfg->audit_path);
        return SB_E_CONFIG;
    }
    if (sb_http_start(cfg->max_inflight, &a->http) != SB_OK) {
        snprintf(err, errlen, "cannot start the backend loop thread");
        return SB_E_INTERNAL;
    }
    if (needs_kube(cfg) && sb_kube_new(cfg, a->http, &a->kube, err, errlen) != SB_OK)
        return SB_E_CONFIG;
    sb_err rc = build_backends(a, err, errlen);
    if (rc != SB_OK)
        return rc;

    a->authz = sb_authz_new(cfg, a->kube);
    if (cfg->bearer != SB_BEARER_OFF)
        a->tokens = sb_token_new(cfg, a->kube, a->http);
    a->cache = cfg->cache_enabled ? sb_cache_new(cfg) : NULL;
    sb_broker_deps bd = {.cfg = cfg,
                         .http = a->http,
                         .authz = a->authz,
                         .cache = a->cache,
                         .backend_count = cfg->backend_count};
    memcpy(bd.backends, a->backends, sizeof(bd.backends));
    a->broker = sb_broker_new(&bd);
    if (cfg->cache_watch && a->cache && a->kube) {
        a->watch = sb_watch_new(a->kube, a->http, cfg->pinned_namespace,
                                sb_broker_watch_handler(a->broker));
        sb_watch_start(a->watch);
    }

    if (cfg->mtls_enabled && sb_tls_new(cfg, &a->tls, err, errlen) != SB_OK)
        return SB_E_CONFIG;
    if (cfg->rate_per_second > 0)
        a->rate = sb_ratelimit_new(cfg->rate_per_second, cfg->rate_burst, SB_MAX_RATE_KEYS);
    sb_server_deps sd = {.cfg = cfg,
                         .tls = a->tls,
                         .broker = a->broker,
                         .audit = a->audit,
                         .http = a->http,
                         .kube = a->kube,
                         .cache = a->cache,
                         .tokens = a->tokens,
                         .rate = a->rate};
    return sb_server_start(&sd, &a->server, err, errlen);
}

/* Waits (up to limit_ms) until every request the servers started is
 * answered. */
static void wait_answered(sb_server *s, int limit_ms)
{
    struct timespec five_ms = {0, 5 * 1000 * 1000};

    for (int waited = 0; sb_server_active(s) > 0 && waited < limit_ms; waited += 5)
        nanosleep(&five_ms, NULL);
}

static void teardown(struct app *a)
{
    /* The order matters. No handler may hand work to the loop once it has
     * stopped; stopping it completes every request still waiting on it
     * (503), whose connections resume and answer; only then may the
     * servers stop (libmicrohttpd aborts when a connection is still
     * suspended). */
    if (a->server)
        sb_server_stop_work(a->server);
    sb_http_stop(a->http);
    if (a->server)
        wait_answered(a->server, 2000);
    sb_server_stop(a->server);
    sb_ratelimit_free(a->rate);
    sb_watch_free(a->watch);
    sb_broker_free(a->broker);
    sb_cache_free(a->cache);
    sb_authz_free(a->authz);
    sb_token_free(a->tokens);
    for (size_t i = 0; i < SB_MAX_BACKENDS; i++)
        sb_backend_destroy(a->backends[i]);
    sb_kube_free(a->kube);
    sb_tls_free(a->tls);
    if (sb_audit_flush(a->audit) != SB_OK)
        SB_ERROR("audit", NULL, "the audit log could not be flushed to disk");
    sb_audit_close(a->audit);
    sb_config_free(&a->cfg);
}

static void tls_reload_tick(void *ud)
{
    struct app *a = ud;

    sb_tls_reload_if_changed(a->tls);
    sb_http_call_at(a->http, sb_clock_mono_ms() + a->cfg.tls_reload_ms, tls_reload_tick, a);
}

static void print_dev_banner(const sb_config *cfg)
{
    fprintf(stderr,
            "\nsecrets-broker is running in development mode (file backend, own namespace).\n"
            "Fetch a secret over mutual TLS with:\n\n"
            "  curl --cacert %s/pki/ca.crt --cert %s/pki/client.crt --key %s/pki/client.key \\\n"
            "       https://localhost:%d/v1/secrets/db\n\n"
            "Other examples: /v1/secrets/db/password (one key, raw), "
            "/v1/secrets/api, and /v1/secrets/db?namespace=other-team (refused: 403).\n"
            "Audit log: %s   Metrics: http://127.0.0.1:%d/metrics   Stop: Ctrl-C\n\n",
            dev_dir, dev_dir, dev_dir, cfg->port, cfg->audit_path, cfg->ops_port);
}

/* Waits for signals until SIGTERM or SIGINT. SIGHUP reopens the audit log
 * (log rotation); everything else is ignored. */
static void wait_for_stop(struct app *a, const sigset_t *set)
{
    for (;;) {
        int sig = sigwaitinfo(set, NULL);
        if (sig == SIGTERM || sig == SIGINT)
            return;
        if (sig == SIGHUP && sb_audit_reopen(a->audit) != SB_OK)
            SB_ERROR("audit", NULL, "cannot reopen the audit log; still writing the old file");
        else if (sig == SIGHUP)
            SB_INFO("audit", NULL, "audit log reopened");
    }
}

/* SIGTERM: /readyz turns 503, new connections are closed on arrival,
 * requests in flight finish within the grace period (DESIGN.md section
 * 10). */
static void drain(struct app *a)
{
    int64_t until = sb_clock_mono_ms() + a->cfg.shutdown_grace_ms;

    /* From here every new API connection is closed on arrival, and each
     * open one after its next answer. */
    sb_server_set_state(a->server, SB_SERVER_DRAINING);
    SB_INFO("main", NULL, "draining: no new connections; waiting for %d requests",
            sb_server_active(a->server));
    while (sb_server_active(a->server) > 0 && sb_clock_mono_ms() < until) {
        struct timespec ten_ms = {0, 10 * 1000 * 1000};
        nanosleep(&ten_ms, NULL);
    }
    if (sb_server_active(a->server) > 0)
        SB_WARN("main", NULL, "grace period over with %d requests unanswered",
                sb_server_active(a->server));
}

/* MAX_CONNECTIONS needs as many descriptors, and a few hundred more for
 * the listeners, backend connections and files; the usual soft limit is
 * 1,024. Raise it up to the hard limit, and say so when that is short. */
static void raise_fd_limit(const sb_config *cfg)
{
    rlim_t want = (rlim_t)cfg->max_connections + 256;
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && getrlimit(RLIMIT_NOFILE, &rl) != 0)
            return;
    }
    if (rl.rlim_cur < want)
        SB_WARN("main", NULL,
                "open file limit is %llu, below MAX_CONNECTIONS + 256: connections past it "
                "fail when accepted; raise the limit or lower MAX_CONNECTIONS",
                (unsigned long long)rl.rlim_cur);
}

static int usage(FILE *out, int rc)
{
    fprintf(out, "usage: secrets-broker [--dev] [--version] [--help]\n"
                 "  Configured by environment variables; see README.md.\n"
                 "  --dev   development mode: local PKI and example secrets under ./dev-run\n"
                 "          (or $SB_DEV_DIR), file backend, prints a ready curl command\n");
    return rc;
}

int main(int argc, char **argv)
{
    struct app a = {0};
    char err[512] = "";
    bool dev = false;
    sigset_t set;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dev"))
            dev = true;
        else if (!strcmp(argv[i], "--version")) {
            printf("secrets-broker %s (gnutls %s, libmicrohttpd %s)\n", SB_VERSION,
                   gnutls_check_version(NULL), MHD_get_version());
            return 0;
        } else if (!strcmp(argv[i], "--help"))
            return usage(stdout, 0);
        else
            return usage(stderr, 2);
    }

    /* Signals are taken by sigwaitinfo in this thread only: block them
     * before any other thread exists. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (sb_secret_harden_process() != SB_OK)
        return fail("start-up", "cannot make the process non-dumpable");
    sb_json_init();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return fail("start-up", "libcurl could not be initialised");
    if (dev && prepare_dev(err, sizeof(err)) != SB_OK)
        return fail("development mode", err);
    if (sb_config_load(&a.cfg, dev ? dev_lookup : env_lookup, err, sizeof(err)) != SB_OK)
        return fail("invalid configuration", err);
    a.cfg.dev_mode = dev;
    sb_log_set_level(a.cfg.log_level);
    log_startup(&a.cfg);
    raise_fd_limit(&a.cfg);
    if (!a.cfg.mtls_enabled)
        SB_WARN("main", NULL, "MTLS_ENABLED=false: callers are identified by bearer token only%s",
                a.cfg.bearer == SB_BEARER_REQUIRED ? "" : " (INSECURE DEVELOPMENT MODE)");
    char tls_ver[64], http_ver[64];
    snprintf(tls_ver, sizeof(tls_ver), "gnutls %s", gnutls_check_version(NULL));
    snprintf(http_ver, sizeof(http_ver), "libmicrohttpd %s", MHD_get_version());
    sb_metrics_set_build_info(tls_ver, http_ver);

    if (build(&a, err, sizeof(err)) != SB_OK) {
        int rc = fail("start-up failed", err);
        teardown(&a);
        return rc;
    }
    if (a.tls)
        sb_http_call_at(a.http, sb_clock_mono_ms() + a.cfg.tls_reload_ms, tls_reload_tick, &a);
    SB_INFO("main", NULL, "memory for secrets %s locked in RAM",
            sb_secmem_locked() ? "is" : "is not");
    sb_server_set_state(a.server, SB_SERVER_SERVING);
    SB_INFO("main", NULL, "serving on port %d (ops port %d)", a.cfg.port, a.cfg.ops_port);
    if (dev)
        print_dev_banner(&a.cfg);

    wait_for_stop(&a, &set);
    drain(&a);
    teardown(&a);
    curl_global_cleanup();
    SB_INFO("main", NULL, "stopped");
    return 0;
}
