/* Response bodies (see render.h). */
#include "net/render.h"

#include <gnutls/gnutls.h>
#include <stdio.h>
#include <string.h>

#include "core/config.h"

bool sb_render_is_utf8(const unsigned char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return false;
        if (len - i - 1 < n)
            return false;
        for (size_t j = 1; j <= n; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        /* Overlong forms, UTF-16 surrogates and values past U+10FFFF. */
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

sb_err sb_render_string(sb_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    sb_err err = sb_buf_append(out, "\"", 1);
    size_t run = 0;

    /* Copy runs of plain bytes at once; escape the rest (RFC 8259
     * section 7). Bytes >= 0x80 pass through: callers give valid UTF-8. */
    for (size_t i = 0; i < len && err == SB_OK; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        err = sb_buf_append(out, s + run, i - run);
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            if (err == SB_OK)
                err = sb_buf_append(out, esc, 2);
        } else if (err == SB_OK) {
            err = sb_buf_append(out, esc, 6);
        }
        run = i + 1;
    }
    if (err == SB_OK)
        err = sb_buf_append(out, s + run, len - run);
    if (err == SB_OK)
        err = sb_buf_append(out, "\"", 1);
    return err;
}

static sb_err append_base64_string(sb_buf *out, const sb_secret *value)
{
    gnutls_datum_t in = {(unsigned char *)sb_secret_data(value), (unsigned)sb_secret_len(value)};
    gnutls_datum_t b64 = {NULL, 0};
    sb_err err;

    if (in.size == 0)
        return sb_buf_append(out, "\"\"", 2);
    if (gnutls_base64_encode2(&in, &b64) < 0)
        return SB_E_CRYPTO;
    err = sb_render_string(out, (const char *)b64.data, b64.size);
    sb_wipe(b64.data, b64.size);
    gnutls_free(b64.data);
    return err;
}

static bool is_text(const sb_secret_doc *doc, const sb_secret *v)
{
    return !doc->binary_only && sb_render_is_utf8(sb_secret_data(v), sb_secret_len(v));
}

/* Appends {"k":"v",...} holding the items whose textness equals text. */
static sb_err append_map(sb_buf *out, const sb_secret_doc *doc, bool text)
{
    sb_err err = sb_buf_append(out, "{", 1);
    bool first = true;

    for (size_t i = 0; i < doc->count && err == SB_OK; i++) {
        const sb_secret_item *it = &doc->items[i];
        if (is_text(doc, it->value) != text)
            continue;
        if (!first)
            err = sb_buf_append(out, ",", 1);
        first = false;
        if (err == SB_OK)
            err = sb_render_string(out, it->key, it->key_len);
        if (err == SB_OK)
            err = sb_buf_append(out, ":", 1);
        if (err == SB_OK && text)
            err = sb_render_string(out, (const char *)sb_secret_data(it->value),
                                   sb_secret_len(it->value));
        else if (err == SB_OK)
            err = append_base64_string(out, it->value);
    }
    if (err == SB_OK)
        err = sb_buf_append(out, "}", 1);
    return err;
}

static sb_err append_member(sb_buf *out, const char *prefix, const char *value)
{
    sb_err err = sb_buf_append_str(out, prefix);
    if (err == SB_OK)
        err = sb_render_string(out, value, strlen(value));
    return err;
}

static sb_err append_secret_object(sb_buf *out, const sb_secret_doc *doc, bool cache_hit)
{
    sb_err err = append_member(out, "{\"name\":", doc->name);

    if (err == SB_OK)
        err = append_member(out, ",\"namespace\":", doc->ns);
    if (err == SB_OK)
        err = append_member(out, ",\"backend\":", sb_backend_kind_name(doc->backend));
    if (err == SB_OK)
        err = append_member(out, ",\"version\":", doc->version);
    if (err == SB_OK)
        err = sb_buf_append_str(out, ",\"data\":");
    if (err == SB_OK)
        err = append_map(out, doc, true);
    if (err == SB_OK)
        err = sb_buf_append_str(out, ",\"binary_data\":");
    if (err == SB_OK)
        err = append_map(out, doc, false);
    if (err == SB_OK)
        err = sb_buf_append_str(out, cache_hit ? ",\"cache_hit\":true}" : ",\"cache_hit\":false}");
    return err;
}

sb_err sb_render_secret(sb_buf *out, const sb_secret_doc *doc, bool cache_hit)
{
    return append_secret_object(out, doc, cache_hit);
}

sb_err sb_render_item_head(sb_buf *out, const char *name, const char *ns, const char *key,
                           int status)
{
    char st[32];
    sb_err err = append_member(out, "{\"name\":", name);

    if (err == SB_OK)
        err = append_member(out, ",\"namespace\":", ns);
    if (err == SB_OK && key && key[0])
        err = append_member(out, ",\"key\":", key);
    snprintf(st, sizeof(st), ",\"status\":%d", status);
    if (err == SB_OK)
        err = sb_buf_append_str(out, st);
    return err;
}

sb_err sb_render_item_value(sb_buf *out, const sb_secret *value)
{
    bool text = sb_render_is_utf8(sb_secret_data(value), sb_secret_len(value));
    sb_err err = sb_buf_append_str(out, text ? ",\"value\":" : ",\"value_base64\":");

    if (err == SB_OK && text)
        err = sb_render_string(out, (const char *)sb_secret_data(value), sb_secret_len(value));
    else if (err == SB_OK)
        err = append_base64_string(out, value);
    return err;
}

sb_err sb_render_item_secret(sb_buf *out, const sb_secret_doc *doc, bool cache_hit)
{
    sb_err err = sb_buf_append_str(out, ",\"secret\":");
    if (err == SB_OK)
        err = append_secret_object(out, doc, cache_hit);
    return err;
}

static sb_err append_error_object(sb_buf *out, sb_err code, const char *message)
{
    sb_err err = append_member(out, "{\"code\":", sb_err_code(code));
    if (err == SB_OK)
        err = append_member(out, ",\"message\":", message);
    return err;
}

sb_err sb_render_item_error(sb_buf *out, sb_err code, const char *message)
{
    sb_err err = sb_buf_append_str(out, ",\"error\":");
    if (err == SB_OK)
        err = append_error_object(out, code, message);
    if (err == SB_OK)
        err = sb_buf_append(out, "}", 1);
    return err;
}

sb_err sb_render_error(sb_buf *out, sb_err code, const char *message, const char *request_id)
{
    sb_err err = sb_buf_append_str(out, "{\"error\":");
    if (err == SB_OK)
        err = append_error_object(out, code, message);
    if (err == SB_OK)
        err = append_member(out, ",\"request_id\":", request_id);
    if (err == SB_OK)
        err = sb_buf_append_str(out, "}}");
    return err;
}
