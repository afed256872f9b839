/* Authorization: may this ServiceAccount `get` secrets/<name> in <ns>?
 * Kubernetes RBAC decides (DESIGN.md section 4). Decisions are cached per
 * (identity, namespace, name): allow for AUTHZ_ALLOW_TTL_SECONDS, deny for
 * AUTHZ_DENY_TTL_SECONDS. Misses are answered by a SubjectAccessReview,
 * one in flight per key however many requests wait. In the file backend's
 * development mode a caller may read its own namespace only.
 *
 * When the API server cannot answer, there is no decision: the caller is
 * refused (503), unless AUTHZ_STALE_IF_ERROR_SECONDS is set and the
 * caller's last decision for the key was an allow made at most that long
 * ago (docs/architecture.md, "When the API server is down"). */
#ifndef SB_AUTH_AUTHZ_H
#define SB_AUTH_AUTHZ_H

#include <stdbool.h>
#include <stdint.h>

#include "auth/identity.h"
#include "clients/kube.h"
#include "core/config.h"

typedef enum sb_decision {
    SB_DECISION_UNKNOWN, /* no fresh decision: ask the API server */
    SB_DECISION_ALLOW,
    SB_DECISION_DENY,
} sb_decision;

typedef struct sb_authz sb_authz;

/* kube may be NULL in own-namespace mode. */
sb_authz *sb_authz_new(const sb_config *cfg, sb_kube *kube);
void sb_authz_free(sb_authz *a);

/* The cached decision, if still fresh at now. Any thread. */
sb_decision sb_authz_lookup(sb_authz *a, const sb_identity *id, const char *ns, const char *name,
                            int64_t now);

/* A decision the API server made (a review, or a read made as the caller);
 * cached for the allow or deny TTL. Any thread. */
void sb_authz_record(sb_authz *a, const sb_identity *id, const char *ns, const char *name,
                     bool allowed, int64_t now);

/* Drops a cached decision (an upstream 403 after an allow). Any thread. */
void sb_authz_forget(sb_authz *a, const sb_identity *id, const char *ns, const char *name);

/* For when the API server cannot be asked: true when the decision is a
 * fresh allow, or the last decision was an allow made at most
 * AUTHZ_STALE_IF_ERROR_SECONDS before now (never with the default, 0).
 * A deny made since, or an upstream 403, ends it. Any thread. */
bool sb_authz_allowed_if_error(sb_authz *a, const sb_identity *id, const char *ns, const char *name,
                               int64_t now);

/* err is SB_OK when there is an answer (then allowed says how), else why
 * none came. stale is true when the API server did not answer and the
 * allow is the caller's earlier one (sb_authz_allowed_if_error). */
typedef void (*sb_authz_done_fn)(sb_err err, bool allowed, bool stale, void *ud);

/* Asks the API server with a SubjectAccessReview and records the answer;
 * concurrent reviews of one key share one call. Without an answer, an
 * earlier allow still young enough answers (stale). Loop thread only; done
 * runs on the loop thread. */
void sb_authz_review(sb_authz *a, const sb_identity *id, const char *ns, const char *name,
                     const char *request_id, sb_authz_done_fn done, void *ud);

/* Number of cached decisions, for metrics. */
size_t sb_authz_cached(sb_authz *a);

#endif
