/* AWS protocol details shared by the credential providers and the Secrets
 * Manager backend: endpoint URLs as the AWS SDKs resolve them, the small
 * bounded XML reader for query-protocol answers (STS), and the error code
 * of a JSON or XML error answer. Pure functions; any thread. */
#ifndef SB_CLIENTS_AWS_PROTO_H
#define SB_CLIENTS_AWS_PROTO_H

#include <stdbool.h>
#include <stddef.h>

#include "core/config.h"
#include "core/error.h"
#include "core/secret.h"

/* An http or https URL split for requests and SigV4. */
typedef struct sb_aws_url {
    bool https;
    char *host;      /* as written, lower-cased; IPv6 literals keep their brackets */
    int port;        /* the explicit port, or the scheme's default */
    char *authority; /* the Host header: host, and ":port" when not the default */
    char *path;      /* "" or "/a/b" without a trailing slash */
    char *base;      /* scheme://authority + path: append "/" and a resource */
} sb_aws_url;

/* Parses an endpoint URL: http or https, a host name, IPv4 or bracketed
 * IPv6 address, an optional port and path; no user info, query or
 * fragment, and a path of [A-Za-z0-9._~/-] only. SB_E_CONFIG when it is
 * not one; *out is written only on success; free with sb_aws_url_free. */
SB_MUST_CHECK sb_err sb_aws_url_parse(const char *url, sb_aws_url *out);
void sb_aws_url_free(sb_aws_url *url);

/* True for a region name as AWS writes them ("us-east-1"). */
bool sb_aws_region_ok(const char *region);

/* The endpoint of one service as the AWS SDKs find it
 * (https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html):
 * AWS_ENDPOINT_URL_<service_id>, else AWS_ENDPOINT_URL (both skipped when
 * AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true), else the regional
 * https://<dns_name>.<region>.amazonaws.com (.amazonaws.com.cn in China).
 * Never a global endpoint. On failure SB_E_CONFIG with one line in err
 * naming the variable. */
SB_MUST_CHECK sb_err sb_aws_endpoint(sb_env_lookup env, const char *service_id,
                                     const char *dns_name, const char *region, sb_aws_url *out,
                                     char *err, size_t errlen);

/* The bytes between <tag ...> and </tag>, the element's first occurrence
 * in [xml, xml+len), as a window into xml (no copy). SB_E_NOT_FOUND when
 * there is none; SB_E_UPSTREAM when it is not closed or occurs twice. */
SB_MUST_CHECK sb_err sb_aws_xml_element(const char *xml, size_t len, const char *tag,
                                        const char **out_inner, size_t *out_len);

/* The text of element tag (which must hold text only, no elements, CDATA
 * or comments), with the five predefined XML entities decoded, appended
 * to out. SB_E_NOT_FOUND, SB_E_UPSTREAM (malformed, or any other '&'
 * reference), SB_E_TOO_LARGE past out's maximum. out may hold a secret. */
SB_MUST_CHECK sb_err sb_aws_xml_text(const char *xml, size_t len, const char *tag, sb_buf *out);

/* The AWS error code of an error answer: the JSON protocols' "__type" (or
 * "code"), without its namespace ("...#") and suffix (":..."), or the query
 * protocol's XML <Code>. Written to out only when it is [A-Za-z0-9._-]+ and
 * fits; "" otherwise. Safe to log. */
#define SB_AWS_ERROR_CODE_LEN 64
void sb_aws_error_code(const void *body, size_t len, char out[SB_AWS_ERROR_CODE_LEN]);

/* Appends s percent-encoded as RFC 3986 section 2.3 leaves only unreserved
 * characters, as the query protocol's form bodies need. */
SB_MUST_CHECK sb_err sb_aws_form_append(sb_buf *out, const char *s, size_t len);

#endif
