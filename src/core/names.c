/* Name validation (see names.h). */
#include "core/names.h"

#include "core/limits.h"

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool sb_name_is_label(const char *s, size_t len)
{
    if (len == 0 || len > SB_MAX_NAMESPACE)
        return false;
    if (!is_lower_alnum(s[0]) || !is_lower_alnum(s[len - 1]))
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!is_lower_alnum(s[i]) && s[i] != '-')
            return false;
    }
    return true;
}

bool sb_name_is_subdomain(const char *s, size_t len)
{
    size_t start = 0;

    if (len == 0 || len > SB_MAX_SECRET_NAME)
        return false;
    /* Each dot-separated part follows the label shape, without the 63-byte
     * label limit: the Kubernetes validation only bounds the whole name. */
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '.')
            continue;
        if (i == start || !is_lower_alnum(s[start]) || !is_lower_alnum(s[i - 1]))
            return false;
        for (size_t j = start; j < i; j++) {
            if (!is_lower_alnum(s[j]) && s[j] != '-')
                return false;
        }
        start = i + 1;
    }
    return true;
}

bool sb_name_is_secret_key(const char *s, size_t len)
{
    if (len == 0 || len > SB_MAX_KEY)
        return false;
    if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_';
        if (!ok)
            return false;
    }
    return true;
}

bool sb_name_is_trust_domain(const char *s, size_t len)
{
    if (len == 0 || len > SB_MAX_TRUST_DOMAIN)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'))
            return false;
    }
    return true;
}
