/* Bearer tokens: a caller's projected ServiceAccount token, checked with a
 * TokenReview for the broker's audience (DESIGN.md section 3). Review
 * results are cached under the token's SHA-256 (never the token) for at
 * most a minute and never past the token's own expiry; one review runs per
 * token however many requests wait for it. */
#ifndef SB_AUTH_TOKEN_H
#define SB_AUTH_TOKEN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/identity.h"
#include "clients/http.h"
#include "clients/kube.h"
#include "core/config.h"
#include "core/limits.h"

#define SB_TOKEN_KEY_SIZE 32 /* SHA-256 */

/* How long a review is trusted (upper bound) and how long a refusal is
 * remembered. Refusals are short: they only spare the API server a caller
 * that retries with the same bad token. */
#define SB_TOKEN_ALLOW_TTL_MS 60000
#define SB_TOKEN_DENY_TTL_MS  5000

typedef struct sb_token sb_token;

/* Where a token is cached: its SHA-256. */
typedef struct sb_token_key {
    unsigned char bytes[SB_TOKEN_KEY_SIZE];
} sb_token_key;

/* What a review said. err is SB_OK when the API server authenticated the
 * token for our audience as a ServiceAccount (id, pod and pod_uid are
 * then filled; pod and pod_uid are "" for tokens not bound to a pod),
 * SB_E_UNAUTHORIZED when it refused it, SB_E_UNAVAILABLE when no usable
 * answer came. why is a static reason for logs; it never quotes the token. */
typedef struct sb_token_result {
    sb_err err;
    const char *why;
    sb_identity id; /* source "token" */
    char pod[SB_MAX_POD_NAME + 1];
    char pod_uid[SB_MAX_K8S_UID + 1];
} sb_token_result;

/* kube and http may be NULL in unit tests that use only the cache. */
sb_token *sb_token_new(const sb_config *cfg, sb_kube *kube, sb_http *http);
void sb_token_free(sb_token *t); /* accepts NULL */

/* The token in an Authorization header value of len bytes: "Bearer"
 * (any case, RFC 7235 section 2.1), one or more spaces, then a b64token
 * (RFC 6750 section 2.1) of at most SB_MAX_BEARER_TOKEN bytes; whitespace
 * around it is ignored. *out_tok points into value. SB_E_UNAUTHORIZED with
 * *why otherwise. */
SB_MUST_CHECK sb_err sb_token_parse_header(const char *value, size_t len, const char **out_tok,
                                           size_t *out_len, const char **why);

/* The cache key of a token. SB_E_CRYPTO when GnuTLS refuses. */
SB_MUST_CHECK sb_err sb_token_key_of(const char *tok, size_t len, sb_token_key *out);

/* How long a positive review of tok may be cached at wall time wall_ms:
 * SB_TOKEN_ALLOW_TTL_MS, or less when the token's unverified `exp` claim
 * (RFC 7519 section 4.1.4) is sooner; 0 when it has passed. The claim can
 * only shorten the time, so reading it without checking the signature is
 * safe. */
int64_t sb_token_cache_ttl_ms(const char *tok, size_t len, int64_t wall_ms);

/* Reads a TokenReview answer (authentication.k8s.io/v1): authenticated,
 * audience in status.audiences, the user a ServiceAccount, and the pod
 * from the user's extra fields. Fills *out; never fails otherwise. */
void sb_token_read_review(const json_t *review, const char *audience, sb_token_result *out);

/* Applies a result to a request. cert is the identity the client
 * certificate gave, or NULL when there is none (MTLS_ENABLED=false): with
 * one, the token must name the same ServiceAccount. On SB_OK *out is the
 * caller (cert's identity, else the token's). Otherwise res->err, or
 * SB_E_UNAUTHORIZED for another ServiceAccount, with *why. */
SB_MUST_CHECK sb_err sb_token_check(const sb_token_result *res, const sb_identity *cert,
                                    sb_identity *out, const char **why);

/* The cached result for key if still fresh at monotonic time now. Any
 * thread. */
bool sb_token_lookup(sb_token *t, const sb_token_key *key, int64_t now, sb_token_result *out);

/* Caches res for ttl_ms from now (nothing when ttl_ms <= 0). Any thread. */
void sb_token_record(sb_token *t, const sb_token_key *key, const sb_token_result *res,
                     int64_t ttl_ms, int64_t now);

/* Number of cached results. */
size_t sb_token_cached(sb_token *t);

typedef void (*sb_token_done_fn)(const sb_token_result *res, void *ud);

/* Reviews tok (len bytes, copied) with key = sb_token_key_of(tok), caches
 * the result and calls done with it on the loop thread. Concurrent reviews
 * of one token share one call. Any thread; request_id is copied. */
void sb_token_review(sb_token *t, const sb_token_key *key, const char *tok, size_t len,
                     const char *request_id, sb_token_done_fn done, void *ud);

#endif
