/* Caller identity from a client certificate (see identity.h). Everything
 * read from the certificate is treated as counted bytes, never as a C
 * string: an ASN.1 string may hold a NUL that would cut it short. */
#include "auth/identity.h"

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "core/names.h"

static const char SPIFFE_PREFIX[] = "spiffe://";
static const char SA_USER_PREFIX[] = "system:serviceaccount:";

#define PATH_SHAPE "SPIFFE ID path must be exactly /ns/<namespace>/sa/<name>"

/* A counted piece of the input. */
typedef struct span {
    const char *p;
    size_t n;
} span;

static bool span_is(span s, const char *lit)
{
    size_t n = strlen(lit);

    return s.n == n && memcmp(s.p, lit, n) == 0;
}

static void span_copy(char *dst, span s)
{
    memcpy(dst, s.p, s.n);
    dst[s.n] = '\0';
}

static sb_err deny(const char **why, const char *reason)
{
    if (why)
        *why = reason;
    return SB_E_UNAUTHORIZED;
}

/* SPIFFE ID spec section 2.1: trust domain names are [a-z0-9.-_]. */
static bool is_td_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

/* SPIFFE ID spec section 2.2: path segments are [a-zA-Z0-9.-_]. */
static bool is_path_char(char c)
{
    return is_td_char(c) || (c >= 'A' && c <= 'Z');
}

/* Bytes no SPIFFE ID may hold anywhere, each with its own reason so logs
 * say what was wrong. RFC 3986 allows only ASCII; SPIFFE forbids query,
 * fragment (section 2) and percent-encoding (section 2.2). */
static const char *check_bytes(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == 0)
            return "SPIFFE ID contains a NUL byte";
        if (c >= 0x80)
            return "SPIFFE ID contains non-ASCII bytes";
        if (c <= 0x20 || c == 0x7f)
            return "SPIFFE ID contains spaces or control characters";
        if (c == '%')
            return "SPIFFE ID must not be percent-encoded";
        if (c == '?')
            return "SPIFFE ID must not have a query";
        if (c == '#')
            return "SPIFFE ID must not have a fragment";
    }
    return NULL;
}

/* The authority: a bare host, the trust domain (SPIFFE ID spec section 2.1:
 * userinfo and port MUST NOT be set, nor the ':' delimiter). */
static const char *check_trust_domain(span td, const char *want)
{
    if (td.n == 0)
        return "SPIFFE ID has no trust domain";
    if (memchr(td.p, '@', td.n))
        return "SPIFFE ID must not have userinfo";
    if (memchr(td.p, ':', td.n))
        return "SPIFFE ID must not have a port";
    if (td.n > SB_MAX_TRUST_DOMAIN)
        return "SPIFFE trust domain is longer than 255 bytes";
    for (size_t i = 0; i < td.n; i++) {
        if (!is_td_char(td.p[i]))
            return "SPIFFE trust domain has characters other than [a-z0-9.-_]";
    }
    if (!want || !span_is(td, want))
        return "SPIFFE trust domain does not match";
    return NULL;
}

/* One path segment: SPIFFE ID spec section 2.2 forbids empty, "." and ".."
 * segments; an empty one is also how "//" shows. */
static const char *check_segment(span seg)
{
    if (seg.n == 0)
        return "SPIFFE ID has an empty path segment";
    if (span_is(seg, ".") || span_is(seg, ".."))
        return "SPIFFE ID has a . or .. path segment";
    for (size_t i = 0; i < seg.n; i++) {
        if (!is_path_char(seg.p[i]))
            return "SPIFFE ID path has characters other than [a-zA-Z0-9.-_]";
    }
    return NULL;
}

/* Splits a path that starts with '/' into exactly four segments. Anything
 * longer or shorter is refused outright rather than matched by prefix (a
 * prefix match is what SPIRE CVE-2021-27099 was about). */
static const char *split_path(span path, span seg[4])
{
    size_t count = 0;
    size_t start = 1;

    if (path.p[path.n - 1] == '/')
        return "SPIFFE ID must not end with /";
    for (size_t i = 1; i <= path.n; i++) {
        if (i < path.n && path.p[i] != '/')
            continue;
        span s = {path.p + start, i - start};
        const char *bad = check_segment(s);
        if (bad)
            return bad;
        if (count == 4)
            return PATH_SHAPE;
        seg[count++] = s;
        start = i + 1;
    }
    return count == 4 ? NULL : PATH_SHAPE;
}

/* ns/<namespace>/sa/<name> with Kubernetes names (API conventions:
 * namespaces are DNS labels, ServiceAccount names DNS subdomains). */
static const char *read_path(span path, sb_identity *id)
{
    span seg[4];
    const char *bad = split_path(path, seg);

    if (bad)
        return bad;
    if (!span_is(seg[0], "ns") || !span_is(seg[2], "sa"))
        return PATH_SHAPE;
    if (!sb_name_is_label(seg[1].p, seg[1].n))
        return "SPIFFE ID namespace is not a valid Kubernetes namespace name";
    if (!sb_name_is_subdomain(seg[3].p, seg[3].n) || seg[3].n > SB_MAX_SA_NAME)
        return "SPIFFE ID ServiceAccount is not a valid Kubernetes name";

    span_copy(id->ns, seg[1]);
    span_copy(id->sa, seg[3]);
    return NULL;
}

static const char *parse_spiffe(const char *uri, size_t len, const char *want_td, sb_identity *id)
{
    size_t plen = sizeof(SPIFFE_PREFIX) - 1;

    /* SPIFFE ID spec section 2.3: at most 2048 bytes, scheme included. */
    if (len > SB_MAX_SPIFFE_ID)
        return "SPIFFE ID is longer than 2048 bytes";
    const char *bad = check_bytes(uri, len);
    if (bad)
        return bad;
    /* Section 2: the scheme is exactly "spiffe" (we accept no case folding). */
    if (len < plen || memcmp(uri, SPIFFE_PREFIX, plen) != 0)
        return "identity is not a spiffe:// URI";

    const char *host = uri + plen;
    const char *end = uri + len;
    const char *slash = memchr(host, '/', (size_t)(end - host));
    span td = {host, (size_t)((slash ? slash : end) - host)};
    bad = check_trust_domain(td, want_td);
    if (bad)
        return bad;

    /* X509-SVID section 3.1: a leaf's SPIFFE ID has a non-root path. */
    if (!slash)
        return "SPIFFE ID has no path";
    span path = {slash, (size_t)(end - slash)};
    return read_path(path, id);
}

sb_err sb_identity_parse_spiffe(const char *uri, size_t len, const sb_identity_opts *opts,
                                sb_identity *out, const char **why)
{
    sb_identity id = {.source = "spiffe"};
    const char *bad = parse_spiffe(uri, len, opts->trust_domain, &id);

    if (bad)
        return deny(why, bad);
    *out = id;
    return SB_OK;
}

static const char *parse_username(const char *name, size_t len, sb_identity *id)
{
    static const char shape[] = "user name is not system:serviceaccount:<namespace>:<name>";
    size_t plen = sizeof(SA_USER_PREFIX) - 1;

    if (len <= plen || memcmp(name, SA_USER_PREFIX, plen) != 0)
        return shape;

    /* Neither a namespace nor a ServiceAccount name can hold ':', so the
     * first one after the prefix separates them. */
    span ns = {name + plen, len - plen};
    const char *colon = memchr(ns.p, ':', ns.n);
    if (!colon)
        return shape;
    span sa = {colon + 1, (size_t)(name + len - colon - 1)};
    ns.n = (size_t)(colon - ns.p);
    if (!sb_name_is_label(ns.p, ns.n) || !sb_name_is_subdomain(sa.p, sa.n) || sa.n > SB_MAX_SA_NAME)
        return shape;

    span_copy(id->ns, ns);
    span_copy(id->sa, sa);
    return NULL;
}

sb_err sb_identity_parse_username(const char *name, size_t len, sb_identity *out, const char **why)
{
    sb_identity id = {.source = ""};
    const char *bad = parse_username(name, len, &id);

    if (bad)
        return deny(why, bad);
    *out = id;
    return SB_OK;
}

/* ---- Certificates ---------------------------------------------------- */

#define BAD_CERT "client certificate cannot be parsed"

static sb_err import_der(const unsigned char *der, size_t len, gnutls_x509_crt_t *out,
                         const char **why)
{
    gnutls_x509_crt_t crt = NULL;
    /* GnuTLS reads through a non-const datum but does not write to it. */
    gnutls_datum_t datum = {(unsigned char *)der, (unsigned int)len};

    if (len == 0 || len > UINT_MAX || gnutls_x509_crt_init(&crt) < 0)
        return deny(why, BAD_CERT);
    if (gnutls_x509_crt_import(crt, &datum, GNUTLS_X509_FMT_DER) < 0) {
        gnutls_x509_crt_deinit(crt);
        return deny(why, BAD_CERT);
    }
    *out = crt;
    return SB_OK;
}

/* X509-SVID sections 4.1, 4.3 and 5.2: a leaf has cA false (an absent
 * extension means false, RFC 5280 section 4.2.1.9), never keyCertSign or
 * cRLSign, and digitalSignature (TLS 1.3 CertificateVerify is a signature). */
static const char *check_constraints(gnutls_x509_crt_t crt)
{
    unsigned int critical = 0, ca = 0, usage = 0;

    int rc = gnutls_x509_crt_get_basic_constraints(crt, &critical, &ca, NULL);
    if (rc < 0 && rc != GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
        return "certificate basic constraints cannot be parsed";
    if (rc >= 0 && ca)
        return "certificate is a CA certificate, not a leaf";

    rc = gnutls_x509_crt_get_key_usage(crt, &usage, &critical);
    if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
        return NULL;
    if (rc < 0)
        return "certificate key usage cannot be parsed";
    if (usage & (GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN))
        return "certificate key usage allows signing certificates";
    if (!(usage & GNUTLS_KEY_DIGITAL_SIGNATURE))
        return "certificate key usage lacks digitalSignature";
    return NULL;
}

/* DESIGN.md section 3 requires EKU clientAuth (RFC 5280 section 4.2.1.12);
 * a missing extension or anyExtendedKeyUsage alone is not enough. */
static const char *check_client_auth(gnutls_x509_crt_t crt)
{
    const size_t want = strlen(GNUTLS_KP_TLS_WWW_CLIENT);

    for (unsigned int i = 0; i < SB_MAX_CERT_EKUS; i++) {
        char oid[128];
        size_t size = sizeof(oid);
        unsigned int critical = 0;

        int rc = gnutls_x509_crt_get_key_purpose_oid(crt, i, oid, &size, &critical);
        if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
            break;
        if (rc == GNUTLS_E_SHORT_MEMORY_BUFFER)
            continue; /* longer than the OID we look for */
        if (rc < 0)
            return "certificate extended key usage cannot be parsed";
        if (size == want && memcmp(oid, GNUTLS_KP_TLS_WWW_CLIENT, want) == 0)
            return NULL;
    }
    return "certificate extended key usage lacks clientAuth";
}

static const char *check_leaf(gnutls_x509_crt_t crt)
{
    const char *bad = check_constraints(crt);

    return bad ? bad : check_client_auth(crt);
}

sb_err sb_identity_check_leaf(const unsigned char *der, size_t len, const char **why)
{
    gnutls_x509_crt_t crt;
    sb_err err = import_der(der, len, &crt, why);

    if (err)
        return err;
    const char *bad = check_leaf(crt);
    gnutls_x509_crt_deinit(crt);
    return bad ? deny(why, bad) : SB_OK;
}

/* The serial as lower-case hex, for audit records. RFC 5280 section 4.1.2.2
 * caps serials at 20 bytes; we take up to SB_MAX_SERIAL_HEX / 2. */
static const char *read_serial(gnutls_x509_crt_t crt, char hex[SB_MAX_SERIAL_HEX + 1])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char raw[SB_MAX_SERIAL_HEX / 2];
    size_t size = sizeof(raw);

    if (gnutls_x509_crt_get_serial(crt, raw, &size) < 0)
        return "certificate serial number is too long or cannot be parsed";
    for (size_t i = 0; i < size; i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 0x0f];
    }
    hex[2 * size] = '\0';
    return NULL;
}

/* Counts the URI SANs and notes the index of the first. Other SAN types
 * are allowed (X509-SVID section 2) but never read as identity. */
static const char *count_uri_sans(gnutls_x509_crt_t crt, unsigned int *count, unsigned int *first)
{
    char scratch[SB_MAX_SPIFFE_ID + 1];

    *count = 0;
    for (unsigned int seq = 0; seq < SB_MAX_CERT_SANS; seq++) {
        size_t size = sizeof(scratch);
        unsigned int type = 0, critical = 0;

        /* On a short buffer GnuTLS still reports the type. */
        int rc = gnutls_x509_crt_get_subject_alt_name2(crt, seq, scratch, &size, &type, &critical);
        if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
            return NULL;
        if (rc < 0 && rc != GNUTLS_E_SHORT_MEMORY_BUFFER)
            return "certificate subject alternative names cannot be parsed";
        if (type == GNUTLS_SAN_URI && (*count)++ == 0)
            *first = seq;
    }
    return "certificate has too many subject alternative names";
}

static const char *read_uri_san(gnutls_x509_crt_t crt, unsigned int seq,
                                const sb_identity_opts *opts, sb_identity *id)
{
    char uri[SB_MAX_SPIFFE_ID + 1];
    size_t size = sizeof(uri);
    unsigned int type = 0, critical = 0;

    int rc = gnutls_x509_crt_get_subject_alt_name2(crt, seq, uri, &size, &type, &critical);
    if (rc == GNUTLS_E_SHORT_MEMORY_BUFFER)
        return "SPIFFE ID is longer than 2048 bytes";
    if (rc != GNUTLS_SAN_URI)
        return "certificate subject alternative names cannot be parsed";

    /* size counts every byte of the IA5String, an embedded NUL included;
     * parse_spiffe refuses NUL, so "spiffe://a\0evil" cannot pass as a
     * shorter string (CVE-2009-2408 class). */
    return parse_spiffe(uri, size, opts->trust_domain, id);
}

/* CN fallback: the subject's single CN, system:serviceaccount:<ns>:<sa>.
 * GnuTLS escapes DN values (RFC 4514) and prints values with a NUL as
 * "#<hex>": both forms carry characters the parser refuses. */
static const char *read_cn(gnutls_x509_crt_t crt, sb_identity *id)
{
    char cn[SB_IDENTITY_USERNAME_SIZE];
    char extra[8];
    size_t size = sizeof(cn);
    size_t extra_size = sizeof(extra);

    int rc = gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn, &size);
    if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
        return "certificate has no URI SAN and no subject CN";
    if (rc < 0)
        return "subject CN is not system:serviceaccount:<namespace>:<name>";
    rc = gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 1, 0, extra, &extra_size);
    if (rc != GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
        return "certificate subject has more than one CN";

    if (parse_username(cn, size, id))
        return "subject CN is not system:serviceaccount:<namespace>:<name>";
    memcpy(id->source, "cn", sizeof("cn"));
    return NULL;
}

static const char *identity_of(gnutls_x509_crt_t crt, const sb_identity_opts *opts, sb_identity *id)
{
    unsigned int uris = 0, first = 0;
    const char *bad = check_leaf(crt);

    if (bad)
        return bad;
    bad = read_serial(crt, id->serial);
    if (bad)
        return bad;
    bad = count_uri_sans(crt, &uris, &first);
    if (bad)
        return bad;

    /* X509-SVID section 2: more than one URI SAN MUST be rejected. A URI
     * SAN that is not a valid SPIFFE ID never falls back to the CN. */
    if (uris > 1)
        return "certificate has more than one URI SAN; exactly one is required";
    if (uris == 1)
        return read_uri_san(crt, first, opts, id);
    if (!opts->cn_fallback)
        return "certificate has no URI SAN; exactly one is required";
    return read_cn(crt, id);
}

sb_err sb_identity_from_der(const unsigned char *der, size_t len, const sb_identity_opts *opts,
                            sb_identity *out, const char **why)
{
    gnutls_x509_crt_t crt;
    sb_identity id = {.source = "spiffe"};
    sb_err err = import_der(der, len, &crt, why);

    if (err) {
        *out = (sb_identity){0};
        return err;
    }
    const char *bad = identity_of(crt, opts, &id);
    gnutls_x509_crt_deinit(crt);
    if (bad) {
        /* No identity, but the serial when it was read: the refusal's
         * audit record can name the certificate. */
        *out = (sb_identity){0};
        memcpy(out->serial, id.serial, sizeof(out->serial));
        return deny(why, bad);
    }
    *out = id;
    return SB_OK;
}

void sb_identity_username(const sb_identity *id, char *buf, size_t buflen)
{
    if (buflen == 0)
        return;
    snprintf(buf, buflen, "%s%s:%s", SA_USER_PREFIX, id->ns, id->sa);
}
