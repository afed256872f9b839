/* Example secrets for the development mode (see examples.h). */
#include "dev/examples.h"

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "core/names.h"
#include "core/secret.h"
#include "dev/files.h"

#define RANDOM_BYTES 16

typedef struct example {
    const char *name;
    const char *user; /* NULL: a token-only secret */
} example;

/* 32 random hex characters and a NUL. */
static sb_err random_hex(char out[2 * RANDOM_BYTES + 1])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char raw[RANDOM_BYTES];

    if (gnutls_rnd(GNUTLS_RND_RANDOM, raw, sizeof(raw)) < 0)
        return SB_E_CRYPTO;
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = digits[raw[i] >> 4];
        out[2 * i + 1] = digits[raw[i] & 0x0f];
    }
    out[2 * RANDOM_BYTES] = '\0';
    sb_wipe(raw, sizeof(raw));
    return SB_OK;
}

/* The JSON is written by hand: the keys are fixed and the values hex, so
 * nothing needs escaping, and the one buffer holding the value is wiped. */
static sb_err write_example(const char *dir, const char *ns, const example *ex, char *err,
                            size_t errlen)
{
    char path[PATH_MAX];
    char value[2 * RANDOM_BYTES + 1];
    char json[256];
    int n;

    if (snprintf(path, sizeof(path), "%s/%s/%s.json", dir, ns, ex->name) >= (int)sizeof(path)) {
        snprintf(err, errlen, "path too long under %s", dir);
        return SB_E_IO;
    }
    if (random_hex(value) != SB_OK) {
        snprintf(err, errlen, "no random bytes for the example secrets");
        return SB_E_CRYPTO;
    }
    if (ex->user)
        n = snprintf(json, sizeof(json), "{\"user\": \"%s\", \"password\": \"%s\"}\n", ex->user,
                     value);
    else
        n = snprintf(json, sizeof(json), "{\"token\": \"%s\"}\n", value);

    sb_err rc = sb_dev_write_file(path, json, (size_t)n, 0600, false, NULL, err, errlen);
    sb_wipe(value, sizeof(value));
    sb_wipe(json, sizeof(json));
    return rc;
}

static sb_err write_namespace(const char *dir, const char *ns, const example *list, size_t count,
                              char *err, size_t errlen)
{
    char path[PATH_MAX];

    if (snprintf(path, sizeof(path), "%s/%s", dir, ns) >= (int)sizeof(path)) {
        snprintf(err, errlen, "path too long under %s", dir);
        return SB_E_IO;
    }
    sb_err rc = sb_dev_mkdir_private(path, err, errlen);
    for (size_t i = 0; !rc && i < count; i++)
        rc = write_example(dir, ns, &list[i], err, errlen);
    return rc;
}

sb_err sb_dev_examples_create(const char *dir, const char *ns, const char *other_ns, char *err,
                              size_t errlen)
{
    static const example own[] = {{"db", "app"}, {"api", NULL}};
    static const example other[] = {{"db", "other-app"}};

    if (!sb_name_is_label(ns, strlen(ns)) || !sb_name_is_label(other_ns, strlen(other_ns)) ||
        strcmp(ns, other_ns) == 0) {
        snprintf(err, errlen, "example namespaces must be two different DNS labels");
        return SB_E_CONFIG;
    }

    sb_err rc = sb_dev_mkdir_private(dir, err, errlen);
    if (!rc)
        rc = write_namespace(dir, ns, own, sizeof(own) / sizeof(own[0]), err, errlen);
    if (!rc)
        rc = write_namespace(dir, other_ns, other, sizeof(other) / sizeof(other[0]), err, errlen);
    return rc;
}
