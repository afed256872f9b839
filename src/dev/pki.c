/* Development PKI (see pki.h), made and checked with GnuTLS alone. */
#include "dev/pki.h"

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "core/limits.h"
#include "core/names.h"
#include "core/secret.h"
#include "dev/files.h"

#define DAY_S      (24 * 60 * 60)
#define CA_DAYS    365
#define LEAF_DAYS  30
#define BACKDATE_S (5 * 60) /* a client clock a little behind still accepts the certs */

enum { CA, SERVER, CLIENT, N_ROLES };

static const char *const CERT_FILE[N_ROLES] = {SB_DEV_PKI_CA_CERT, SB_DEV_PKI_SERVER_CERT,
                                               SB_DEV_PKI_CLIENT_CERT};
static const char *const KEY_FILE[N_ROLES] = {SB_DEV_PKI_CA_KEY, SB_DEV_PKI_SERVER_KEY,
                                              SB_DEV_PKI_CLIENT_KEY};

/* Certificates and their keys by role; any member may be NULL. */
typedef struct pki {
    gnutls_x509_crt_t crt[N_ROLES];
    gnutls_x509_privkey_t key[N_ROLES];
} pki;

/* GnuTLS zeroes key material when a private key is deinitialised. */
static void pki_free(pki *p)
{
    for (int i = 0; i < N_ROLES; i++) {
        if (p->crt[i])
            gnutls_x509_crt_deinit(p->crt[i]);
        if (p->key[i])
            gnutls_x509_privkey_deinit(p->key[i]);
    }
    memset(p, 0, sizeof(*p));
}

static sb_err fail(char *err, size_t errlen, sb_err code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static sb_err fail(char *err, size_t errlen, sb_err code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

static bool join(char out[PATH_MAX], const char *dir, const char *name)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);

    return n > 0 && n < PATH_MAX;
}

/* ---- Making certificates --------------------------------------------- */

/* Fields every certificate here shares. RFC 5280 section 4.1.2.2: serials
 * are positive and unpredictable; 16 random bytes, top bit clear and the
 * next set so DER keeps all 16. */
static int set_basics(gnutls_x509_crt_t crt, gnutls_x509_privkey_t key, const char *cn, time_t now,
                      int days)
{
    unsigned char serial[16];
    unsigned char id[64];
    size_t id_len = sizeof(id);

    int rc = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial));
    serial[0] = (unsigned char)((serial[0] & 0x7f) | 0x40);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_version(crt, 3);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_serial(crt, serial, sizeof(serial));
    if (rc >= 0)
        rc = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
                                           (unsigned int)strlen(cn));
    if (rc >= 0)
        rc = gnutls_x509_crt_set_activation_time(crt, now - BACKDATE_S);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_expiration_time(crt, now + (time_t)days * DAY_S);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_key(crt, key);
    if (rc >= 0)
        rc = gnutls_x509_crt_get_key_id(crt, 0, id, &id_len);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_subject_key_id(crt, id, id_len);
    return rc;
}

/* A fresh P-256 key and an unsigned certificate for it. */
static int new_pair(pki *p, int role, const char *cn, time_t now, int days)
{
    int rc = gnutls_x509_privkey_init(&p->key[role]);

    if (rc >= 0)
        rc = gnutls_x509_privkey_generate(p->key[role], GNUTLS_PK_ECDSA,
                                          GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0);
    if (rc >= 0)
        rc = gnutls_x509_crt_init(&p->crt[role]);
    if (rc >= 0)
        rc = set_basics(p->crt[role], p->key[role], cn, now, days);
    return rc;
}

static int make_ca(pki *p, const char *td, time_t now)
{
    char uri[SB_MAX_SPIFFE_ID + 1];
    int n = snprintf(uri, sizeof(uri), "spiffe://%s", td);

    int rc = new_pair(p, CA, "secrets-broker development CA", now, CA_DAYS);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_basic_constraints(p->crt[CA], 1, 0);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_key_usage(p->crt[CA],
                                           GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN);
    /* X509-SVID section 3.2: a signing certificate SHOULD be an SVID of its
     * trust domain, with no path. */
    if (rc >= 0)
        rc = gnutls_x509_crt_set_subject_alt_name(p->crt[CA], GNUTLS_SAN_URI, uri, (unsigned int)n,
                                                  GNUTLS_FSAN_SET);
    if (rc >= 0)
        rc = gnutls_x509_crt_sign2(p->crt[CA], p->crt[CA], p->key[CA], GNUTLS_DIG_SHA256, 0);
    return rc;
}

/* X509-SVID sections 4.1 and 4.3: leaves are not CAs and sign only. */
static int sign_leaf(pki *p, int role)
{
    unsigned char id[64];
    size_t id_len = sizeof(id);
    gnutls_x509_crt_t crt = p->crt[role];

    int rc = gnutls_x509_crt_set_basic_constraints(crt, 0, -1);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE);
    if (rc >= 0)
        rc = gnutls_x509_crt_get_key_id(p->crt[CA], 0, id, &id_len);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_authority_key_id(crt, id, id_len);
    if (rc >= 0)
        rc = gnutls_x509_crt_sign2(crt, p->crt[CA], p->key[CA], GNUTLS_DIG_SHA256, 0);
    return rc;
}

static int make_server(pki *p, time_t now)
{
    static const unsigned char v4[4] = {127, 0, 0, 1};
    static const unsigned char v6[16] = {[15] = 1};

    int rc = new_pair(p, SERVER, "localhost", now, LEAF_DAYS);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_subject_alt_name(p->crt[SERVER], GNUTLS_SAN_DNSNAME, "localhost",
                                                  9, GNUTLS_FSAN_APPEND);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_subject_alt_name(p->crt[SERVER], GNUTLS_SAN_IPADDRESS, v4,
                                                  sizeof(v4), GNUTLS_FSAN_APPEND);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_subject_alt_name(p->crt[SERVER], GNUTLS_SAN_IPADDRESS, v6,
                                                  sizeof(v6), GNUTLS_FSAN_APPEND);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_key_purpose_oid(p->crt[SERVER], GNUTLS_KP_TLS_WWW_SERVER, 0);
    return rc >= 0 ? sign_leaf(p, SERVER) : rc;
}

/* The client is an X.509 SVID: exactly one URI SAN (X509-SVID section 2). */
static int make_client(pki *p, const char *uri, time_t now)
{
    int rc = new_pair(p, CLIENT, "secrets-broker development client", now, LEAF_DAYS);

    if (rc >= 0)
        rc = gnutls_x509_crt_set_subject_alt_name(p->crt[CLIENT], GNUTLS_SAN_URI, uri,
                                                  (unsigned int)strlen(uri), GNUTLS_FSAN_SET);
    if (rc >= 0)
        rc = gnutls_x509_crt_set_key_purpose_oid(p->crt[CLIENT], GNUTLS_KP_TLS_WWW_CLIENT, 0);
    return rc >= 0 ? sign_leaf(p, CLIENT) : rc;
}

/* ---- Files ----------------------------------------------------------- */

static sb_err write_crt(gnutls_x509_crt_t crt, const char *dir, const char *name, char *err,
                        size_t errlen)
{
    char path[PATH_MAX];
    gnutls_datum_t pem = {NULL, 0};

    if (!join(path, dir, name))
        return fail(err, errlen, SB_E_IO, "path too long: %s/%s", dir, name);
    int rc = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &pem);
    if (rc < 0)
        return fail(err, errlen, SB_E_CRYPTO, "cannot encode %s: %s", name, gnutls_strerror(rc));

    sb_err res = sb_dev_write_file(path, pem.data, pem.size, 0644, true, NULL, err, errlen);
    gnutls_free(pem.data);
    return res;
}

static sb_err write_key(gnutls_x509_privkey_t key, const char *dir, const char *name, char *err,
                        size_t errlen)
{
    char path[PATH_MAX];
    gnutls_datum_t pem = {NULL, 0};

    if (!join(path, dir, name))
        return fail(err, errlen, SB_E_IO, "path too long: %s/%s", dir, name);
    int rc =
        gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN, &pem);
    if (rc < 0)
        return fail(err, errlen, SB_E_CRYPTO, "cannot encode %s: %s", name, gnutls_strerror(rc));

    sb_err res = sb_dev_write_file(path, pem.data, pem.size, 0600, true, NULL, err, errlen);
    sb_wipe(pem.data, pem.size);
    gnutls_free(pem.data);
    return res;
}

static sb_err write_pki(const pki *p, const char *dir, char *err, size_t errlen)
{
    for (int i = 0; i < N_ROLES; i++) {
        sb_err rc = write_key(p->key[i], dir, KEY_FILE[i], err, errlen);
        if (!rc)
            rc = write_crt(p->crt[i], dir, CERT_FILE[i], err, errlen);
        if (rc)
            return rc;
    }
    return SB_OK;
}

static bool load_crt(const char *dir, const char *name, gnutls_x509_crt_t *out)
{
    char path[PATH_MAX];
    gnutls_datum_t pem = {NULL, 0};

    if (!join(path, dir, name) || gnutls_load_file(path, &pem) < 0)
        return false;
    bool ok = gnutls_x509_crt_init(out) >= 0 &&
              gnutls_x509_crt_import(*out, &pem, GNUTLS_X509_FMT_PEM) >= 0;
    gnutls_free(pem.data);
    return ok;
}

static bool load_key(const char *dir, const char *name, gnutls_x509_privkey_t *out)
{
    char path[PATH_MAX];
    gnutls_datum_t pem = {NULL, 0};

    if (!join(path, dir, name) || gnutls_load_file(path, &pem) < 0)
        return false;
    bool ok = gnutls_x509_privkey_init(out) >= 0 &&
              gnutls_x509_privkey_import2(*out, &pem, GNUTLS_X509_FMT_PEM, NULL, 0) >= 0;
    sb_wipe(pem.data, pem.size);
    gnutls_free(pem.data);
    return ok;
}

/* ---- Reuse ----------------------------------------------------------- */

static bool still_valid(gnutls_x509_crt_t crt, time_t now)
{
    time_t from = gnutls_x509_crt_get_activation_time(crt);
    time_t until = gnutls_x509_crt_get_expiration_time(crt);

    return from != (time_t)-1 && until != (time_t)-1 && from <= now && until - now > DAY_S;
}

static bool key_matches(gnutls_x509_crt_t crt, gnutls_x509_privkey_t key)
{
    unsigned char a[64], b[64];
    size_t alen = sizeof(a), blen = sizeof(b);

    return gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA256, a, &alen) >= 0 &&
           gnutls_x509_privkey_get_key_id(key, GNUTLS_KEYID_USE_SHA256, b, &blen) >= 0 &&
           alen == blen && memcmp(a, b, alen) == 0;
}

/* Time is judged by still_valid against the caller's now, not here. */
static bool issued_by(gnutls_x509_crt_t crt, gnutls_x509_crt_t ca)
{
    unsigned int flags =
        GNUTLS_VERIFY_DISABLE_TIME_CHECKS | GNUTLS_VERIFY_DISABLE_TRUSTED_TIME_CHECKS;
    unsigned int status = 0;

    return gnutls_x509_crt_verify(crt, &ca, 1, flags, &status) >= 0 && status == 0;
}

/* The client certificate names exactly the wanted SPIFFE ID, nothing more. */
static bool names_client(gnutls_x509_crt_t crt, const char *uri)
{
    char san[SB_MAX_SPIFFE_ID + 1];
    size_t size = sizeof(san);
    unsigned int type = 0, critical = 0;

    int rc = gnutls_x509_crt_get_subject_alt_name2(crt, 0, san, &size, &type, &critical);
    if (rc != GNUTLS_SAN_URI || size != strlen(uri) || memcmp(san, uri, size) != 0)
        return false;
    size = sizeof(san);
    rc = gnutls_x509_crt_get_subject_alt_name2(crt, 1, san, &size, &type, &critical);
    return rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE;
}

static bool pki_reusable(const char *dir, const char *uri, time_t now)
{
    pki p = {0};
    bool ok = true;

    for (int i = 0; ok && i < N_ROLES; i++) {
        ok = load_crt(dir, CERT_FILE[i], &p.crt[i]) && load_key(dir, KEY_FILE[i], &p.key[i]) &&
             still_valid(p.crt[i], now) && key_matches(p.crt[i], p.key[i]);
    }
    ok = ok && issued_by(p.crt[SERVER], p.crt[CA]) && issued_by(p.crt[CLIENT], p.crt[CA]) &&
         names_client(p.crt[CLIENT], uri);
    pki_free(&p);
    return ok;
}

sb_err sb_dev_pki_create(const char *dir, const char *trust_domain, const char *client_ns,
                         const char *client_sa, time_t now, char *err, size_t errlen)
{
    char uri[SB_MAX_SPIFFE_ID + 1];
    pki p = {0};

    if (!sb_name_is_trust_domain(trust_domain, strlen(trust_domain)) ||
        !sb_name_is_label(client_ns, strlen(client_ns)) ||
        !sb_name_is_subdomain(client_sa, strlen(client_sa)))
        return fail(err, errlen, SB_E_CONFIG,
                    "development identity needs a trust domain of [a-z0-9.-_], a namespace "
                    "(DNS label) and a ServiceAccount name (DNS subdomain)");
    snprintf(uri, sizeof(uri), "spiffe://%s/ns/%s/sa/%s", trust_domain, client_ns, client_sa);

    sb_err rc = sb_dev_mkdir_private(dir, err, errlen);
    if (rc || pki_reusable(dir, uri, now))
        return rc;

    int grc = make_ca(&p, trust_domain, now);
    if (grc >= 0)
        grc = make_server(&p, now);
    if (grc >= 0)
        grc = make_client(&p, uri, now);
    if (grc < 0)
        rc = fail(err, errlen, SB_E_CRYPTO, "cannot make the development PKI: %s",
                  gnutls_strerror(grc));
    else
        rc = write_pki(&p, dir, err, errlen);
    pki_free(&p);
    return rc;
}
