/* The Kubernetes API client: where the API server is and how the broker
 * proves who it is (in-cluster ServiceAccount files or a KUBECONFIG), and
 * the calls the broker makes: reading a Secret as a caller (impersonation
 * or a caller's token), SubjectAccessReview, TokenRequest and TokenReview.
 *
 * Every call is asynchronous through clients/http and must be made on the
 * http loop thread; callbacks run there too. */
#ifndef SB_CLIENTS_KUBE_H
#define SB_CLIENTS_KUBE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "clients/http.h"
#include "core/config.h"
#include "core/error.h"
#include "core/secret.h"

typedef struct sb_kube sb_kube;

/* Whose rights a request uses. With neither set, the broker's own. */
typedef struct sb_kube_as {
    const char *impersonate_user; /* "system:serviceaccount:<ns>:<sa>" */
    const sb_secret *bearer;      /* a token of the caller (TokenRequest mode) */
} sb_kube_as;

typedef struct sb_kube_result {
    sb_err err;         /* SB_OK for 2xx, else mapped from the status (see below) */
    long status;        /* HTTP status; 0 when no answer came */
    int retry_after_s;  /* -1 when absent */
    json_t *json;       /* the parsed answer (2xx only), owned by the caller of
                         * nothing: freed after the callback returns */
    const char *detail; /* why it failed: a static text, safe to log and show */
    int64_t elapsed_us;
} sb_kube_result;

/* Status mapping: 401 SB_E_CREDENTIALS (after one retry with a re-read
 * token), 403 SB_E_FORBIDDEN, 404 SB_E_NOT_FOUND, 429 SB_E_THROTTLED (after
 * waiting out its Retry-After and trying again, at most three attempts,
 * while the call's time allows and the retry budget has tokens), 5xx
 * SB_E_UNAVAILABLE, an unparsable 2xx or other status SB_E_UPSTREAM;
 * transport failures as clients/http reports them. Every call, its waits
 * included, ends within K8S_TIMEOUT_SECONDS (or its own timeout_ms). */
typedef void (*sb_kube_done_fn)(sb_kube_result *res, void *ud);

/* Reads where the API server is and the broker's credentials: KUBECONFIG
 * (JSON form) when set, else the in-cluster environment and ServiceAccount
 * files. On failure returns SB_E_CONFIG with one line in err. */
SB_MUST_CHECK sb_err sb_kube_new(const sb_config *cfg, sb_http *http, sb_kube **out, char *err,
                                 size_t errlen);
void sb_kube_free(sb_kube *k);

/* The server URL, for logs. */
const char *sb_kube_server(const sb_kube *k);

/* GET /api/v1/namespaces/{ns}/secrets/{name} as `as`. */
void sb_kube_get_secret(sb_kube *k, const char *ns, const char *name, const sb_kube_as *as,
                        const char *request_id, sb_kube_done_fn done, void *ud);

/* SubjectAccessReview: may ServiceAccount sa_ns/sa `get` secrets/name in
 * ns? The ServiceAccount's groups are sent explicitly, since a review adds
 * none by itself. On success res->json is the review; read the answer
 * with sb_kube_review_allowed. */
void sb_kube_review_access(sb_kube *k, const char *sa_ns, const char *sa, const char *ns,
                           const char *name, const char *request_id, sb_kube_done_fn done,
                           void *ud);
bool sb_kube_review_allowed(const json_t *review, const char **out_reason);

/* TokenRequest for ServiceAccount ns/sa with one audience (NULL: the API
 * server's own audiences, for reading as that ServiceAccount). */
void sb_kube_request_token(sb_kube *k, const char *ns, const char *sa, const char *audience,
                           int expiration_s, const char *request_id, sb_kube_done_fn done,
                           void *ud);

/* TokenReview of a bearer token for one audience. */
void sb_kube_review_token(sb_kube *k, const sb_secret *token, const char *audience,
                          const char *request_id, sb_kube_done_fn done, void *ud);

/* A raw call for other modules (the watch, tests): method, path beginning
 * with "/", optional JSON body. */
void sb_kube_call(sb_kube *k, const char *method, const char *path, const char *body,
                  const sb_kube_as *as, const char *request_id, sb_kube_done_fn done, void *ud);

/* What sb_kube_call_ex adds to sb_kube_call. Zero means the default. */
typedef struct sb_kube_opts {
    const char *accept;        /* Accept header; default application/json */
    int timeout_ms;            /* whole call; default K8S_TIMEOUT_SECONDS */
    sb_http_chunk_fn on_chunk; /* stream a 2xx body here (res->json is then NULL) */
    void *chunk_ud;
} sb_kube_opts;

/* sb_kube_call with options: another representation (the metadata-only
 * PartialObjectMetadata forms) or a streamed answer (a watch). */
void sb_kube_call_ex(sb_kube *k, const char *method, const char *path, const char *body,
                     const sb_kube_as *as, const sb_kube_opts *opts, const char *request_id,
                     sb_kube_done_fn done, void *ud);

#endif
