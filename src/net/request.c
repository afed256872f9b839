/* Request parsing and validation (see request.h). */
#include "net/request.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/json.h"
#include "core/names.h"

#define PREFIX     "/v1/secrets/"
#define PREFIX_LEN (sizeof(PREFIX) - 1)

static sb_err bad(const char **why, const char *reason)
{
    *why = reason;
    return SB_E_BAD_REQUEST;
}

static void copy(char *dst, const char *src, size_t len)
{
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* AWS version stages are labels such as AWSCURRENT; ids are UUID-like. */
bool sb_request_valid_stage(const char *s, size_t len)
{
    if (len == 0 || len > SB_MAX_VERSION_STAGE)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

bool sb_request_valid_version_id(const char *s, size_t len)
{
    if (len == 0 || len > SB_MAX_VERSION_ID)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return false;
    }
    return true;
}

static sb_err parse_param(const char *p, size_t len, sb_request *out, unsigned *seen,
                          const char **why)
{
    const char *eq = memchr(p, '=', len);
    if (!eq)
        return bad(why, "query parameters must have the form name=value");
    size_t nlen = (size_t)(eq - p);
    const char *v = eq + 1;
    size_t vlen = len - nlen - 1;

    static const char *const names[] = {"namespace", "version_stage", "version_id", "refresh"};
    for (unsigned i = 0; i < 4; i++) {
        if (strlen(names[i]) != nlen || memcmp(names[i], p, nlen) != 0)
            continue;
        if (*seen & (1u << i))
            return bad(why, "a query parameter is repeated");
        *seen |= 1u << i;
        switch (i) {
        case 0:
            if (!sb_name_is_label(v, vlen))
                return bad(why, "namespace must be a valid Kubernetes namespace name");
            copy(out->target.ns, v, vlen);
            return SB_OK;
        case 1:
            if (!sb_request_valid_stage(v, vlen))
                return bad(why, "version_stage has invalid characters or length");
            copy(out->target.version_stage, v, vlen);
            return SB_OK;
        case 2:
            if (!sb_request_valid_version_id(v, vlen))
                return bad(why, "version_id has invalid characters or length");
            copy(out->target.version_id, v, vlen);
            return SB_OK;
        default:
            if (vlen == 4 && !memcmp(v, "true", 4))
                out->refresh = true;
            else if (!(vlen == 5 && !memcmp(v, "false", 5)))
                return bad(why, "refresh must be true or false");
            return SB_OK;
        }
    }
    return bad(why, "unknown query parameter");
}

static sb_err parse_query(const char *q, size_t len, sb_request *out, const char **why)
{
    unsigned seen = 0, count = 0;
    size_t start = 0;

    if (len == 0)
        return bad(why, "empty query string");
    for (size_t i = 0; i <= len; i++) {
        if (i < len && q[i] != '&')
            continue;
        if (i == start)
            return bad(why, "empty query parameter");
        if (++count > SB_MAX_QUERY_ARGS)
            return bad(why, "too many query parameters");
        sb_err err = parse_param(q + start, i - start, out, &seen, why);
        if (err != SB_OK)
            return err;
        start = i + 1;
    }
    return SB_OK;
}

/* Characters that never belong in a path we serve. Names and keys have
 * no use for them, so anything percent-encoded, any fragment, backslash or
 * space is refused rather than decoded (a decoded "%2F" would be a second
 * separator). */
static bool path_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '/';
}

static sb_err parse_path(const char *method, const char *p, size_t len, sb_request *out,
                         const char **why)
{
    bool is_get = strcmp(method, "GET") == 0;
    bool is_post = strcmp(method, "POST") == 0;

    if (len < PREFIX_LEN || memcmp(p, PREFIX, PREFIX_LEN) != 0) {
        *why = "no such endpoint";
        return SB_E_NOT_FOUND;
    }
    for (size_t i = 0; i < len; i++) {
        if (!path_char_ok(p[i]))
            return bad(why, "the path may contain only [A-Za-z0-9._-] and /; no encoding");
    }

    const char *rest = p + PREFIX_LEN;
    size_t rlen = len - PREFIX_LEN;
    const char *slash = memchr(rest, '/', rlen);
    size_t nlen = slash ? (size_t)(slash - rest) : rlen;

    if (!slash && rlen == 5 && !memcmp(rest, "batch", 5) && is_post) {
        out->route = SB_ROUTE_BATCH;
        return SB_OK;
    }
    if (!sb_name_is_subdomain(rest, nlen))
        return bad(why, "the secret name must be a valid Kubernetes name (DNS subdomain)");
    copy(out->target.name, rest, nlen);
    out->route = SB_ROUTE_SECRET;

    if (slash) {
        const char *key = slash + 1;
        size_t klen = rlen - nlen - 1;
        if (memchr(key, '/', klen))
            return bad(why, "the path has more segments than /v1/secrets/{name}/{key}");
        if (!sb_name_is_secret_key(key, klen))
            return bad(why, "the key must match [-._a-zA-Z0-9]+ and not be . or ..");
        copy(out->target.key, key, klen);
        out->route = SB_ROUTE_KEY;
    }
    if (!is_get) {
        *why = is_post ? "POST is accepted only on /v1/secrets/batch"
                       : "only GET and POST are accepted";
        return SB_E_METHOD;
    }
    return SB_OK;
}

sb_err sb_request_parse(const char *method, const char *raw, size_t len, sb_request *out,
                        const char **why)
{
    sb_request req;

    memset(&req, 0, sizeof(req));
    if (len > SB_MAX_URI) {
        *why = "the request target is too long";
        return SB_E_URI_TOO_LONG;
    }
    if (len == 0 || raw[0] != '/')
        return bad(why, "the request target must be an absolute path");
    if (memchr(raw, '#', len))
        return bad(why, "fragments are not accepted");

    const char *q = memchr(raw, '?', len);
    size_t plen = q ? (size_t)(q - raw) : len;
    sb_err err = parse_path(method, raw, plen, &req, why);
    if (err == SB_OK && q)
        err = parse_query(q + 1, len - plen - 1, &req, why);
    if (err != SB_OK)
        return err;
    if (req.route == SB_ROUTE_BATCH && (req.target.version_stage[0] || req.target.version_id[0]))
        return bad(why, "a batch takes versions per item, not in the query");
    if (req.target.version_stage[0] && req.target.version_id[0])
        return bad(why, "give version_stage or version_id, not both");
    *out = req;
    return SB_OK;
}

static sb_err item_field(const json_t *item, const char *field, bool (*valid)(const char *, size_t),
                         char *dst, const char **why, const char *message)
{
    const json_t *v = json_object_get(item, field);

    if (!v)
        return SB_OK;
    if (!json_is_string(v) || !valid(json_string_value(v), json_string_length(v)))
        return bad(why, message);
    copy(dst, json_string_value(v), json_string_length(v));
    return SB_OK;
}

static sb_err parse_item(const json_t *item, const sb_target *defaults, sb_target *out,
                         const char **why)
{
    static const char *const known[] = {"name", "key", "namespace", "version_stage", "version_id"};
    const char *field;
    json_t *value;
    sb_err err;

    if (!json_is_object(item))
        return bad(why, "each batch item must be an object");
    json_object_foreach((json_t *)item, field, value)
    {
        bool ok = false;
        for (size_t i = 0; i < 5; i++)
            ok |= strcmp(field, known[i]) == 0;
        if (!ok)
            return bad(why, "unknown field in a batch item");
    }

    memset(out, 0, sizeof(*out));
    snprintf(out->ns, sizeof(out->ns), "%s", defaults->ns);
    if (!json_object_get(item, "name"))
        return bad(why, "each batch item needs a name");
    if ((err = item_field(item, "name", sb_name_is_subdomain, out->name, why,
                          "a batch item's name is not a valid Kubernetes name")) ||
        (err = item_field(item, "key", sb_name_is_secret_key, out->key, why,
                          "a batch item's key must match [-._a-zA-Z0-9]+")) ||
        (err = item_field(item, "namespace", sb_name_is_label, out->ns, why,
                          "a batch item's namespace is not a valid namespace name")) ||
        (err = item_field(item, "version_stage", sb_request_valid_stage, out->version_stage, why,
                          "a batch item's version_stage is invalid")) ||
        (err = item_field(item, "version_id", sb_request_valid_version_id, out->version_id, why,
                          "a batch item's version_id is invalid")))
        return err;
    if (out->version_stage[0] && out->version_id[0])
        return bad(why, "give version_stage or version_id, not both");
    return SB_OK;
}

sb_err sb_request_parse_batch(const void *body, size_t len, const sb_target *defaults,
                              sb_target **out_items, size_t *out_count, const char **why)
{
    json_t *root = NULL;

    if (len > SB_MAX_BATCH_BODY) {
        *why = "the batch body is too large";
        return SB_E_TOO_LARGE;
    }
    if (sb_json_parse(body, len, SB_MAX_BATCH_BODY, &root) != SB_OK)
        return bad(why, "the batch body is not valid JSON (or repeats a field)");

    const json_t *list = json_object_get(root, "secrets");
    sb_err err = SB_OK;
    if (!json_is_object(root) || json_object_size(root) != 1 || !json_is_array(list)) {
        err = bad(why, "the batch body must be {\"secrets\": [...]}");
        goto out_root;
    }
    size_t n = json_array_size(list);
    if (n == 0) {
        err = bad(why, "the batch is empty");
        goto out_root;
    }
    if (n > SB_MAX_BATCH_ITEMS) {
        *why = "a batch holds at most 100 items";
        err = SB_E_TOO_LARGE;
        goto out_root;
    }

    sb_target *items = sb_xcalloc(n, sizeof(*items));
    for (size_t i = 0; i < n && err == SB_OK; i++)
        err = parse_item(json_array_get(list, i), defaults, &items[i], why);
    if (err != SB_OK) {
        free(items);
        goto out_root;
    }
    *out_items = items;
    *out_count = n;

out_root:
    json_decref(root);
    return err;
}
