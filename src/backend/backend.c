/* Secret documents (see backend.h). */
#include "backend/backend.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/limits.h"
#include "core/names.h"

sb_secret_doc *sb_doc_new(sb_backend_kind backend, const char *ns, const char *name,
                          const char *version)
{
    /* One allocation for the document and its three names: a cache of
     * many small secrets holds one of these per entry. */
    size_t ns_len = strlen(ns) + 1, name_len = strlen(name) + 1;
    size_t version_len = (version ? strlen(version) : 0) + 1;
    sb_secret_doc *doc = sb_xcalloc(1, sizeof(*doc) + ns_len + name_len + version_len);
    char *names = (char *)(doc + 1);

    atomic_init(&doc->refs, 1);
    doc->backend = backend;
    doc->ns = memcpy(names, ns, ns_len);
    doc->name = memcpy(names + ns_len, name, name_len);
    doc->version = memcpy(names + ns_len + name_len, version ? version : "", version_len);
    doc->bytes = sizeof(*doc) + ns_len + name_len + version_len;
    return doc;
}

sb_err sb_doc_add(sb_secret_doc *doc, const char *key, size_t key_len, const void *value,
                  size_t len)
{
    if (!sb_name_is_secret_key(key, key_len))
        return SB_E_UPSTREAM;
    if (doc->count == SB_MAX_SECRET_KEYS)
        return SB_E_TOO_LARGE;
    for (size_t i = 0; i < doc->count; i++) {
        if (doc->items[i].key_len == key_len && !memcmp(doc->items[i].key, key, key_len))
            return SB_E_UPSTREAM;
    }

    doc->items = sb_xrealloc(doc->items, (doc->count + 1) * sizeof(*doc->items));
    sb_secret_item *it = &doc->items[doc->count++];
    it->key = sb_xstrndup(key, key_len);
    it->key_len = key_len;
    it->value = sb_secret_new(value, len);
    doc->bytes += sizeof(*it) + key_len + 1 + sb_secret_footprint(it->value);
    return SB_OK;
}

static int by_key(const void *a, const void *b)
{
    const sb_secret_item *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

void sb_doc_seal(sb_secret_doc *doc)
{
    if (doc->count > 1)
        qsort(doc->items, doc->count, sizeof(*doc->items), by_key);
}

const sb_secret_item *sb_doc_find(const sb_secret_doc *doc, const char *key, size_t key_len)
{
    size_t lo = 0, hi = doc->count;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        sb_secret_item probe = {.key = (char *)key, .key_len = key_len};
        int c = by_key(&probe, &doc->items[mid]);
        if (c == 0)
            return &doc->items[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

sb_secret_doc *sb_doc_ref(sb_secret_doc *doc)
{
    if (doc)
        atomic_fetch_add_explicit(&doc->refs, 1, memory_order_relaxed);
    return doc;
}

void sb_doc_unref(sb_secret_doc *doc)
{
    if (!doc || atomic_fetch_sub_explicit(&doc->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < doc->count; i++) {
        free(doc->items[i].key);
        sb_secret_unref(doc->items[i].value);
    }
    free(doc->items);
    free(doc);
}
