/* Per-identity token buckets: each key (a caller's identity, as bytes) has
 * a bucket of `burst` tokens refilled at `per_second`; a request takes one
 * token or is refused with the time until the next one. Memory is bounded:
 * at most max_keys buckets are remembered, least recently used forgotten
 * first (a forgotten key starts again with a full bucket). Used for
 * `?refresh=true` (REFRESH_RATE_PER_MINUTE) and per-identity request rates.
 * Thread-safe; the clock is passed in. */
#ifndef SB_BROKER_RATELIMIT_H
#define SB_BROKER_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/identity.h"

typedef struct sb_ratelimit sb_ratelimit;

/* A limiter of per_second tokens a second with buckets of burst tokens.
 * With burst below 1 every take is refused. */
sb_ratelimit *sb_ratelimit_new(double per_second, double burst, size_t max_keys);
void sb_ratelimit_free(sb_ratelimit *rl); /* accepts NULL */

/* Takes a token from key's bucket at now (monotonic ms). True when one was
 * there. False when not; then *out_retry_ms (when not NULL) says in how
 * many milliseconds the next token comes, or -1 when none ever will. */
bool sb_ratelimit_take(sb_ratelimit *rl, const void *key, size_t klen, int64_t now,
                       int64_t *out_retry_ms);

/* The same for a caller's identity ("<ns>/<sa>" is the key). */
bool sb_ratelimit_take_identity(sb_ratelimit *rl, const sb_identity *id, int64_t now,
                                int64_t *out_retry_ms);

/* Buckets remembered, for tests and metrics. */
size_t sb_ratelimit_keys(sb_ratelimit *rl);

#endif
