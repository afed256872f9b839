/* A retry budget: retries may add only a small share to the calls a client
 * makes, so a failing or throttling upstream sees a bounded multiple of
 * the load it would see without retries, not a storm (at most three times
 * as many calls when every call fails three times).
 *
 * Each first attempt adds SB_RETRY_RATIO of a token, up to a reserve of
 * SB_RETRY_RESERVE tokens (which is also where the budget starts, so a
 * quiet client can still retry); each retry spends a whole token. Over any
 * stretch of time, calls made are at most (1 + SB_RETRY_RATIO) times the
 * first attempts, plus the reserve. (The same idea as Finagle's
 * RetryBudget and the AWS SDKs' retry quota.)
 *
 * Not thread-safe: each client uses its budget from the http loop thread
 * only. */
#ifndef SB_CLIENTS_RETRY_H
#define SB_CLIENTS_RETRY_H

#include <stdbool.h>

#define SB_RETRY_RATIO   0.1
#define SB_RETRY_RESERVE 10.0

typedef struct sb_retry_budget {
    double tokens;
} sb_retry_budget;

/* A full reserve. */
void sb_retry_init(sb_retry_budget *rb);

/* A first attempt is being made. */
void sb_retry_first(sb_retry_budget *rb);

/* A retry would be made: true (and a token spent) when the budget has one. */
bool sb_retry_take(sb_retry_budget *rb);

#endif
