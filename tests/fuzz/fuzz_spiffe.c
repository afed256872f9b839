/* Fuzz target for the identity parsers of src/auth/identity: the SPIFFE ID
 * parser and the ServiceAccount user name parser (CN fallback, TokenReview).
 * Beyond not crashing, whatever they accept must be canonical: rebuilt from
 * the parsed names it equals the input byte for byte, so no two spellings
 * of an identity exist. */
#include "corpus_driver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/identity.h"

#define TRUST_DOMAIN "cluster.local"

static void check_spiffe(const char *s, size_t n)
{
    static const sb_identity_opts opts = {.trust_domain = TRUST_DOMAIN};
    char canon[SB_MAX_SPIFFE_ID + 1];
    const char *why = NULL;
    sb_identity id;

    if (sb_identity_parse_spiffe(s, n, &opts, &id, &why) != SB_OK) {
        if (!why || !*why)
            abort();
        return;
    }
    int len = snprintf(canon, sizeof(canon), "spiffe://%s/ns/%s/sa/%s", TRUST_DOMAIN, id.ns, id.sa);
    if (len < 0 || (size_t)len != n || memcmp(canon, s, n) != 0)
        abort();
}

static void check_username(const char *s, size_t n)
{
    char canon[SB_IDENTITY_USERNAME_SIZE];
    const char *why = NULL;
    sb_identity id;

    if (sb_identity_parse_username(s, n, &id, &why) != SB_OK) {
        if (!why || !*why)
            abort();
        return;
    }
    sb_identity_username(&id, canon, sizeof(canon));
    if (strlen(canon) != n || memcmp(canon, s, n) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_spiffe((const char *)data, size);
    check_username((const char *)data, size);
    return 0;
}
