/* The Kubernetes backend: reads a Secret as the caller, by impersonation
 * (AUTH_MODE=impersonate) or with a short-lived token of the caller's
 * ServiceAccount from the TokenRequest API (AUTH_MODE=tokenrequest), so
 * the API server enforces RBAC on every read. */
#ifndef SB_BACKEND_K8S_H
#define SB_BACKEND_K8S_H

#include "backend/backend.h"
#include "clients/kube.h"

/* A Kubernetes backend on kube (not owned). */
sb_backend *sb_k8s_backend_new(const sb_config *cfg, sb_kube *kube);

/* Decodes a Secret object from the API into a document: valid keys,
 * base64 values (the Secret's `data`). SB_E_UPSTREAM when malformed.
 * Exposed for the unit tests and the fuzz target. */
SB_MUST_CHECK sb_err sb_k8s_secret_to_doc(const json_t *secret, const char *ns, const char *name,
                                          sb_secret_doc **out);

#endif
