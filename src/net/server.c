/* The two libmicrohttpd daemons (see server.h), and a watchdog thread that
 * bounds how long a client may take over each phase of a request on the
 * API port (core/limits.h, "Slow clients"): libmicrohttpd's own timeout
 * counts only silence, and a TLS handshake does not even reset it. Every
 * API connection is listed with its deadline; past it, the watchdog shuts
 * the socket down and libmicrohttpd, seeing it end, closes the connection
 * on its own thread. A connection leaves the list (under its lock) before
 * libmicrohttpd closes its descriptor, so the watchdog never touches a
 * descriptor that was reused. */
#include "net/server.h"

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/limits.h"
#include "net/api.h"
#include "net/ops.h"
#include "obs/log.h"
#include "obs/metrics.h"

#define WATCHDOG_TICK_MS 250
#define NO_DEADLINE      INT64_MAX

/* Per API connection: its TLS credentials, once known the caller, and the
 * watchdog's view of it. */
struct conn_ctx {
    sb_server *srv;
    sb_tls_cred *cred;
    bool identity_done;
    sb_err identity_err;
    const char *identity_why;
    sb_identity id;
    const sb_identity_opts *opts;

    int fd;
    atomic_llong deadline_ms; /* monotonic; NO_DEADLINE while answering */
    bool in_request;          /* its headers are in (HTTP thread only) */
    bool shut;                /* the watchdog shut it down (under conns_lock) */
    struct conn_ctx *prev, *next;
};

struct sb_server {
    sb_server_deps deps;
    struct MHD_Daemon *api;
    struct MHD_Daemon *ops;
    atomic_int state;
    atomic_int active;
    atomic_int working; /* handlers inside begin/end_work */
    atomic_int open;    /* API connections, for MAX_CONNECTIONS */
    sb_identity_opts id_opts;

    pthread_mutex_t conns_lock; /* guards conns and each ctx's list links and shut */
    struct conn_ctx *conns;
    pthread_t watchdog;
    bool watchdog_started;
    pthread_mutex_t wd_lock;
    pthread_cond_t wd_wake;
    bool wd_stop;
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

static struct conn_ctx *ctx_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

    return info ? info->socket_context : NULL; /* NULL on the ops port */
}

static void set_deadline(struct conn_ctx *ctx, int64_t deadline_ms)
{
    atomic_store_explicit(&ctx->deadline_ms, deadline_ms, memory_order_relaxed);
}

enum MHD_Result sb_server_queue(struct MHD_Connection *conn, int status, struct MHD_Response *resp,
                                bool close)
{
    struct conn_ctx *ctx = ctx_of(conn);

    /* Draining: each API connection ends after its answer, so keep-alive
     * clients reconnect (to another replica) instead of sending more. */
    if (ctx) {
        close |= atomic_load(&ctx->srv->state) >= SB_SERVER_DRAINING;
        set_deadline(ctx, sb_clock_mono_ms() + SB_MAX_SEND_MS);
    }
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
    /* On a refusal ctx->id holds at most the certificate's serial. */
    *out = ctx->id;
    if (ctx->identity_err != SB_OK)
        *why = ctx->identity_why;
    return ctx->identity_err;
}

static void conn_register(sb_server *s, struct conn_ctx *ctx)
{
    pthread_mutex_lock(&s->conns_lock);
    ctx->next = s->conns;
    if (s->conns)
        s->conns->prev = ctx;
    s->conns = ctx;
    pthread_mutex_unlock(&s->conns_lock);
}

static void conn_unregister(sb_server *s, struct conn_ctx *ctx)
{
    pthread_mutex_lock(&s->conns_lock);
    if (ctx->prev)
        ctx->prev->next = ctx->next;
    else
        s->conns = ctx->next;
    if (ctx->next)
        ctx->next->prev = ctx->prev;
    pthread_mutex_unlock(&s->conns_lock);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    sb_server *s = cls;
    struct conn_ctx *ctx = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (ctx) {
            conn_unregister(s, ctx);
            sb_tls_session_done(ctx->cred);
            free(ctx);
            *socket_context = NULL;
        }
        atomic_fetch_sub(&s->open, 1);
        sb_metrics_gauge_add(SB_METRICS_CONNECTIONS, -1);
        return;
    }

    atomic_fetch_add(&s->open, 1);
    sb_metrics_gauge_add(SB_METRICS_CONNECTIONS, 1);
    ctx = sb_xcalloc(1, sizeof(*ctx));
    ctx->srv = s;
    ctx->opts = &s->id_opts;
    const union MHD_ConnectionInfo *fd_info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    ctx->fd = fd_info ? fd_info->connect_fd : -1;
    atomic_init(&ctx->deadline_ms, sb_clock_mono_ms() + SB_MAX_HEADERS_MS);
    *socket_context = ctx;
    conn_register(s, ctx);
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

/* The phases of a request, for the watchdog: the first call means the
 * headers are in and a body may follow; a call without body data means
 * the request is being answered, bounded by REQUEST_TIMEOUT_SECONDS
 * instead. */
static void track_phase(struct MHD_Connection *conn, size_t upload_data_size)
{
    struct conn_ctx *ctx = ctx_of(conn);

    if (!ctx)
        return;
    if (!ctx->in_request) {
        ctx->in_request = true;
        set_deadline(ctx, sb_clock_mono_ms() + SB_MAX_BODY_MS);
    } else if (upload_data_size == 0) {
        set_deadline(ctx, NO_DEADLINE);
    }
}

static enum MHD_Result on_api_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    track_phase(conn, *upload_data_size);
    return sb_api_handle(*con_cls, conn, method, upload_data, upload_data_size);
}

static void on_api_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                             enum MHD_RequestTerminationCode toe)
{
    sb_server *s = cls;
    struct conn_ctx *ctx = ctx_of(conn);

    /* Kept alive: the next request's headers must be in within the idle
     * timeout plus the headers' own time. */
    if (ctx) {
        ctx->in_request = false;
        set_deadline(ctx, sb_clock_mono_ms() + (int64_t)s->deps.cfg->idle_timeout_s * 1000 +
                              SB_MAX_HEADERS_MS);
    }
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

/* Shuts down every API connection past its deadline; returns how many. */
static int sweep(sb_server *s, int64_t now)
{
    int closed = 0;

    pthread_mutex_lock(&s->conns_lock);
    for (struct conn_ctx *c = s->conns; c; c = c->next) {
        if (c->shut || c->fd < 0 ||
            now < atomic_load_explicit(&c->deadline_ms, memory_order_relaxed))
            continue;
        shutdown(c->fd, SHUT_RDWR);
        c->shut = true;
        closed++;
    }
    pthread_mutex_unlock(&s->conns_lock);
    return closed;
}

static void *watchdog_main(void *arg)
{
    sb_server *s = arg;

    pthread_mutex_lock(&s->wd_lock);
    while (!s->wd_stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += WATCHDOG_TICK_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->wd_wake, &s->wd_lock, &until);
        if (s->wd_stop)
            break;
        pthread_mutex_unlock(&s->wd_lock);
        int closed = sweep(s, sb_clock_mono_ms());
        if (closed)
            SB_DEBUG("server", NULL, "closed %d slow connections", closed);
        pthread_mutex_lock(&s->wd_lock);
    }
    pthread_mutex_unlock(&s->wd_lock);
    return NULL;
}

static void watchdog_stop(sb_server *s)
{
    if (!s->watchdog_started)
        return;
    pthread_mutex_lock(&s->wd_lock);
    s->wd_stop = true;
    pthread_cond_signal(&s->wd_wake);
    pthread_mutex_unlock(&s->wd_lock);
    pthread_join(s->watchdog, NULL);
    s->watchdog_started = false;
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

/* Which connections are let in. MAX_CONNECTIONS: a connection past it is
 * closed on arrival, so its client fails over at once. (libmicrohttpd's
 * own limit stops accepting instead, which leaves new clients waiting in
 * the listen queue; it is set a little higher, as the backstop for the few
 * accepted between this check and the count in on_connection.) Draining:
 * every new connection is closed on arrival. Not MHD_quiesce_daemon: in
 * 0.9.75 it races the epoll loop of each worker thread over removing the
 * listening socket from the epoll set, and the loser aborts the process
 * (seen under SIGTERM in the ASan run); the socket closes with the
 * daemon. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    sb_server *s = cls;

    (void)addr;
    (void)addrlen;
    if (atomic_load(&s->state) >= SB_SERVER_DRAINING)
        return MHD_NO;
    if (atomic_load(&s->open) < s->deps.cfg->max_connections)
        return MHD_YES;
    sb_metrics_inc(SB_METRICS_CONNECTIONS_REFUSED);
    return MHD_NO;
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

    /* The logger comes first so it also hears about the options after it. */
    return MHD_start_daemon(flags, 0, on_accept, s, on_api_request, s, MHD_OPTION_EXTERNAL_LOGGER,
                            mhd_log, NULL, MHD_OPTION_SOCK_ADDR, addr, MHD_OPTION_THREAD_POOL_SIZE,
                            (unsigned)cfg->workers, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)cfg->max_connections + 64u + (unsigned)cfg->workers,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)SB_MAX_CONN_MEMORY,
                            MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                            MHD_OPTION_URI_LOG_CALLBACK, on_uri, s, MHD_OPTION_NOTIFY_COMPLETED,
                            on_api_completed, s, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
}

static struct MHD_Daemon *start_ops(sb_server *s, const struct sockaddr_storage *addr, bool v6)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
                     (v6 ? MHD_USE_IPv6 : 0);

    return MHD_start_daemon(flags, 0, NULL, NULL, on_ops_request, s, MHD_OPTION_EXTERNAL_LOGGER,
                            mhd_log, NULL, MHD_OPTION_SOCK_ADDR, addr, MHD_OPTION_CONNECTION_LIMIT,
                            64u, MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_STRICT_FOR_CLIENT,
                            1, MHD_OPTION_END);
}

static void server_free(sb_server *s)
{
    pthread_cond_destroy(&s->wd_wake);
    pthread_mutex_destroy(&s->wd_lock);
    pthread_mutex_destroy(&s->conns_lock);
    free(s);
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
    pthread_mutex_init(&s->conns_lock, NULL);
    pthread_mutex_init(&s->wd_lock, NULL);
    pthread_cond_init(&s->wd_wake, NULL);

    s->ops = start_ops(s, &ops_addr, ops_v6);
    if (!s->ops) {
        snprintf(err, errlen, "OPS_PORT: cannot listen on %s port %d", cfg->ops_bind_address,
                 cfg->ops_port);
        server_free(s);
        return SB_E_IO;
    }
    s->api = start_api(s, &api_addr, api_v6);
    if (!s->api) {
        snprintf(err, errlen, "SERVER_PORT: cannot listen on %s port %d", cfg->bind_address,
                 cfg->port);
        MHD_stop_daemon(s->ops);
        server_free(s);
        return SB_E_IO;
    }
    if (pthread_create(&s->watchdog, NULL, watchdog_main, s) != 0) {
        snprintf(err, errlen, "cannot start the connection watchdog thread");
        MHD_stop_daemon(s->api);
        MHD_stop_daemon(s->ops);
        server_free(s);
        return SB_E_INTERNAL;
    }
    s->watchdog_started = true;
    *out = s;
    return SB_OK;
}

void sb_server_stop(sb_server *s)
{
    if (!s)
        return;
    watchdog_stop(s);
    MHD_stop_daemon(s->api);
    MHD_stop_daemon(s->ops);
    server_free(s);
}
