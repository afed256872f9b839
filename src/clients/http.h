/* Asynchronous HTTP client: one thread runs libcurl's multi interface and a
 * timer list. Requests are built on any thread and submitted; completion
 * callbacks and timers run on the loop thread, one at a time, so state
 * touched only from callbacks needs no lock. Connections are kept alive
 * and reused (HTTP/2 multiplexing where the server offers it). */
#ifndef SB_CLIENTS_HTTP_H
#define SB_CLIENTS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/secret.h"

typedef struct sb_http sb_http;
typedef struct sb_http_req sb_http_req;

typedef struct sb_http_response {
    sb_err err;         /* SB_OK when an HTTP answer arrived, whatever its status */
    long status;        /* HTTP status, 0 when err is set */
    sb_buf body;        /* the answer's body (wiped when freed) */
    int retry_after_s;  /* Retry-After in seconds, -1 when absent */
    const char *detail; /* transport failure in words; "" when none; valid only
                         * during the callback (it may be libcurl's own text) */
    int64_t elapsed_us; /* submit to completion */
} sb_http_response;

/* Called on the loop thread when a request completes. The response and its
 * body belong to the loop and are freed after the callback returns; move
 * the body out (struct copy, then zero the original) to keep it. */
typedef void (*sb_http_done_fn)(sb_http_response *resp, void *ud);

/* Called on the loop thread with each piece of a streamed body as it
 * arrives. Return false to end the transfer there (it then completes with
 * SB_E_UPSTREAM and the detail "the stream was ended by its reader"). */
typedef bool (*sb_http_chunk_fn)(const void *data, size_t len, void *ud);

/* A function run on the loop thread (timers, work handed over). */
typedef void (*sb_http_task_fn)(void *ud);

/* Starts the loop thread. max_inflight bounds concurrent requests: one over
 * the bound completes at once with SB_E_UNAVAILABLE. */
SB_MUST_CHECK sb_err sb_http_start(int max_inflight, sb_http **out);

/* Stops the thread, then completes everything outstanding on the calling
 * thread: requests in flight or submitted meanwhile complete with
 * SB_E_SHUTDOWN, pending timers run (for a bounded number of rounds, so a
 * task that re-arms itself does not keep it going). Accepts NULL. Not from
 * the loop. */
void sb_http_stop(sb_http *h);

/* A new request; method "GET", "POST"... url absolute. Any thread. */
sb_http_req *sb_http_req_new(const char *method, const char *url);

/* Adds a header line "Name: value". Header lines are wiped when the request
 * is freed, so a bearer token may be passed. */
void sb_http_req_header(sb_http_req *req, const char *name, const char *value);

/* Sets the body (copied into a wiping buffer) and its Content-Type. */
void sb_http_req_body(sb_http_req *req, const void *body, size_t len, const char *content_type);

/* Whole-request timeout (connect included) in milliseconds. Default 10 s. */
void sb_http_req_timeout(sb_http_req *req, int timeout_ms);

/* Largest body accepted; a longer answer fails with SB_E_UPSTREAM. Default
 * SB_MAX_UPSTREAM_BODY. */
void sb_http_req_max_body(sb_http_req *req, size_t max);

/* Streams the body of a 2xx answer to on_chunk as it arrives, for answers
 * that do not end (a Kubernetes watch); the response's body then stays
 * empty. An answer with another status is collected as usual, so the done
 * callback can read why. The timeout still bounds the whole transfer. */
void sb_http_req_stream(sb_http_req *req, sb_http_chunk_fn on_chunk, void *ud);

/* TLS trust and client credentials, as file paths; NULL keeps the default
 * (system CA bundle, no client certificate). A CA file given is the only
 * trust: the system's certificates are not consulted then. */
void sb_http_req_tls(sb_http_req *req, const char *ca_file, const char *cert_file,
                     const char *key_file);

/* Hands the request to the loop, which owns it from now on; done runs on
 * the loop thread exactly once. Any thread. */
void sb_http_submit(sb_http *h, sb_http_req *req, sb_http_done_fn done, void *ud);

/* Runs fn(ud) on the loop thread at monotonic time due_ms (at once when it
 * has passed). Any thread. Timers cannot be cancelled: a task that may be
 * stale checks its own state. */
void sb_http_call_at(sb_http *h, int64_t due_ms, sb_http_task_fn fn, void *ud);

/* Requests submitted and not yet completed. */
int sb_http_inflight(const sb_http *h);

/* True when called on the loop thread. */
bool sb_http_on_loop(const sb_http *h);

#endif
