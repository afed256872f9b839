/* The ops port's three routes (see ops.h). Answers are queued on the
 * second handler call so keep-alive stays on for scrapers. /readyz names
 * the server's state, the audit log's health and each backend's circuit
 * breaker. */
#include "net/ops.h"

#include <stdio.h>
#include <string.h>

#include "core/clock.h"
#include "net/render.h"
#include "obs/metrics.h"

static enum MHD_Result reply(struct MHD_Connection *conn, int status, const char *type, sb_buf *buf)
{
    struct MHD_Response *resp = sb_server_response_buf(buf, type, NULL);
    return sb_server_queue(conn, status, resp, false);
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, int status, const char *text)
{
    sb_buf buf;

    sb_buf_init(&buf, 4096);
    if (sb_buf_append_str(&buf, text) != SB_OK)
        sb_buf_reset(&buf);
    return reply(conn, status, "text/plain; charset=utf-8", &buf);
}

static const char *state_word(sb_server_state st)
{
    switch (st) {
    case SB_SERVER_STARTING:
        return "starting";
    case SB_SERVER_SERVING:
        return "ok";
    case SB_SERVER_DRAINING:
    case SB_SERVER_STOPPING:
        return "draining";
    }
    return "unknown";
}

/* Appends ,"name":"value" (or without the comma for the first check). */
static sb_err append_check(sb_buf *buf, const char *name, const char *value)
{
    bool first = buf->len == 0 || buf->data[buf->len - 1] == '{';
    sb_err err = sb_buf_append_str(buf, first ? "" : ",");

    if (err == SB_OK)
        err = sb_render_string(buf, name, strlen(name));
    if (err == SB_OK)
        err = sb_buf_append(buf, ":", 1);
    if (err == SB_OK)
        err = sb_render_string(buf, value, strlen(value));
    return err;
}

/* Each backend's circuit breaker, as a check; false when every breaker
 * is open (DESIGN.md section 5: no backend is usable). An open breaker
 * whose time is up reads half-open, so readiness comes back without
 * traffic, and the next call probes the backend. */
static sb_err append_backends(sb_buf *buf, const sb_server_deps *deps, bool *out_usable)
{
    int64_t now = sb_clock_mono_ms();
    bool usable = false;
    sb_err err = SB_OK;

    for (size_t i = 0; err == SB_OK && i < deps->cfg->backend_count; i++) {
        sb_breaker_state st = sb_broker_breaker_state(deps->broker, i, now);
        usable |= st != SB_BREAKER_OPEN;
        err = append_check(buf, sb_backend_kind_name(deps->cfg->backends[i]),
                           sb_breaker_state_name(st));
    }
    *out_usable = usable;
    return err;
}

static enum MHD_Result readyz(sb_server *s, struct MHD_Connection *conn)
{
    const sb_server_deps *deps = sb_server_deps_of(s);
    const char *audit_why = "ok";
    bool audit_ok = sb_audit_healthy(deps->audit, &audit_why);
    sb_server_state st = sb_server_get_state(s);
    bool usable = false;
    sb_buf checks, buf;

    sb_buf_init(&checks, 4096);
    sb_err err = sb_buf_append(&checks, "{", 1);
    if (err == SB_OK)
        err = append_check(&checks, "server", state_word(st));
    if (err == SB_OK)
        err = append_check(&checks, "audit", audit_ok ? "ok" : audit_why);
    if (err == SB_OK)
        err = append_backends(&checks, deps, &usable);

    /* With AUDIT_FAILURE_MODE=open a failing audit log does not stop
     * requests, so it does not take the pod out of the Service either. */
    bool serving = st == SB_SERVER_SERVING;
    bool ready = serving && (audit_ok || deps->cfg->audit_fail_open) && usable;
    const char *status = ready ? "ok" : serving ? "unavailable" : state_word(st);
    sb_buf_init(&buf, 8192);
    if (err == SB_OK)
        err = sb_buf_append_str(&buf, "{\"status\":");
    if (err == SB_OK)
        err = sb_render_string(&buf, status, strlen(status));
    if (err == SB_OK)
        err = sb_buf_append_str(&buf, ",\"checks\":");
    if (err == SB_OK)
        err = sb_buf_append(&buf, checks.data, checks.len);
    if (err == SB_OK)
        err = sb_buf_append_str(&buf, "}}\n");
    sb_buf_free(&checks);
    if (err != SB_OK)
        sb_buf_reset(&buf);
    return reply(conn, ready ? 200 : 503, "application/json", &buf);
}

static enum MHD_Result metrics(struct MHD_Connection *conn)
{
    sb_buf buf;

    sb_buf_init(&buf, 4 * 1024 * 1024);
    if (sb_metrics_render(&buf) != SB_OK) {
        sb_buf_free(&buf);
        return reply_text(conn, 500, "metrics exposition over its size limit\n");
    }
    return reply(conn, 200, SB_METRICS_CONTENT_TYPE, &buf);
}

enum MHD_Result sb_ops_handle(sb_server *s, struct MHD_Connection *conn, const char *url,
                              const char *method, size_t *upload_data_size, void **con_cls)
{
    static int seen;

    if (*con_cls == NULL) {
        *con_cls = &seen;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }

    bool known = !strcmp(url, "/healthz") || !strcmp(url, "/readyz") || !strcmp(url, "/metrics");
    if (!known)
        return reply_text(conn, 404, "not found\n");
    if (strcmp(method, "GET") != 0)
        return reply_text(conn, 405, "only GET\n");
    if (!strcmp(url, "/healthz"))
        return reply_text(conn, 200, "ok\n");
    if (!strcmp(url, "/readyz"))
        return readyz(s, conn);
    return metrics(conn);
}
