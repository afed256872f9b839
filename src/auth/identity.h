/* Who is calling: the caller's Kubernetes ServiceAccount, taken from the
 * X.509 SVID the TLS layer has already chain-verified (DESIGN.md section 3).
 * Pure functions of their inputs; safe to call from any thread. */
#ifndef SB_AUTH_IDENTITY_H
#define SB_AUTH_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "core/limits.h"

/* The caller. All strings are NUL-terminated and were validated: ns is a
 * DNS label, sa a DNS subdomain. */
typedef struct sb_identity {
    char ns[SB_MAX_NAMESPACE + 1];      /* namespace */
    char sa[SB_MAX_SA_NAME + 1];        /* ServiceAccount name */
    char serial[SB_MAX_SERIAL_HEX + 1]; /* client cert serial, lower-case hex, "" if none */
    char source[8];                     /* "spiffe", "cn" or "token" */
} sb_identity;

typedef struct sb_identity_opts {
    const char *trust_domain; /* e.g. "cluster.local"; NULL accepts no SPIFFE ID */
    bool cn_fallback;         /* accept CN system:serviceaccount:<ns>:<sa> when no URI SAN */
} sb_identity_opts;

/* Bytes sb_identity_username needs, NUL included. */
#define SB_IDENTITY_USERNAME_SIZE                                                                  \
    (sizeof("system:serviceaccount:") + SB_MAX_NAMESPACE + 1 + SB_MAX_SA_NAME)

/* Every function below that fails returns SB_E_UNAUTHORIZED and, when why
 * is not NULL, points *why at a short static English reason that is safe to
 * show the client and to log (it never quotes the input). out and *why are
 * written only on success and failure respectively. */

/* Parses len bytes (not NUL-terminated, may hold any byte) as a SPIFFE ID of
 * exactly the form spiffe://<trust domain>/ns/<namespace>/sa/<name>, with the
 * trust domain equal to opts->trust_domain. Strict per the SPIFFE ID spec:
 * no userinfo, port, query, fragment or percent-encoding, no empty, "." or
 * ".." segment, no trailing "/", at most SB_MAX_SPIFFE_ID bytes. Fills ns,
 * sa and source ("spiffe"); serial is "". */
SB_MUST_CHECK sb_err sb_identity_parse_spiffe(const char *uri, size_t len,
                                              const sb_identity_opts *opts, sb_identity *out,
                                              const char **why);

/* Parses a Kubernetes ServiceAccount user name,
 * "system:serviceaccount:<namespace>:<name>" (len bytes, any byte). Fills ns
 * and sa; serial and source are "". Used for the CN fallback and for the
 * user name a TokenReview returns. */
SB_MUST_CHECK sb_err sb_identity_parse_username(const char *name, size_t len, sb_identity *out,
                                                const char **why);

/* Checks that a DER leaf certificate may authenticate a client (X509-SVID
 * section 5.2, RFC 5280 section 4.2.1.12): basicConstraints not CA, no
 * keyCertSign or cRLSign key usage, digitalSignature when a key usage is
 * present, and an extended key usage that includes clientAuth. */
SB_MUST_CHECK sb_err sb_identity_check_leaf(const unsigned char *der, size_t len, const char **why);

/* The caller's identity from its DER leaf certificate, which TLS has
 * already verified against the CA bundle. Applies sb_identity_check_leaf,
 * then requires exactly one URI SAN (X509-SVID section 2) holding a valid
 * SPIFFE ID of opts->trust_domain. Only when the certificate has no URI SAN
 * at all and opts->cn_fallback is set, the subject's single CN is parsed
 * with sb_identity_parse_username instead (source "cn"). DNS, e-mail,
 * IP and otherName SANs are never identity. Fills serial; on a refusal
 * *out is empty but for the serial, when the certificate had a readable
 * one. */
SB_MUST_CHECK sb_err sb_identity_from_der(const unsigned char *der, size_t len,
                                          const sb_identity_opts *opts, sb_identity *out,
                                          const char **why);

/* Writes "system:serviceaccount:<ns>:<sa>" into buf (the Kubernetes user
 * name, for impersonation and SubjectAccessReview). buf should hold
 * SB_IDENTITY_USERNAME_SIZE bytes; a shorter one gets a cut, NUL-terminated
 * string. */
void sb_identity_username(const sb_identity *id, char *buf, size_t buflen);

#endif
