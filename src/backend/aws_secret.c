/* What AWS answers mean for the broker (see aws_secret.h): pure
 * functions, tested without a network. */
#include "backend/aws_secret.h"

#include <gnutls/gnutls.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/limits.h"
#include "core/names.h"

/* Secrets Manager secret names: letters, digits and /_+=.@- . */
static bool id_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("/_+=.@-", c));
}

static sb_err put(char *out, size_t *pos, const char *s)
{
    size_t n = strlen(s);

    if (*pos + n > SB_MAX_AWS_SECRET_ID)
        return SB_E_TOO_LARGE;
    memcpy(out + *pos, s, n);
    *pos += n;
    return SB_OK;
}

sb_err sb_aws_secret_id(const char *tmpl, const char *prefix, const char *ns, const char *name,
                        char *out)
{
    char buf[SB_MAX_AWS_SECRET_ID + 1];
    size_t pos = 0;
    sb_err rc = SB_OK;

    for (const char *p = tmpl; *p && rc == SB_OK;) {
        if (!strncmp(p, "{prefix}", 8)) {
            rc = put(buf, &pos, prefix);
            p += 8;
            if (!prefix[0] && *p == '/')
                p++;
        } else if (!strncmp(p, "{namespace}", 11)) {
            rc = put(buf, &pos, ns);
            p += 11;
        } else if (!strncmp(p, "{name}", 6)) {
            rc = put(buf, &pos, name);
            p += 6;
        } else if (*p == '{') {
            rc = SB_E_CONFIG;
        } else {
            char one[2] = {*p++, '\0'};
            rc = put(buf, &pos, one);
        }
    }
    if (rc != SB_OK)
        return rc;
    buf[pos] = '\0';
    memcpy(out, buf, pos + 1);
    return SB_OK;
}

const char *sb_aws_template_problem(const char *tmpl)
{
    static const char *const holders[] = {"{prefix}", "{namespace}", "{name}"};
    bool named = false;

    for (const char *p = tmpl; *p;) {
        size_t i = 0;
        while (i < 3 && strncmp(p, holders[i], strlen(holders[i])) != 0)
            i++;
        if (i < 3) {
            named |= i == 2;
            p += strlen(holders[i]);
            continue;
        }
        if (*p == '{')
            return "unknown placeholder (use {prefix}, {namespace} and {name})";
        if (!id_char(*p))
            return "only the placeholders and [A-Za-z0-9/_+=.@-] may appear";
        p++;
    }
    return named ? NULL : "must contain {name}";
}

const char *sb_aws_prefix_problem(const char *prefix)
{
    for (const char *p = prefix; *p; p++) {
        if (!id_char(*p))
            return "only [A-Za-z0-9/_+=.@-] may appear in AWS secret names";
    }
    return strlen(prefix) > SB_MAX_AWS_SECRET_ID / 2 ? "too long" : NULL;
}

/* The shortest decimal text that reads back as the same double; whole
 * numbers without an exponent (1e3 is "1000"). */
static void real_text(double d, char *out, size_t outlen)
{
    if (d == (double)(int64_t)d && d > -9007199254740992.0 && d < 9007199254740992.0) {
        snprintf(out, outlen, "%" PRId64, (int64_t)d);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, outlen, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            return;
    }
}

static sb_err add_scalar(sb_secret_doc *doc, const char *key, size_t klen, const json_t *v)
{
    char text[64];

    switch (json_typeof(v)) {
    case JSON_STRING:
        return sb_doc_add(doc, key, klen, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(text, sizeof(text), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        real_text(json_real_value(v), text, sizeof(text));
        break;
    case JSON_TRUE:
        return sb_doc_add(doc, key, klen, "true", 4);
    case JSON_FALSE:
        return sb_doc_add(doc, key, klen, "false", 5);
    case JSON_NULL:
        return sb_doc_add(doc, key, klen, "null", 4);
    default:
        return SB_E_UPSTREAM;
    }
    return sb_doc_add(doc, key, klen, text, strlen(text));
}

/* A flat object: at most SB_MAX_SECRET_KEYS members, each named like a
 * Secret key and holding a scalar. */
static bool is_flat(const json_t *obj)
{
    const char *key;
    size_t klen;
    json_t *v;

    if (!json_is_object(obj) || json_object_size(obj) > SB_MAX_SECRET_KEYS)
        return false;
    json_object_keylen_foreach((json_t *)obj, key, klen, v)
    {
        if (!sb_name_is_secret_key(key, klen) || json_is_object(v) || json_is_array(v))
            return false;
    }
    return true;
}

static sb_err add_string(sb_secret_doc *doc, const char *s, size_t n)
{
    json_t *obj = NULL;
    const char *key;
    size_t klen;
    json_t *v;
    sb_err rc = SB_OK;

    size_t lead = strspn(s, " \t\r\n");
    bool object = lead < n && s[lead] == '{' &&
                  sb_json_parse(s, n, SB_MAX_UPSTREAM_BODY, &obj) == SB_OK && is_flat(obj);
    if (!object) {
        json_decref(obj);
        return sb_doc_add(doc, "value", 5, s, n);
    }
    json_object_keylen_foreach(obj, key, klen, v)
    {
        if (rc == SB_OK)
            rc = add_scalar(doc, key, klen, v);
    }
    json_decref(obj);
    return rc;
}

static sb_err add_binary(sb_secret_doc *doc, const char *b64, size_t n)
{
    gnutls_datum_t in = {(unsigned char *)b64, (unsigned)n}, raw = {NULL, 0};

    if (n && gnutls_base64_decode2(&in, &raw) < 0)
        return SB_E_UPSTREAM;
    sb_err rc = sb_doc_add(doc, "value", 5, raw.data ? (const char *)raw.data : "", raw.size);
    if (raw.data) {
        sb_wipe(raw.data, raw.size);
        gnutls_free(raw.data);
    }
    doc->binary_only = true;
    return rc;
}

sb_err sb_aws_value_to_doc(const json_t *value, const char *ns, const char *name,
                           sb_secret_doc **out)
{
    size_t slen = 0, blen = 0;
    const char *str = sb_json_str(value, "SecretString", &slen);
    const char *bin = sb_json_str(value, "SecretBinary", &blen);
    const char *version = sb_json_str(value, "VersionId", NULL);

    if (!json_is_object(value) || (!str && !bin))
        return SB_E_UPSTREAM;
    if (version && strlen(version) > SB_MAX_VERSION_ID)
        return SB_E_UPSTREAM;

    sb_secret_doc *doc = sb_doc_new(SB_BACKEND_AWS, ns, name, version);
    sb_err rc = str ? add_string(doc, str, slen) : add_binary(doc, bin, blen);
    if (rc != SB_OK) {
        sb_doc_unref(doc);
        return SB_E_UPSTREAM;
    }
    sb_doc_seal(doc);
    *out = doc;
    return SB_OK;
}

static const sb_aws_outcome not_found = {.err = SB_E_NOT_FOUND,
                                         .detail = "no AWS secret has this id"};
static const sb_aws_outcome throttled = {
    .err = SB_E_THROTTLED, .detail = "AWS Secrets Manager is throttling", .retry = true};
static const sb_aws_outcome failed = {
    .err = SB_E_UNAVAILABLE, .detail = "AWS Secrets Manager failed", .retry = true};
static const sb_aws_outcome expired = {.err = SB_E_CREDENTIALS,
                                       .detail = "the broker's AWS credentials expired",
                                       .credentials = true,
                                       .expired = true};
static const sb_aws_outcome skewed = {.err = SB_E_CREDENTIALS,
                                      .detail = "AWS says the request is stale (check the clock)",
                                      .credentials = true};
static const sb_aws_outcome refused = {.err = SB_E_CREDENTIALS,
                                       .detail = "AWS refused the broker's own credentials",
                                       .credentials = true};
static const sb_aws_outcome denied = {.err = SB_E_CREDENTIALS,
                                      .detail = "the broker's AWS role may not read this secret",
                                      .credentials = true,
                                      .denied = true};
static const sb_aws_outcome kms = {
    .err = SB_E_CREDENTIALS,
    .detail = "AWS could not decrypt the secret (the broker's role may lack kms:Decrypt)",
    .credentials = true};
static const sb_aws_outcome deleting = {
    .err = SB_E_UPSTREAM,
    .detail = "AWS refused the request (the secret may be scheduled for deletion)"};
static const sb_aws_outcome invalid = {.err = SB_E_UPSTREAM,
                                       .detail = "AWS refused the request as invalid"};
static const sb_aws_outcome unexpected = {
    .err = SB_E_UPSTREAM, .detail = "AWS Secrets Manager answered with an unexpected error"};

/* Secrets Manager's errors
 * (https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html)
 * and the common ones of every AWS service
 * (https://docs.aws.amazon.com/secretsmanager/latest/apireference/CommonErrors.html). */
static const struct {
    const char *code;
    const sb_aws_outcome *outcome;
} classes[] = {
    {"ResourceNotFoundException", &not_found},
    {"ThrottlingException", &throttled},
    {"Throttling", &throttled},
    {"TooManyRequestsException", &throttled},
    {"RequestLimitExceeded", &throttled},
    {"InternalServiceError", &failed},
    {"InternalFailure", &failed},
    {"ServiceUnavailable", &failed},
    {"ExpiredTokenException", &expired},
    {"ExpiredToken", &expired},
    {"RequestExpired", &skewed},
    {"UnrecognizedClientException", &refused},
    {"InvalidSignatureException", &refused},
    {"SignatureDoesNotMatch", &refused},
    {"IncompleteSignature", &refused},
    {"InvalidClientTokenId", &refused},
    {"InvalidToken", &refused},
    {"MissingAuthenticationToken", &refused},
    {"MissingAuthenticationTokenException", &refused},
    {"AccessDeniedException", &denied},
    {"AccessDenied", &denied},
    {"DecryptionFailure", &kms},
    {"InvalidRequestException", &deleting},
    {"InvalidParameterException", &invalid},
    {"ValidationException", &invalid},
};

sb_aws_outcome sb_aws_classify(sb_err transport, long status, const char *code)
{
    if (transport != SB_OK)
        return (sb_aws_outcome){.err = transport,
                                .detail = "AWS Secrets Manager could not be reached",
                                .retry =
                                    transport == SB_E_UNAVAILABLE || transport == SB_E_TIMEOUT};
    if (status == 200)
        return (sb_aws_outcome){.err = SB_OK, .detail = ""};
    for (size_t i = 0; code[0] && i < sizeof(classes) / sizeof(classes[0]); i++) {
        if (!strcmp(code, classes[i].code))
            return *classes[i].outcome;
    }
    if (status == 429)
        return throttled;
    if (status >= 500)
        return failed;
    if (status == 401 || status == 403)
        return refused;
    return unexpected;
}

int64_t sb_aws_retry_at(int attempts, int64_t now_ms, int64_t deadline_ms, int retry_after_s,
                        uint64_t random)
{
    if (attempts < 1 || attempts >= SB_AWS_MAX_ATTEMPTS)
        return -1;
    /* Full jitter (AWS Architecture Blog, "Exponential Backoff And
     * Jitter"): sleep = random_between(0, min(cap, base * 2^attempt)). */
    int64_t window = (int64_t)SB_AWS_BACKOFF_BASE_MS << (attempts - 1);
    if (window > SB_AWS_BACKOFF_CAP_MS)
        window = SB_AWS_BACKOFF_CAP_MS;
    int64_t delay = (int64_t)(random % (uint64_t)(window + 1));
    if (retry_after_s > 0 && delay < (int64_t)retry_after_s * 1000)
        delay = (int64_t)retry_after_s * 1000;
    if (now_ms + delay + SB_AWS_MIN_ATTEMPT_MS > deadline_ms)
        return -1;
    return now_ms + delay;
}
