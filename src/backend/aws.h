/* The AWS Secrets Manager backend: GetSecretValue, and BatchGetSecretValue
 * for fetches that arrive together, over the JSON 1.1 protocol, signed
 * with SigV4 under the broker's own AWS credentials (clients/aws_creds).
 * It does not read as the caller: the broker asks it only for callers
 * RBAC already allows (DESIGN.md section 4).
 *
 * Coalescing: a fetch without a version selector waits for others until
 * AWS_BATCH_WINDOW_MS (default 2 ms) have passed without a new one, and at
 * most five such windows in all; then, or as soon as 20 are waiting, one
 * alone goes out as GetSecretValue and several as one BatchGetSecretValue.
 * Ids the batch answer does not settle (errors other than not-found, or
 * missing entries) are fetched again one by one. Fetches with
 * version_stage or version_id always go alone.
 *
 * Retries: throttling, 5xx and transport failures are tried again, at most
 * SB_AWS_MAX_ATTEMPTS attempts in all, after a full-jitter backoff, only
 * while the request's deadline leaves room for another attempt, and only
 * while the retry budget (clients/retry) has a token, so a throttling AWS
 * gets at most about a tenth more calls than the broker's fetches. */
#ifndef SB_BACKEND_AWS_H
#define SB_BACKEND_AWS_H

#include "backend/backend.h"
#include "clients/http.h"

/* Builds the backend: region, template and prefix from cfg; endpoint,
 * AWS_CA_BUNDLE and credentials from env (the AWS SDKs' variables); starts
 * fetching temporary credentials at once. On failure SB_E_CONFIG with one
 * line in err naming the variable. Main thread, loop running. */
SB_MUST_CHECK sb_err sb_aws_backend_new(const sb_config *cfg, sb_http *http, sb_env_lookup env,
                                        sb_backend **out, char *err, size_t errlen);

#endif
