/* jansson set-up and helpers (see json.h). jansson's memory comes from the
 * secret arena (core/secmem): parsed upstream answers hold secret values,
 * which belong out of core dumps like any other secret bytes, and keeping
 * the parsers' short-lived blocks out of the malloc heap spares the
 * long-lived cache entries its fragmentation. A small header keeps each
 * block's size, which the arena needs back on free. */
#include "core/json.h"

#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"

#define HEADER 16 /* keeps jansson's blocks 16-byte aligned */

static void *json_alloc(size_t size)
{
    unsigned char *p = sb_secmem_alloc(size + HEADER);
    memcpy(p, &size, sizeof(size));
    return p + HEADER;
}

static void json_release(void *ptr)
{
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *)ptr - HEADER;
    size_t size;
    memcpy(&size, p, sizeof(size));
    sb_secmem_free(p, size + HEADER); /* wipes */
}

void sb_json_init(void)
{
    json_set_alloc_funcs(json_alloc, json_release);
}

sb_err sb_json_parse(const void *text, size_t len, size_t max, json_t **out)
{
    json_error_t error;

    if (len > max)
        return SB_E_TOO_LARGE;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &error);
    if (!doc)
        return SB_E_UPSTREAM;
    *out = doc;
    return SB_OK;
}

const char *sb_json_str(const json_t *obj, const char *key, size_t *out_len)
{
    json_t *v = json_object_get(obj, key);

    if (!json_is_string(v))
        return NULL;
    if (out_len)
        *out_len = json_string_length(v);
    return json_string_value(v);
}

void sb_json_free_dump(char *s)
{
    json_release(s);
}
