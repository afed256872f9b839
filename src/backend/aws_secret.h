/* AWS Secrets Manager for the broker, without the network: the secret id
 * a request names under the template, a GetSecretValue answer as a secret
 * document (DESIGN.md section 5), what an AWS error means, and when to try
 * again. Pure functions; any thread. */
#ifndef SB_BACKEND_AWS_SECRET_H
#define SB_BACKEND_AWS_SECRET_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"

/* The secret id of ns/name: the template with {prefix}, {namespace} and
 * {name} replaced. An empty prefix removes "{prefix}" and one '/' right
 * after it, so "{prefix}/{namespace}/{name}" becomes "<ns>/<name>".
 * SB_E_CONFIG for an unknown placeholder, SB_E_TOO_LARGE past
 * SB_MAX_AWS_SECRET_ID (out must hold SB_MAX_AWS_SECRET_ID + 1 bytes). */
SB_MUST_CHECK sb_err sb_aws_secret_id(const char *tmpl, const char *prefix, const char *ns,
                                      const char *name, char *out);

/* What is wrong with a template or prefix (a static phrase), or NULL. */
const char *sb_aws_template_problem(const char *tmpl);
const char *sb_aws_prefix_problem(const char *prefix);

/* One GetSecretValue answer (or one SecretValues entry of
 * BatchGetSecretValue) as a document (DESIGN.md section 5):
 *  - a SecretString that is a flat JSON object (keys valid Secret keys,
 *    values scalars) gives one item per member; a string is its text, any
 *    other scalar its JSON text (5432, 1.5, true, false, null);
 *  - any other SecretString gives the item "value";
 *  - a SecretBinary gives the item "value" with the decoded bytes, and
 *    marks the document binary_only.
 * The version is VersionId. SB_E_UPSTREAM when malformed. */
SB_MUST_CHECK sb_err sb_aws_value_to_doc(const json_t *value, const char *ns, const char *name,
                                         sb_secret_doc **out);

/* What an AWS answer means. */
typedef struct sb_aws_outcome {
    sb_err err;         /* SB_OK for 200 */
    const char *detail; /* static, safe for the client */
    bool retry;         /* throttling, 5xx, transport: worth another attempt */
    bool credentials;   /* the broker's own credentials or role: log the source */
    bool expired;       /* the key expired: renew it and try once more */
    bool denied;        /* the role lacks the permission (AccessDenied) */
} sb_aws_outcome;

/* Classifies an answer from transport error, HTTP status and AWS error
 * code ("" when none). */
sb_aws_outcome sb_aws_classify(sb_err transport, long status, const char *code);

#define SB_AWS_MAX_ATTEMPTS    3
#define SB_AWS_BACKOFF_BASE_MS 100 /* full jitter over base * 2^(attempt-1) */
#define SB_AWS_BACKOFF_CAP_MS  2000
#define SB_AWS_MIN_ATTEMPT_MS  100 /* room an attempt needs before the deadline */
/* An attempt the request's deadline cuts short may run this much past
 * it, so the deadline answers (504) and the attempt's own timeout, which
 * would say 503, never wins the race by a millisecond. */
#define SB_AWS_DEADLINE_GRACE_MS 50

/* When to try again after `attempts` attempts failed retryably, with the
 * AWS full-jitter backoff: a delay drawn from random over
 * [0, min(cap, base * 2^(attempts-1))], at least retry_after_s when the
 * answer named one (-1: none). -1 when no attempt is left or the next one
 * would not fit before deadline_ms. Monotonic milliseconds. */
int64_t sb_aws_retry_at(int attempts, int64_t now_ms, int64_t deadline_ms, int retry_after_s,
                        uint64_t random);

#endif
