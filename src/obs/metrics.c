/* The fixed metrics registry and its Prometheus text rendering (see
 * metrics.h). Every series is one relaxed atomic in static storage; a
 * table of families says how to name and label them when rendering. */
#include "obs/metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define NELEMS(a)     (sizeof(a) / sizeof((a)[0]))
#define BACKEND_KINDS 3 /* SB_BACKEND_K8S, _AWS, _FILE */
#define LINE_BYTES    512
#define BUILD_TEXT    64

typedef atomic_llong cell;

/* Label values, in the order of the enums that index them. */
static const char *const endpoint_names[] = {"secret", "key", "batch", "other"};
static const int status_codes[] = {200, 400, 401, 403, 404, 405, 413,
                                   414, 429, 431, 500, 502, 503, 504};
static const char *const code_names[] = {"200", "400", "401", "403", "404", "405", "413",
                                         "414", "429", "431", "500", "502", "503", "504"};
static const char *const backend_names[] = {"kubernetes", "aws-secrets-manager", "file"};
static const char *const error_reasons[] = {"timeout",      "unavailable", "throttled",
                                            "bad_response", "credentials", "forbidden_upstream",
                                            "other"};
static const char *const outcome_names[] = {"ok",        "not_found", "forbidden",
                                            "throttled", "timeout",   "error"};
static const char *const decision_names[] = {"allow", "deny"};
static const char *const source_names[] = {"cache", "sar", "upstream", "own_namespace"};
static const char *const breaker_names[] = {"closed", "half_open", "open"};
static const char *const tls_reasons[] = {"no_certificate", "untrusted",   "expired",
                                          "not_yet_valid",  "bad_purpose", "ca_as_leaf",
                                          "protocol",       "other"};
static const char *const id_reasons[] = {"no_uri_san", "many_uri_sans", "bad_spiffe_id",
                                         "foreign_trust_domain", "token"};
static const char *const reload_results[] = {"ok", "failed"};

_Static_assert(NELEMS(endpoint_names) == SB_METRICS_EP_COUNT_, "endpoint labels");
_Static_assert(NELEMS(code_names) == NELEMS(status_codes), "code labels");
_Static_assert(NELEMS(source_names) == SB_METRICS_AUTHZ_COUNT_, "source labels");
_Static_assert(NELEMS(breaker_names) == SB_METRICS_BREAKER_COUNT_, "breaker labels");
_Static_assert(NELEMS(tls_reasons) == SB_METRICS_TLS_COUNT_, "tls labels");
_Static_assert(NELEMS(id_reasons) == SB_METRICS_ID_COUNT_, "identity labels");

/* Indexes into the tables above that the code names. */
enum { CODE_200 = 0, CODE_400 = 1, CODE_500 = 10, REASON_OTHER = 6, OUTCOME_ERROR = 5 };

/* Latency buckets in microseconds, 0.1 ms .. 10 s, and their `le` labels. */
static const int64_t bucket_us[] = {100,     250,     500,     1000,    2500,   5000,
                                    10000,   25000,   50000,   100000,  250000, 500000,
                                    1000000, 2500000, 5000000, 10000000};
static const char *const bucket_le[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
                                        "0.01",   "0.025",   "0.05",   "0.1",   "0.25",   "0.5",
                                        "1",      "2.5",     "5",      "10"};
#define BUCKETS NELEMS(bucket_us)
_Static_assert(NELEMS(bucket_le) == BUCKETS, "bucket labels");

/* The series. */
static cell requests[SB_METRICS_EP_COUNT_][NELEMS(status_codes)];
static cell latency[SB_METRICS_EP_COUNT_][BUCKETS + 1]; /* last: above 10 s */
static cell latency_sum_us[SB_METRICS_EP_COUNT_];
static cell cache_hits[BACKEND_KINDS];
static cell cache_misses[BACKEND_KINDS];
static cell fetched[BACKEND_KINDS];
static cell backend_errors[BACKEND_KINDS][NELEMS(error_reasons)];
static cell upstream[BACKEND_KINDS][NELEMS(outcome_names)];
static cell authz[2][SB_METRICS_AUTHZ_COUNT_];
static cell breaker_state[BACKEND_KINDS];
static cell breaker_moves[BACKEND_KINDS][SB_METRICS_BREAKER_COUNT_];
static cell tls_failures[SB_METRICS_TLS_COUNT_];
static cell id_rejections[SB_METRICS_ID_COUNT_];
static cell tls_reloads[2];
static cell counters[SB_METRICS_COUNTER_COUNT_];
static cell gauges[SB_METRICS_GAUGE_COUNT_];

/* Written once at start-up, before any render. */
static char build_tls[BUILD_TEXT] = "unknown";
static char build_http[BUILD_TEXT] = "unknown";

static void add(cell *c, long long n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static long long load(cell *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static bool valid_backend(sb_backend_kind be)
{
    return (unsigned)be < BACKEND_KINDS;
}

static size_t code_index(int status)
{
    for (size_t i = 0; i < NELEMS(status_codes); i++) {
        if (status_codes[i] == status)
            return i;
    }
    if (status >= 200 && status < 300)
        return CODE_200;
    if (status >= 400 && status < 500)
        return CODE_400;
    return CODE_500;
}

static size_t bucket_index(int64_t us)
{
    size_t i = 0;

    while (i < BUCKETS && us > bucket_us[i])
        i++;
    return i;
}

void sb_metrics_request(sb_metrics_endpoint ep, int status, int64_t duration_us)
{
    if ((unsigned)ep >= SB_METRICS_EP_COUNT_)
        return;
    if (duration_us < 0)
        duration_us = 0;

    add(&requests[ep][code_index(status)], 1);
    add(&latency[ep][bucket_index(duration_us)], 1);
    add(&latency_sum_us[ep], duration_us);
}

void sb_metrics_cache(sb_backend_kind be, bool hit)
{
    if (valid_backend(be))
        add(hit ? &cache_hits[be] : &cache_misses[be], 1);
}

void sb_metrics_fetched(sb_backend_kind be)
{
    if (valid_backend(be))
        add(&fetched[be], 1);
}

static size_t error_reason(sb_err err)
{
    switch (err) {
    case SB_E_TIMEOUT:
        return 0;
    case SB_E_UNAVAILABLE:
    case SB_E_SHUTDOWN:
        return 1;
    case SB_E_THROTTLED:
        return 2;
    case SB_E_UPSTREAM:
        return 3;
    case SB_E_CREDENTIALS:
        return 4;
    case SB_E_FORBIDDEN:
        return 5;
    default:
        return REASON_OTHER;
    }
}

void sb_metrics_backend_error(sb_backend_kind be, sb_err err)
{
    if (!valid_backend(be) || err == SB_OK || err == SB_E_NOT_FOUND)
        return;
    add(&backend_errors[be][error_reason(err)], 1);
}

static size_t outcome(sb_err result)
{
    switch (result) {
    case SB_OK:
        return 0;
    case SB_E_NOT_FOUND:
        return 1;
    case SB_E_FORBIDDEN:
        return 2;
    case SB_E_THROTTLED:
        return 3;
    case SB_E_TIMEOUT:
        return 4;
    default:
        return OUTCOME_ERROR;
    }
}

void sb_metrics_upstream(sb_backend_kind be, sb_err result)
{
    if (valid_backend(be))
        add(&upstream[be][outcome(result)], 1);
}

void sb_metrics_authz(bool allow, sb_metrics_authz_source source)
{
    if ((unsigned)source < SB_METRICS_AUTHZ_COUNT_)
        add(&authz[allow ? 0 : 1][source], 1);
}

void sb_metrics_breaker(sb_backend_kind be, sb_metrics_breaker_state to)
{
    if (!valid_backend(be) || (unsigned)to >= SB_METRICS_BREAKER_COUNT_)
        return;
    atomic_store_explicit(&breaker_state[be], (long long)to, memory_order_relaxed);
    add(&breaker_moves[be][to], 1);
}

void sb_metrics_tls_failure(sb_metrics_tls_reason reason)
{
    if ((unsigned)reason < SB_METRICS_TLS_COUNT_)
        add(&tls_failures[reason], 1);
}

void sb_metrics_identity_rejected(sb_metrics_id_reason reason)
{
    if ((unsigned)reason < SB_METRICS_ID_COUNT_)
        add(&id_rejections[reason], 1);
}

void sb_metrics_tls_reload(bool ok)
{
    add(&tls_reloads[ok ? 0 : 1], 1);
}

void sb_metrics_inc(sb_metrics_counter counter)
{
    if ((unsigned)counter < SB_METRICS_COUNTER_COUNT_)
        add(&counters[counter], 1);
}

void sb_metrics_gauge_set(sb_metrics_gauge gauge, int64_t value)
{
    if ((unsigned)gauge < SB_METRICS_GAUGE_COUNT_)
        atomic_store_explicit(&gauges[gauge], value, memory_order_relaxed);
}

void sb_metrics_gauge_add(sb_metrics_gauge gauge, int64_t delta)
{
    if ((unsigned)gauge < SB_METRICS_GAUGE_COUNT_)
        add(&gauges[gauge], delta);
}

void sb_metrics_set_build_info(const char *tls, const char *http)
{
    if (tls)
        snprintf(build_tls, sizeof(build_tls), "%s", tls);
    if (http)
        snprintf(build_http, sizeof(build_http), "%s", http);
}

/* Rendering. */

typedef struct out {
    sb_buf *buf;
    sb_err err; /* the first failure; later output is skipped */
} out;

static void emit(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emit(out *o, const char *fmt, ...)
{
    char line[LINE_BYTES];
    va_list ap;
    int n;

    if (o->err)
        return;
    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line)) {
        o->err = SB_E_INTERNAL;
        return;
    }
    o->err = sb_buf_append(o->buf, line, (size_t)n);
}

typedef struct label {
    const char *name;
    const char *const *values;
    size_t count;
} label;

#define LABEL(n, v)                                                                                \
    {                                                                                              \
        n, v, NELEMS(v)                                                                            \
    }

static const label l_endpoint = LABEL("endpoint", endpoint_names);
static const label l_code = LABEL("code", code_names);
static const label l_backend = LABEL("backend", backend_names);
static const label l_error = LABEL("reason", error_reasons);
static const label l_outcome = LABEL("outcome", outcome_names);
static const label l_decision = LABEL("decision", decision_names);
static const label l_source = LABEL("source", source_names);
static const label l_to = LABEL("to", breaker_names);
static const label l_tls = LABEL("reason", tls_reasons);
static const label l_id = LABEL("reason", id_reasons);
static const label l_result = LABEL("result", reload_results);

/* A metric family: up to two labels over a row-major block of cells. */
typedef struct family {
    const char *name;
    const char *type;
    const char *help;
    cell *cells;
    const label *l1;
    const label *l2;
} family;

#define P "secrets_broker_"

static const family families[] = {
    {P "requests_total", "counter", "API requests answered, by route and HTTP status.",
     &requests[0][0], &l_endpoint, &l_code},
    {P "cache_hits_total", "counter", "Value-cache lookups that found a fresh entry.", cache_hits,
     &l_backend, NULL},
    {P "cache_misses_total", "counter", "Value-cache lookups that found no fresh entry.",
     cache_misses, &l_backend, NULL},
    {P "secrets_fetched_total", "counter", "Secrets read from a backend (not from the cache).",
     fetched, &l_backend, NULL},
    {P "backend_errors_total", "counter", "Failed backend calls, by reason.", &backend_errors[0][0],
     &l_backend, &l_error},
    {P "upstream_requests_total", "counter", "HTTP calls to backend upstreams, by outcome.",
     &upstream[0][0], &l_backend, &l_outcome},
    {P "authz_decisions_total", "counter", "Authorization decisions, by result and source.",
     &authz[0][0], &l_decision, &l_source},
    {P "cache_entries", "gauge", "Entries in the value cache.", &gauges[SB_METRICS_CACHE_ENTRIES],
     NULL, NULL},
    {P "cache_bytes", "gauge", "Secret bytes held by the value cache.",
     &gauges[SB_METRICS_CACHE_BYTES], NULL, NULL},
    {P "breaker_state", "gauge", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
     breaker_state, &l_backend, NULL},
    {P "breaker_transitions_total", "counter", "Circuit breaker state changes, by new state.",
     &breaker_moves[0][0], &l_backend, &l_to},
    {P "tls_handshake_failures_total", "counter", "Client TLS handshakes that failed, by reason.",
     tls_failures, &l_tls, NULL},
    {P "identity_rejections_total", "counter",
     "Requests with a verified connection but no usable identity, by reason.", id_rejections, &l_id,
     NULL},
    {P "tls_reloads_total", "counter", "Reloads of the TLS certificate, key and CA bundle.",
     tls_reloads, &l_result, NULL},
    {P "audit_records_total", "counter", "Audit records written in full.",
     &counters[SB_METRICS_AUDIT_RECORDS], NULL, NULL},
    {P "audit_write_failures_total", "counter", "Audit records that could not be written.",
     &counters[SB_METRICS_AUDIT_WRITE_FAILURES], NULL, NULL},
    {P "rate_limited_total", "counter", "Requests refused with 429 by the per-identity limit.",
     &counters[SB_METRICS_RATE_LIMITED], NULL, NULL},
    {P "connections_refused_total", "counter",
     "Connections closed on arrival because MAX_CONNECTIONS were open.",
     &counters[SB_METRICS_CONNECTIONS_REFUSED], NULL, NULL},
    {P "inflight_backend_calls", "gauge", "Backend calls in flight.",
     &gauges[SB_METRICS_INFLIGHT_CALLS], NULL, NULL},
    {P "connections", "gauge", "Open connections on the API port.", &gauges[SB_METRICS_CONNECTIONS],
     NULL, NULL},
};

static void render_series(out *o, const family *f, size_t i, size_t j, long long v)
{
    const label *a = f->l1;
    const label *b = f->l2;

    if (!a)
        emit(o, "%s %lld\n", f->name, v);
    else if (!b)
        emit(o, "%s{%s=\"%s\"} %lld\n", f->name, a->name, a->values[i], v);
    else
        emit(o, "%s{%s=\"%s\",%s=\"%s\"} %lld\n", f->name, a->name, a->values[i], b->name,
             b->values[j], v);
}

static void render_family(out *o, const family *f)
{
    size_t rows = f->l1 ? f->l1->count : 1;
    size_t cols = f->l2 ? f->l2->count : 1;

    emit(o, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, f->type);
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < cols; j++)
            render_series(o, f, i, j, load(&f->cells[i * cols + j]));
    }
}

static void render_latency(out *o)
{
    const char *name = P "requests_duration_seconds";

    emit(o, "# HELP %s API request latency, from request start to response queued.\n", name);
    emit(o, "# TYPE %s histogram\n", name);
    for (size_t ep = 0; ep < SB_METRICS_EP_COUNT_; ep++) {
        const char *e = endpoint_names[ep];
        long long cum = 0;
        long long sum = load(&latency_sum_us[ep]);

        for (size_t b = 0; b < BUCKETS; b++) {
            cum += load(&latency[ep][b]);
            emit(o, "%s_bucket{endpoint=\"%s\",le=\"%s\"} %lld\n", name, e, bucket_le[b], cum);
        }
        cum += load(&latency[ep][BUCKETS]);
        emit(o, "%s_bucket{endpoint=\"%s\",le=\"+Inf\"} %lld\n", name, e, cum);
        emit(o, "%s_sum{endpoint=\"%s\"} %lld.%06lld\n", name, e, sum / 1000000, sum % 1000000);
        emit(o, "%s_count{endpoint=\"%s\"} %lld\n", name, e, cum);
    }
}

/* Label values in the text format escape backslash, quote and newline. */
static void escape_label(char *dst, size_t dstlen, const char *src)
{
    size_t pos = 0;

    for (; *src && pos + 3 < dstlen; src++) {
        char c = *src == '\n' ? 'n' : *src;
        if (*src == '\\' || *src == '"' || *src == '\n')
            dst[pos++] = '\\';
        dst[pos++] = c;
    }
    dst[pos] = '\0';
}

static void render_build_info(out *o)
{
    char tls[2 * BUILD_TEXT];
    char http[2 * BUILD_TEXT];
    const char *name = P "build_info";

    escape_label(tls, sizeof(tls), build_tls);
    escape_label(http, sizeof(http), build_http);
    emit(o, "# HELP %s Build version and library versions; always 1.\n", name);
    emit(o, "# TYPE %s gauge\n", name);
    emit(o, "%s{version=\"%s\",tls=\"%s\",http=\"%s\"} 1\n", name, SB_VERSION, tls, http);
}

/* Process metrics, read from /proc at render time. */

typedef struct proc_stat {
    unsigned long utime, stime; /* clock ticks */
    unsigned long long start;   /* clock ticks after boot */
    unsigned long vsize;        /* bytes */
    long rss;                   /* pages */
} proc_stat;

static bool read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "re");
    size_t n;

    if (!f)
        return false;
    n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = '\0';
    return n > 0;
}

/* proc(5): fields 14-15 utime, stime; 22 starttime; 23 vsize; 24 rss. The
 * command name (field 2) may hold spaces and parentheses, so fields are
 * counted from the last ')'. */
static bool read_proc_stat(proc_stat *out_st)
{
    char buf[1024];
    const char *p;
    proc_stat st;

    if (!read_file("/proc/self/stat", buf, sizeof(buf)))
        return false;
    p = strrchr(buf, ')');
    if (!p)
        return false;
    if (sscanf(p + 1,
               " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d"
               " %llu %lu %ld",
               &st.utime, &st.stime, &st.start, &st.vsize, &st.rss) != 5)
        return false;
    *out_st = st;
    return true;
}

/* proc(5): the "btime" line of /proc/stat, seconds since the epoch. It
 * follows the per-CPU and interrupt lines, which can be long. */
static bool read_boot_time(long long *out_btime)
{
    FILE *f = fopen("/proc/stat", "re");
    char *line = NULL;
    size_t cap = 0;
    bool found = false;

    if (!f)
        return false;
    while (!found && getline(&line, &cap, f) > 0)
        found = sscanf(line, "btime %lld", out_btime) == 1;
    free(line);
    fclose(f);
    return found;
}

static long long count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    long long n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static void render_gauge(out *o, const char *name, const char *help, const char *type, double v)
{
    emit(o, "# HELP %s %s\n# TYPE %s %s\n%s %.15g\n", name, help, name, type, name, v);
}

static void render_process(out *o)
{
    double ticks = (double)sysconf(_SC_CLK_TCK);
    double page = (double)sysconf(_SC_PAGESIZE);
    long long fds = count_open_fds();
    long long btime;
    struct rlimit rl;
    proc_stat st;

    if (read_proc_stat(&st)) {
        render_gauge(o, "process_cpu_seconds_total", "User and system CPU time, in seconds.",
                     "counter", (double)(st.utime + st.stime) / ticks);
        render_gauge(o, "process_virtual_memory_bytes", "Virtual memory size, in bytes.", "gauge",
                     (double)st.vsize);
        render_gauge(o, "process_resident_memory_bytes", "Resident set size, in bytes.", "gauge",
                     (double)st.rss * page);
        if (read_boot_time(&btime))
            render_gauge(o, "process_start_time_seconds",
                         "Process start time, in seconds since the Unix epoch.", "gauge",
                         (double)btime + (double)st.start / ticks);
    }
    if (fds >= 0)
        render_gauge(o, "process_open_fds", "Open file descriptors.", "gauge", (double)fds);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        render_gauge(o, "process_max_fds", "Limit on open file descriptors.", "gauge",
                     (double)rl.rlim_cur);
}

sb_err sb_metrics_render(sb_buf *out_buf)
{
    out o = {out_buf, SB_OK};

    render_family(&o, &families[0]);
    render_latency(&o);
    for (size_t i = 1; i < NELEMS(families); i++)
        render_family(&o, &families[i]);
    render_build_info(&o);
    render_process(&o);
    return o.err;
}
