/* The ops port's three routes (see ops.h). Answers are queued on the
 * second handler call so keep-alive stays on for scrapers. */
#include "net/ops.h"

#include <stdio.h>
#include <string.h>

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

static enum MHD_Result readyz(sb_server *s, struct MHD_Connection *conn)
{
    const sb_server_deps *deps = sb_server_deps_of(s);
    const char *audit_why = "ok";
    bool audit_ok = sb_audit_healthy(deps->audit, &audit_why);
    sb_server_state st = sb_server_get_state(s);
    /* With AUDIT_FAILURE_MODE=open a failing audit log does not stop
     * requests, so it does not take the pod out of the Service either. */
    bool ready = st == SB_SERVER_SERVING && (audit_ok || deps->cfg->audit_fail_open);
    sb_buf buf;
    sb_err err;

    sb_buf_init(&buf, 8192);
    err = sb_buf_append_str(&buf, "{\"status\":");
    if (err == SB_OK)
        err = sb_render_string(&buf,
                               ready                     ? "ok"
                               : st == SB_SERVER_SERVING ? "unavailable"
                                                         : state_word(st),
                               strlen(ready                     ? "ok"
                                      : st == SB_SERVER_SERVING ? "unavailable"
                                                                : state_word(st)));
    if (err == SB_OK)
        err = sb_buf_append_str(&buf, ",\"checks\":{\"server\":");
    if (err == SB_OK)
        err = sb_render_string(&buf, state_word(st), strlen(state_word(st)));
    if (err == SB_OK)
        err = sb_buf_append_str(&buf, ",\"audit\":");
    if (err == SB_OK)
        err = sb_render_string(&buf, audit_ok ? "ok" : audit_why,
                               strlen(audit_ok ? "ok" : audit_why));
    for (size_t i = 0; err == SB_OK && i < deps->cfg->backend_count; i++) {
        const char *name = sb_backend_kind_name(deps->cfg->backends[i]);
        err = sb_buf_append(&buf, ",", 1);
        if (err == SB_OK)
            err = sb_render_string(&buf, name, strlen(name));
        if (err == SB_OK)
            err = sb_buf_append_str(&buf, ":\"ok\"");
    }
    if (err == SB_OK)
        err = sb_buf_append_str(&buf, "}}\n");
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
