/* Validation of the names the API accepts, per the Kubernetes API
 * conventions (DNS-1123 subdomains and labels) and the Secret key rules.
 * All take an explicit length and never look past it, so they are safe on
 * bytes that may contain NUL. */
#ifndef SB_CORE_NAMES_H
#define SB_CORE_NAMES_H

#include <stdbool.h>
#include <stddef.h>

/* DNS-1123 subdomain: at most 253 of [a-z0-9.-], each dot-separated label
 * starting and ending alphanumeric. Secret and ServiceAccount names. */
bool sb_name_is_subdomain(const char *s, size_t len);

/* DNS-1123 label: at most 63 of [a-z0-9-], alphanumeric at both ends.
 * Namespaces. */
bool sb_name_is_label(const char *s, size_t len);

/* SPIFFE trust domain (SPIFFE ID spec section 2.1): 1 to 255 of
 * [a-z0-9._-]. */
bool sb_name_is_trust_domain(const char *s, size_t len);

/* Secret data key: at most 253 of [-._a-zA-Z0-9], and not "." or "..". */
bool sb_name_is_secret_key(const char *s, size_t len);

#endif
