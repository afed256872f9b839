/* Tests of src/auth/identity: the strict SPIFFE ID parser, the user name
 * parser and identity from certificates, covering cases 5-8 and 10 of the
 * security notes. Certificates are made here with GnuTLS, self-signed (the
 * module trusts TLS for the chain and looks only at the leaf). */
#include "auth/identity.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define TD        "cluster.local"
#define GOOD_ID   "spiffe://" TD "/ns/shop/sa/web"
#define DER_SPACE 16384

static const sb_identity_opts OPTS = {.trust_domain = TD};
static const sb_identity_opts FALLBACK = {.trust_domain = TD, .cn_fallback = true};

static gnutls_x509_privkey_t key;

/* ---- SPIFFE ID parsing ------------------------------------------------ */

static sb_err parse(const char *s, size_t len, sb_identity *id, const char **why)
{
    return sb_identity_parse_spiffe(s, len, &OPTS, id, why);
}

static void test_parse_valid(void **state)
{
    sb_identity id;
    const char *why = NULL;

    assert_int_equal(parse(GOOD_ID, strlen(GOOD_ID), &id, &why), SB_OK);
    assert_string_equal(id.ns, "shop");
    assert_string_equal(id.sa, "web");
    assert_string_equal(id.source, "spiffe");
    assert_string_equal(id.serial, "");
    assert_null(why);

    static const char dotted[] = "spiffe://" TD "/ns/a-1/sa/build.bot-2";
    assert_int_equal(parse(dotted, strlen(dotted), &id, NULL), SB_OK);
    assert_string_equal(id.ns, "a-1");
    assert_string_equal(id.sa, "build.bot-2");
}

static void test_parse_longest_names(void **state)
{
    char uri[1024], ns[64], sa[254];
    sb_identity id;

    memset(ns, 'n', 63);
    ns[63] = '\0';
    memset(sa, 's', 253);
    sa[253] = '\0';
    int n = snprintf(uri, sizeof(uri), "spiffe://%s/ns/%s/sa/%s", TD, ns, sa);
    assert_int_equal(parse(uri, (size_t)n, &id, NULL), SB_OK);
    assert_string_equal(id.ns, ns);
    assert_string_equal(id.sa, sa);

    /* One byte more in either name is refused. */
    n = snprintf(uri, sizeof(uri), "spiffe://%s/ns/%sn/sa/%s", TD, ns, sa);
    assert_int_equal(parse(uri, (size_t)n, &id, NULL), SB_E_UNAUTHORIZED);
    n = snprintf(uri, sizeof(uri), "spiffe://%s/ns/%s/sa/%ss", TD, ns, sa);
    assert_int_equal(parse(uri, (size_t)n, &id, NULL), SB_E_UNAUTHORIZED);
}

typedef struct bad_case {
    const char *uri;
    size_t len; /* 0: strlen */
    const char *reason;
} bad_case;

#define P "spiffe://" TD

static const bad_case bad_ids[] = {
    {"SPIFFE://" TD "/ns/a/sa/b", 0, "not a spiffe:// URI"},
    {"Spiffe://" TD "/ns/a/sa/b", 0, "not a spiffe:// URI"},
    {"spiffe://CLUSTER.LOCAL/ns/a/sa/b", 0, "[a-z0-9.-_]"},
    {"spiffe://Cluster.local/ns/a/sa/b", 0, "[a-z0-9.-_]"},
    {P "/ns/%61/sa/b", 0, "percent-encoded"},
    {P "/ns/a/sa/%2e", 0, "percent-encoded"},
    {P "/ns/a/sa/%2e%2e", 0, "percent-encoded"},
    {P "%2fns/a/sa/b", 0, "percent-encoded"},
    {P "/ns/./sa/b", 0, ". or .."},
    {P "/ns/../sa/b", 0, ". or .."},
    {P "/ns/a/sa/.", 0, ". or .."},
    {P "/ns/a/sa/..", 0, ". or .."},
    {P "/./ns/a/sa/b", 0, ". or .."},
    {P "/ns/a/../ns/a/sa/b", 0, ". or .."},
    {P "/ns/a/sa/b/", 0, "end with /"},
    {P "/", 0, "end with /"},
    {P "/ns/a/sa/b?q", 0, "query"},
    {P "/ns/a/sa/b?", 0, "query"},
    {P "?ns=a", 0, "query"},
    {P "/ns/a/sa/b#f", 0, "fragment"},
    {P "/ns/a/sa/b#", 0, "fragment"},
    {"spiffe://user@" TD "/ns/a/sa/b", 0, "userinfo"},
    {"spiffe://@" TD "/ns/a/sa/b", 0, "userinfo"},
    {"spiffe://" TD ":8443/ns/a/sa/b", 0, "port"},
    {"spiffe://" TD ":/ns/a/sa/b", 0, "port"},
    {P "/ns/caf\xc3\xa9/sa/b", 0, "non-ASCII"},
    {P "/ns/a/sa/\xff", 0, "non-ASCII"},
    {P "/ns/a/sa/b\0evil", sizeof(P "/ns/a/sa/b\0evil") - 1, "NUL"},
    {P "/ns/a/sa/b\0", sizeof(P "/ns/a/sa/b\0") - 1, "NUL"},
    {P "\0/ns/a/sa/b", sizeof(P "\0/ns/a/sa/b") - 1, "NUL"},
    {P "/ns/a/sa/b/extra", 0, "exactly /ns/"},
    {P "/ns/a/sa/b/ns/c/sa/d", 0, "exactly /ns/"},
    {P "/sa/b/ns/a", 0, "exactly /ns/"},
    {P "/ns/a/sa/", 0, "end with /"},
    {P "/ns/a/sa", 0, "exactly /ns/"},
    {P "/ns/a", 0, "exactly /ns/"},
    {P "/ns/a//sa/b", 0, "empty path segment"},
    {P "//ns/a/sa/b", 0, "empty path segment"},
    {P "/ns//sa/b", 0, "empty path segment"},
    {P "/NS/a/sa/b", 0, "exactly /ns/"},
    {P "/ns/a/SA/b", 0, "exactly /ns/"},
    {P "/ns/a/serviceaccount/b", 0, "exactly /ns/"},
    {P "/namespace/a/sa/b", 0, "exactly /ns/"},
    {"spiffe://example.org/ns/a/sa/b", 0, "does not match"},
    {"spiffe://cluster.local.evil/ns/a/sa/b", 0, "does not match"},
    {"spiffe://cluster.loca/ns/a/sa/b", 0, "does not match"},
    {"spiffe://evil.cluster.local/ns/a/sa/b", 0, "does not match"},
    {"spiffe://cluster.local./ns/a/sa/b", 0, "does not match"},
    {"spiffe:///ns/a/sa/b", 0, "no trust domain"},
    {"spiffe://", 0, "no trust domain"},
    {P, 0, "no path"},
    {"spiffe:/" TD "/ns/a/sa/b", 0, "not a spiffe:// URI"},
    {"spiffe:" TD "/ns/a/sa/b", 0, "not a spiffe:// URI"},
    {"https://" TD "/ns/a/sa/b", 0, "not a spiffe:// URI"},
    {"spiffe", 0, "not a spiffe:// URI"},
    {"", 0, "not a spiffe:// URI"},
    {" " P "/ns/a/sa/b", 0, "spaces"},
    {P "/ns/a/sa/b ", 0, "spaces"},
    {P "/ns/a/sa/b\n", 0, "spaces"},
    {P "/ns/a\t/sa/b", 0, "spaces"},
    {P "/ns/a/sa/b\\c", 0, "[a-zA-Z0-9.-_]"},
    {P "/ns/a;x/sa/b", 0, "[a-zA-Z0-9.-_]"},
    {P "/ns/a/sa/b:c", 0, "[a-zA-Z0-9.-_]"},
    {P "/ns/a/sa/b@c", 0, "[a-zA-Z0-9.-_]"},
    {P "/ns/Shop/sa/b", 0, "namespace"},
    {P "/ns/-a/sa/b", 0, "namespace"},
    {P "/ns/a-/sa/b", 0, "namespace"},
    {P "/ns/a.b/sa/c", 0, "namespace"},
    {P "/ns/a_b/sa/c", 0, "namespace"},
    {P "/ns/a/sa/Web", 0, "ServiceAccount"},
    {P "/ns/a/sa/a..b", 0, "ServiceAccount"},
    {P "/ns/a/sa/-b", 0, "ServiceAccount"},
    {P "/ns/a/sa/b_c", 0, "ServiceAccount"},
    {P "/ns/a/sa/.b", 0, "ServiceAccount"},
};

static void test_parse_rejects_matrix(void **state)
{
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
        const bad_case *c = &bad_ids[i];
        size_t len = c->len ? c->len : strlen(c->uri);
        sb_identity id = {.ns = "untouched"};
        const char *why = NULL;

        if (parse(c->uri, len, &id, &why) != SB_E_UNAUTHORIZED)
            fail_msg("accepted case %zu: %s", i, c->uri);
        if (!why || !strstr(why, c->reason))
            fail_msg("case %zu (%s): reason \"%s\", want \"%s\"", i, c->uri, why, c->reason);
        assert_string_equal(id.ns, "untouched");
    }
}

static void test_parse_too_long(void **state)
{
    static char uri[SB_MAX_SPIFFE_ID + 2];
    const char *why = NULL;
    sb_identity id;

    /* Over the limit, even though every byte would pass on its own. */
    memset(uri, 'a', sizeof(uri));
    memcpy(uri, GOOD_ID, strlen(GOOD_ID));
    assert_int_equal(parse(uri, SB_MAX_SPIFFE_ID + 1, &id, &why), SB_E_UNAUTHORIZED);
    assert_non_null(strstr(why, "2048"));
    assert_int_equal(parse(uri, sizeof(uri), &id, NULL), SB_E_UNAUTHORIZED);
}

static void test_parse_needs_trust_domain(void **state)
{
    const sb_identity_opts none = {.trust_domain = NULL};
    const sb_identity_opts other = {.trust_domain = "example.org"};
    sb_identity id;

    assert_int_equal(sb_identity_parse_spiffe(GOOD_ID, strlen(GOOD_ID), &none, &id, NULL),
                     SB_E_UNAUTHORIZED);
    assert_int_equal(sb_identity_parse_spiffe(GOOD_ID, strlen(GOOD_ID), &other, &id, NULL),
                     SB_E_UNAUTHORIZED);
}

/* The parser never reads past len: a valid ID followed by junk the caller
 * did not count still parses, and a cut one does not. */
static void test_parse_respects_len(void **state)
{
    static const char s[] = GOOD_ID "/extra";
    sb_identity id;

    assert_int_equal(parse(s, strlen(GOOD_ID), &id, NULL), SB_OK);
    assert_string_equal(id.sa, "web");
    assert_int_equal(parse(s, strlen(GOOD_ID) - 1, &id, NULL), SB_OK);
    assert_string_equal(id.sa, "we");
    assert_int_equal(parse(s, strlen("spiffe://" TD "/ns/shop/sa"), &id, NULL), SB_E_UNAUTHORIZED);
}

/* ---- User names --------------------------------------------------------- */

static void test_username(void **state)
{
    static const char name[] = "system:serviceaccount:shop:web.v2";
    char buf[SB_IDENTITY_USERNAME_SIZE];
    sb_identity id;

    assert_int_equal(sb_identity_parse_username(name, strlen(name), &id, NULL), SB_OK);
    assert_string_equal(id.ns, "shop");
    assert_string_equal(id.sa, "web.v2");
    assert_string_equal(id.source, "");
    sb_identity_username(&id, buf, sizeof(buf));
    assert_string_equal(buf, name);

    /* A short buffer gets a cut, terminated string. */
    sb_identity_username(&id, buf, 8);
    assert_string_equal(buf, "system:");
}

static void test_username_rejects(void **state)
{
    static const char *const bad[] = {
        "system:serviceaccount:shop",
        "system:serviceaccount::web",
        "system:serviceaccount:shop:",
        "system:serviceaccounts:shop:web",
        "system:serviceaccount:shop:a:b",
        "System:serviceaccount:shop:web",
        "system:serviceaccount:Shop:web",
        "system:serviceaccount:shop:Web",
        "system:serviceaccount:shop:web ",
        "system:node:shop:web",
        "",
        "system:serviceaccount:",
    };
    static const char with_nul[] = "system:serviceaccount:shop:web\0x";
    sb_identity id;
    const char *why = NULL;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (sb_identity_parse_username(bad[i], strlen(bad[i]), &id, &why) != SB_E_UNAUTHORIZED)
            fail_msg("accepted user name %s", bad[i]);
    }
    assert_non_null(why);
    assert_int_equal(sb_identity_parse_username(with_nul, sizeof(with_nul) - 1, &id, NULL),
                     SB_E_UNAUTHORIZED);
}

/* ---- Certificates ------------------------------------------------------- */

/* What a test certificate deviates in from a valid client SVID. */
typedef struct cert_spec {
    const char *uris[3]; /* URI SANs; default one: GOOD_ID */
    bool no_uri;
    const char *dns;       /* a DNS SAN */
    const char *cn[2];     /* subject CNs; default "client" */
    const char *othername; /* an otherName SAN (UTF8String value) */
    const void *raw_san;   /* replaces the SAN extension with these DER bytes */
    size_t raw_san_len;
    unsigned int extra_dns; /* that many more DNS SANs */
    bool ca;                /* basicConstraints cA true */
    unsigned int key_usage; /* 0: digitalSignature */
    const char *eku;        /* NULL: clientAuth; "": no extension */
    const char *eku2;       /* a second purpose */
    const void *serial;     /* default 0x01 0x02 */
    size_t serial_len;
} cert_spec;

static void add_sans(gnutls_x509_crt_t crt, const cert_spec *spec)
{
    unsigned int flags = GNUTLS_FSAN_APPEND;

    if (spec->raw_san) {
        assert_int_equal(gnutls_x509_crt_set_extension_by_oid(crt, "2.5.29.17", spec->raw_san,
                                                              spec->raw_san_len, 0),
                         0);
        return;
    }
    for (size_t i = 0; !spec->no_uri && i < 3; i++) {
        const char *uri = spec->uris[i] ? spec->uris[i] : (i == 0 ? GOOD_ID : NULL);
        if (uri)
            assert_int_equal(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_URI, uri,
                                                                  (unsigned int)strlen(uri), flags),
                             0);
    }
    if (spec->dns)
        assert_int_equal(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, spec->dns,
                                                              (unsigned int)strlen(spec->dns),
                                                              flags),
                         0);
    for (unsigned int i = 0; i < spec->extra_dns; i++) {
        char name[32];
        int n = snprintf(name, sizeof(name), "host%u.example", i);
        assert_int_equal(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, name,
                                                              (unsigned int)n, flags),
                         0);
    }
}

/* An otherName SAN: SEQUENCE { [0] { OID 1.2.3.4, [0] EXPLICIT UTF8String } }. */
static void add_othername(gnutls_x509_crt_t crt, const char *value)
{
    unsigned char der[256];
    size_t n = strlen(value);
    size_t inner = 2 + 3 + 2 + 2 + n; /* OID, [0] { UTF8String } */

    assert_true(n < 100);
    unsigned char head[] = {
        0x30, (unsigned char)(inner + 2), 0xa0, (unsigned char)inner, 0x06, 0x03, 0x2a, 0x03, 0x04,
        0xa0, (unsigned char)(n + 2),     0x0c, (unsigned char)n};
    memcpy(der, head, sizeof(head));
    memcpy(der + sizeof(head), value, n);
    assert_int_equal(
        gnutls_x509_crt_set_extension_by_oid(crt, "2.5.29.17", der, sizeof(head) + n, 0), 0);
}

static void add_usage(gnutls_x509_crt_t crt, const cert_spec *spec)
{
    const char *eku = spec->eku ? spec->eku : GNUTLS_KP_TLS_WWW_CLIENT;

    assert_int_equal(gnutls_x509_crt_set_basic_constraints(crt, spec->ca, -1), 0);
    assert_int_equal(gnutls_x509_crt_set_key_usage(
                         crt, spec->key_usage ? spec->key_usage : GNUTLS_KEY_DIGITAL_SIGNATURE),
                     0);
    if (*eku)
        assert_int_equal(gnutls_x509_crt_set_key_purpose_oid(crt, eku, 0), 0);
    if (spec->eku2)
        assert_int_equal(gnutls_x509_crt_set_key_purpose_oid(crt, spec->eku2, 0), 0);
}

/* Builds, self-signs and exports the certificate; returns the DER length. */
static size_t make_cert(const cert_spec *spec, unsigned char der[DER_SPACE])
{
    gnutls_x509_crt_t crt;
    time_t now = time(NULL);
    size_t len = DER_SPACE;

    assert_int_equal(gnutls_x509_crt_init(&crt), 0);
    assert_int_equal(gnutls_x509_crt_set_version(crt, 3), 0);
    assert_int_equal(gnutls_x509_crt_set_serial(crt, spec->serial ? spec->serial : "\x01\x02",
                                                spec->serial ? spec->serial_len : 2),
                     0);
    assert_int_equal(gnutls_x509_crt_set_activation_time(crt, now - 60), 0);
    assert_int_equal(gnutls_x509_crt_set_expiration_time(crt, now + 3600), 0);
    assert_int_equal(gnutls_x509_crt_set_key(crt, key), 0);
    for (size_t i = 0; i < 2; i++) {
        const char *cn = spec->cn[i] ? spec->cn[i] : (i == 0 ? "client" : NULL);
        if (cn)
            assert_int_equal(gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
                                                           (unsigned int)strlen(cn)),
                             0);
    }
    if (spec->othername)
        add_othername(crt, spec->othername);
    else
        add_sans(crt, spec);
    add_usage(crt, spec);

    assert_int_equal(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0), 0);
    assert_int_equal(gnutls_x509_crt_export(crt, GNUTLS_X509_FMT_DER, der, &len), 0);
    gnutls_x509_crt_deinit(crt);
    return len;
}

static sb_err identify(const cert_spec *spec, const sb_identity_opts *opts, sb_identity *id,
                       const char **why)
{
    static unsigned char der[DER_SPACE];
    size_t len = make_cert(spec, der);

    return sb_identity_from_der(der, len, opts, id, why);
}

static void expect_denied(const cert_spec *spec, const sb_identity_opts *opts, const char *reason)
{
    sb_identity id = {.ns = "untouched", .sa = "untouched"};
    const char *why = NULL;

    assert_int_equal(identify(spec, opts, &id, &why), SB_E_UNAUTHORIZED);
    assert_non_null(why);
    if (!strstr(why, reason))
        fail_msg("reason \"%s\", want \"%s\"", why, reason);
    /* No identity comes out of a refusal, at most the serial. */
    assert_string_equal(id.ns, "");
    assert_string_equal(id.sa, "");
}

static void test_refusal_keeps_the_serial(void **state)
{
    static const unsigned char serial[] = {0x0a, 0xbc};
    const cert_spec two = {.uris = {GOOD_ID, GOOD_ID}, .serial = serial, .serial_len = 2};
    const cert_spec ca = {.uris = {GOOD_ID}, .ca = true};
    sb_identity id;
    const char *why = NULL;

    (void)state;
    /* Read before the SANs are: the refusal's audit record names it. */
    assert_int_equal(identify(&two, &OPTS, &id, &why), SB_E_UNAUTHORIZED);
    assert_string_equal(id.serial, "0abc");
    /* The leaf checks come first: a CA leaf is refused before its serial
     * is read. */
    assert_int_equal(identify(&ca, &OPTS, &id, &why), SB_E_UNAUTHORIZED);
    assert_string_equal(id.serial, "");
}

static void test_cert_valid(void **state)
{
    static const unsigned char serial[] = {0x7f, 0x00, 0xab, 0x0c};
    const cert_spec spec = {.dns = "web.shop.svc", .serial = serial, .serial_len = 4};
    sb_identity id;

    assert_int_equal(identify(&spec, &OPTS, &id, NULL), SB_OK);
    assert_string_equal(id.ns, "shop");
    assert_string_equal(id.sa, "web");
    assert_string_equal(id.source, "spiffe");
    assert_string_equal(id.serial, "7f00ab0c");

    /* The SVID form with both purposes (X509-SVID section 4.4). */
    const cert_spec both = {.eku = GNUTLS_KP_TLS_WWW_SERVER, .eku2 = GNUTLS_KP_TLS_WWW_CLIENT};
    assert_int_equal(identify(&both, &OPTS, &id, NULL), SB_OK);
}

static void test_cert_long_serial(void **state)
{
    static const unsigned char serial[20] = {0x12, 0x34, [19] = 0xef};
    const cert_spec spec = {.serial = serial, .serial_len = sizeof(serial)};
    sb_identity id;

    assert_int_equal(identify(&spec, &OPTS, &id, NULL), SB_OK);
    assert_string_equal(id.serial, "1234"
                                   "0000000000000000000000000000000000"
                                   "ef");
}

static void test_cert_uri_count(void **state)
{
    const cert_spec none = {.no_uri = true};
    const cert_spec dns_only = {.no_uri = true, .dns = "web.shop.svc"};
    const cert_spec two = {.uris = {GOOD_ID, "spiffe://" TD "/ns/other/sa/admin"}};
    const cert_spec two_same = {.uris = {GOOD_ID, GOOD_ID}};
    const cert_spec one_bad = {.uris = {GOOD_ID, "https://example.org/"}};

    expect_denied(&none, &OPTS, "no URI SAN");
    expect_denied(&dns_only, &OPTS, "no URI SAN");
    expect_denied(&two, &OPTS, "more than one URI SAN");
    expect_denied(&two_same, &OPTS, "more than one URI SAN");
    expect_denied(&one_bad, &OPTS, "more than one URI SAN");
    /* Several URI SANs are not an invitation to try the CN. */
    const cert_spec two_cn = {.uris = {GOOD_ID, GOOD_ID}, .cn = {"system:serviceaccount:a:b"}};
    expect_denied(&two_cn, &FALLBACK, "more than one URI SAN");
}

static void test_cert_uri_invalid(void **state)
{
    const cert_spec foreign = {.uris = {"spiffe://example.org/ns/shop/sa/web"}};
    const cert_spec upper = {.uris = {"SPIFFE://" TD "/ns/shop/sa/web"}};
    const cert_spec extra = {.uris = {GOOD_ID "/extra"}};
    const cert_spec swapped = {.uris = {"spiffe://" TD "/sa/web/ns/shop"}};
    const cert_spec query = {.uris = {GOOD_ID "?q"}};

    expect_denied(&foreign, &OPTS, "does not match");
    expect_denied(&upper, &OPTS, "not a spiffe:// URI");
    expect_denied(&extra, &OPTS, "exactly /ns/");
    expect_denied(&swapped, &OPTS, "exactly /ns/");
    expect_denied(&query, &OPTS, "query");
    /* An invalid SPIFFE ID never falls back to the CN. */
    const cert_spec with_cn = {.uris = {"spiffe://example.org/ns/a/sa/b"},
                               .cn = {"system:serviceaccount:shop:web"}};
    expect_denied(&with_cn, &FALLBACK, "does not match");
}

static void test_cert_uri_too_long(void **state)
{
    static char uri[SB_MAX_SPIFFE_ID + 2];
    const cert_spec spec = {.uris = {uri}};

    memset(uri, 'a', sizeof(uri) - 1);
    memcpy(uri, GOOD_ID "/", strlen(GOOD_ID "/"));
    expect_denied(&spec, &OPTS, "2048");
}

/* SAN encoding tricks (security notes case 10), as raw DER. */
static void test_cert_san_encoding(void **state)
{
    /* SEQUENCE { [6] "spiffe://cluster.local/ns/shop/sa/web\0.evil" } */
    unsigned char nul[128] = {0x30, 0, 0x86, 0};
    static const char body[] = GOOD_ID "\0.evil";
    size_t n = sizeof(body) - 1;
    memcpy(nul + 4, body, n);
    nul[1] = (unsigned char)(n + 2);
    nul[3] = (unsigned char)n;
    const cert_spec with_nul = {.raw_san = nul, .raw_san_len = n + 4};
    expect_denied(&with_nul, &OPTS, "NUL");

    /* Raw UTF-8 where an IA5String belongs. */
    unsigned char utf8[128] = {0x30, 0, 0x86, 0};
    static const char body8[] = "spiffe://" TD "/ns/shop/sa/w\xc3\xa9"
                                "b";
    n = sizeof(body8) - 1;
    memcpy(utf8 + 4, body8, n);
    utf8[1] = (unsigned char)(n + 2);
    utf8[3] = (unsigned char)n;
    const cert_spec with_utf8 = {.raw_san = utf8, .raw_san_len = n + 4};
    expect_denied(&with_utf8, &OPTS, "non-ASCII");

    /* A constructed [6] wrapping a BMPString instead of a primitive IA5String. */
    static const unsigned char bmp[] = {0x30, 0x08, 0xa6, 0x06, 0x1e, 0x04, 0, 'a', 0, 'b'};
    const cert_spec with_bmp = {.raw_san = bmp, .raw_san_len = sizeof(bmp)};
    expect_denied(&with_bmp, &OPTS, "");
}

static void test_cert_other_sans_are_not_identity(void **state)
{
    const cert_spec dns = {.no_uri = true, .dns = "spiffe.cluster.local"};
    const cert_spec other = {.othername = GOOD_ID};
    const cert_spec many = {.extra_dns = SB_MAX_CERT_SANS + 1};

    expect_denied(&dns, &OPTS, "no URI SAN");
    expect_denied(&other, &OPTS, "no URI SAN");
    expect_denied(&other, &FALLBACK, "subject CN");
    expect_denied(&many, &OPTS, "too many");
}

static void test_cert_cn_fallback(void **state)
{
    const cert_spec cn = {.no_uri = true, .cn = {"system:serviceaccount:shop:web"}};
    const cert_spec cn_dns = {.no_uri = true, .dns = "x", .cn = {"system:serviceaccount:a:b"}};
    sb_identity id;

    assert_int_equal(identify(&cn, &FALLBACK, &id, NULL), SB_OK);
    assert_string_equal(id.ns, "shop");
    assert_string_equal(id.sa, "web");
    assert_string_equal(id.source, "cn");
    assert_string_equal(id.serial, "0102");
    assert_int_equal(identify(&cn_dns, &FALLBACK, &id, NULL), SB_OK);
    assert_string_equal(id.ns, "a");

    /* Off by default: the same certificate is refused. */
    expect_denied(&cn, &OPTS, "no URI SAN");
}

static void test_cert_cn_fallback_rejects(void **state)
{
    const cert_spec plain = {.no_uri = true, .cn = {"web"}};
    const cert_spec two = {.no_uri = true,
                           .cn = {"system:serviceaccount:shop:web", "system:serviceaccount:a:b"}};
    const cert_spec bad_ns = {.no_uri = true, .cn = {"system:serviceaccount:Shop:web"}};
    const cert_spec escaped = {.no_uri = true, .cn = {"system:serviceaccount:shop:web,CN=x"}};

    expect_denied(&plain, &FALLBACK, "subject CN");
    expect_denied(&two, &FALLBACK, "more than one CN");
    expect_denied(&bad_ns, &FALLBACK, "subject CN");
    expect_denied(&escaped, &FALLBACK, "subject CN");
}

static void test_cert_cn_with_nul(void **state)
{
    static const char cn[] = "system:serviceaccount:shop:web\0x";
    unsigned char der[DER_SPACE];
    gnutls_x509_crt_t crt;
    size_t len = sizeof(der);
    sb_identity id;

    assert_int_equal(gnutls_x509_crt_init(&crt), 0);
    assert_int_equal(gnutls_x509_crt_set_version(crt, 3), 0);
    assert_int_equal(gnutls_x509_crt_set_serial(crt, "\x01", 1), 0);
    assert_int_equal(gnutls_x509_crt_set_activation_time(crt, time(NULL)), 0);
    assert_int_equal(gnutls_x509_crt_set_expiration_time(crt, time(NULL) + 60), 0);
    assert_int_equal(gnutls_x509_crt_set_key(crt, key), 0);
    assert_int_equal(
        gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn, sizeof(cn) - 1), 0);
    assert_int_equal(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE), 0);
    assert_int_equal(gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_CLIENT, 0), 0);
    assert_int_equal(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0), 0);
    assert_int_equal(gnutls_x509_crt_export(crt, GNUTLS_X509_FMT_DER, der, &len), 0);
    gnutls_x509_crt_deinit(crt);

    assert_int_equal(sb_identity_from_der(der, len, &FALLBACK, &id, NULL), SB_E_UNAUTHORIZED);
}

static void test_cert_leaf_checks(void **state)
{
    const cert_spec ca = {.ca = true};
    const cert_spec no_eku = {.eku = ""};
    const cert_spec server_only = {.eku = GNUTLS_KP_TLS_WWW_SERVER};
    const cert_spec email = {.eku = GNUTLS_KP_EMAIL_PROTECTION};
    const cert_spec any = {.eku = GNUTLS_KP_ANY};
    const cert_spec cert_sign = {.key_usage =
                                     GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_CERT_SIGN};
    const cert_spec crl_sign = {.key_usage = GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_CRL_SIGN};
    const cert_spec no_sig = {.key_usage = GNUTLS_KEY_KEY_ENCIPHERMENT};

    expect_denied(&ca, &OPTS, "CA certificate");
    expect_denied(&no_eku, &OPTS, "clientAuth");
    expect_denied(&server_only, &OPTS, "clientAuth");
    expect_denied(&email, &OPTS, "clientAuth");
    expect_denied(&any, &OPTS, "clientAuth");
    expect_denied(&cert_sign, &OPTS, "signing certificates");
    expect_denied(&crl_sign, &OPTS, "signing certificates");
    expect_denied(&no_sig, &OPTS, "digitalSignature");
}

static void test_check_leaf(void **state)
{
    static unsigned char der[DER_SPACE];
    const cert_spec good = {0};
    const cert_spec ca = {.ca = true};
    const cert_spec no_eku = {.eku = ""};
    const char *why = NULL;

    size_t len = make_cert(&good, der);
    assert_int_equal(sb_identity_check_leaf(der, len, &why), SB_OK);
    assert_null(why);
    len = make_cert(&ca, der);
    assert_int_equal(sb_identity_check_leaf(der, len, &why), SB_E_UNAUTHORIZED);
    assert_non_null(strstr(why, "CA"));
    len = make_cert(&no_eku, der);
    assert_int_equal(sb_identity_check_leaf(der, len, NULL), SB_E_UNAUTHORIZED);
}

static void test_cert_garbage(void **state)
{
    static unsigned char der[DER_SPACE];
    const cert_spec good = {0};
    sb_identity id;
    const char *why = NULL;

    size_t len = make_cert(&good, der);
    assert_int_equal(sb_identity_from_der(der, 0, &OPTS, &id, &why), SB_E_UNAUTHORIZED);
    assert_int_equal(sb_identity_from_der(der, len / 2, &OPTS, &id, &why), SB_E_UNAUTHORIZED);
    assert_non_null(strstr(why, "cannot be parsed"));
    assert_int_equal(sb_identity_check_leaf((const unsigned char *)"junk", 4, NULL),
                     SB_E_UNAUTHORIZED);
    assert_int_equal(sb_identity_from_der(der, len, &OPTS, &id, NULL), SB_OK);
}

static int setup(void **state)
{
    if (gnutls_x509_privkey_init(&key) < 0)
        return -1;
    return gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
                                        GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0);
}

static int teardown(void **state)
{
    gnutls_x509_privkey_deinit(key);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_longest_names),
        cmocka_unit_test(test_parse_rejects_matrix),
        cmocka_unit_test(test_parse_too_long),
        cmocka_unit_test(test_parse_needs_trust_domain),
        cmocka_unit_test(test_parse_respects_len),
        cmocka_unit_test(test_username),
        cmocka_unit_test(test_username_rejects),
        cmocka_unit_test(test_cert_valid),
        cmocka_unit_test(test_refusal_keeps_the_serial),
        cmocka_unit_test(test_cert_long_serial),
        cmocka_unit_test(test_cert_uri_count),
        cmocka_unit_test(test_cert_uri_invalid),
        cmocka_unit_test(test_cert_uri_too_long),
        cmocka_unit_test(test_cert_san_encoding),
        cmocka_unit_test(test_cert_other_sans_are_not_identity),
        cmocka_unit_test(test_cert_cn_fallback),
        cmocka_unit_test(test_cert_cn_fallback_rejects),
        cmocka_unit_test(test_cert_cn_with_nul),
        cmocka_unit_test(test_cert_leaf_checks),
        cmocka_unit_test(test_check_leaf),
        cmocka_unit_test(test_cert_garbage),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
