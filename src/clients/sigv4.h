/* AWS Signature Version 4 for services other than S3 (Secrets Manager, STS),
 * computed exactly as botocore computes it, since moto verifies with
 * botocore and the AWS SDKs agree with it. Pure computation: no I/O, no
 * clock (the caller passes the time), safe on any thread. */
#ifndef SB_CLIENTS_SIGV4_H
#define SB_CLIENTS_SIGV4_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* "20150830T123600Z" and its NUL. */
#define SB_SIGV4_DATE_LEN 17
/* Hex of an HMAC-SHA256 and its NUL. */
#define SB_SIGV4_SIGNATURE_LEN 65

typedef struct sb_sigv4_header {
    const char *name;  /* any case; an HTTP token */
    const char *value; /* as sent: visible ASCII, spaces and tabs */
} sb_sigv4_header;

typedef struct sb_sigv4_request {
    const char *method; /* "POST"; signed upper-cased */
    const char *path;   /* path as sent, starting with '/'; NULL or "" means "/" */
    const char *query;  /* query as sent, without '?'; NULL or "" for none */
    /* Every header the request will carry, host included, with the values
     * that go on the wire. Hop-by-hop headers and User-Agent are left out
     * of the signature as botocore leaves them out; the caller must not
     * pass Authorization, Date, X-Amz-Date, X-Amz-Security-Token or
     * X-Amz-Content-SHA256, which belong to the signer. */
    const sb_sigv4_header *headers;
    size_t header_count;
    const unsigned char *body;
    size_t body_len;
} sb_sigv4_request;

typedef struct sb_sigv4_creds {
    const char *access_key;    /* [A-Za-z0-9]+ */
    const char *secret_key;    /* secret; never logged */
    const char *session_token; /* secret; NULL for long-term credentials */
} sb_sigv4_creds;

typedef struct sb_sigv4_result {
    char *authorization; /* the Authorization header's value */
    char signature[SB_SIGV4_SIGNATURE_LEN];
    /* The intermediate texts, for tests. The canonical request holds the
     * session token: do not log it. */
    char *canonical_request;
    char *string_to_sign;
} sb_sigv4_result;

/* Signs req for region and service ("us-east-1", "secretsmanager") at
 * amz_date (YYYYMMDD'T'HHMMSS'Z', UTC). Besides its own headers and
 * `Authorization: <out->authorization>`, the request must carry
 * `X-Amz-Date: <amz_date>` and, when creds has a session token,
 * `X-Amz-Security-Token: <session_token>`: both are signed. The payload is
 * always hashed (no UNSIGNED-PAYLOAD).
 *
 * Returns SB_E_INTERNAL when an argument is malformed (a header the signer
 * owns, a control character, a path without a leading '/', a bad '%'
 * escape in the query, no host header...), SB_E_CRYPTO when GnuTLS
 * refuses. On success *out is filled and owned by the caller, who frees it
 * with sb_sigv4_result_free; on failure *out is untouched. The derived
 * keys and any copy of the secret key are wiped before returning. */
SB_MUST_CHECK sb_err sb_sigv4_sign(const sb_sigv4_request *req, const sb_sigv4_creds *creds,
                                   const char *region, const char *service, const char *amz_date,
                                   sb_sigv4_result *out);

/* Wipes and frees what sb_sigv4_sign filled in, and zeroes *res. Accepts
 * NULL and a zeroed result. */
void sb_sigv4_result_free(sb_sigv4_result *res);

/* Formats a wall-clock time (milliseconds since the epoch) as the SigV4
 * timestamp YYYYMMDD'T'HHMMSS'Z' in UTC. */
void sb_sigv4_amz_date(int64_t wall_ms, char out[SB_SIGV4_DATE_LEN]);

#endif
