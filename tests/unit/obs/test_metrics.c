/* Unit tests of src/obs/metrics: counts move as they should, the output is
 * well-formed Prometheus text format 0.0.4, no label value outside the
 * fixed sets can appear, and concurrent increments sum exactly. */
#include "obs/metrics.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"

#define THREADS     4
#define PER_THREAD  200000
#define MAX_SERIES  1024
#define SERIES_TEXT 256

static char *render(void)
{
    sb_buf buf;
    char *text;

    sb_buf_init(&buf, 0);
    assert_int_equal(sb_metrics_render(&buf), SB_OK);
    text = sb_xstrndup((const char *)buf.data, buf.len);
    sb_buf_free(&buf);
    return text;
}

/* The value of one series, given as it is written before the value
 * ("name{a=\"b\"}"); -1 when absent. */
static double value_of(const char *series)
{
    char *text = render();
    size_t n = strlen(series);
    double v = -1;

    for (const char *line = text; *line; line = strchr(line, '\n') + 1) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ') {
            v = strtod(line + n + 1, NULL);
            break;
        }
    }
    free(text);
    return v;
}

static double valuef(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static double valuef(const char *fmt, ...)
{
    char series[SERIES_TEXT];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(series, sizeof(series), fmt, ap);
    va_end(ap);
    return value_of(series);
}

/* A minimal checker of the text format: metric and label names, quoted
 * and escaped label values, float values, # TYPE before a family's
 * samples and at most once, samples belonging to the last # TYPE. Fills
 * series[] with every "name{labels}" seen, to compare runs. */
typedef struct parsed {
    char series[MAX_SERIES][SERIES_TEXT];
    size_t count;
} parsed;

static bool name_char(char c, bool first)
{
    return isalpha((unsigned char)c) || c == '_' || c == ':' ||
           (!first && isdigit((unsigned char)c));
}

static const char *parse_name(const char *p)
{
    if (!name_char(*p, true))
        fail_msg("bad metric name at \"%.40s\"", p);
    while (name_char(*p, false))
        p++;
    return p;
}

static const char *parse_labels(const char *p)
{
    if (*p != '{')
        return p;
    p++;
    while (*p != '}') {
        p = parse_name(p);
        assert_int_equal(*p++, '=');
        assert_int_equal(*p++, '"');
        while (*p != '"') {
            assert_true(*p != '\0' && *p != '\n');
            if (*p == '\\') {
                p++;
                assert_non_null(strchr("\\\"n", *p));
            }
            p++;
        }
        p++;
        if (*p == ',')
            p++;
    }
    return p + 1;
}

static bool belongs(const char *sample, size_t len, const char *family, const char *type)
{
    size_t flen = strlen(family);

    if (len == flen && strncmp(sample, family, flen) == 0)
        return true;
    if (strcmp(type, "histogram") != 0 || strncmp(sample, family, flen) != 0)
        return false;
    return (len == flen + 7 && strncmp(sample + flen, "_bucket", 7) == 0) ||
           (len == flen + 4 && strncmp(sample + flen, "_sum", 4) == 0) ||
           (len == flen + 6 && strncmp(sample + flen, "_count", 6) == 0);
}

static void check_sample(parsed *out, const char *line, const char *family, const char *type)
{
    const char *end = parse_name(line);
    const char *labels_end;
    char *num_end;

    assert_true(family[0] != '\0');
    assert_true(belongs(line, (size_t)(end - line), family, type));
    labels_end = parse_labels(end);
    assert_int_equal(*labels_end, ' ');
    strtod(labels_end + 1, &num_end);
    assert_true(num_end > labels_end + 1);
    assert_int_equal(*num_end, '\n');

    assert_true(out->count < MAX_SERIES);
    assert_true((size_t)(labels_end - line) < SERIES_TEXT);
    memcpy(out->series[out->count], line, (size_t)(labels_end - line));
    out->series[out->count][labels_end - line] = '\0';
    for (size_t i = 0; i < out->count; i++)
        assert_string_not_equal(out->series[i], out->series[out->count]);
    out->count++;
}

static void check_type(const char *line, char *family, char *type, char seen[][SERIES_TEXT],
                       size_t *nseen)
{
    const char *name = line + 7;
    const char *end = parse_name(name);
    size_t len = (size_t)(end - name);

    assert_true(len < SERIES_TEXT);
    memcpy(family, name, len);
    family[len] = '\0';
    assert_int_equal(*end, ' ');
    assert_int_equal(sscanf(end + 1, "%15[a-z]", type), 1);
    assert_true(!strcmp(type, "counter") || !strcmp(type, "gauge") || !strcmp(type, "histogram"));
    for (size_t i = 0; i < *nseen; i++)
        assert_string_not_equal(seen[i], family);
    memcpy(seen[(*nseen)++], family, len + 1);
}

static void parse_exposition(const char *text, parsed *out)
{
    static char seen[MAX_SERIES][SERIES_TEXT];
    size_t nseen = 0;
    char family[SERIES_TEXT] = "";
    char type[16] = "";

    out->count = 0;
    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    for (const char *line = text; *line; line = strchr(line, '\n') + 1) {
        if (strncmp(line, "# HELP ", 7) == 0)
            parse_name(line + 7);
        else if (strncmp(line, "# TYPE ", 7) == 0)
            check_type(line, family, type, seen, &nseen);
        else
            check_sample(out, line, family, type);
    }
}

static void test_output_parses(void **state)
{
    static parsed p;
    char *text = render();
    size_t broker = 0;

    parse_exposition(text, &p);
    /* The fixed label sets give a fixed number of series: 56 requests,
     * 76 histogram, 91 other broker series, build info; then the process
     * metrics, which depend on what /proc offers. */
    for (size_t i = 0; i < p.count; i++)
        broker += strncmp(p.series[i], "process_", 8) != 0;
    assert_int_equal(broker, 56 + 76 + 91 + 1);
    assert_non_null(strstr(text, "# TYPE secrets_broker_requests_duration_seconds histogram\n"));
    assert_non_null(strstr(text, "# HELP secrets_broker_requests_total "));
    free(text);
}

static void test_request_counts(void **state)
{
    const char *h = "secrets_broker_requests_duration_seconds";
    double total = value_of("secrets_broker_requests_total{endpoint=\"key\",code=\"403\"}");
    double le1 = valuef("%s_bucket{endpoint=\"key\",le=\"0.001\"}", h);
    double le25 = valuef("%s_bucket{endpoint=\"key\",le=\"0.0025\"}", h);
    double inf = valuef("%s_bucket{endpoint=\"key\",le=\"+Inf\"}", h);
    double sum = valuef("%s_sum{endpoint=\"key\"}", h);
    double count = valuef("%s_count{endpoint=\"key\"}", h);

    sb_metrics_request(SB_METRICS_EP_KEY, 403, 1500);

    assert_true(total >= 0);
    assert_int_equal(value_of("secrets_broker_requests_total{endpoint=\"key\",code=\"403\"}"),
                     total + 1);
    assert_int_equal(valuef("%s_bucket{endpoint=\"key\",le=\"0.001\"}", h), le1);
    assert_int_equal(valuef("%s_bucket{endpoint=\"key\",le=\"0.0025\"}", h), le25 + 1);
    assert_int_equal(valuef("%s_bucket{endpoint=\"key\",le=\"+Inf\"}", h), inf + 1);
    assert_int_equal(valuef("%s_count{endpoint=\"key\"}", h), count + 1);
    assert_true(valuef("%s_sum{endpoint=\"key\"}", h) - sum > 0.0014999);
    assert_true(valuef("%s_sum{endpoint=\"key\"}", h) - sum < 0.0015001);
}

static void test_bucket_edges(void **state)
{
    const char *h = "secrets_broker_requests_duration_seconds_bucket{endpoint=\"other\",le=";
    double le01 = valuef("%s\"0.0001\"}", h);
    double le10 = valuef("%s\"10\"}", h);
    double inf = valuef("%s\"+Inf\"}", h);

    /* le is inclusive; negative durations count as zero; above 10 s only
     * in +Inf. */
    sb_metrics_request(SB_METRICS_EP_OTHER, 200, 100);
    sb_metrics_request(SB_METRICS_EP_OTHER, 200, -5);
    sb_metrics_request(SB_METRICS_EP_OTHER, 200, 10000001);

    assert_int_equal(valuef("%s\"0.0001\"}", h), le01 + 2);
    assert_int_equal(valuef("%s\"10\"}", h), le10 + 2);
    assert_int_equal(valuef("%s\"+Inf\"}", h), inf + 3);
}

static void test_unknown_status_folds(void **state)
{
    const char *r = "secrets_broker_requests_total{endpoint=\"batch\",code=";
    double c200 = valuef("%s\"200\"}", r);
    double c400 = valuef("%s\"400\"}", r);
    double c500 = valuef("%s\"500\"}", r);

    sb_metrics_request(SB_METRICS_EP_BATCH, 204, 10);
    sb_metrics_request(SB_METRICS_EP_BATCH, 418, 10);
    sb_metrics_request(SB_METRICS_EP_BATCH, 501, 10);
    sb_metrics_request(SB_METRICS_EP_BATCH, 0, 10);
    sb_metrics_request(SB_METRICS_EP_BATCH, -1, 10);
    sb_metrics_request(SB_METRICS_EP_BATCH, 302, 10);

    assert_int_equal(valuef("%s\"200\"}", r), c200 + 1);
    assert_int_equal(valuef("%s\"400\"}", r), c400 + 1);
    assert_int_equal(valuef("%s\"500\"}", r), c500 + 4);
    assert_int_equal(valuef("%s\"418\"}", r), -1);
}

static void test_no_labels_outside_sets(void **state)
{
    static parsed before;
    static parsed after;
    char *text = render();

    parse_exposition(text, &before);
    free(text);

    sb_metrics_request((sb_metrics_endpoint)99, 200, 1);
    sb_metrics_request((sb_metrics_endpoint)-1, 200, 1);
    sb_metrics_cache((sb_backend_kind)7, true);
    sb_metrics_fetched((sb_backend_kind)-3);
    sb_metrics_backend_error((sb_backend_kind)3, SB_E_TIMEOUT);
    sb_metrics_backend_error(SB_BACKEND_AWS, (sb_err)1000);
    sb_metrics_upstream(SB_BACKEND_FILE, (sb_err)-7);
    sb_metrics_authz(true, (sb_metrics_authz_source)42);
    sb_metrics_breaker(SB_BACKEND_K8S, (sb_metrics_breaker_state)3);
    sb_metrics_tls_failure((sb_metrics_tls_reason)100);
    sb_metrics_identity_rejected((sb_metrics_id_reason)-1);
    sb_metrics_inc((sb_metrics_counter)9);
    sb_metrics_gauge_set((sb_metrics_gauge)9, 5);
    sb_metrics_gauge_add((sb_metrics_gauge)-9, 5);

    text = render();
    parse_exposition(text, &after);
    free(text);
    /* Same series, in the same order: nothing new was created. */
    assert_int_equal(before.count, after.count);
    for (size_t i = 0; i < before.count; i++)
        assert_string_equal(before.series[i], after.series[i]);
    assert_int_equal(value_of("secrets_broker_breaker_state{backend=\"kubernetes\"}"), 0);
}

static void test_backend_error_reasons(void **state)
{
    static const struct {
        sb_err err;
        const char *reason;
    } cases[] = {
        {SB_E_TIMEOUT, "timeout"},
        {SB_E_UNAVAILABLE, "unavailable"},
        {SB_E_SHUTDOWN, "unavailable"},
        {SB_E_THROTTLED, "throttled"},
        {SB_E_UPSTREAM, "bad_response"},
        {SB_E_CREDENTIALS, "credentials"},
        {SB_E_FORBIDDEN, "forbidden_upstream"},
        {SB_E_IO, "other"},
        {SB_E_INTERNAL, "other"},
    };
    const char *m = "secrets_broker_backend_errors_total{backend=\"aws-secrets-manager\",reason=";

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double v = valuef("%s\"%s\"}", m, cases[i].reason);
        sb_metrics_backend_error(SB_BACKEND_AWS, cases[i].err);
        assert_int_equal(valuef("%s\"%s\"}", m, cases[i].reason), v + 1);
    }
}

static void test_answers_are_not_errors(void **state)
{
    const char *m = "secrets_broker_backend_errors_total{backend=\"file\",reason=";
    const char *reasons[] = {"timeout",     "unavailable",        "throttled", "bad_response",
                             "credentials", "forbidden_upstream", "other"};
    double before[7];

    for (size_t i = 0; i < 7; i++)
        before[i] = valuef("%s\"%s\"}", m, reasons[i]);
    sb_metrics_backend_error(SB_BACKEND_FILE, SB_OK);
    sb_metrics_backend_error(SB_BACKEND_FILE, SB_E_NOT_FOUND);
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(valuef("%s\"%s\"}", m, reasons[i]), before[i]);
}

static void test_upstream_outcomes(void **state)
{
    static const struct {
        sb_err err;
        const char *outcome;
    } cases[] = {
        {SB_OK, "ok"},
        {SB_E_NOT_FOUND, "not_found"},
        {SB_E_FORBIDDEN, "forbidden"},
        {SB_E_THROTTLED, "throttled"},
        {SB_E_TIMEOUT, "timeout"},
        {SB_E_UNAVAILABLE, "error"},
        {SB_E_UPSTREAM, "error"},
    };
    const char *m = "secrets_broker_upstream_requests_total{backend=\"kubernetes\",outcome=";

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double v = valuef("%s\"%s\"}", m, cases[i].outcome);
        sb_metrics_upstream(SB_BACKEND_K8S, cases[i].err);
        assert_int_equal(valuef("%s\"%s\"}", m, cases[i].outcome), v + 1);
    }
}

static void test_labelled_counters(void **state)
{
    const char *hits = "secrets_broker_cache_hits_total{backend=\"file\"}";
    const char *misses = "secrets_broker_cache_misses_total{backend=\"file\"}";
    const char *fetched = "secrets_broker_secrets_fetched_total{backend=\"kubernetes\"}";
    const char *deny = "secrets_broker_authz_decisions_total{decision=\"deny\",source=\"sar\"}";
    const char *tls = "secrets_broker_tls_handshake_failures_total{reason=\"ca_as_leaf\"}";
    const char *id = "secrets_broker_identity_rejections_total{reason=\"many_uri_sans\"}";
    const char *reload = "secrets_broker_tls_reloads_total{result=\"failed\"}";
    double v[7] = {value_of(hits), value_of(misses), value_of(fetched), value_of(deny),
                   value_of(tls),  value_of(id),     value_of(reload)};

    sb_metrics_cache(SB_BACKEND_FILE, true);
    sb_metrics_cache(SB_BACKEND_FILE, false);
    sb_metrics_cache(SB_BACKEND_FILE, false);
    sb_metrics_fetched(SB_BACKEND_K8S);
    sb_metrics_authz(false, SB_METRICS_AUTHZ_SAR);
    sb_metrics_tls_failure(SB_METRICS_TLS_CA_AS_LEAF);
    sb_metrics_identity_rejected(SB_METRICS_ID_MANY_URI_SANS);
    sb_metrics_tls_reload(false);

    assert_int_equal(value_of(hits), v[0] + 1);
    assert_int_equal(value_of(misses), v[1] + 2);
    assert_int_equal(value_of(fetched), v[2] + 1);
    assert_int_equal(value_of(deny), v[3] + 1);
    assert_int_equal(value_of(tls), v[4] + 1);
    assert_int_equal(value_of(id), v[5] + 1);
    assert_int_equal(value_of(reload), v[6] + 1);
}

static void test_breaker(void **state)
{
    const char *st = "secrets_broker_breaker_state{backend=\"aws-secrets-manager\"}";
    const char *to = "secrets_broker_breaker_transitions_total{backend=\"aws-secrets-manager\",to=";
    double opened = valuef("%s\"open\"}", to);
    double half = valuef("%s\"half_open\"}", to);

    sb_metrics_breaker(SB_BACKEND_AWS, SB_METRICS_BREAKER_OPEN);
    assert_int_equal(value_of(st), 2);
    sb_metrics_breaker(SB_BACKEND_AWS, SB_METRICS_BREAKER_HALF_OPEN);
    assert_int_equal(value_of(st), 1);
    sb_metrics_breaker(SB_BACKEND_AWS, SB_METRICS_BREAKER_CLOSED);
    assert_int_equal(value_of(st), 0);

    assert_int_equal(valuef("%s\"open\"}", to), opened + 1);
    assert_int_equal(valuef("%s\"half_open\"}", to), half + 1);
}

static void test_gauges_and_counters(void **state)
{
    double audit = value_of("secrets_broker_audit_write_failures_total");
    double limited = value_of("secrets_broker_rate_limited_total");

    sb_metrics_gauge_set(SB_METRICS_CACHE_BYTES, 123456);
    sb_metrics_gauge_set(SB_METRICS_CACHE_ENTRIES, 7);
    sb_metrics_gauge_add(SB_METRICS_CONNECTIONS, 3);
    sb_metrics_gauge_add(SB_METRICS_CONNECTIONS, -1);
    sb_metrics_inc(SB_METRICS_AUDIT_WRITE_FAILURES);
    sb_metrics_inc(SB_METRICS_RATE_LIMITED);

    assert_int_equal(value_of("secrets_broker_cache_bytes"), 123456);
    assert_int_equal(value_of("secrets_broker_cache_entries"), 7);
    assert_int_equal(value_of("secrets_broker_connections"), 2);
    assert_int_equal(value_of("secrets_broker_audit_write_failures_total"), audit + 1);
    assert_int_equal(value_of("secrets_broker_rate_limited_total"), limited + 1);
    sb_metrics_gauge_add(SB_METRICS_CONNECTIONS, -2);
}

static void test_backend_labels_match_config(void **state)
{
    sb_backend_kind kinds[] = {SB_BACKEND_K8S, SB_BACKEND_AWS, SB_BACKEND_FILE};

    for (size_t i = 0; i < 3; i++)
        assert_true(valuef("secrets_broker_secrets_fetched_total{backend=\"%s\"}",
                           sb_backend_kind_name(kinds[i])) >= 0);
}

static void test_build_info_escaped(void **state)
{
    static parsed p;
    char *text;

    sb_metrics_set_build_info("gnutls \"3.7\"\\\nx", "libmicrohttpd 0.9.75");
    text = render();
    parse_exposition(text, &p);
    assert_non_null(strstr(text, "secrets_broker_build_info{version=\"" SB_VERSION
                                 "\",tls=\"gnutls \\\"3.7\\\"\\\\\\nx\","
                                 "http=\"libmicrohttpd 0.9.75\"} 1\n"));
    free(text);
}

static void test_process_metrics(void **state)
{
    assert_true(value_of("process_open_fds") >= 3);
    assert_true(value_of("process_max_fds") > 0);
    assert_true(value_of("process_resident_memory_bytes") > 100000);
    assert_true(value_of("process_start_time_seconds") > 1.6e9);
    assert_true(value_of("process_cpu_seconds_total") >= 0);
}

static void test_render_too_large(void **state)
{
    sb_buf buf;

    sb_buf_init(&buf, 1000);
    assert_int_equal(sb_metrics_render(&buf), SB_E_TOO_LARGE);
    assert_true(buf.len <= 1000);
    sb_buf_free(&buf);
}

static void *hammer(void *arg)
{
    for (int i = 0; i < PER_THREAD; i++) {
        sb_metrics_request(SB_METRICS_EP_SECRET, 429, 300);
        sb_metrics_inc(SB_METRICS_RATE_LIMITED);
        sb_metrics_gauge_add(SB_METRICS_INFLIGHT_CALLS, 1);
        sb_metrics_gauge_add(SB_METRICS_INFLIGHT_CALLS, -1);
    }
    return arg;
}

static void test_concurrent_sums(void **state)
{
    const char *req = "secrets_broker_requests_total{endpoint=\"secret\",code=\"429\"}";
    const char *bucket =
        "secrets_broker_requests_duration_seconds_bucket{endpoint=\"secret\",le=\"0.0005\"}";
    double r = value_of(req);
    double b = value_of(bucket);
    double limited = value_of("secrets_broker_rate_limited_total");
    pthread_t t[THREADS];

    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, NULL), 0);
    /* Rendering while counting must be safe too. */
    for (int i = 0; i < 5; i++)
        free(render());
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);

    assert_int_equal(value_of(req), r + THREADS * PER_THREAD);
    assert_int_equal(value_of(bucket), b + THREADS * PER_THREAD);
    assert_int_equal(value_of("secrets_broker_rate_limited_total"), limited + THREADS * PER_THREAD);
    assert_int_equal(value_of("secrets_broker_inflight_backend_calls"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output_parses),
        cmocka_unit_test(test_request_counts),
        cmocka_unit_test(test_bucket_edges),
        cmocka_unit_test(test_unknown_status_folds),
        cmocka_unit_test(test_no_labels_outside_sets),
        cmocka_unit_test(test_backend_error_reasons),
        cmocka_unit_test(test_answers_are_not_errors),
        cmocka_unit_test(test_upstream_outcomes),
        cmocka_unit_test(test_labelled_counters),
        cmocka_unit_test(test_breaker),
        cmocka_unit_test(test_gauges_and_counters),
        cmocka_unit_test(test_backend_labels_match_config),
        cmocka_unit_test(test_build_info_escaped),
        cmocka_unit_test(test_process_metrics),
        cmocka_unit_test(test_render_too_large),
        cmocka_unit_test(test_concurrent_sums),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
