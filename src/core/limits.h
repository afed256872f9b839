/* Every limit on what a client or an upstream can make the broker allocate
 * or parse, in one place. Run-time defaults that operators may change live
 * in config.h; these are the hard maxima the code is written against. */
#ifndef SB_CORE_LIMITS_H
#define SB_CORE_LIMITS_H

/* Names (Kubernetes API conventions: DNS-1123 subdomain and label). */
#define SB_MAX_SECRET_NAME 253 /* secret names are DNS subdomains */
#define SB_MAX_NAMESPACE   63  /* namespaces are DNS labels */
#define SB_MAX_SA_NAME     253 /* ServiceAccount names are DNS subdomains */
#define SB_MAX_KEY         253 /* Secret data keys, same bound as the API server */

/* Identity. */
#define SB_MAX_SPIFFE_ID    2048 /* SPIFFE ID spec: URIs longer than this are invalid */
#define SB_MAX_TRUST_DOMAIN 255
#define SB_MAX_CERT_CHAIN   8     /* certificates accepted in a client chain */
#define SB_MAX_BEARER_TOKEN 8192  /* projected ServiceAccount tokens are ~1 KiB */
#define SB_MAX_SERIAL_HEX   64    /* X.509 serials are at most 20 bytes */
#define SB_MAX_CERT_SANS    64    /* subject alternative names read from a client cert */
#define SB_MAX_CERT_EKUS    16    /* extended key usages read from a client cert */
#define SB_MAX_POD_NAME     253   /* pod names are DNS subdomains */
#define SB_MAX_K8S_UID      64    /* object UIDs are 36-character UUIDs */
#define SB_MAX_TOKEN_CACHE  10000 /* bearer token reviews kept (one per token) */

/* HTTP requests. The header limit is libmicrohttpd's per-connection memory
 * pool: request line and headers must fit in it, or it answers 431/414. */
#define SB_MAX_URI           4096
#define SB_MAX_CONN_MEMORY   (16 * 1024)
#define SB_MAX_BATCH_BODY    (128 * 1024)
#define SB_MAX_BATCH_ITEMS   100
#define SB_MAX_QUERY_ARGS    8
#define SB_MAX_REQUEST_ID    64 /* our own ids are 32 hex characters */
#define SB_MAX_VERSION_ID    64 /* AWS VersionId: 32-64 characters */
#define SB_MAX_VERSION_STAGE 256

/* Slow clients. libmicrohttpd's CONNECTION_IDLE_TIMEOUT_SECONDS closes a
 * connection only after that long without a byte, so one that sends a
 * byte now and then would stay forever; these bound each phase as a whole
 * (net/server closes the connection when one runs out). Headers: from
 * accept to the end of the first request's headers, TLS handshake
 * included (for a later request on the connection, the idle timeout plus
 * this from the previous answer). Body: from the end of the headers. Send:
 * from the response queued to its last byte. */
#define SB_MAX_HEADERS_MS 10000
#define SB_MAX_BODY_MS    10000
#define SB_MAX_SEND_MS    60000

/* Upstream answers. A Kubernetes Secret holds at most 1 MiB of data, which
 * base64 and JSON grow by about 4/3; AWS secrets are at most 64 KiB. */
#define SB_MAX_UPSTREAM_BODY  (4 * 1024 * 1024)
#define SB_MAX_JSON_DEPTH     32
#define SB_MAX_SECRET_KEYS    1024 /* keys in one secret */
#define SB_MAX_BATCH_RESPONSE (32 * 1024 * 1024)
#define SB_MAX_AWS_BATCH      20 /* BatchGetSecretValue takes at most 20 ids */

/* AWS: credentials, their answers and the names the broker sends. Key
 * lengths are the IAM API's bounds; session tokens have no published
 * bound (a few KiB with session tags). */
#define SB_MAX_AWS_ACCESS_KEY_ID  128
#define SB_MAX_AWS_SECRET_KEY     128
#define SB_MAX_AWS_SESSION_TOKEN  16384
#define SB_MAX_AWS_SESSION_NAME   64          /* STS RoleSessionName */
#define SB_MAX_AWS_ROLE_ARN       2048        /* STS RoleArn */
#define SB_MAX_AWS_SECRET_ID      512         /* Secrets Manager secret names */
#define SB_MAX_AWS_URL            2048        /* endpoint URLs from the environment */
#define SB_MAX_AWS_CREDS_RESPONSE (64 * 1024) /* STS and container credentials answers */
#define SB_MAX_STS_REQUEST        (64 * 1024) /* the form body, token included */
#define SB_MAX_AWS_ERROR_BODY     (64 * 1024) /* error answers read for their code */

/* Per-identity state kept by the rate limits (token buckets): callers are
 * authenticated ServiceAccounts, but their number is still bounded. */
#define SB_MAX_RATE_KEYS 65536

/* Watch streams (CACHE_INVALIDATION=watch): one event is one object's
 * metadata; a Secret object is at most about 1 MiB (etcd's request limit),
 * and annotations can carry most of it. */
#define SB_MAX_WATCH_EVENT      (2 * 1024 * 1024)
#define SB_MAX_RESOURCE_VERSION 128 /* opaque, but etcd revisions are decimal numbers */

/* Logging: user-controlled text is cut to this many bytes in log lines. */
#define SB_MAX_LOG_FIELD 512

/* Audit records: user-controlled text is cut to this many bytes (names,
 * keys and namespaces that pass validation are shorter), the request path
 * to the second. */
#define SB_MAX_AUDIT_FIELD 256
#define SB_MAX_AUDIT_PATH  2048

#endif
