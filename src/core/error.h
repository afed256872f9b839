/* The project's one error type: every fallible function returns an sb_err,
 * zero for success. Codes are grouped so a caller can ask what an error
 * means for the client (HTTP status) and whether trying again may help. */
#ifndef SB_CORE_ERROR_H
#define SB_CORE_ERROR_H

#include <stdbool.h>

/* Marks a function whose result must be checked. */
#define SB_MUST_CHECK __attribute__((warn_unused_result))

typedef enum sb_err {
    SB_OK = 0,

    /* The client's request is at fault; nothing upstream was touched. */
    SB_E_BAD_REQUEST,  /* malformed name, key, query or body: 400 */
    SB_E_UNAUTHORIZED, /* no usable identity: 401 */
    SB_E_FORBIDDEN,    /* RBAC says no: 403 */
    SB_E_NOT_FOUND,    /* no backend has the secret (or the key): 404 */
    SB_E_METHOD,       /* method not allowed on this route: 405 */
    SB_E_TOO_LARGE,    /* body or item count over its limit: 413 */
    SB_E_URI_TOO_LONG, /* 414 */
    SB_E_RATE_LIMITED, /* per-identity budget spent: 429 */

    /* A backend or the Kubernetes API misbehaved. */
    SB_E_UPSTREAM,    /* answered, but badly (unparsable, unexpected): 502 */
    SB_E_UNAVAILABLE, /* refused, 5xx, breaker open: 503, retryable */
    SB_E_THROTTLED,   /* upstream asked us to slow down: 503, retryable */
    SB_E_TIMEOUT,     /* deadline passed: 504, retryable */
    SB_E_CREDENTIALS, /* our own credentials were refused: 503 */

    /* Local failures. */
    SB_E_AUDIT,    /* the audit record could not be written: 503 */
    SB_E_CONFIG,   /* invalid configuration */
    SB_E_IO,       /* a local file or socket operation failed */
    SB_E_CRYPTO,   /* GnuTLS refused an operation */
    SB_E_INTERNAL, /* a bug or an impossible state: 500 */
    SB_E_SHUTDOWN, /* the process is draining: 503 */

    SB_E_COUNT_ /* number of codes; not an error */
} sb_err;

/* The stable machine-readable code of an error, as sent in API error bodies
 * ("forbidden", "not_found", ...). Never NULL. */
const char *sb_err_code(sb_err err);

/* The HTTP status the API answers with for this error; 200 for SB_OK. */
int sb_err_http_status(sb_err err);

/* True when the same call may succeed if tried again later (timeouts,
 * throttling, unavailable upstreams). Caller mistakes and denials are never
 * retryable. */
bool sb_err_retryable(sb_err err);

#endif
