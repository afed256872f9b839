/* Test tool: signs requests read as JSON lines on stdin with the broker's
 * SigV4 signer and prints one JSON line of results per request, so
 * tests/integration/test_sigv4_botocore.py can compare them with botocore.
 *
 * In:  {"method", "path", "query", "headers": [[name, value]...],
 *       "body_hex", "access_key", "secret_key", "session_token" (or null),
 *       "region", "service", "amz_date"}
 * Out: {"canonical_request", "string_to_sign", "signature", "authorization"}
 *      or {"error": "<sb_err code>"} when the signer refuses the request. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/sigv4.h"
#include "core/alloc.h"

static const char *member(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes lower-case hex into a new buffer; false on a malformed string. */
static bool decode_hex(const char *hex, unsigned char **out, size_t *out_len)
{
    size_t len = hex ? strlen(hex) : 0;
    unsigned char *bytes = sb_xmalloc(len / 2 + 1);

    if (len % 2 != 0) {
        free(bytes);
        return false;
    }
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hex_digit(hex[2 * i]);
        int lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(bytes);
            return false;
        }
        bytes[i] = (unsigned char)(hi << 4 | lo);
    }
    *out = bytes;
    *out_len = len / 2;
    return true;
}

static sb_sigv4_header *read_headers(const json_t *arr, size_t *out_count)
{
    size_t n = json_array_size(arr);
    sb_sigv4_header *hdrs = sb_xcalloc(n + 1, sizeof(*hdrs));

    for (size_t i = 0; i < n; i++) {
        const json_t *pair = json_array_get(arr, i);
        hdrs[i].name = json_string_value(json_array_get(pair, 0));
        hdrs[i].value = json_string_value(json_array_get(pair, 1));
    }
    *out_count = n;
    return hdrs;
}

static json_t *sign_one(const json_t *in)
{
    sb_sigv4_request req = {
        .method = member(in, "method"),
        .path = member(in, "path"),
        .query = member(in, "query"),
    };
    sb_sigv4_creds creds = {
        .access_key = member(in, "access_key"),
        .secret_key = member(in, "secret_key"),
        .session_token = member(in, "session_token"),
    };
    unsigned char *body;
    sb_sigv4_result res;

    if (!decode_hex(member(in, "body_hex"), &body, &req.body_len))
        return json_pack("{s:s}", "error", "bad body_hex");
    req.body = body;
    sb_sigv4_header *hdrs = read_headers(json_object_get(in, "headers"), &req.header_count);
    req.headers = hdrs;

    sb_err err = sb_sigv4_sign(&req, &creds, member(in, "region"), member(in, "service"),
                               member(in, "amz_date"), &res);
    free(hdrs);
    free(body);
    if (err != SB_OK)
        return json_pack("{s:s}", "error", sb_err_code(err));

    json_t *out = json_pack("{s:s, s:s, s:s, s:s}", "canonical_request", res.canonical_request,
                            "string_to_sign", res.string_to_sign, "signature", res.signature,
                            "authorization", res.authorization);
    sb_sigv4_result_free(&res);
    return out;
}

static int print_line(json_t *obj)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    int rc = text && puts(text) >= 0 ? 0 : 1;

    free(text);
    json_decref(obj);
    return rc;
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;

    while (rc == 0 && getline(&line, &cap, stdin) > 0) {
        json_error_t jerr;
        json_t *in = json_loads(line, 0, &jerr);
        if (!in) {
            fprintf(stderr, "sigv4_vectors: line %d: %s\n", jerr.line, jerr.text);
            rc = 1;
            break;
        }
        rc = print_line(sign_one(in));
        json_decref(in);
    }
    free(line);
    return rc != 0 || fflush(stdout) != 0 ? 1 : 0;
}
