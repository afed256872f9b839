/* The two libmicrohttpd daemons (see server.h). */
#include "net/server.h"

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/limits.h"
#include "net/api.h"
#include "net/ops.h"
#include "obs/log.h"
#include "obs/metrics.h"

struct sb_server {
    sb_server_deps deps;
    struct MHD_Daemon *api;
    struct MHD_Daemon *ops;
    atomic_int state;
    atomic_int active;
    atomic_int working; /* handlers inside begin/end_work */
    sb_identity_opts id_opts;
};

/* Per connection: its TLS credentials and, once known, the caller. */
struct conn_ctx {
    sb_tls_cred *cred;
    bool identity_done;
    sb_err identity_err;
    const char *identity_why;
    sb_identity id;
    const sb_identity_opts *opts;
};

struct body_holder {
    sb_buf buf;
};

static void free_body(void *cls)
{
    struct body_holder *h = cls;
    sb_buf_free(&h->buf);
    free(h);
}

static void free_secret(void *cls)
{
    sb_secret_unref(cls);
}

static void add_common_headers(struct MHD_Response *resp, const char *content_type,
                               const char *request_id)
{
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (request_id)
        MHD_add_response_header(resp, "X-Request-Id", request_id);
}

struct MHD_Response *sb_server_response_buf(sb_buf *buf, const char *content_type,
                                            const char *request_id)
{
    struct body_holder *h = sb_xmalloc(sizeof(*h));

    h->buf = *buf;
    memset(buf, 0, sizeof(*buf));
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback_cls(
        h->buf.len, h->buf.data ? (void *)h->buf.data : (void *)"", free_body, h);
    if (!resp)
        abort();
    add_common_headers(resp, content_type, request_id);
    return resp;
}

struct MHD_Response *sb_server_response_secret(sb_secret *value, const char *content_type,
                                               const char *request_id)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback_cls(
        sb_secret_len(value), (void *)sb_secret_data(value), free_secret, value);
    if (!resp)
        abort();
    add_common_headers(resp, content_type, request_id);
    return resp;
}

enum MHD_Result sb_server_queue(struct MHD_Connection *conn, int status, struct MHD_Response *resp,
                                bool close)
{
    if (close)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return rc;
}

const sb_server_deps *sb_server_deps_of(const sb_server *s)
{
    return &s->deps;
}

void sb_server_set_state(sb_server *s, sb_server_state state)
{
    atomic_store(&s->state, (int)state);
}

bool sb_server_begin_work(sb_server *s)
{
    /* Sequentially consistent on both sides: either the stopper sees this
     * increment, or this thread sees the stopping state. */
    atomic_fetch_add(&s->working, 1);
    if (atomic_load(&s->state) == SB_SERVER_STOPPING) {
        atomic_fetch_sub(&s->working, 1);
        return false;
    }
    return true;
}

void sb_server_end_work(sb_server *s)
{
    atomic_fetch_sub(&s->working, 1);
}

void sb_server_stop_work(sb_server *s)
{
    struct timespec ms = {0, 1000 * 1000};

    atomic_store(&s->state, SB_SERVER_STOPPING);
    while (atomic_load(&s->working) > 0)
        nanosleep(&ms, NULL);
}

sb_server_state sb_server_get_state(const sb_server *s)
{
    return (sb_server_state)atomic_load(&((sb_server *)s)->state);
}

int sb_server_active(const sb_server *s)
{
    return atomic_load(&((sb_server *)s)->active);
}

static void compute_identity(struct MHD_Connection *conn, struct conn_ctx *ctx)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    const unsigned char *der = NULL;
    size_t len = 0;

    ctx->identity_done = true;
    ctx->identity_err = SB_E_UNAUTHORIZED;
    ctx->identity_why = "no client certificate";
    if (!info || !info->tls_session)
        return;
    /* Second line behind the handshake's own check: a session must carry
     * a verified certificate (libmicrohttpd would otherwise serve any). */
    if (sb_tls_peer_leaf(info->tls_session, &der, &len) != SB_OK)
        return;
    ctx->identity_err = sb_identity_from_der(der, len, ctx->opts, &ctx->id, &ctx->identity_why);
}

sb_err sb_server_identity(struct MHD_Connection *conn, sb_identity *out, const char **why)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn_ctx *ctx = info ? info->socket_context : NULL;

    if (!ctx) {
        *why = "no connection context";
        return SB_E_UNAUTHORIZED;
    }
    if (!ctx->identity_done)
        compute_identity(conn, ctx);
    if (ctx->identity_err != SB_OK) {
        *why = ctx->identity_why;
        return ctx->identity_err;
    }
    *out = ctx->id;
    return SB_OK;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    sb_server *s = cls;
    struct conn_ctx *ctx = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (ctx) {
            sb_tls_session_done(ctx->cred);
            free(ctx);
            *socket_context = NULL;
        }
        sb_metrics_gauge_add(SB_METRICS_CONNECTIONS, -1);
        return;
    }

    sb_metrics_gauge_add(SB_METRICS_CONNECTIONS, 1);
    ctx = sb_xcalloc(1, sizeof(*ctx));
    ctx->opts = &s->id_opts;
    *socket_context = ctx;
    if (!s->deps.tls)
        return;

    /* The session exists before this notification in libmicrohttpd 0.9.75
     * (a regression test pins it): give it our credentials and a required,
     * verified client certificate before its handshake starts. */
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!info || !info->tls_session ||
        sb_tls_session_setup(s->deps.tls, info->tls_session, &ctx->cred) != SB_OK) {
        SB_ERROR("server", NULL, "cannot set up TLS for a new connection; closing it");
        MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, 1);
        ctx->identity_done = true;
        ctx->identity_err = SB_E_UNAUTHORIZED;
        ctx->identity_why = "TLS set-up failed";
    }
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    sb_server *s = cls;
    atomic_fetch_add(&s->active, 1);
    return sb_api_begin(s, conn, uri);
}

static enum MHD_Result on_api_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    return sb_api_handle(*con_cls, conn, method, upload_data, upload_data_size);
}

static void on_api_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                             enum MHD_RequestTerminationCode toe)
{
    sb_server *s = cls;

    if (!*con_cls)
        return;
    sb_api_end(*con_cls, toe);
    *con_cls = NULL;
    atomic_fetch_sub(&s->active, 1);
}

static enum MHD_Result on_ops_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    return sb_ops_handle(cls, conn, url, method, upload_data_size, con_cls);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];

    if (!sb_log_enabled(SB_LOG_DEBUG))
        return;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    SB_DEBUG("httpd", NULL, "%s", msg);
}

static sb_err make_addr(const char *host, int port, struct sockaddr_storage *out, bool *out_v6)
{
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;

    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *out_v6 = false;
        return SB_OK;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *out_v6 = true;
        return SB_OK;
    }
    return SB_E_CONFIG;
}

static struct MHD_Daemon *start_api(sb_server *s, const struct sockaddr_storage *addr, bool v6)
{
    const sb_config *cfg = s->deps.cfg;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    struct MHD_OptionItem tls_opts[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, NULL},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, NULL},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, NULL},
        {MHD_OPTION_END, 0, NULL},
    };

    if (s->deps.tls) {
        flags |= MHD_USE_TLS;
        tls_opts[0].ptr_value = (void *)sb_tls_initial_cert_pem(s->deps.tls);
        tls_opts[1].ptr_value = (void *)sb_tls_initial_key_pem(s->deps.tls);
        tls_opts[2].ptr_value = (void *)sb_tls_priorities(s->deps.tls);
    } else {
        tls_opts[0].option = MHD_OPTION_END;
    }

    return MHD_start_daemon(
        flags, 0, NULL, NULL, on_api_request, s, MHD_OPTION_SOCK_ADDR, addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->workers, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)cfg->idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)SB_MAX_CONN_MEMORY, MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_LISTEN_BACKLOG_SIZE,
        1024u, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_URI_LOG_CALLBACK, on_uri,
        s, MHD_OPTION_NOTIFY_COMPLETED, on_api_completed, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        NULL, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
}

static struct MHD_Daemon *start_ops(sb_server *s, const struct sockaddr_storage *addr, bool v6)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
                     (v6 ? MHD_USE_IPv6 : 0);

    return MHD_start_daemon(flags, 0, NULL, NULL, on_ops_request, s, MHD_OPTION_SOCK_ADDR, addr,
                            MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 30u,
                            MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                            NULL, MHD_OPTION_END);
}

sb_err sb_server_start(const sb_server_deps *deps, sb_server **out, char *err, size_t errlen)
{
    const sb_config *cfg = deps->cfg;
    struct sockaddr_storage api_addr, ops_addr;
    bool api_v6 = false, ops_v6 = false;

    if (make_addr(cfg->bind_address, cfg->port, &api_addr, &api_v6) != SB_OK) {
        snprintf(err, errlen, "BIND_ADDRESS: \"%.60s\" is not an IP address", cfg->bind_address);
        return SB_E_CONFIG;
    }
    if (make_addr(cfg->ops_bind_address, cfg->ops_port, &ops_addr, &ops_v6) != SB_OK) {
        snprintf(err, errlen, "OPS_BIND_ADDRESS: \"%.60s\" is not an IP address",
                 cfg->ops_bind_address);
        return SB_E_CONFIG;
    }

    sb_server *s = sb_xcalloc(1, sizeof(*s));
    s->deps = *deps;
    s->id_opts =
        (sb_identity_opts){.trust_domain = cfg->trust_domain, .cn_fallback = cfg->cn_fallback};
    atomic_init(&s->state, SB_SERVER_STARTING);

    s->ops = start_ops(s, &ops_addr, ops_v6);
    if (!s->ops) {
        snprintf(err, errlen, "OPS_PORT: cannot listen on %s port %d", cfg->ops_bind_address,
                 cfg->ops_port);
        free(s);
        return SB_E_IO;
    }
    s->api = start_api(s, &api_addr, api_v6);
    if (!s->api) {
        snprintf(err, errlen, "SERVER_PORT: cannot listen on %s port %d", cfg->bind_address,
                 cfg->port);
        MHD_stop_daemon(s->ops);
        free(s);
        return SB_E_IO;
    }
    *out = s;
    return SB_OK;
}

void sb_server_quiesce(sb_server *s)
{
    MHD_socket fd = MHD_quiesce_daemon(s->api);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void sb_server_stop(sb_server *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->api);
    MHD_stop_daemon(s->ops);
    free(s);
}
