/* Fuzz target for the answers of src/clients/aws_creds and aws_proto: the
 * STS AssumeRoleWithWebIdentity XML (through the bounded extractor), the
 * container credentials JSON, and the error code of either kind. Beyond
 * not crashing: accepted credentials are well-formed (an access key id of
 * [A-Za-z0-9], visible ASCII secrets within their limits, an expiry), an
 * error code is [A-Za-z0-9._-] and short, and every secure-memory byte is
 * handed back. */
#include "corpus_driver.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "clients/aws_creds.h"
#include "clients/aws_proto.h"
#include "core/limits.h"
#include "core/secmem.h"

static bool visible(const sb_secret *s, size_t max)
{
    const unsigned char *p = sb_secret_data(s);
    size_t n = sb_secret_len(s);

    if (n == 0 || n > max || p[n] != '\0')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x21 || p[i] > 0x7e)
            return false;
    }
    return true;
}

static void check_key(sb_aws_key *k, bool token_required)
{
    const char *ak = (const char *)sb_secret_data(k->access_key_id);

    if (!visible(k->access_key_id, SB_MAX_AWS_ACCESS_KEY_ID) ||
        strspn(ak, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") !=
            sb_secret_len(k->access_key_id))
        abort();
    if (!visible(k->secret_key, SB_MAX_AWS_SECRET_KEY))
        abort();
    if ((token_required && !k->session_token) ||
        (k->session_token && !visible(k->session_token, SB_MAX_AWS_SESSION_TOKEN)))
        abort();
    if (k->expires_ms <= 0)
        abort();
    sb_aws_key_clear(k);
}

static void check_code(const uint8_t *data, size_t size)
{
    char code[SB_AWS_ERROR_CODE_LEN];

    sb_aws_error_code(data, size, code);
    size_t n = strlen(code);
    if (n >= SB_AWS_ERROR_CODE_LEN ||
        strspn(code, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != n)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t before = sb_secmem_in_use();
    sb_aws_key k = {0};

    sb_err rc = sb_aws_sts_parse(data, size, &k);
    if (rc == SB_OK)
        check_key(&k, true);
    else if (rc != SB_E_UPSTREAM || k.access_key_id)
        abort();

    rc = sb_aws_container_parse(data, size, 1, &k);
    if (rc == SB_OK)
        check_key(&k, false);
    else if (rc != SB_E_UPSTREAM || k.access_key_id)
        abort();

    check_code(data, size);
    if (sb_secmem_in_use() != before)
        abort();
    return 0;
}
