/* The benchmark load generator: HTTP/1.1 over TLS (GnuTLS) on one epoll
 * thread, presenting a client certificate. It keeps N connections each with
 * one request outstanding (keep-alive), or opens a new connection per
 * request (a full handshake, or one resumed with a session ticket), and
 * reports requests/s, latency percentiles, errors and the server's CPU time
 * per request read from /proc/<pid>/stat. See bench/README.md. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PIDS     4
#define MAX_HEADERS  8
#define MAX_REQUEST  4096
#define RESP_MAX     (64 * 1024)
#define EVENTS_BATCH 256
#define DEFAULT_PRIO "NORMAL:-VERS-ALL:+VERS-TLS1.3:-GROUP-ALL:+GROUP-X25519"

enum mode { MODE_KEEPALIVE, MODE_HANDSHAKE, MODE_RESUME, MODE_HOLD, MODE_PROBE };

enum state { ST_CLOSED, ST_CONNECTING, ST_HANDSHAKE, ST_SEND, ST_RECV, ST_HELD };

struct opts {
    const char *host, *path, *ca, *cert, *key, *prio, *sni;
    const char *headers[MAX_HEADERS];
    int nheaders;
    int port, conns, expect_status;
    enum mode mode;
    double warmup_s, duration_s;
    long range;
    long requests; /* stop after this many answers (0: run for duration_s) */
    int pids[MAX_PIDS];
    int npids;
    bool verify;
    int64_t since_ns; /* probe: CLOCK_REALTIME ns the server was started at */
};

struct conn {
    int fd;
    gnutls_session_t s;
    enum state st;
    bool want_out; /* EPOLLOUT is registered */
    int64_t t0;    /* when the current request (or connection) began */
    char *buf;
    size_t len;
    size_t req_len, req_off;
    char req[MAX_REQUEST];
    gnutls_datum_t ticket; /* resume: the last session's data */
};

struct stats {
    uint64_t done, errors, resumed, full, server_closed;
    uint64_t *lat;
    size_t nlat, caplat;
};

struct gen {
    struct opts o;
    gnutls_certificate_credentials_t cred;
    gnutls_priority_t prio;
    struct sockaddr_in addr;
    int ep;
    struct conn *conns;
    struct stats st;
    bool recording, stopping;
    long issued; /* requests begun, for --requests and --range */
    const char *last_error;
};

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, why);
    exit(2);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p)
        die("calloc", "out of memory");
    return p;
}

/* Reading the server process. */

static bool proc_cpu_ticks(int pid, uint64_t *out)
{
    char path[64], text[2048];
    unsigned long long ut = 0, st = 0;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';

    /* proc(5): the fields after the command name, which may hold spaces;
     * utime and stime are fields 14 and 15, the 12th and 13th after it. */
    const char *p = strrchr(text, ')');
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return false;
    *out = ut + st;
    return true;
}

static uint64_t cpu_ticks(const struct opts *o)
{
    uint64_t sum = 0, t;

    for (int i = 0; i < o->npids; i++) {
        if (proc_cpu_ticks(o->pids[i], &t))
            sum += t;
    }
    return sum;
}

static long proc_rss_kb(int pid)
{
    char path[64], line[256];
    long kb = -1;

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    }
    fclose(f);
    return kb;
}

/* Options. */

static long num(const char *flag, const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);

    if (errno || *end || n < lo || n > hi)
        die(flag, "not a number in range");
    return n;
}

static double seconds(const char *flag, const char *v)
{
    char *end;
    double d = strtod(v, &end);

    if (*end || !(d >= 0) || d > 3600)
        die(flag, "not a number of seconds");
    return d;
}

static enum mode parse_mode(const char *v)
{
    static const char *names[] = {"keepalive", "handshake", "resume", "hold", "probe"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!strcmp(v, names[i]))
            return (enum mode)i;
    }
    die("--mode", "keepalive, handshake, resume, hold or probe");
    return MODE_KEEPALIVE;
}

static const char *mode_name(enum mode m)
{
    static const char *names[] = {"keepalive", "handshake", "resume", "hold", "probe"};
    return names[m];
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen --port P [--host 127.0.0.1] [--path /] [--range N]\n"
                    "         [--ca FILE] [--no-verify] [--sni NAME] [--cert FILE --key FILE]\n"
                    "         [--header 'Name: value']... [--priority GNUTLS-PRIORITY]\n"
                    "         [--mode keepalive|handshake|resume|hold|probe] [--conns N]\n"
                    "         [--warmup S] [--duration S] [--requests N] [--expect STATUS]\n"
                    "         [--pid PID]... [--since-ns NS]\n");
    exit(2);
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.host = "127.0.0.1",
                       .path = "/",
                       .prio = DEFAULT_PRIO,
                       .sni = "localhost",
                       .conns = 1,
                       .expect_status = 200,
                       .warmup_s = 1,
                       .duration_s = 5,
                       .verify = true};

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (!strcmp(a, "--no-verify")) {
            o->verify = false;
            continue;
        }
        if (!v || strncmp(a, "--", 2) != 0)
            usage();
        i++;
        if (!strcmp(a, "--host"))
            o->host = v;
        else if (!strcmp(a, "--port"))
            o->port = (int)num(a, v, 1, 65535);
        else if (!strcmp(a, "--path"))
            o->path = v;
        else if (!strcmp(a, "--range"))
            o->range = num(a, v, 1, 100000000);
        else if (!strcmp(a, "--ca"))
            o->ca = v;
        else if (!strcmp(a, "--sni"))
            o->sni = v;
        else if (!strcmp(a, "--cert"))
            o->cert = v;
        else if (!strcmp(a, "--key"))
            o->key = v;
        else if (!strcmp(a, "--priority"))
            o->prio = v;
        else if (!strcmp(a, "--header") && o->nheaders < MAX_HEADERS)
            o->headers[o->nheaders++] = v;
        else if (!strcmp(a, "--mode"))
            o->mode = parse_mode(v);
        else if (!strcmp(a, "--conns"))
            o->conns = (int)num(a, v, 1, 100000);
        else if (!strcmp(a, "--warmup"))
            o->warmup_s = seconds(a, v);
        else if (!strcmp(a, "--duration"))
            o->duration_s = seconds(a, v);
        else if (!strcmp(a, "--requests"))
            o->requests = num(a, v, 1, 1000000000);
        else if (!strcmp(a, "--expect"))
            o->expect_status = (int)num(a, v, 100, 599);
        else if (!strcmp(a, "--pid") && o->npids < MAX_PIDS)
            o->pids[o->npids++] = (int)num(a, v, 1, 1 << 30);
        else if (!strcmp(a, "--since-ns"))
            o->since_ns = (int64_t)strtoll(v, NULL, 10);
        else
            usage();
    }
    if (!o->port || (!o->cert) != (!o->key) || (o->verify && !o->ca))
        usage();
}

/* TLS set-up, shared by every connection. */

static void tls_setup(struct gen *g)
{
    const char *err_pos = NULL;
    int rc = gnutls_global_init();

    if (rc < 0)
        die("gnutls_global_init", gnutls_strerror(rc));
    if (gnutls_certificate_allocate_credentials(&g->cred) < 0)
        die("gnutls", "cannot allocate credentials");
    if (g->o.ca &&
        gnutls_certificate_set_x509_trust_file(g->cred, g->o.ca, GNUTLS_X509_FMT_PEM) <= 0)
        die(g->o.ca, "no CA certificate loaded");
    if (g->o.cert) {
        rc = gnutls_certificate_set_x509_key_file2(g->cred, g->o.cert, g->o.key,
                                                   GNUTLS_X509_FMT_PEM, NULL, 0);
        if (rc < 0)
            die(g->o.cert, gnutls_strerror(rc));
    }
    rc = gnutls_priority_init2(&g->prio, g->o.prio, &err_pos, 0);
    if (rc < 0)
        die("--priority", err_pos ? err_pos : gnutls_strerror(rc));
}

static int session_new(struct gen *g, int fd, const gnutls_datum_t *ticket, gnutls_session_t *out)
{
    gnutls_session_t s;
    int rc = gnutls_init(&s, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);

    if (rc < 0)
        return rc;
    gnutls_priority_set(s, g->prio);
    gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, g->cred);
    gnutls_server_name_set(s, GNUTLS_NAME_DNS, g->o.sni, strlen(g->o.sni));
    if (g->o.verify)
        gnutls_session_set_verify_cert(s, g->o.sni, 0);
    if (ticket && ticket->size)
        gnutls_session_set_data(s, ticket->data, ticket->size);
    gnutls_transport_set_int(s, fd);
    *out = s;
    return 0;
}

/* The request bytes for this connection's next request. */
static void build_request(struct gen *g, struct conn *c)
{
    char path[1024];
    const char *p = g->o.path;
    const char *mark = strstr(p, "{i}");
    int n;

    if (mark && g->o.range) {
        long i = g->issued % g->o.range;
        snprintf(path, sizeof(path), "%.*s%ld%s", (int)(mark - p), p, i, mark + 3);
        p = path;
    }
    n = snprintf(c->req, sizeof(c->req),
                 "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sb-loadgen\r\n", p, g->o.sni);
    for (int i = 0; i < g->o.nheaders && n < (int)sizeof(c->req); i++)
        n += snprintf(c->req + n, sizeof(c->req) - (size_t)n, "%s\r\n", g->o.headers[i]);
    if (n < (int)sizeof(c->req))
        n += snprintf(c->req + n, sizeof(c->req) - (size_t)n, "\r\n");
    if (n >= (int)sizeof(c->req))
        die("--header", "request over 4 KiB");
    c->req_len = (size_t)n;
    c->req_off = 0;
    g->issued++;
}

/* HTTP response framing: status, then Content-Length or chunked. Returns
 * 1 when complete (status in *status), 0 when more bytes are needed, -1
 * when the response cannot be framed. */
static int response_complete(const char *buf, size_t len, int *status, bool *close)
{
    const char *end = memmem(buf, len, "\r\n\r\n", 4);

    if (!end)
        return len > 64 * 1024 ? -1 : 0;
    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0)
        return -1;
    *status = (int)strtol(buf + 9, NULL, 10);

    size_t head = (size_t)(end - buf) + 4;
    long clen = -1;
    bool chunked = false;
    *close = false;
    for (const char *line = memchr(buf, '\n', head); line && line < end;
         line = memchr(line + 1, '\n', (size_t)(end - line))) {
        const char *h = line + 1;
        if (!strncasecmp(h, "content-length:", 15))
            clen = strtol(h + 15, NULL, 10);
        else if (!strncasecmp(h, "transfer-encoding:", 18))
            chunked = memmem(h, (size_t)(end - h), "chunked", 7) != NULL;
        else if (!strncasecmp(h, "connection:", 11))
            *close = !strncasecmp(h + 11 + strspn(h + 11, " "), "close", 5);
    }
    if (chunked)
        return len - head >= 5 && !memcmp(buf + len - 5, "0\r\n\r\n", 5);
    if (clen < 0)
        return -1;
    return len - head >= (size_t)clen ? 1 : 0;
}

/* Connections. */

static void conn_close(struct gen *g, struct conn *c)
{
    if (c->s) {
        gnutls_deinit(c->s);
        c->s = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd); /* also leaves the epoll set */
        c->fd = -1;
    }
    c->st = ST_CLOSED;
    c->want_out = false;
}

static void set_out(struct gen *g, struct conn *c, bool out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};

    if (c->want_out == out)
        return;
    c->want_out = out;
    epoll_ctl(g->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void fail(struct gen *g, struct conn *c, const char *why)
{
    if (g->recording || g->o.mode == MODE_HOLD)
        g->st.errors++;
    g->last_error = why;
    conn_close(g, c);
}

static bool may_issue(const struct gen *g)
{
    return !g->stopping && (!g->o.requests || g->issued < g->o.requests);
}

static void conn_open(struct gen *g, struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;

    c->t0 = now_ns();
    c->len = 0;
    if (fd < 0) {
        fail(g, c, "socket");
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    if (session_new(g, fd, g->o.mode == MODE_RESUME ? &c->ticket : NULL, &c->s) < 0) {
        fail(g, c, "gnutls_init");
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->want_out = true;
    epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (struct sockaddr *)&g->addr, sizeof(g->addr)) != 0 && errno != EINPROGRESS) {
        fail(g, c, "connect");
        return;
    }
    c->st = ST_CONNECTING;
}

static void record(struct gen *g, int64_t t0)
{
    struct stats *s = &g->st;

    if (!g->recording)
        return;
    s->done++;
    if (s->nlat == s->caplat) {
        s->caplat = s->caplat ? s->caplat * 2 : 65536;
        s->lat = realloc(s->lat, s->caplat * sizeof(*s->lat));
        if (!s->lat)
            die("realloc", "out of memory");
    }
    s->lat[s->nlat++] = (uint64_t)(now_ns() - t0);
}

static void keep_ticket(struct conn *c)
{
    gnutls_datum_t d = {NULL, 0};

    /* TLS 1.3 (RFC 8446 section 4.6.1): the ticket comes after the
     * handshake; take the newest one each connection received. */
    if (!(gnutls_session_get_flags(c->s) & GNUTLS_SFLAGS_SESSION_TICKET))
        return;
    if (gnutls_session_get_data2(c->s, &d) < 0)
        return;
    gnutls_free(c->ticket.data);
    c->ticket = d;
}

/* A complete response arrived on c. */
static void answered(struct gen *g, struct conn *c, int status, bool server_close)
{
    if (status != g->o.expect_status) {
        fail(g, c, "unexpected status");
        return;
    }
    /* Keep-alive: from sending the request; otherwise from connect(). */
    record(g, c->t0);

    if (g->o.mode == MODE_HOLD) {
        c->st = ST_HELD;
        return;
    }
    if (g->o.mode == MODE_RESUME)
        keep_ticket(c);
    if (g->o.mode == MODE_KEEPALIVE && !server_close) {
        c->len = 0;
        c->st = ST_SEND;
        c->t0 = now_ns();
        return;
    }
    if (server_close && g->recording)
        g->st.server_closed++;
    conn_close(g, c);
}

static void step_connect(struct gen *g, struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);

    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        fail(g, c, "connect");
        return;
    }
    c->st = ST_HANDSHAKE;
}

static void step_handshake(struct gen *g, struct conn *c)
{
    int rc = gnutls_handshake(c->s);

    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
        set_out(g, c, gnutls_record_get_direction(c->s) == 1);
        return;
    }
    if (rc < 0) {
        fail(g, c, gnutls_strerror(rc));
        return;
    }
    set_out(g, c, false);
    if (g->recording && gnutls_session_is_resumed(c->s))
        g->st.resumed++;
    else if (g->recording)
        g->st.full++;
    build_request(g, c);
    c->st = ST_SEND;
}

static void step_send(struct gen *g, struct conn *c)
{
    if (c->req_off == 0 && c->req_len == 0) {
        if (!may_issue(g)) {
            conn_close(g, c);
            return;
        }
        build_request(g, c);
    }
    ssize_t n = gnutls_record_send(c->s, c->req + c->req_off, c->req_len - c->req_off);
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
        set_out(g, c, true);
        return;
    }
    if (n < 0) {
        fail(g, c, gnutls_strerror((int)n));
        return;
    }
    c->req_off += (size_t)n;
    if (c->req_off < c->req_len)
        return;
    set_out(g, c, false);
    c->req_len = c->req_off = 0;
    c->st = ST_RECV;
}

static void step_recv(struct gen *g, struct conn *c)
{
    int status = 0;
    bool server_close = false;

    for (;;) {
        ssize_t n = gnutls_record_recv(c->s, c->buf + c->len, RESP_MAX - 1 - c->len);
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            return;
        if (n == 0 || n == GNUTLS_E_PREMATURE_TERMINATION) {
            fail(g, c, "connection closed before the response ended");
            return;
        }
        if (n < 0) {
            fail(g, c, gnutls_strerror((int)n));
            return;
        }
        c->len += (size_t)n;
        int rc = response_complete(c->buf, c->len, &status, &server_close);
        if (rc < 0 || (rc == 0 && c->len == RESP_MAX - 1)) {
            fail(g, c, "response cannot be framed");
            return;
        }
        if (rc == 1) {
            answered(g, c, status, server_close);
            return;
        }
    }
}

/* Runs c's state machine until it waits for the network. */
static void drive(struct gen *g, struct conn *c)
{
    for (;;) {
        enum state before = c->st;
        switch (c->st) {
        case ST_CONNECTING:
            step_connect(g, c);
            break;
        case ST_HANDSHAKE:
            step_handshake(g, c);
            break;
        case ST_SEND:
            step_send(g, c);
            break;
        case ST_RECV:
            step_recv(g, c);
            break;
        case ST_CLOSED:
        case ST_HELD:
            return;
        }
        /* A step that did not move on is waiting for the network. */
        if (c->st == before)
            return;
    }
}

/* After a step: reopen closed connections while requests remain. */
static void refill(struct gen *g, struct conn *c)
{
    if (c->st != ST_CLOSED || g->o.mode == MODE_HOLD || g->o.mode == MODE_PROBE || !may_issue(g))
        return;
    conn_open(g, c); /* epoll reports when the connection is made */
}

static bool all_idle(const struct gen *g)
{
    for (int i = 0; i < g->o.conns; i++) {
        enum state st = g->conns[i].st;
        if (st != ST_CLOSED && st != ST_HELD)
            return false;
    }
    return true;
}

/* Runs the loop until `until` (monotonic ns), or until nothing is left to
 * do when `until` is 0. */
static void run_loop(struct gen *g, int64_t until)
{
    struct epoll_event evs[EVENTS_BATCH];

    for (;;) {
        int64_t now = now_ns();
        if (until && now >= until)
            return;
        if (!until && all_idle(g))
            return;
        int timeout = until ? (int)((until - now) / 1000000) + 1 : 100;
        int n = epoll_wait(g->ep, evs, EVENTS_BATCH, timeout);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            drive(g, c);
            refill(g, c);
        }
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile, in microseconds. */
static double pct(const struct stats *s, double q)
{
    if (!s->nlat)
        return 0;
    size_t rank = (size_t)ceil(q * (double)s->nlat);
    return (double)s->lat[rank ? rank - 1 : 0] / 1000.0;
}

static void report(struct gen *g, double elapsed_s, uint64_t ticks, double extra_ms)
{
    struct stats *s = &g->st;
    double tick_us = 1e6 / (double)sysconf(_SC_CLK_TCK);
    double cpu_us = (double)ticks * tick_us;

    qsort(s->lat, s->nlat, sizeof(*s->lat), cmp_u64);
    printf("{\"mode\":\"%s\",\"conns\":%d,\"seconds\":%.3f,\"requests\":%llu,\"errors\":%llu,"
           "\"rps\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
           "\"server_cpu_s\":%.2f,\"cpu_us_per_req\":%.2f,\"full_handshakes\":%llu,"
           "\"resumed\":%llu,\"server_closed\":%llu,\"ready_ms\":%.2f,\"rss_kb\":[",
           mode_name(g->o.mode), g->o.conns, elapsed_s, (unsigned long long)s->done,
           (unsigned long long)s->errors, elapsed_s > 0 ? (double)s->done / elapsed_s : 0,
           pct(s, 0.50), pct(s, 0.90), pct(s, 0.99), pct(s, 1.0), cpu_us / 1e6,
           s->done ? cpu_us / (double)s->done : 0, (unsigned long long)s->full,
           (unsigned long long)s->resumed, (unsigned long long)s->server_closed, extra_ms);
    for (int i = 0; i < g->o.npids; i++)
        printf("%s%ld", i ? "," : "", proc_rss_kb(g->o.pids[i]));
    printf("],\"last_error\":\"%s\"}\n", s->errors ? g->last_error : "");
    fflush(stdout);
}

/* Probe: one request at a time, retried every millisecond, until the
 * expected answer; reports the time since the server was started. */
static int run_probe(struct gen *g)
{
    struct conn *c = &g->conns[0];
    int64_t deadline = now_ns() + 30LL * 1000000000;
    struct timespec real;

    g->recording = true;
    while (now_ns() < deadline) {
        uint64_t before = g->st.done;
        conn_open(g, c);
        run_loop(g, 0);
        if (g->st.done > before)
            break;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    clock_gettime(CLOCK_REALTIME, &real);
    int64_t real_ns = (int64_t)real.tv_sec * 1000000000 + real.tv_nsec;
    g->st.errors = 0; /* refusals while starting are expected */
    report(g, 0, 0, g->o.since_ns ? (double)(real_ns - g->o.since_ns) / 1e6 : 0);
    return g->st.done ? 0 : 1;
}

/* Hold: every connection makes one request, then stays open and idle. */
static int run_hold(struct gen *g)
{
    int64_t t0 = now_ns();

    g->recording = true;
    for (int i = 0; i < g->o.conns; i++)
        conn_open(g, &g->conns[i]);
    run_loop(g, 0);
    double established_ms = (double)(now_ns() - t0) / 1e6;
    run_loop(g, now_ns() + (int64_t)(g->o.duration_s * 1e9)); /* settle, idle */
    report(g, 0, 0, established_ms);
    return g->st.errors ? 1 : 0;
}

/* Load: warm up, then measure for duration_s, or until --requests are
 * answered (no warm-up then: every request counts). */
static int run_load(struct gen *g)
{
    bool counted = g->o.requests > 0;

    g->recording = counted;
    for (int i = 0; i < g->o.conns; i++)
        conn_open(g, &g->conns[i]);
    if (!counted && g->o.warmup_s > 0)
        run_loop(g, now_ns() + (int64_t)(g->o.warmup_s * 1e9));

    uint64_t ticks0 = cpu_ticks(&g->o);
    int64_t t0 = now_ns();
    g->recording = true;
    if (counted) {
        run_loop(g, 0);
    } else {
        run_loop(g, t0 + (int64_t)(g->o.duration_s * 1e9));
    }
    int64_t t1 = now_ns();
    uint64_t ticks1 = cpu_ticks(&g->o);
    g->recording = false;
    g->stopping = true;

    report(g, (double)(t1 - t0) / 1e9, ticks1 - ticks0, 0);
    return g->st.done ? 0 : 1;
}

static void raise_fd_limit(int conns)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= (rlim_t)conns + 64)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < (rlim_t)conns + 64)
        die("--conns", "over the open-file limit");
}

int main(int argc, char **argv)
{
    struct gen g = {0};

    parse_opts(argc, argv, &g.o);
    if (g.o.mode == MODE_PROBE)
        g.o.conns = 1;
    raise_fd_limit(g.o.conns);
    g.addr.sin_family = AF_INET;
    g.addr.sin_port = htons((uint16_t)g.o.port);
    if (inet_pton(AF_INET, g.o.host, &g.addr.sin_addr) != 1)
        die("--host", "not an IPv4 address");
    tls_setup(&g);

    g.ep = epoll_create1(EPOLL_CLOEXEC);
    g.conns = xcalloc((size_t)g.o.conns, sizeof(*g.conns));
    for (int i = 0; i < g.o.conns; i++) {
        g.conns[i].fd = -1;
        g.conns[i].buf = xcalloc(1, RESP_MAX);
    }

    switch (g.o.mode) {
    case MODE_PROBE:
        return run_probe(&g);
    case MODE_HOLD:
        return run_hold(&g);
    default:
        return run_load(&g);
    }
}
