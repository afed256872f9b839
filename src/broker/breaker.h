/* A circuit breaker for one backend (DESIGN.md sections 6 and 10): after
 * BREAKER_FAILURE_THRESHOLD failed calls in a row it opens, and calls fail
 * at once, without reaching the backend, for BREAKER_OPEN_SECONDS; then it
 * is half-open and lets one call through as a probe: the probe's success
 * closes it, its failure opens it again. A failing backend then costs its
 * callers no waiting and gets no storm of calls while it recovers.
 *
 * Each admitted call carries a ticket, and only reports from the breaker's
 * current period count, so a slow call admitted before the breaker opened
 * cannot close it by succeeding late, nor be taken for the probe.
 *
 * Thread-safe (one lock); the clock is passed in. State changes are
 * counted in secrets_broker_breaker_* under the lock and logged. */
#ifndef SB_BROKER_BREAKER_H
#define SB_BROKER_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/error.h"

typedef enum sb_breaker_state {
    SB_BREAKER_CLOSED,
    SB_BREAKER_HALF_OPEN,
    SB_BREAKER_OPEN,
} sb_breaker_state;

typedef struct sb_breaker sb_breaker;

/* What an admitted call hands back with its outcome. */
typedef uint64_t sb_breaker_ticket;

/* A closed breaker for backend kind (named in metrics and logs) that opens
 * after threshold failures in a row (at least 1) for open_ms. */
sb_breaker *sb_breaker_new(sb_backend_kind kind, int threshold, int64_t open_ms);
void sb_breaker_free(sb_breaker *b); /* accepts NULL */

/* May a call go to the backend at now? True with *out_ticket set: the call
 * must then be reported with sb_breaker_report. False while the breaker is
 * open, or half-open with its probe still out; *out_retry_ms (when not
 * NULL) then says in how many milliseconds a call may be let through. */
bool sb_breaker_admit(sb_breaker *b, int64_t now, sb_breaker_ticket *out_ticket,
                      int64_t *out_retry_ms);

/* The outcome of an admitted call; failed as sb_breaker_failure says. */
void sb_breaker_report(sb_breaker *b, sb_breaker_ticket ticket, bool failed, int64_t now);

/* The state at now. An open breaker whose time is up reads half-open: the
 * next call will be let through as its probe. */
sb_breaker_state sb_breaker_state_at(sb_breaker *b, int64_t now);

/* The name of a state for /readyz and logs: "closed", "half_open", "open". */
const char *sb_breaker_state_name(sb_breaker_state state);

/* Whether a backend's answer says the backend is failing: it did not
 * answer in time, refused, answered 5xx or garbage, or asked to slow
 * down. Answers about the secret or the caller (found, not found,
 * forbidden), our own credentials and shutting down are not. */
bool sb_breaker_failure(sb_err err);

#endif
