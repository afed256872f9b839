/* AWS Signature Version 4 (see sigv4.h). The steps follow the AWS IAM User
 * Guide, "Create a signed AWS API request"; where the guide leaves room,
 * the choice is botocore's SigV4Auth, which is what AWS SDKs and moto do. */
#include "clients/sigv4.h"

#include <gnutls/crypto.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/secret.h"

#define SHA256_LEN 32
#define ALGORITHM  "AWS4-HMAC-SHA256"

/* Headers botocore never signs: hop-by-hop ones, and ones proxies or the
 * HTTP library may rewrite on the way (botocore SIGNED_HEADERS_BLACKLIST). */
static const char *const unsigned_headers[] = {
    "connection", "expect",  "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer",    "upgrade", "user-agent", "transfer-encoding",  "x-amzn-trace-id",
};

/* Headers whose values the signer itself decides. */
static const char *const owned_headers[] = {
    "authorization", "date", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token",
};

/* A text being built, with a sticky error: after the first failed append
 * the others do nothing, and the caller checks once at the end. The bytes
 * live in an sb_buf because the canonical request holds the session token. */
typedef struct text {
    sb_buf buf;
    sb_err err;
} text;

/* One header of the canonical set: lower-cased name, value as given, and
 * its position, so repeated headers keep their order after sorting. */
typedef struct header {
    char *name;
    const char *value;
    size_t order;
} header;

/* A path segment inside the caller's path. */
typedef struct span {
    const char *start;
    size_t len;
} span;

typedef struct param {
    char *name;
    char *value;
} param;

static void put(text *t, const void *bytes, size_t n)
{
    if (t->err == SB_OK)
        t->err = sb_buf_append(&t->buf, bytes, n);
}

static void put_str(text *t, const char *s)
{
    put(t, s, strlen(s));
}

static void put_char(text *t, char c)
{
    put(t, &c, 1);
}

static void put_hex(text *t, const unsigned char *bytes, size_t n)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        char pair[2] = {digits[bytes[i] >> 4], digits[bytes[i] & 15]};
        put(t, pair, 2);
    }
}

static void hex_to(char *out, const unsigned char *bytes, size_t n)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

/* RFC 3986 section 2.3 unreserved characters, the only ones SigV4 leaves
 * unencoded. */
static bool is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

/* RFC 9110 section 5.6.2 token characters (header names, methods). */
static bool is_tchar(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_token(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        if (!is_tchar((unsigned char)*s))
            return false;
    }
    return true;
}

static bool is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* Header values: visible ASCII, spaces and tabs (RFC 9110 section 5.5,
 * without obs-text, whose trimming botocore would do by Unicode rules). */
static bool is_field_value(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((is_ctl(c) && c != '\t') || c >= 0x80)
            return false;
    }
    return true;
}

static bool is_name_in(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(name, list[i]) == 0)
            return true;
    }
    return false;
}

static bool is_scope_part(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
            return false;
    }
    return true;
}

static bool is_alnum_str(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
            return false;
    }
    return true;
}

/* YYYYMMDD'T'HHMMSS'Z' (the ISO 8601 basic format SigV4 uses). */
static bool is_amz_date(const char *s)
{
    if (!s || strlen(s) != SB_SIGV4_DATE_LEN - 1 || s[8] != 'T' || s[15] != 'Z')
        return false;
    for (int i = 0; i < 15; i++) {
        if (i != 8 && (s[i] < '0' || s[i] > '9'))
            return false;
    }
    return true;
}

/* Percent-encodes every byte but the unreserved ones (and '/' when
 * keep_slash), with upper-case hex, as the canonical request wants. */
static void put_encoded(text *t, const char *s, size_t n, bool keep_slash)
{
    static const char digits[] = "0123456789ABCDEF";

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c) || (keep_slash && c == '/')) {
            put_char(t, (char)c);
            continue;
        }
        char esc[3] = {'%', digits[c >> 4], digits[c & 15]};
        put(t, esc, 3);
    }
}

/* Canonical URI. The guide asks for the path normalized per RFC 3986 and
 * each segment encoded twice for every service but S3. botocore does it by
 * dropping empty, "." and ".." segments (with their parent) from the path
 * as sent, which is already encoded once, and encoding the result again;
 * a trailing '/' survives when any segment does. */
static void put_canonical_uri(text *t, const char *path)
{
    size_t len = strlen(path);
    size_t count = 0;
    span *segs = sb_xcalloc(len + 1, sizeof(*segs));

    for (const char *p = path; p <= path + len;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            count -= count > 0;
        else if (n > 0 && !(n == 1 && p[0] == '.'))
            segs[count++] = (span){p, n};
        p += n + 1;
    }

    put_char(t, '/');
    for (size_t i = 0; i < count; i++) {
        if (i > 0)
            put_char(t, '/');
        put_encoded(t, segs[i].start, segs[i].len, true);
    }
    if (count > 0 && path[len - 1] == '/')
        put_char(t, '/');
    free(segs);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One query name or value in canonical form: percent-decoded (RFC 3986
 * section 2.1; '+' is a plus sign, not a space) and encoded again, so that
 * any valid encoding of the same bytes signs the same. For a query that is
 * already canonical (what botocore itself sends) this is the identity. */
static sb_err canonical_component(const char *s, size_t n, char **out)
{
    char *dec = sb_xmalloc(n + 1);
    size_t len = 0;
    text t = {.err = SB_OK};

    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            dec[len++] = s[i];
            continue;
        }
        int hi = i + 2 < n ? hex_value(s[i + 1]) : -1;
        int lo = hi >= 0 ? hex_value(s[i + 2]) : -1;
        if (lo < 0) {
            free(dec);
            return SB_E_INTERNAL;
        }
        dec[len++] = (char)(hi << 4 | lo);
        i += 2;
    }

    sb_buf_init(&t.buf, 0);
    put_encoded(&t, dec, len, false);
    put_char(&t, '\0');
    free(dec);
    if (t.err == SB_OK)
        *out = sb_xstrdup((const char *)t.buf.data);
    sb_buf_free(&t.buf);
    return t.err;
}

static int compare_params(const void *a, const void *b)
{
    const param *x = a;
    const param *y = b;
    int c = strcmp(x->name, y->name);

    return c != 0 ? c : strcmp(x->value, y->value);
}

static void free_params(param *params, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(params[i].name);
        free(params[i].value);
    }
    free(params);
}

/* Splits the query at '&' and each piece at its first '='; a piece without
 * '=' is a name with an empty value, and an empty piece an empty name. */
static sb_err parse_query(const char *query, param **out, size_t *out_count)
{
    size_t count = 1;
    sb_err err = SB_OK;

    for (const char *p = query; *p; p++)
        count += *p == '&';
    param *params = sb_xcalloc(count, sizeof(*params));

    const char *p = query;
    for (size_t i = 0; i < count && err == SB_OK; i++) {
        size_t n = strcspn(p, "&");
        const char *eq = memchr(p, '=', n);
        size_t name_len = eq ? (size_t)(eq - p) : n;
        err = canonical_component(p, name_len, &params[i].name);
        if (err == SB_OK)
            err = canonical_component(eq ? eq + 1 : p + n, eq ? n - name_len - 1 : 0,
                                      &params[i].value);
        p += n + 1;
    }
    if (err != SB_OK) {
        free_params(params, count);
        return err;
    }
    *out = params;
    *out_count = count;
    return SB_OK;
}

/* Canonical query string: encoded pairs sorted by name, then by value,
 * joined with '&'; the empty string when there is no query. */
static sb_err put_canonical_query(text *t, const char *query)
{
    param *params;
    size_t count;

    if (!query || !*query)
        return SB_OK;
    sb_err err = parse_query(query, &params, &count);
    if (err != SB_OK)
        return err;

    qsort(params, count, sizeof(*params), compare_params);
    for (size_t i = 0; i < count; i++) {
        if (i > 0)
            put_char(t, '&');
        put_str(t, params[i].name);
        put_char(t, '=');
        put_str(t, params[i].value);
    }
    free_params(params, count);
    return SB_OK;
}

static char *lower_dup(const char *s)
{
    char *out = sb_xstrdup(s);

    for (char *p = out; *p; p++) {
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    }
    return out;
}

static void free_headers(header *hdrs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(hdrs[i].name);
    free(hdrs);
}

static int compare_headers(const void *a, const void *b)
{
    const header *x = a;
    const header *y = b;
    int c = strcmp(x->name, y->name);

    if (c != 0)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Adds one header to the set, or leaves it out when botocore would not
 * sign it. Fails on a malformed header or one the signer owns. */
static sb_err add_header(header *hdrs, size_t *n, const char *name, const char *value,
                         bool owned_ok)
{
    if (!is_token(name) || !value || !is_field_value(value))
        return SB_E_INTERNAL;

    char *lname = lower_dup(name);
    size_t n_owned = sizeof(owned_headers) / sizeof(owned_headers[0]);
    size_t n_unsigned = sizeof(unsigned_headers) / sizeof(unsigned_headers[0]);
    if (!owned_ok && is_name_in(lname, owned_headers, n_owned)) {
        free(lname);
        return SB_E_INTERNAL;
    }
    if (is_name_in(lname, unsigned_headers, n_unsigned)) {
        free(lname);
        return SB_OK;
    }
    hdrs[*n] = (header){.name = lname, .value = value, .order = *n};
    (*n)++;
    return SB_OK;
}

/* The headers to sign, sorted: the caller's, then X-Amz-Date and the
 * session token, which botocore adds before signing. Host is required. */
static sb_err collect_headers(const sb_sigv4_request *req, const sb_sigv4_creds *creds,
                              const char *amz_date, header **out, size_t *out_count)
{
    header *hdrs = sb_xcalloc(req->header_count + 2, sizeof(*hdrs));
    size_t n = 0;
    bool has_host = false;
    sb_err err = SB_OK;

    for (size_t i = 0; i < req->header_count && err == SB_OK; i++)
        err = add_header(hdrs, &n, req->headers[i].name, req->headers[i].value, false);
    if (err == SB_OK)
        err = add_header(hdrs, &n, "x-amz-date", amz_date, true);
    if (err == SB_OK && creds->session_token)
        err = add_header(hdrs, &n, "x-amz-security-token", creds->session_token, true);
    for (size_t i = 0; i < n; i++)
        has_host = has_host || strcmp(hdrs[i].name, "host") == 0;
    if (err == SB_OK && !has_host)
        err = SB_E_INTERNAL;
    if (err != SB_OK) {
        free_headers(hdrs, n);
        return err;
    }

    qsort(hdrs, n, sizeof(*hdrs), compare_headers);
    *out = hdrs;
    *out_count = n;
    return SB_OK;
}

/* A value with leading and trailing spaces removed and inner runs of
 * spaces and tabs turned into one space (the guide's Trimall). */
static void put_trimmed(text *t, const char *value)
{
    bool pending_space = false;
    bool started = false;

    for (const char *p = value; *p; p++) {
        if (*p == ' ' || *p == '\t') {
            pending_space = started;
            continue;
        }
        if (pending_space)
            put_char(t, ' ');
        put_char(t, *p);
        pending_space = false;
        started = true;
    }
}

/* Canonical headers: one "name:value\n" line per name, the values of a
 * repeated header joined with ',' in the order they were given. */
static void put_canonical_headers(text *t, const header *hdrs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool same = i > 0 && strcmp(hdrs[i].name, hdrs[i - 1].name) == 0;
        if (same) {
            put_char(t, ',');
        } else {
            if (i > 0)
                put_char(t, '\n');
            put_str(t, hdrs[i].name);
            put_char(t, ':');
        }
        put_trimmed(t, hdrs[i].value);
    }
    put_char(t, '\n');
}

/* Signed headers: the distinct names, sorted, joined with ';'. */
static void put_signed_headers(text *t, const header *hdrs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && strcmp(hdrs[i].name, hdrs[i - 1].name) == 0)
            continue;
        if (i > 0)
            put_char(t, ';');
        put_str(t, hdrs[i].name);
    }
}

static void put_method(text *t, const char *method)
{
    for (const char *p = method; *p; p++)
        put_char(t, (*p >= 'a' && *p <= 'z') ? (char)(*p - 'a' + 'A') : *p);
}

static sb_err put_payload_hash(text *t, const sb_sigv4_request *req)
{
    unsigned char digest[SHA256_LEN];
    const void *body = req->body_len ? (const void *)req->body : "";

    if (gnutls_hash_fast(GNUTLS_DIG_SHA256, body, req->body_len, digest) < 0)
        return SB_E_CRYPTO;
    put_hex(t, digest, sizeof(digest));
    return SB_OK;
}

/* Step 1: the canonical request, and the signed headers list on the side
 * for the Authorization header. */
static sb_err build_canonical_request(const sb_sigv4_request *req, const sb_sigv4_creds *creds,
                                      const char *amz_date, text *cr, text *signed_hdrs)
{
    header *hdrs;
    size_t n;
    sb_err err = collect_headers(req, creds, amz_date, &hdrs, &n);

    if (err != SB_OK)
        return err;
    put_method(cr, req->method);
    put_char(cr, '\n');
    put_canonical_uri(cr, req->path && *req->path ? req->path : "/");
    put_char(cr, '\n');
    err = put_canonical_query(cr, req->query);
    put_char(cr, '\n');
    put_canonical_headers(cr, hdrs, n);
    put_char(cr, '\n');
    put_signed_headers(signed_hdrs, hdrs, n);
    put(cr, signed_hdrs->buf.data, signed_hdrs->buf.len);
    put_char(cr, '\n');
    free_headers(hdrs, n);

    if (err == SB_OK)
        err = put_payload_hash(cr, req);
    return err;
}

static void put_scope(text *t, const char *amz_date, const char *region, const char *service)
{
    put(t, amz_date, 8);
    put_char(t, '/');
    put_str(t, region);
    put_char(t, '/');
    put_str(t, service);
    put_str(t, "/aws4_request");
}

/* Steps 2 and 3: the string to sign names the algorithm, the time, the
 * credential scope and the hash of the canonical request. */
static sb_err build_string_to_sign(const text *cr, const char *amz_date, const char *region,
                                   const char *service, text *sts)
{
    unsigned char digest[SHA256_LEN];

    if (gnutls_hash_fast(GNUTLS_DIG_SHA256, cr->buf.data, cr->buf.len, digest) < 0)
        return SB_E_CRYPTO;
    put_str(sts, ALGORITHM "\n");
    put_str(sts, amz_date);
    put_char(sts, '\n');
    put_scope(sts, amz_date, region, service);
    put_char(sts, '\n');
    put_hex(sts, digest, sizeof(digest));
    return SB_OK;
}

static bool hmac(const void *key, size_t key_len, const void *msg, size_t msg_len,
                 unsigned char out[SHA256_LEN])
{
    return gnutls_hmac_fast(GNUTLS_MAC_SHA256, key, key_len, msg, msg_len, out) >= 0;
}

/* Steps 4 and 5: the signing key is an HMAC chain from "AWS4" + secret
 * over the date, region, service and "aws4_request"; the signature is its
 * HMAC of the string to sign. Every intermediate key is wiped. */
static sb_err compute_signature(const char *secret_key, const char *amz_date, const char *region,
                                const char *service, const text *sts,
                                char out[SB_SIGV4_SIGNATURE_LEN])
{
    text k_secret = {.err = SB_OK};
    unsigned char k_date[SHA256_LEN], k_region[SHA256_LEN], k_service[SHA256_LEN];
    unsigned char k_signing[SHA256_LEN], sig[SHA256_LEN];
    sb_err err;

    sb_buf_init(&k_secret.buf, 0);
    put_str(&k_secret, "AWS4");
    put_str(&k_secret, secret_key);
    err = k_secret.err;
    if (err == SB_OK) {
        bool ok = hmac(k_secret.buf.data, k_secret.buf.len, amz_date, 8, k_date) &&
                  hmac(k_date, SHA256_LEN, region, strlen(region), k_region) &&
                  hmac(k_region, SHA256_LEN, service, strlen(service), k_service) &&
                  hmac(k_service, SHA256_LEN, "aws4_request", 12, k_signing) &&
                  hmac(k_signing, SHA256_LEN, sts->buf.data, sts->buf.len, sig);
        err = ok ? SB_OK : SB_E_CRYPTO;
    }
    if (err == SB_OK)
        hex_to(out, sig, SHA256_LEN);

    sb_buf_free(&k_secret.buf);
    sb_wipe(k_date, sizeof(k_date));
    sb_wipe(k_region, sizeof(k_region));
    sb_wipe(k_service, sizeof(k_service));
    sb_wipe(k_signing, sizeof(k_signing));
    return err;
}

/* Step 6: the Authorization header. */
static char *authorization(const char *access_key, const char *amz_date, const char *region,
                           const char *service, const text *signed_hdrs, const char *signature)
{
    text t = {.err = SB_OK};
    char *out;

    sb_buf_init(&t.buf, 0);
    put_str(&t, ALGORITHM " Credential=");
    put_str(&t, access_key);
    put_char(&t, '/');
    put_scope(&t, amz_date, region, service);
    put_str(&t, ", SignedHeaders=");
    put(&t, signed_hdrs->buf.data, signed_hdrs->buf.len);
    put_str(&t, ", Signature=");
    put_str(&t, signature);
    out = t.err == SB_OK ? sb_xstrdup((const char *)t.buf.data) : NULL;
    sb_buf_free(&t.buf);
    return out;
}

static bool valid_args(const sb_sigv4_request *req, const sb_sigv4_creds *creds, const char *region,
                       const char *service, const char *amz_date)
{
    const char *path = req->path ? req->path : "";
    const char *query = req->query ? req->query : "";

    if (!is_token(req->method) || !is_amz_date(amz_date))
        return false;
    if (!is_scope_part(region) || !is_scope_part(service))
        return false;
    if (!is_alnum_str(creds->access_key) || !creds->secret_key || !*creds->secret_key)
        return false;
    if (*path && path[0] != '/')
        return false;
    /* '?' and '#' would end the path, '#' the query (RFC 3986 section 3). */
    for (const char *p = path; *p; p++) {
        if (is_ctl((unsigned char)*p) || *p == '?' || *p == '#')
            return false;
    }
    for (const char *p = query; *p; p++) {
        if (is_ctl((unsigned char)*p) || *p == '#')
            return false;
    }
    return req->body || req->body_len == 0;
}

static char *text_dup(const text *t)
{
    return sb_xstrndup((const char *)t->buf.data, t->buf.len);
}

sb_err sb_sigv4_sign(const sb_sigv4_request *req, const sb_sigv4_creds *creds, const char *region,
                     const char *service, const char *amz_date, sb_sigv4_result *out)
{
    text cr = {.err = SB_OK}, sts = {.err = SB_OK}, signed_hdrs = {.err = SB_OK};
    char signature[SB_SIGV4_SIGNATURE_LEN];
    sb_err err;

    if (!valid_args(req, creds, region, service, amz_date))
        return SB_E_INTERNAL;
    sb_buf_init(&cr.buf, 0);
    sb_buf_init(&sts.buf, 0);
    sb_buf_init(&signed_hdrs.buf, 0);

    err = build_canonical_request(req, creds, amz_date, &cr, &signed_hdrs);
    if (err == SB_OK)
        err = cr.err != SB_OK ? cr.err : signed_hdrs.err;
    if (err == SB_OK)
        err = build_string_to_sign(&cr, amz_date, region, service, &sts);
    if (err == SB_OK)
        err = sts.err;
    if (err == SB_OK)
        err = compute_signature(creds->secret_key, amz_date, region, service, &sts, signature);
    if (err != SB_OK)
        goto out_free_texts;

    char *auth =
        authorization(creds->access_key, amz_date, region, service, &signed_hdrs, signature);
    if (!auth) {
        err = SB_E_TOO_LARGE;
        goto out_free_texts;
    }
    *out = (sb_sigv4_result){.authorization = auth,
                             .canonical_request = text_dup(&cr),
                             .string_to_sign = text_dup(&sts)};
    memcpy(out->signature, signature, sizeof(signature));

out_free_texts:
    sb_buf_free(&cr.buf);
    sb_buf_free(&sts.buf);
    sb_buf_free(&signed_hdrs.buf);
    return err;
}

static void free_wiped(char *s)
{
    if (!s)
        return;
    sb_wipe(s, strlen(s));
    free(s);
}

void sb_sigv4_result_free(sb_sigv4_result *res)
{
    if (!res)
        return;
    free(res->authorization);
    free_wiped(res->canonical_request);
    free_wiped(res->string_to_sign);
    memset(res, 0, sizeof(*res));
}

void sb_sigv4_amz_date(int64_t wall_ms, char out[SB_SIGV4_DATE_LEN])
{
    int64_t secs = wall_ms / 1000 - (wall_ms % 1000 < 0);
    time_t t = (time_t)secs;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(out, SB_SIGV4_DATE_LEN, "%Y%m%dT%H%M%SZ", &tm);
}
