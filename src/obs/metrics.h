/* Prometheus metrics: a small fixed registry of counters, gauges and one
 * histogram, rendered in the text exposition format 0.0.4 for GET /metrics
 * on the ops port. Every label takes its value from a fixed enum here, so
 * the number of series never depends on requests: no secret name, key,
 * namespace or identity can become a label (DESIGN.md section 8).
 *
 * Counting is lock-free (relaxed C11 atomics) and may be called from any
 * thread at any time, including before anything else is set up: the
 * registry is static storage. Out-of-range enum values are dropped, never
 * rendered. docs/observability.md explains every metric. */
#ifndef SB_OBS_METRICS_H
#define SB_OBS_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/error.h"
#include "core/secret.h"

/* The Content-Type of what sb_metrics_render produces. */
#define SB_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* API routes, the `endpoint` label. */
typedef enum sb_metrics_endpoint {
    SB_METRICS_EP_SECRET, /* GET /v1/secrets/{name} */
    SB_METRICS_EP_KEY,    /* GET /v1/secrets/{name}/{key} */
    SB_METRICS_EP_BATCH,  /* POST /v1/secrets/batch */
    SB_METRICS_EP_OTHER,  /* anything else that reached the API port */
    SB_METRICS_EP_COUNT_
} sb_metrics_endpoint;

/* Where an authorization decision came from, the `source` label. */
typedef enum sb_metrics_authz_source {
    SB_METRICS_AUTHZ_CACHE,         /* the decision cache */
    SB_METRICS_AUTHZ_SAR,           /* a SubjectAccessReview */
    SB_METRICS_AUTHZ_UPSTREAM,      /* the API server's answer to an impersonated read */
    SB_METRICS_AUTHZ_OWN_NAMESPACE, /* file backend: own namespace only */
    SB_METRICS_AUTHZ_COUNT_
} sb_metrics_authz_source;

/* Circuit breaker states; the numbers are the gauge's values. */
typedef enum sb_metrics_breaker_state {
    SB_METRICS_BREAKER_CLOSED = 0,
    SB_METRICS_BREAKER_HALF_OPEN = 1,
    SB_METRICS_BREAKER_OPEN = 2,
    SB_METRICS_BREAKER_COUNT_
} sb_metrics_breaker_state;

/* Why a client's TLS handshake failed, the `reason` label. */
typedef enum sb_metrics_tls_reason {
    SB_METRICS_TLS_NO_CERTIFICATE, /* client sent none (TLS 1.3 certificate_required) */
    SB_METRICS_TLS_UNTRUSTED,      /* chain does not lead to the CA bundle */
    SB_METRICS_TLS_EXPIRED,
    SB_METRICS_TLS_NOT_YET_VALID,
    SB_METRICS_TLS_BAD_PURPOSE, /* no clientAuth EKU, or key usage forbids it */
    SB_METRICS_TLS_CA_AS_LEAF,  /* leaf has basicConstraints CA:TRUE */
    SB_METRICS_TLS_PROTOCOL,    /* version, cipher, malformed record, alert */
    SB_METRICS_TLS_OTHER,
    SB_METRICS_TLS_COUNT_
} sb_metrics_tls_reason;

/* Why a verified certificate (or token) gave no identity, the `reason`
 * label of secrets_broker_identity_rejections_total. */
typedef enum sb_metrics_id_reason {
    SB_METRICS_ID_NO_URI_SAN,
    SB_METRICS_ID_MANY_URI_SANS,
    SB_METRICS_ID_BAD_SPIFFE_ID,
    SB_METRICS_ID_FOREIGN_TRUST_DOMAIN,
    SB_METRICS_ID_TOKEN, /* bearer token missing, invalid, or for another SA */
    SB_METRICS_ID_COUNT_
} sb_metrics_id_reason;

/* Counters without labels. */
typedef enum sb_metrics_counter {
    SB_METRICS_AUDIT_RECORDS,        /* audit lines written in full */
    SB_METRICS_AUDIT_WRITE_FAILURES, /* audit lines that could not be */
    SB_METRICS_RATE_LIMITED,         /* requests answered 429 */
    SB_METRICS_CONNECTIONS_REFUSED,  /* connections closed at MAX_CONNECTIONS */
    SB_METRICS_COUNTER_COUNT_
} sb_metrics_counter;

/* Gauges without labels. */
typedef enum sb_metrics_gauge {
    SB_METRICS_CACHE_ENTRIES,  /* set by the value cache */
    SB_METRICS_CACHE_BYTES,    /* set by the value cache */
    SB_METRICS_INFLIGHT_CALLS, /* backend calls in flight: add +1 / -1 */
    SB_METRICS_CONNECTIONS,    /* open API connections: add +1 / -1 */
    SB_METRICS_GAUGE_COUNT_
} sb_metrics_gauge;

/* One finished API request: counts secrets_broker_requests_total{endpoint,
 * code} and observes duration_us in the latency histogram. status is the
 * HTTP status sent; one outside the fixed list (200 400 401 403 404 405
 * 413 414 429 431 500 502 503 504) is counted under its class (2xx as 200,
 * 4xx as 400, anything else as 500) so no other code label can appear.
 * Negative durations count as zero. Any thread; lock-free. */
void sb_metrics_request(sb_metrics_endpoint ep, int status, int64_t duration_us);

/* A value-cache lookup for backend be: a hit or a miss. Any thread. */
void sb_metrics_cache(sb_backend_kind be, bool hit);

/* A secret read from backend be (not from the cache). Any thread. */
void sb_metrics_fetched(sb_backend_kind be);

/* A failed call to backend be, counted under a reason derived from err:
 *   SB_E_TIMEOUT                      timeout
 *   SB_E_UNAVAILABLE, SB_E_SHUTDOWN   unavailable
 *   SB_E_THROTTLED                    throttled
 *   SB_E_UPSTREAM                     bad_response
 *   SB_E_CREDENTIALS                  credentials
 *   SB_E_FORBIDDEN                    forbidden_upstream
 *   any other error                   other
 * SB_OK and SB_E_NOT_FOUND are answers, not errors: not counted. Count a
 * 403 here only when it refuses the broker itself, not the caller. */
void sb_metrics_backend_error(sb_backend_kind be, sb_err err);

/* One HTTP call to backend be's upstream (retries count once each), by
 * outcome: SB_OK ok, SB_E_NOT_FOUND not_found, SB_E_FORBIDDEN forbidden,
 * SB_E_THROTTLED throttled, SB_E_TIMEOUT timeout, anything else error. */
void sb_metrics_upstream(sb_backend_kind be, sb_err result);

/* One authorization decision. Any thread. */
void sb_metrics_authz(bool allow, sb_metrics_authz_source source);

/* Backend be's breaker moved to state to: sets the state gauge and counts
 * the transition. The breaker calls this under its own lock, so the gauge
 * follows the transitions in order. Every breaker starts closed. */
void sb_metrics_breaker(sb_backend_kind be, sb_metrics_breaker_state to);

/* A failed client TLS handshake / a rejected identity. Any thread. */
void sb_metrics_tls_failure(sb_metrics_tls_reason reason);
void sb_metrics_identity_rejected(sb_metrics_id_reason reason);

/* A reload of the TLS files was attempted; ok says whether the new
 * material is now in use. Any thread. */
void sb_metrics_tls_reload(bool ok);

/* Adds one to an unlabelled counter. Any thread. */
void sb_metrics_inc(sb_metrics_counter counter);

/* Sets a gauge / adds delta (may be negative) to it. Any thread. */
void sb_metrics_gauge_set(sb_metrics_gauge gauge, int64_t value);
void sb_metrics_gauge_add(sb_metrics_gauge gauge, int64_t delta);

/* Records the library versions shown in secrets_broker_build_info, e.g.
 * tls "gnutls 3.7.9", http "libmicrohttpd 0.9.75" (copied, cut at 63
 * bytes, escaped when rendered). Until set they read "unknown". Call once
 * at start-up, before any thread renders. */
void sb_metrics_set_build_info(const char *tls, const char *http);

/* Appends the whole exposition to out: every family with # HELP and
 * # TYPE, every series of the fixed label sets (zeros included, so rate()
 * works from the first scrape), build info, and process metrics read from
 * /proc/self at this moment (omitted when /proc cannot be read). Counters
 * are read one by one without stopping writers, so a scrape is not an
 * atomic snapshot; each histogram's _count equals its +Inf bucket.
 * Returns SB_E_TOO_LARGE when out's maximum is reached (out then holds a
 * truncated exposition the caller must not send). Any thread. */
SB_MUST_CHECK sb_err sb_metrics_render(sb_buf *out);

#endif
