/* Circuit breakers (see breaker.h). A period is the time between two state
 * changes; its number is the ticket of every call admitted in it. */
#include "broker/breaker.h"

#include <pthread.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "obs/log.h"
#include "obs/metrics.h"

/* How long a refused caller is told to wait while a probe is out. */
#define PROBE_RETRY_MS 1000

struct sb_breaker {
    pthread_mutex_t lock;
    sb_backend_kind kind;
    int threshold;
    int64_t open_ms;
    sb_breaker_state state;
    uint64_t period;  /* bumped at every state change */
    int failures;     /* in a row, in the current closed period */
    int64_t until_ms; /* open: when a probe may go; half-open: when it is lost */
};

sb_breaker *sb_breaker_new(sb_backend_kind kind, int threshold, int64_t open_ms)
{
    sb_breaker *b = sb_xcalloc(1, sizeof(*b));

    pthread_mutex_init(&b->lock, NULL);
    b->kind = kind;
    b->threshold = threshold > 0 ? threshold : 1;
    b->open_ms = open_ms > 0 ? open_ms : 1;
    b->state = SB_BREAKER_CLOSED;
    b->period = 1;
    return b;
}

void sb_breaker_free(sb_breaker *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->lock);
    free(b);
}

static sb_metrics_breaker_state metric_state(sb_breaker_state s)
{
    switch (s) {
    case SB_BREAKER_CLOSED:
        return SB_METRICS_BREAKER_CLOSED;
    case SB_BREAKER_HALF_OPEN:
        return SB_METRICS_BREAKER_HALF_OPEN;
    case SB_BREAKER_OPEN:
        return SB_METRICS_BREAKER_OPEN;
    }
    return SB_METRICS_BREAKER_OPEN;
}

/* Under the lock: a new period in state to, counted in order. */
static void move(sb_breaker *b, sb_breaker_state to, int64_t until_ms)
{
    b->state = to;
    b->period++;
    b->failures = 0;
    b->until_ms = until_ms;
    sb_metrics_breaker(b->kind, metric_state(to));
}

static void log_move(const sb_breaker *b, sb_breaker_state to)
{
    const char *name = sb_backend_kind_name(b->kind);

    if (to == SB_BREAKER_OPEN)
        SB_WARN("breaker", NULL, "%s: circuit breaker open for %lld ms after failed calls", name,
                (long long)b->open_ms);
    else if (to == SB_BREAKER_HALF_OPEN)
        SB_INFO("breaker", NULL, "%s: circuit breaker half-open, letting one call through", name);
    else
        SB_INFO("breaker", NULL, "%s: circuit breaker closed, the backend answers again", name);
}

/* Under the lock: whether a call may go now, moving open to half-open
 * when the open time is up, and sending a new probe when the last one was
 * lost (it never reported within the open time). */
static bool admit_locked(sb_breaker *b, int64_t now, int64_t *retry_ms, bool *moved)
{
    switch (b->state) {
    case SB_BREAKER_CLOSED:
        return true;
    case SB_BREAKER_OPEN:
        if (now < b->until_ms) {
            *retry_ms = b->until_ms - now;
            return false;
        }
        move(b, SB_BREAKER_HALF_OPEN, now + b->open_ms);
        *moved = true;
        return true;
    case SB_BREAKER_HALF_OPEN:
        if (now < b->until_ms) {
            *retry_ms = PROBE_RETRY_MS;
            return false;
        }
        b->period++; /* the lost probe's report no longer counts */
        b->until_ms = now + b->open_ms;
        return true;
    }
    return false;
}

bool sb_breaker_admit(sb_breaker *b, int64_t now, sb_breaker_ticket *out_ticket,
                      int64_t *out_retry_ms)
{
    int64_t retry_ms = 0;
    bool moved = false;

    pthread_mutex_lock(&b->lock);
    bool ok = admit_locked(b, now, &retry_ms, &moved);
    uint64_t period = b->period;
    pthread_mutex_unlock(&b->lock);

    if (moved)
        log_move(b, SB_BREAKER_HALF_OPEN);
    if (ok)
        *out_ticket = period;
    else if (out_retry_ms)
        *out_retry_ms = retry_ms;
    return ok;
}

void sb_breaker_report(sb_breaker *b, sb_breaker_ticket ticket, bool failed, int64_t now)
{
    bool moved = false;
    sb_breaker_state to = SB_BREAKER_CLOSED;

    pthread_mutex_lock(&b->lock);
    if (ticket == b->period && b->state == SB_BREAKER_HALF_OPEN) {
        /* The probe's answer decides. */
        to = failed ? SB_BREAKER_OPEN : SB_BREAKER_CLOSED;
        move(b, to, failed ? now + b->open_ms : 0);
        moved = true;
    } else if (ticket == b->period && b->state == SB_BREAKER_CLOSED) {
        b->failures = failed ? b->failures + 1 : 0;
        if (b->failures >= b->threshold) {
            to = SB_BREAKER_OPEN;
            move(b, to, now + b->open_ms);
            moved = true;
        }
    }
    pthread_mutex_unlock(&b->lock);

    if (moved)
        log_move(b, to);
}

sb_breaker_state sb_breaker_state_at(sb_breaker *b, int64_t now)
{
    pthread_mutex_lock(&b->lock);
    sb_breaker_state s = b->state;
    if (s == SB_BREAKER_OPEN && now >= b->until_ms)
        s = SB_BREAKER_HALF_OPEN;
    pthread_mutex_unlock(&b->lock);
    return s;
}

const char *sb_breaker_state_name(sb_breaker_state state)
{
    switch (state) {
    case SB_BREAKER_CLOSED:
        return "closed";
    case SB_BREAKER_HALF_OPEN:
        return "half_open";
    case SB_BREAKER_OPEN:
        return "open";
    }
    return "open";
}

bool sb_breaker_failure(sb_err err)
{
    switch (err) {
    case SB_E_UPSTREAM:
    case SB_E_UNAVAILABLE:
    case SB_E_THROTTLED:
    case SB_E_TIMEOUT:
        return true;
    default:
        return false;
    }
}
