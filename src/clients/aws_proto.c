/* AWS protocol details (see aws_proto.h). Everything here reads bounded
 * input with explicit lengths; nothing is allocated from an answer beyond
 * the caller's buffer. */
#include "clients/aws_proto.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/json.h"
#include "core/limits.h"

static bool host_char(char c)
{
    return isalnum((unsigned char)c) || c == '.' || c == '-';
}

static bool ipv6_char(char c)
{
    return isxdigit((unsigned char)c) || c == ':' || c == '.';
}

/* Segments of [A-Za-z0-9._~-], none empty, "." or ".." (a trailing slash
 * is allowed and dropped by the caller). */
static bool path_ok(const char *path, size_t len)
{
    size_t seg = 0;

    for (size_t i = 0; i < len; i++) {
        char c = path[i];
        if (c == '/') {
            bool dots = (seg == 1 && path[i - 1] == '.') ||
                        (seg == 2 && path[i - 1] == '.' && path[i - 2] == '.');
            if ((i > 0 && seg == 0) || dots)
                return false;
            seg = 0;
            continue;
        }
        if (!isalnum((unsigned char)c) && !strchr("._~-", c))
            return false;
        seg++;
    }
    return !(seg == 1 && path[len - 1] == '.') &&
           !(seg == 2 && path[len - 1] == '.' && path[len - 2] == '.');
}

/* Host and optional port of an authority; *out_host_len, *out_port. */
static bool split_authority(const char *a, size_t len, size_t *out_host_len, int *out_port)
{
    size_t h = 0;

    if (len && a[0] == '[') {
        while (h + 1 < len && ipv6_char(a[h + 1]))
            h++;
        if (h == 0 || h + 1 >= len || a[h + 1] != ']')
            return false;
        h += 2;
    } else {
        while (h < len && host_char(a[h]))
            h++;
        if (h == 0)
            return false;
    }
    if (h == len) {
        *out_host_len = h;
        *out_port = 0;
        return true;
    }

    long port = 0;
    if (a[h] != ':' || h + 1 == len || len - h - 1 > 5)
        return false;
    for (size_t i = h + 1; i < len; i++) {
        if (!isdigit((unsigned char)a[i]))
            return false;
        port = port * 10 + (a[i] - '0');
    }
    if (port < 1 || port > 65535)
        return false;
    *out_host_len = h;
    *out_port = (int)port;
    return true;
}

sb_err sb_aws_url_parse(const char *url, sb_aws_url *out)
{
    bool https = !strncasecmp(url, "https://", 8);

    if (strlen(url) > SB_MAX_AWS_URL || (!https && strncasecmp(url, "http://", 7)))
        return SB_E_CONFIG;
    const char *p = url + (https ? 8 : 7);
    size_t alen = strcspn(p, "/?#");
    const char *path = p + alen;
    size_t plen = strlen(path);
    size_t host_len;
    int port;
    if (strpbrk(path, "?#") || !split_authority(p, alen, &host_len, &port))
        return SB_E_CONFIG;
    while (plen && path[plen - 1] == '/')
        plen--;
    if (!path_ok(path, plen))
        return SB_E_CONFIG;

    sb_aws_url u = {.https = https, .port = port ? port : (https ? 443 : 80)};
    u.host = sb_xstrndup(p, host_len);
    for (char *c = u.host; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    bool default_port = port == 0 || port == (https ? 443 : 80);
    u.authority = default_port ? sb_xstrdup(u.host) : sb_xasprintf("%s:%d", u.host, port);
    u.path = sb_xstrndup(path, plen);
    u.base = sb_xasprintf("%s://%s%s", https ? "https" : "http", u.authority, u.path);
    *out = u;
    return SB_OK;
}

void sb_aws_url_free(sb_aws_url *url)
{
    if (!url)
        return;
    free(url->host);
    free(url->authority);
    free(url->path);
    free(url->base);
    *url = (sb_aws_url){0};
}

bool sb_aws_region_ok(const char *region)
{
    size_t n = region ? strlen(region) : 0;

    if (n == 0 || n > 64 || region[0] == '-' || region[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!islower((unsigned char)region[i]) && !isdigit((unsigned char)region[i]) &&
            region[i] != '-')
            return false;
    }
    return true;
}

static const char *nonempty(sb_env_lookup env, const char *name)
{
    const char *v = env(name);
    return v && v[0] ? v : NULL;
}

sb_err sb_aws_endpoint(sb_env_lookup env, const char *service_id, const char *dns_name,
                       const char *region, sb_aws_url *out, char *err, size_t errlen)
{
    char var[64];
    const char *ignore = env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS");
    const char *name = var;

    snprintf(var, sizeof(var), "AWS_ENDPOINT_URL_%s", service_id);
    const char *url = nonempty(env, var);
    if (!url) {
        name = "AWS_ENDPOINT_URL";
        url = nonempty(env, name);
    }
    if (ignore && !strcasecmp(ignore, "true"))
        url = NULL;
    if (url) {
        /* The value is not echoed: a URL may carry user information. */
        if (sb_aws_url_parse(url, out) == SB_OK)
            return SB_OK;
        snprintf(err, errlen,
                 "%s: not an http(s) URL of a host with an optional port and path "
                 "(no user info, query or fragment)",
                 name);
        return SB_E_CONFIG;
    }

    if (!sb_aws_region_ok(region)) {
        snprintf(err, errlen, "AWS_REGION: required (or AWS_DEFAULT_REGION) to reach %s", dns_name);
        return SB_E_CONFIG;
    }
    /* Regional endpoints only: the global STS endpoint is a single region's
     * dependency and absent from VPC-endpoint-only networks. */
    bool china = !strncmp(region, "cn-", 3);
    char *built =
        sb_xasprintf("https://%s.%s.amazonaws.com%s", dns_name, region, china ? ".cn" : "");
    sb_err rc = sb_aws_url_parse(built, out);
    free(built);
    if (rc != SB_OK)
        snprintf(err, errlen, "AWS_REGION: cannot make an endpoint of it");
    return rc;
}

/* The next start tag "<tag>" or "<tag attributes>" at or after s: returns
 * the '<', and in *out_after the byte after its '>'. A self-closing or
 * unterminated tag makes *out_bad true. */
static const char *find_open(const char *s, const char *end, const char *tag,
                             const char **out_after, bool *out_bad)
{
    size_t tlen = strlen(tag);

    while (s < end) {
        const char *lt = memchr(s, '<', (size_t)(end - s));
        if (!lt)
            return NULL;
        const char *name = lt + 1;
        s = name;
        if ((size_t)(end - name) <= tlen || memcmp(name, tag, tlen) != 0)
            continue;
        char c = name[tlen];
        if (c == '>') {
            *out_after = name + tlen + 1;
            return lt;
        }
        if (c == '/') {
            *out_bad = true; /* <tag/>: an element without text */
            return NULL;
        }
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
            continue;
        const char *gt = memchr(name + tlen, '>', (size_t)(end - name - tlen));
        if (!gt || gt[-1] == '/') {
            *out_bad = true;
            return NULL;
        }
        *out_after = gt + 1;
        return lt;
    }
    return NULL;
}

/* The next end tag "</tag>" (spaces allowed before '>') at or after s:
 * returns its '<', and in *out_after the byte after it. */
static const char *find_close(const char *s, const char *end, const char *tag,
                              const char **out_after)
{
    size_t tlen = strlen(tag);

    while (s < end) {
        const char *lt = memchr(s, '<', (size_t)(end - s));
        if (!lt)
            return NULL;
        s = lt + 1;
        if ((size_t)(end - lt) < tlen + 3 || lt[1] != '/' || memcmp(lt + 2, tag, tlen) != 0)
            continue;
        const char *p = lt + 2 + tlen;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
            p++;
        if (p < end && *p == '>') {
            *out_after = p + 1;
            return lt;
        }
    }
    return NULL;
}

sb_err sb_aws_xml_element(const char *xml, size_t len, const char *tag, const char **out_inner,
                          size_t *out_len)
{
    const char *end = xml + len;
    const char *inner = NULL, *after = NULL, *ignored = NULL;
    bool bad = false;

    if (!find_open(xml, end, tag, &inner, &bad))
        return bad ? SB_E_UPSTREAM : SB_E_NOT_FOUND;
    const char *close = find_close(inner, end, tag, &after);
    if (!close)
        return SB_E_UPSTREAM;
    /* One element, not nested in itself: two readers must not disagree
     * on which occurrence counts. */
    if (find_open(inner, close, tag, &ignored, &bad) ||
        find_open(after, end, tag, &ignored, &bad) || bad)
        return SB_E_UPSTREAM;
    *out_inner = inner;
    *out_len = (size_t)(close - inner);
    return SB_OK;
}

static bool xml_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* XML 1.0 section 4.6: the predefined entities. */
static char entity(const char *s, size_t n, size_t *out_used)
{
    static const struct {
        const char *name;
        char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};

    for (size_t i = 0; i < sizeof(ents) / sizeof(ents[0]); i++) {
        size_t el = strlen(ents[i].name);
        if (n >= el && !memcmp(s, ents[i].name, el)) {
            *out_used = el;
            return ents[i].c;
        }
    }
    return '\0';
}

sb_err sb_aws_xml_text(const char *xml, size_t len, const char *tag, sb_buf *out)
{
    const char *s;
    size_t n;
    sb_err rc = sb_aws_xml_element(xml, len, tag, &s, &n);

    if (rc != SB_OK)
        return rc;
    if (memchr(s, '<', n))
        return SB_E_UPSTREAM;
    while (n && xml_space(s[0])) {
        s++;
        n--;
    }
    while (n && xml_space(s[n - 1]))
        n--;

    while (n) {
        const char *amp = memchr(s, '&', n);
        size_t plain = amp ? (size_t)(amp - s) : n;
        rc = sb_buf_append(out, s, plain);
        if (rc != SB_OK || !amp)
            return rc;
        size_t used = 0;
        char c = entity(amp, n - plain, &used);
        if (!c)
            return SB_E_UPSTREAM;
        rc = sb_buf_append(out, &c, 1);
        if (rc != SB_OK)
            return rc;
        s += plain + used;
        n -= plain + used;
    }
    return SB_OK;
}

/* "aws.protocols#ResourceNotFoundException:http://..." -> the bare name. */
static void copy_code(const char *code, size_t n, char out[SB_AWS_ERROR_CODE_LEN])
{
    const char *hash = memrchr(code, '#', n);

    if (hash) {
        n -= (size_t)(hash + 1 - code);
        code = hash + 1;
    }
    const char *colon = memchr(code, ':', n);
    if (colon)
        n = (size_t)(colon - code);
    if (n == 0 || n >= SB_AWS_ERROR_CODE_LEN)
        return;
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)code[i]) && !strchr("._-", code[i]))
            return;
    }
    memcpy(out, code, n);
    out[n] = '\0';
}

void sb_aws_error_code(const void *body, size_t len, char out[SB_AWS_ERROR_CODE_LEN])
{
    const char *s = body;
    size_t skip = 0;

    out[0] = '\0';
    while (skip < len && xml_space(s[skip]))
        skip++;
    if (skip < len && s[skip] == '{') {
        json_t *root = NULL;
        if (sb_json_parse(s, len, SB_MAX_AWS_ERROR_BODY, &root) != SB_OK)
            return;
        size_t n = 0;
        const char *code = sb_json_str(root, "__type", &n);
        if (!code)
            code = sb_json_str(root, "code", &n);
        if (code)
            copy_code(code, n, out);
        json_decref(root);
        return;
    }

    sb_buf buf;
    sb_buf_init(&buf, SB_AWS_ERROR_CODE_LEN);
    if (len <= SB_MAX_AWS_ERROR_BODY && sb_aws_xml_text(s, len, "Code", &buf) == SB_OK && buf.len)
        copy_code((const char *)buf.data, buf.len, out);
    sb_buf_free(&buf);
}

sb_err sb_aws_form_append(sb_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
        bool plain = isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~';
        sb_err rc = plain ? sb_buf_append(out, &c, 1) : sb_buf_append(out, esc, 3);
        if (rc != SB_OK)
            return rc;
    }
    return SB_OK;
}
