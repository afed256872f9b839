/* What an API request asks for, parsed strictly from the request target as
 * the client sent it (before any percent-decoding) and from the batch
 * body. Everything is validated here, before any cache or backend is
 * touched (DESIGN.md section 5): names are DNS subdomains, keys
 * [-._a-zA-Z0-9]+, namespaces DNS labels; percent-encoding, "..", empty
 * segments, fragments and unknown or repeated parameters are refused. Pure
 * functions; any thread. */
#ifndef SB_NET_REQUEST_H
#define SB_NET_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "core/limits.h"

typedef enum sb_route {
    SB_ROUTE_SECRET, /* GET /v1/secrets/{name} */
    SB_ROUTE_KEY,    /* GET /v1/secrets/{name}/{key} */
    SB_ROUTE_BATCH,  /* POST /v1/secrets/batch */
} sb_route;

/* One secret (or key) asked for: the target of a GET, or one batch item. */
typedef struct sb_target {
    char name[SB_MAX_SECRET_NAME + 1];
    char key[SB_MAX_KEY + 1];      /* "" for the whole secret */
    char ns[SB_MAX_NAMESPACE + 1]; /* "" when the caller's own */
    char version_stage[SB_MAX_VERSION_STAGE + 1];
    char version_id[SB_MAX_VERSION_ID + 1];
} sb_target;

typedef struct sb_request {
    sb_route route;
    sb_target target; /* GET routes; for a batch, the query's defaults */
    bool refresh;
} sb_request;

/* Parses method and raw target (len bytes). Errors, with *why a short
 * static reason safe to show: SB_E_BAD_REQUEST (malformed), SB_E_NOT_FOUND
 * (no such endpoint), SB_E_METHOD (endpoint exists, not with this method),
 * SB_E_URI_TOO_LONG. */
SB_MUST_CHECK sb_err sb_request_parse(const char *method, const char *raw, size_t len,
                                      sb_request *out, const char **why);

/* Parses a batch body {"secrets": [{"name", "key"?, "namespace"?,
 * "version_stage"?, "version_id"?}, ...]} of at most SB_MAX_BATCH_ITEMS
 * items; an item without a namespace takes defaults->ns. On success
 * *out_items is an array of *out_count targets to free(). Errors:
 * SB_E_BAD_REQUEST, SB_E_TOO_LARGE (too many items). */
SB_MUST_CHECK sb_err sb_request_parse_batch(const void *body, size_t len, const sb_target *defaults,
                                            sb_target **out_items, size_t *out_count,
                                            const char **why);

/* Whether a version stage / version id has the accepted shape. */
bool sb_request_valid_stage(const char *s, size_t len);
bool sb_request_valid_version_id(const char *s, size_t len);

#endif
