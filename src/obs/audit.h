/* The audit log: one JSON line per API request, written in full before the
 * response is sent (DESIGN.md section 8), to AUDIT_LOG_PATH or stdout. A
 * record says who asked for what and what the broker answered; it never
 * holds a secret value. If a record cannot be written the caller answers
 * 503 and sends nothing (fail-closed) unless configured to fail open.
 *
 * The fields and their meaning are documented for operators in
 * docs/observability.md. Every key of the schema is always present; a
 * value the request did not have (no key asked for, no backend reached) is
 * JSON null. The one exception is "items", present on batch requests only.
 * Strings from the request are JSON-escaped byte by byte (quotes, control
 * characters, NUL and every non-ASCII byte become escapes), so any input
 * gives exactly one valid, ASCII-only line; they are cut at
 * SB_MAX_AUDIT_FIELD bytes (the path at SB_MAX_AUDIT_PATH). */
#ifndef SB_OBS_AUDIT_H
#define SB_OBS_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/error.h"

/* How long one record may wait for a pipe or socket sink (stdout read by a
 * log collector) to accept it, by default. A sink that stays full longer is
 * stalled: the write fails, and while it stays stalled later writes fail at
 * once instead of each waiting again. */
#define SB_AUDIT_STALL_MS 1000

typedef struct sb_audit sb_audit;

typedef struct sb_audit_options {
    bool enabled;     /* AUDIT_LOG_ENABLED; false: every call succeeds, writes nothing */
    const char *path; /* AUDIT_LOG_PATH; "-" is stdout */
    int stall_ms;     /* 0 means SB_AUDIT_STALL_MS */
} sb_audit_options;

/* A length-delimited string, which may hold any byte including NUL. A NULL
 * ptr is an absent value, written as null. */
typedef struct sb_audit_str {
    const char *ptr;
    size_t len;
} sb_audit_str;

/* Wraps a C string (NULL stays absent). */
static inline sb_audit_str sb_audit_cstr(const char *s)
{
    return (sb_audit_str){s, s ? strlen(s) : 0};
}

typedef enum sb_audit_decision {
    SB_AUDIT_NONE, /* no authorization decision was made (bad request, no identity) */
    SB_AUDIT_ALLOW,
    SB_AUDIT_DENY,
} sb_audit_decision;

/* One item of a batch request; its index is its position in the array. */
typedef struct sb_audit_item {
    sb_audit_str secret_name;
    sb_audit_str ns;
    sb_audit_str key;
    sb_audit_str version; /* resourceVersion or VersionId served */
    int status_code;
    const char *backend; /* sb_backend_kind_name(), or NULL when none answered */
    bool cache_hit;
    sb_audit_decision decision;
    const char *reason; /* short machine string, e.g. sb_err_code(); NULL for none */
} sb_audit_item;

/* What the request path knows about one request. Zero-initialise it and
 * fill what applies: zero values mean absent (null), none (decision),
 * false, or "now" (wall_ms). The record only borrows the strings. */
typedef struct sb_audit_record {
    int64_t wall_ms;         /* when the request arrived, ms since the epoch; 0: now */
    sb_audit_str request_id; /* also sent as X-Request-Id and Audit-ID */

    struct {
        sb_audit_str service_account;
        sb_audit_str ns;
        sb_audit_str pod;            /* from the TokenReview, when a token was sent */
        sb_audit_str pod_uid;        /* likewise */
        sb_audit_str cert_serial;    /* client certificate serial, hex */
        const char *identity_source; /* "spiffe", "cn" or "token"; NULL: no identity */
    } caller;

    struct {
        sb_audit_str method;
        sb_audit_str path; /* as received, query included */
        sb_audit_str secret_name;
        sb_audit_str ns; /* the namespace read from, after defaults */
        sb_audit_str key;
        sb_audit_str version_stage;
        sb_audit_str version_id;
        bool refresh;
        bool batch;         /* POST /v1/secrets/batch: writes batch_items and items */
        size_t batch_items; /* items the body named */
    } request;

    struct {
        int status_code;
        const char *backend; /* NULL when no backend answered */
        bool cache_hit;
        sb_audit_str version;
    } response;

    sb_audit_decision decision;
    const char *reason; /* short machine string (sb_err_code()); NULL for none */
    int64_t duration_us;
    const sb_audit_item *items; /* batch only: item_count results in request order */
    size_t item_count;
} sb_audit_record;

/* Opens the audit sink: the file at opts->path (created 0600 with
 * O_APPEND|O_CREAT|O_CLOEXEC; an existing file readable by group or
 * others is narrowed to 0600), or stdout for "-". Disabled options give a
 * log whose writes are no-ops that succeed. On success *out is written; on
 * failure (SB_E_CONFIG: enabled without a path; SB_E_IO: the file cannot be
 * opened or narrowed) nothing is. Call once at start-up. */
SB_MUST_CHECK sb_err sb_audit_open(const sb_audit_options *opts, sb_audit **out);

/* Writes one record as one line with one write(2) (more only if the sink
 * takes it in pieces), and assigns its sequence number: 1 for the first
 * record of the process, then +1 for every write attempted, so a gap in
 * the numbers marks a record that could not be written. Lines appear in
 * the sink in sequence order.
 * Returns SB_OK once the whole line has been handed to the kernel, and
 * SB_E_AUDIT when it has not (short write, ENOSPC, EPIPE, EBADF, a
 * stalled pipe...): the caller must then fail the request. A partly
 * written line is ended by a newline before the next record, so one
 * failure spoils one line at most. Counts secrets_broker_audit_records_total
 * or secrets_broker_audit_write_failures_total. Any thread; writers are
 * serialized. */
SB_MUST_CHECK sb_err sb_audit_write(sb_audit *a, const sb_audit_record *rec);

/* Reopens the sink at its path, for log rotation (`mv audit.log
 * audit.log.1`, then SIGHUP): later records go to the new file, records
 * written before go to the renamed one, none is lost or duplicated. On
 * failure (SB_E_IO) the old file stays in use. Also the way to retry
 * after the file became unwritable: on success the log counts as healthy
 * again until a write says otherwise. Stdout and disabled logs: SB_OK,
 * no-op.
 * Any thread, concurrently with writers; not async-signal-safe, so a
 * SIGHUP handler sets a flag and a normal thread calls this. */
SB_MUST_CHECK sb_err sb_audit_reopen(sb_audit *a);

/* For /readyz: false after a write failed, with *why (when why is not
 * NULL) a short static description, until the sink could take records
 * again: a later write succeeded, a reopen succeeded, or a probe finds
 * that the cause went away by itself (a stalled pipe or socket accepts
 * bytes again; a file that hit ENOSPC has free blocks again). Other
 * causes (EIO, a closed pipe, a device like /dev/full) need a write or a
 * reopen. A disabled log is always healthy. Any thread; lock-free while
 * healthy, a non-blocking try of the writers' lock otherwise. */
bool sb_audit_healthy(sb_audit *a, const char **why);

/* Asks the kernel to put written records on disk (fdatasync), for
 * shutdown. SB_E_IO when it reports an error. No-op for pipes, sockets,
 * terminals and disabled logs. Any thread. */
SB_MUST_CHECK sb_err sb_audit_flush(sb_audit *a);

/* Closes the sink (not stdout itself) and frees the log. Call after every
 * writer has stopped, and after sb_audit_flush to learn whether the last
 * records reached the disk. Accepts NULL. */
void sb_audit_close(sb_audit *a);

#endif
