/* The API's response bodies (DESIGN.md section 5): a whole secret, a batch
 * of per-item results, and the error object. Written straight into wiping
 * buffers, since they carry secret values; JSON strings are escaped here,
 * and values that are not valid UTF-8 go out as base64. */
#ifndef SB_NET_RENDER_H
#define SB_NET_RENDER_H

#include <stdbool.h>
#include <stddef.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/secret.h"

/* Strict UTF-8 (RFC 3629: no overlong forms, no surrogates, at most
 * U+10FFFF). */
bool sb_render_is_utf8(const unsigned char *s, size_t len);

/* {"name", "namespace", "backend", "version", "data", "binary_data",
 * "cache_hit"}. SB_E_TOO_LARGE when out's maximum is passed. */
SB_MUST_CHECK sb_err sb_render_secret(sb_buf *out, const sb_secret_doc *doc, bool cache_hit);

/* Opens a batch item and appends the members every item has: "name",
 * "namespace", "key" when one was asked for, and "status". Then one of
 * the three below, then the caller closes the item with "}". */
SB_MUST_CHECK sb_err sb_render_item_head(sb_buf *out, const char *name, const char *ns,
                                         const char *key, int status);

/* Appends ,"value" (UTF-8) or ,"value_base64" for one key. */
SB_MUST_CHECK sb_err sb_render_item_value(sb_buf *out, const sb_secret *value);

/* Appends ,"secret":{...} for a whole secret. */
SB_MUST_CHECK sb_err sb_render_item_secret(sb_buf *out, const sb_secret_doc *doc, bool cache_hit);

/* Appends ,"error":{"code","message"} for a failed item. */
SB_MUST_CHECK sb_err sb_render_item_error(sb_buf *out, sb_err err, const char *message);

/* {"error": {"code", "message", "request_id"}}. message must not hold
 * secret material; it is escaped. */
SB_MUST_CHECK sb_err sb_render_error(sb_buf *out, sb_err err, const char *message,
                                     const char *request_id);

/* Appends s (len bytes) as a JSON string, quotes included. */
SB_MUST_CHECK sb_err sb_render_string(sb_buf *out, const char *s, size_t len);

#endif
