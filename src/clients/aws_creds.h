/* The broker's own AWS credentials, found in the AWS SDKs' order: static
 * keys in the environment, web identity (IRSA: STS
 * AssumeRoleWithWebIdentity), container credentials (EKS Pod Identity).
 * Temporary credentials are renewed five minutes before they expire, and
 * concurrent callers share one renewal. Keys live in sb_secret memory,
 * wiped when replaced, and are never logged: logs name the source only.
 *
 * sb_aws_creds_new and _free run on any thread while no call is pending;
 * every other call is made on the http loop thread, where callbacks run. */
#ifndef SB_CLIENTS_AWS_CREDS_H
#define SB_CLIENTS_AWS_CREDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "clients/http.h"
#include "clients/sigv4.h"
#include "core/config.h"
#include "core/error.h"
#include "core/secret.h"

typedef enum sb_aws_source {
    SB_AWS_SOURCE_ENV,          /* AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY */
    SB_AWS_SOURCE_WEB_IDENTITY, /* AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE */
    SB_AWS_SOURCE_CONTAINER,    /* AWS_CONTAINER_CREDENTIALS_FULL_URI */
} sb_aws_source;

/* "environment", "web-identity" or "container": what logs say. */
const char *sb_aws_source_name(sb_aws_source source);

/* One set of credentials. */
typedef struct sb_aws_key {
    sb_secret *access_key_id;
    sb_secret *secret_key;
    sb_secret *session_token; /* NULL for long-term keys */
    int64_t expires_ms;       /* wall clock; 0 when the key does not expire */
    uint64_t serial;          /* which key this is (sb_aws_creds_expire) */
} sb_aws_key;

/* Drops the secrets (wiped at their last reference) and zeroes the key. */
void sb_aws_key_clear(sb_aws_key *key);

/* The key as the SigV4 signer takes it; valid while key is. */
void sb_aws_key_sigv4(const sb_aws_key *key, sb_sigv4_creds *out);

/* Renewal timing, by the wall clock. A key is renewed from five minutes
 * before it expires; it is still used while a renewal runs, up to one
 * minute before it expires, after which callers wait for the new one. */
#define SB_AWS_REFRESH_BEFORE_MS (5 * 60 * 1000)
#define SB_AWS_USABLE_BEFORE_MS  (60 * 1000)
/* After a failed fetch: how long to answer with the same error before
 * asking again when no key is usable, and how long to keep using a
 * still-valid key before asking again. */
#define SB_AWS_FAILED_RETRY_MS 1000
#define SB_AWS_RENEW_RETRY_MS  10000
/* Container answers without an Expiration are asked for again this often. */
#define SB_AWS_NO_EXPIRY_LIFE_MS (20 * 60 * 1000)

/* What a caller of sb_aws_creds_get gets, decided from the current key's
 * expiry (0: none), whether a fetch is running, the time before which no
 * new fetch may start, and now. */
typedef enum sb_aws_plan {
    SB_AWS_PLAN_USE,            /* the key is good */
    SB_AWS_PLAN_USE_AND_RENEW,  /* good, but start its renewal */
    SB_AWS_PLAN_WAIT,           /* join the running fetch */
    SB_AWS_PLAN_FETCH_AND_WAIT, /* start a fetch and wait for it */
    SB_AWS_PLAN_FAIL,           /* the last fetch failed moments ago */
} sb_aws_plan;

sb_aws_plan sb_aws_creds_plan(bool have_key, int64_t expires_ms, bool fetching, int64_t next_try_ms,
                              int64_t now_ms);

/* The Credentials of an STS AssumeRoleWithWebIdentity answer: exactly
 * AccessKeyId, SecretAccessKey, SessionToken and Expiration inside one
 * <Credentials> element, read by the bounded extractor of aws_proto.h.
 * SB_E_UPSTREAM when any is missing, repeated, malformed or over its
 * limit. On success *out is filled (serial 0); on failure untouched. */
SB_MUST_CHECK sb_err sb_aws_sts_parse(const void *xml, size_t len, sb_aws_key *out);

/* A container credentials answer (JSON: AccessKeyId, SecretAccessKey,
 * Token, Expiration). Token is optional (then no session token); without
 * Expiration the key is treated as expiring SB_AWS_NO_EXPIRY_LIFE_MS after
 * now_ms. SB_E_UPSTREAM when malformed. */
SB_MUST_CHECK sb_err sb_aws_container_parse(const void *json, size_t len, int64_t now_ms,
                                            sb_aws_key *out);

typedef struct sb_aws_creds sb_aws_creds;

typedef struct sb_aws_creds_options {
    sb_env_lookup env;     /* where the SDK variables are read */
    sb_http *http;         /* for STS and the container endpoint */
    const char *region;    /* the regional STS endpoint's */
    const char *ca_bundle; /* AWS_CA_BUNDLE, or NULL */
    int timeout_ms;        /* per fetch */
} sb_aws_creds_options;

/* Picks the source from the environment and checks its settings: the
 * first of static keys, web identity and container credentials that is
 * configured; a half-configured source is an error, as is none. On
 * failure SB_E_CONFIG with one line in err naming the variable (never a
 * value of a credential variable). */
SB_MUST_CHECK sb_err sb_aws_creds_new(const sb_aws_creds_options *opt, sb_aws_creds **out,
                                      char *err, size_t errlen);

/* Frees the provider and its key, without calling waiting callers (the
 * http loop must be stopped). Accepts NULL. */
void sb_aws_creds_free(sb_aws_creds *c);

sb_aws_source sb_aws_creds_source(const sb_aws_creds *c);

/* Called with the key (valid only during the call) or an error:
 * SB_E_CREDENTIALS (refused, or a local file missing), SB_E_UNAVAILABLE,
 * SB_E_THROTTLED, SB_E_TIMEOUT, SB_E_UPSTREAM, SB_E_SHUTDOWN. detail is
 * static and safe to show. */
typedef void (*sb_aws_creds_fn)(sb_err err, const sb_aws_key *key, const char *detail, void *ud);

/* Gets a usable key. fn runs at once when one is at hand, else when the
 * fetch it waits for completes. Loop thread. */
void sb_aws_creds_get(sb_aws_creds *c, sb_aws_creds_fn fn, void *ud);

/* Asks for temporary credentials ahead of the first request, so start-up
 * problems show in the log at once. Any thread (runs on the loop). */
void sb_aws_creds_prefetch(sb_aws_creds *c);

/* AWS said key `serial` has expired: fetch a new one before the next use
 * (ignored for static keys and for a key fetched moments ago). Loop thread. */
void sb_aws_creds_expire(sb_aws_creds *c, uint64_t serial);

#endif
