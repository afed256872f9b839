/* The audit log (see audit.h). A record is built into a stack buffer (the
 * heap only for large batch records) by a hand-written JSON writer, then
 * written under one mutex.
 *
 * Why one mutex around the write rather than an rwlock or an atomic fd
 * swap: the kernel already serializes appends to one file (the inode lock
 * is held for each write), so the mutex costs little over what write(2)
 * does anyway, and it buys three things lock-free writers cannot have.
 * Whole lines in a pipe or socket even past PIPE_BUF, where concurrent
 * writes may interleave; the remainder of a short write can be sent
 * before anyone else writes; and sequence numbers handed out under the
 * lock appear in the sink in order. Reopen swaps the descriptor under the
 * same lock, so each record goes whole to either the old file or the new
 * one, never both and never neither. */
#include "obs/audit.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/limits.h"
#include "obs/log.h"
#include "obs/metrics.h"

#define LINE_STACK 8192
#define HEAD_ROOM  80 /* before the body: "\n" + {"ts":"...","seq":N, */

struct sb_audit {
    bool enabled;
    char *path; /* NULL for stdout */
    int stall_ms;

    pthread_mutex_t lock; /* serializes writes and reopen (see above) */
    int fd;               /* the fields down to seq are guarded by lock */
    bool owns_fd;         /* false for stdout itself */
    bool is_socket;       /* write with send(MSG_NOSIGNAL) */
    bool torn;            /* the sink ends in a partial line */
    bool stalled;         /* the last write timed out on a full pipe */
    int last_err;         /* errno of the last failed write; 0 after a success */
    uint64_t seq;         /* last number handed out; under lock, so no atomic needed */

    atomic_bool healthy;
    _Atomic(const char *) why;
};

/* The line being built. */
typedef struct line {
    char *data;
    size_t len;
    size_t cap;
    char stack[LINE_STACK];
} line;

static void line_init(line *l)
{
    l->data = l->stack;
    l->cap = sizeof(l->stack);
    l->len = HEAD_ROOM;
}

static void line_free(line *l)
{
    if (l->data != l->stack)
        free(l->data);
}

/* Makes room for n more bytes and a NUL. */
static void reserve(line *l, size_t n)
{
    size_t cap = l->cap;

    if (n < cap - l->len)
        return;
    while (n >= cap - l->len)
        cap *= 2;
    if (l->data == l->stack) {
        l->data = sb_xmalloc(cap);
        memcpy(l->data, l->stack, l->len);
    } else {
        l->data = sb_xrealloc(l->data, cap);
    }
    l->cap = cap;
}

static void put(line *l, const char *s, size_t n)
{
    reserve(l, n);
    memcpy(l->data + l->len, s, n);
    l->len += n;
}

#define PUT_LIT(l, s) put((l), (s), sizeof(s) - 1)

/* Decimal digits of v, written backwards from end; returns the start. */
static char *format_u64(char *end, unsigned long long v)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

static void put_int(line *l, long long v)
{
    char num[24];
    char *end = num + sizeof(num);
    char *p = format_u64(end, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v);

    if (v < 0)
        *--p = '-';
    put(l, p, (size_t)(end - p));
}

static void put_bool(line *l, bool v)
{
    if (v)
        PUT_LIT(l, "true");
    else
        PUT_LIT(l, "false");
}

/* A JSON string of at most max input bytes, or null when absent. */
static void put_str(line *l, sb_audit_str s, size_t max)
{
    size_t n = s.len < max ? s.len : max;

    if (!s.ptr) {
        PUT_LIT(l, "null");
        return;
    }
    /* An escape is at most 6 bytes per input byte ("\u00XX"). */
    reserve(l, 6 * n + 2);
    l->data[l->len++] = '"';
    l->len += sb_json_escape(l->data + l->len, l->cap - l->len, s.ptr, n, max);
    l->data[l->len++] = '"';
}

static void put_cstr(line *l, const char *s)
{
    put_str(l, sb_audit_cstr(s), SB_MAX_AUDIT_FIELD);
}

static void put_field(line *l, sb_audit_str s)
{
    put_str(l, s, SB_MAX_AUDIT_FIELD);
}

static const char *decision_name(sb_audit_decision d)
{
    switch (d) {
    case SB_AUDIT_ALLOW:
        return "allow";
    case SB_AUDIT_DENY:
        return "deny";
    default:
        return "none";
    }
}

static void put_caller(line *l, const sb_audit_record *rec)
{
    PUT_LIT(l, ",\"caller\":{\"service_account\":");
    put_field(l, rec->caller.service_account);
    PUT_LIT(l, ",\"namespace\":");
    put_field(l, rec->caller.ns);
    PUT_LIT(l, ",\"pod\":");
    put_field(l, rec->caller.pod);
    PUT_LIT(l, ",\"pod_uid\":");
    put_field(l, rec->caller.pod_uid);
    PUT_LIT(l, ",\"cert_serial\":");
    put_field(l, rec->caller.cert_serial);
    PUT_LIT(l, ",\"identity_source\":");
    put_cstr(l, rec->caller.identity_source);
    PUT_LIT(l, "}");
}

static void put_request(line *l, const sb_audit_record *rec)
{
    PUT_LIT(l, ",\"request\":{\"method\":");
    put_field(l, rec->request.method);
    PUT_LIT(l, ",\"path\":");
    put_str(l, rec->request.path, SB_MAX_AUDIT_PATH);
    PUT_LIT(l, ",\"secret_name\":");
    put_field(l, rec->request.secret_name);
    PUT_LIT(l, ",\"namespace\":");
    put_field(l, rec->request.ns);
    PUT_LIT(l, ",\"key\":");
    put_field(l, rec->request.key);
    PUT_LIT(l, ",\"version_stage\":");
    put_field(l, rec->request.version_stage);
    PUT_LIT(l, ",\"version_id\":");
    put_field(l, rec->request.version_id);
    PUT_LIT(l, ",\"refresh\":");
    put_bool(l, rec->request.refresh);
    PUT_LIT(l, ",\"batch_items\":");
    if (rec->request.batch)
        put_int(l, (long long)rec->request.batch_items);
    else
        PUT_LIT(l, "null");
    PUT_LIT(l, "}");
}

static void put_response(line *l, const sb_audit_record *rec)
{
    PUT_LIT(l, ",\"response\":{\"status_code\":");
    put_int(l, rec->response.status_code);
    PUT_LIT(l, ",\"backend\":");
    put_cstr(l, rec->response.backend);
    PUT_LIT(l, ",\"cache_hit\":");
    put_bool(l, rec->response.cache_hit);
    PUT_LIT(l, ",\"version\":");
    put_field(l, rec->response.version);
    PUT_LIT(l, "}");
}

static void put_item(line *l, const sb_audit_item *it, size_t index)
{
    PUT_LIT(l, "{\"index\":");
    put_int(l, (long long)index);
    PUT_LIT(l, ",\"secret_name\":");
    put_field(l, it->secret_name);
    PUT_LIT(l, ",\"namespace\":");
    put_field(l, it->ns);
    PUT_LIT(l, ",\"key\":");
    put_field(l, it->key);
    PUT_LIT(l, ",\"status_code\":");
    put_int(l, it->status_code);
    PUT_LIT(l, ",\"backend\":");
    put_cstr(l, it->backend);
    PUT_LIT(l, ",\"cache_hit\":");
    put_bool(l, it->cache_hit);
    PUT_LIT(l, ",\"decision\":\"");
    put(l, decision_name(it->decision), strlen(decision_name(it->decision)));
    PUT_LIT(l, "\",\"reason\":");
    put_cstr(l, it->reason);
    PUT_LIT(l, ",\"version\":");
    put_field(l, it->version);
    PUT_LIT(l, "}");
}

/* Everything after the head ({"ts":...,"seq":N,), which is only known
 * under the lock. */
static void put_body(line *l, const sb_audit_record *rec)
{
    int64_t us = rec->duration_us > 0 ? rec->duration_us : 0;
    char ms[32];
    int n;

    PUT_LIT(l, "\"request_id\":");
    put_str(l, rec->request_id, SB_MAX_REQUEST_ID);
    put_caller(l, rec);
    put_request(l, rec);
    put_response(l, rec);
    PUT_LIT(l, ",\"decision\":\"");
    put(l, decision_name(rec->decision), strlen(decision_name(rec->decision)));
    PUT_LIT(l, "\",\"reason\":");
    put_cstr(l, rec->reason);

    n = snprintf(ms, sizeof(ms), ",\"duration_ms\":%lld.%03lld", (long long)(us / 1000),
                 (long long)(us % 1000));
    put(l, ms, (size_t)n);

    if (rec->request.batch) {
        PUT_LIT(l, ",\"items\":[");
        for (size_t i = 0; i < rec->item_count; i++) {
            if (i)
                PUT_LIT(l, ",");
            put_item(l, &rec->items[i], i);
        }
        PUT_LIT(l, "]");
    }
    PUT_LIT(l, "}\n");
}

/* Opening the sink. */

static sb_err open_file(const char *path, int *out_fd)
{
    /* O_NONBLOCK: a FIFO without a reader fails at once instead of
     * blocking start-up, and a FIFO with one never blocks a writer past
     * the stall limit. Regular files ignore it. */
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0600);
    struct stat st;

    if (fd < 0)
        return SB_E_IO;
    if (fstat(fd, &st) != 0)
        goto out_close;
    /* DESIGN.md section 8: the audit log is mode 0600. */
    if (S_ISREG(st.st_mode) && (st.st_mode & 077) && fchmod(fd, 0600) != 0)
        goto out_close;
    *out_fd = fd;
    return SB_OK;

out_close:
    close(fd);
    return SB_E_IO;
}

/* Stdout as the sink, through a descriptor of the log's own (so later
 * changes to descriptor 1 do not move it). A pipe is opened anew through
 * /proc, which gives a file description of its own that can be
 * non-blocking (to detect a stalled reader) without changing the flags of
 * the process's stdout; sockets get MSG_DONTWAIT on each send instead. */
static void open_stdout(sb_audit *a)
{
    struct stat st;
    int fd = -1;

    if (fstat(STDOUT_FILENO, &st) == 0 && S_ISFIFO(st.st_mode))
        fd = open("/proc/self/fd/1", O_WRONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);

    a->fd = fd >= 0 ? fd : STDOUT_FILENO;
    a->owns_fd = fd >= 0;
    a->is_socket = fstat(a->fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

sb_err sb_audit_open(const sb_audit_options *opts, sb_audit **out)
{
    sb_audit *a;
    int fd = -1;

    if (opts->enabled && (!opts->path || !opts->path[0]))
        return SB_E_CONFIG;
    if (opts->enabled && strcmp(opts->path, "-") != 0 && open_file(opts->path, &fd) != SB_OK)
        return SB_E_IO;

    a = sb_xcalloc(1, sizeof(*a));
    a->enabled = opts->enabled;
    a->stall_ms = opts->stall_ms > 0 ? opts->stall_ms : SB_AUDIT_STALL_MS;
    pthread_mutex_init(&a->lock, NULL);
    atomic_init(&a->healthy, true);
    atomic_init(&a->why, NULL);
    a->fd = -1;
    if (fd >= 0) {
        a->path = sb_xstrdup(opts->path);
        a->fd = fd;
        a->owns_fd = true;
    } else if (opts->enabled) {
        open_stdout(a);
    }
    *out = a;
    return SB_OK;
}

/* Writing. */

static const char *describe(int err)
{
    switch (err) {
    case ENOSPC:
    case EDQUOT:
        return "audit log: no space left on device";
    case EPIPE:
    case ECONNRESET:
        return "audit log: reader closed the pipe";
    case EAGAIN:
        return "audit log: sink stalled (reader not keeping up)";
    case EFBIG:
        return "audit log: file too large";
    case EIO:
        return "audit log: I/O error";
    case EBADF:
        return "audit log: not open";
    default:
        return "audit log: write failed";
    }
}

static ssize_t write_some(const sb_audit *a, const char *p, size_t n)
{
    if (a->is_socket)
        return send(a->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    return write(a->fd, p, n);
}

/* Waits until the sink takes more bytes or the deadline passes. */
static bool wait_writable(int fd, int64_t deadline_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int64_t left = deadline_ms - sb_clock_mono_ms();
    int r;

    if (left <= 0)
        return false;
    do {
        r = poll(&pfd, 1, (int)left);
    } while (r < 0 && errno == EINTR);
    return r > 0 && !(pfd.revents & POLLNVAL);
}

/* Writes all n bytes; 0 on success, else the errno that stopped it.
 * Called under a->lock. */
static int write_all(sb_audit *a, const char *p, size_t n)
{
    int64_t deadline = sb_clock_mono_ms() + (a->stalled ? 0 : a->stall_ms);
    bool started = false;

    while (n > 0) {
        ssize_t w = write_some(a, p, n);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_writable(a->fd, deadline))
            continue;
        if (w <= 0) {
            int err = w < 0 ? errno : EIO;
            a->torn = a->torn || started;
            a->stalled = err == EAGAIN || err == EWOULDBLOCK;
            return err == EWOULDBLOCK ? EAGAIN : err;
        }
        started = true;
        p += w;
        n -= (size_t)w;
    }
    a->torn = false;
    a->stalled = false;
    return 0;
}

/* Writes the record's head, [\n]{"ts":"<ts>","seq":<seq>, so that it ends
 * at end (right to left, without formatting calls: this runs for every
 * request); returns where it starts. */
static char *head_before(char *end, const char *ts, unsigned long long seq, bool torn)
{
    static const char open[] = "{\"ts\":\"";
    static const char seq_key[] = "\",\"seq\":";
    size_t tslen = strlen(ts);
    char *p = end;

    *--p = ',';
    p = format_u64(p, seq);
    p -= sizeof(seq_key) - 1;
    memcpy(p, seq_key, sizeof(seq_key) - 1);
    p -= tslen;
    memcpy(p, ts, tslen);
    p -= sizeof(open) - 1;
    memcpy(p, open, sizeof(open) - 1);
    if (torn)
        *--p = '\n';
    return p;
}

/* Puts the head in front of the body, numbers the record and writes it. */
static int write_record(sb_audit *a, line *l, const char *ts)
{
    int err;

    pthread_mutex_lock(&a->lock);
    char *start = head_before(l->data + HEAD_ROOM, ts, ++a->seq, a->torn);
    err = a->fd < 0 ? EBADF : write_all(a, start, (size_t)(l->data + l->len - start));

    /* Health follows the last write in sink order, so it is set here. */
    a->last_err = err;
    if (err)
        atomic_store(&a->why, describe(err));
    atomic_store(&a->healthy, err == 0);
    pthread_mutex_unlock(&a->lock);
    return err;
}

sb_err sb_audit_write(sb_audit *a, const sb_audit_record *rec)
{
    char ts[SB_CLOCK_RFC3339_LEN];
    line l;
    int err;

    if (!a->enabled)
        return SB_OK;

    sb_clock_rfc3339(rec->wall_ms > 0 ? rec->wall_ms : sb_clock_wall_ms(), ts);
    line_init(&l);
    put_body(&l, rec);
    err = write_record(a, &l, ts);
    line_free(&l);

    if (err) {
        sb_metrics_inc(SB_METRICS_AUDIT_WRITE_FAILURES);
        return SB_E_AUDIT;
    }
    sb_metrics_inc(SB_METRICS_AUDIT_RECORDS);
    return SB_OK;
}

sb_err sb_audit_reopen(sb_audit *a)
{
    int fd;
    int old;
    bool old_owned;

    if (!a->enabled || !a->path)
        return SB_OK;
    if (open_file(a->path, &fd) != SB_OK)
        return SB_E_IO;

    pthread_mutex_lock(&a->lock);
    old = a->fd;
    old_owned = a->owns_fd;
    a->fd = fd;
    a->owns_fd = true;
    a->is_socket = false; /* open(2) cannot open a socket */
    a->torn = false;
    a->stalled = false;
    a->last_err = 0;
    /* A fresh sink is presumed good: "fix the cause, then SIGHUP" must
     * bring /readyz back without waiting for traffic that, with the pod
     * out of the Service, would never come. */
    atomic_store(&a->healthy, true);
    pthread_mutex_unlock(&a->lock);

    if (old_owned && old >= 0)
        close(old);
    return SB_OK;
}

/* Whether a sink whose last write failed could take a record now. Only
 * causes that heal by themselves are probed: a pipe or socket whose
 * reader caught up, a file whose file system has room again. Called
 * under a->lock. */
static bool sink_has_room(const sb_audit *a)
{
    struct pollfd pfd = {.fd = a->fd, .events = POLLOUT};
    struct statvfs vfs;
    struct stat st;

    if (a->fd < 0 || fstat(a->fd, &st) != 0)
        return false;
    if (a->last_err == EAGAIN)
        return poll(&pfd, 1, 0) == 1 && pfd.revents == POLLOUT;
    /* Regular files only: /dev/full reports ENOSPC on a file system
     * with room. */
    if (a->last_err == ENOSPC && S_ISREG(st.st_mode))
        return fstatvfs(a->fd, &vfs) == 0 && vfs.f_bavail > 0;
    return false;
}

bool sb_audit_healthy(sb_audit *a, const char **why)
{
    bool room = false;

    if (atomic_load(&a->healthy))
        return true;

    /* A writer holding the lock will settle the question itself. */
    if (pthread_mutex_trylock(&a->lock) == 0) {
        room = sink_has_room(a);
        if (room) {
            a->stalled = false; /* the next write may wait again */
            atomic_store(&a->healthy, true);
        }
        pthread_mutex_unlock(&a->lock);
    }
    if (!room && why)
        *why = atomic_load(&a->why);
    return room;
}

sb_err sb_audit_flush(sb_audit *a)
{
    struct stat st;
    sb_err err = SB_OK;

    if (!a->enabled)
        return SB_OK;
    pthread_mutex_lock(&a->lock);
    if (a->fd >= 0 && fstat(a->fd, &st) == 0 && S_ISREG(st.st_mode) && fdatasync(a->fd) != 0)
        err = SB_E_IO;
    pthread_mutex_unlock(&a->lock);
    return err;
}

void sb_audit_close(sb_audit *a)
{
    if (!a)
        return;
    if (a->owns_fd && a->fd >= 0)
        close(a->fd);
    pthread_mutex_destroy(&a->lock);
    free(a->path);
    free(a);
}
