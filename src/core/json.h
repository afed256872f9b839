/* JSON with jansson, made safe for secrets: every allocation jansson makes
 * is wiped when freed (parsed upstream answers hold secret values), and
 * parsing goes through one function with the project's size limit. */
#ifndef SB_CORE_JSON_H
#define SB_CORE_JSON_H

#include <jansson.h>
#include <stddef.h>

#include "core/error.h"

/* Makes jansson wipe what it frees. Call once at start-up, before any
 * other jansson call (tests call it too). */
void sb_json_init(void);

/* Parses len bytes of JSON text (at most max bytes; duplicate object keys
 * are refused, since two readers could disagree on which one wins).
 * SB_E_TOO_LARGE or SB_E_UPSTREAM (unparsable) on failure. */
SB_MUST_CHECK sb_err sb_json_parse(const void *text, size_t len, size_t max, json_t **out);

/* The string member `key` of obj with its length, or NULL when absent or
 * not a string. */
const char *sb_json_str(const json_t *obj, const char *key, size_t *out_len);

/* Frees a string from json_dumps after wiping it. */
void sb_json_free_dump(char *s);

#endif
