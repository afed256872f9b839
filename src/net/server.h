/* The HTTP servers: the API port (mutual TLS, WORKERS threads) and the ops
 * port (plain HTTP: /healthz, /readyz, /metrics), both on libmicrohttpd.
 * This module owns connections and their TLS sessions and identities, and
 * hands requests to net/api and net/ops. A request that needs a backend is
 * suspended and resumed when the broker's loop completes it, so no HTTP
 * thread ever waits on a backend (DESIGN.md section 10). */
#ifndef SB_NET_SERVER_H
#define SB_NET_SERVER_H

#include <microhttpd.h>
#include <stdbool.h>

#include "auth/identity.h"
#include "auth/token.h"
#include "broker/broker.h"
#include "broker/ratelimit.h"
#include "clients/kube.h"
#include "core/config.h"
#include "net/tls.h"
#include "obs/audit.h"

typedef struct sb_server sb_server;

typedef struct sb_server_deps {
    const sb_config *cfg;
    sb_tls *tls; /* NULL when MTLS_ENABLED=false */
    sb_broker *broker;
    sb_audit *audit;
    sb_http *http;
    sb_kube *kube;      /* NULL with the file backend */
    sb_cache *cache;    /* NULL when the value cache is off */
    sb_token *tokens;   /* bearer token reviews; NULL when BEARER_TOKEN=off */
    sb_ratelimit *rate; /* per-identity request rate; NULL when RATE_LIMIT_PER_SECOND=0 */
} sb_server_deps;

typedef enum sb_server_state {
    SB_SERVER_STARTING,
    SB_SERVER_SERVING,
    SB_SERVER_DRAINING, /* SIGTERM: not ready, new connections closed, still answering */
    SB_SERVER_STOPPING, /* grace over: new requests get 503, nothing reaches the loop */
} sb_server_state;

/* Binds both ports and starts their threads, and a watchdog thread that
 * closes API connections whose client is too slow (core/limits.h, "Slow
 * clients"). SB_E_CONFIG/SB_E_IO with one line in err. */
SB_MUST_CHECK sb_err sb_server_start(const sb_server_deps *deps, sb_server **out, char *err,
                                     size_t errlen);

/* Requests being answered right now on the API port. */
int sb_server_active(const sb_server *s);

/* Stops both servers, closing every connection. Accepts NULL. */
void sb_server_stop(sb_server *s);

void sb_server_set_state(sb_server *s, sb_server_state state);

/* Request handlers bracket any work that may hand something to the http
 * loop with begin/end; begin returns false once the server is stopping.
 * sb_server_stop_work moves to SB_SERVER_STOPPING and waits until no
 * handler is inside a bracket, so the loop can then be stopped safely. */
bool sb_server_begin_work(sb_server *s);
void sb_server_end_work(sb_server *s);
void sb_server_stop_work(sb_server *s);
sb_server_state sb_server_get_state(const sb_server *s);

/* What net/api and net/ops use. */
const sb_server_deps *sb_server_deps_of(const sb_server *s);

/* The identity of the client on conn, computed once per connection.
 * SB_E_UNAUTHORIZED with *why when the certificate names none (*out then
 * holds only its serial, for the audit record), or there is no TLS at all
 * (MTLS_ENABLED=false: net/api then takes the identity from a reviewed
 * bearer token instead). */
SB_MUST_CHECK sb_err sb_server_identity(struct MHD_Connection *conn, sb_identity *out,
                                        const char **why);

/* A response whose body is buf's contents (taken: buf is left empty, and
 * the bytes are wiped when libmicrohttpd frees the response), with the
 * headers every answer carries: X-Request-Id (when request_id is not
 * NULL), Content-Type, Cache-Control: no-store. */
struct MHD_Response *sb_server_response_buf(sb_buf *buf, const char *content_type,
                                            const char *request_id);

/* A response that sends a secret's bytes without copying them; the
 * reference is taken and released when libmicrohttpd is done. */
struct MHD_Response *sb_server_response_secret(sb_secret *value, const char *content_type,
                                               const char *request_id);

/* Queues the response with status and drops the caller's reference to it;
 * close adds "Connection: close", as does draining on the API port (keep-
 * alive clients then reconnect elsewhere). From here the response has
 * SB_MAX_SEND_MS to reach the client. */
enum MHD_Result sb_server_queue(struct MHD_Connection *conn, int status, struct MHD_Response *resp,
                                bool close);

#endif
