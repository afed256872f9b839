/* Tests of src/dev/pki: the development CA, server and client certificates
 * chain and carry what DESIGN.md section 3 requires, the client passes
 * sb_identity_from_der, and a second run reuses what the first one made. */
#include "dev/pki.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ftw.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/identity.h"

#define TD        "cluster.local"
#define CLIENT_ID "spiffe://" TD "/ns/dev/sa/client"
#define DAY       (24 * 60 * 60)

static char root[64];
static char dir[128];
static char err[256];

static void path_of(char *out, size_t outlen, const char *name)
{
    snprintf(out, outlen, "%s/%s", dir, name);
}

static gnutls_x509_crt_t load_crt(const char *name)
{
    char path[256];
    gnutls_datum_t pem;
    gnutls_x509_crt_t crt;

    path_of(path, sizeof(path), name);
    assert_int_equal(gnutls_load_file(path, &pem), 0);
    assert_int_equal(gnutls_x509_crt_init(&crt), 0);
    assert_int_equal(gnutls_x509_crt_import(crt, &pem, GNUTLS_X509_FMT_PEM), 0);
    gnutls_free(pem.data);
    return crt;
}

/* The whole file, for comparing runs. The caller frees with gnutls_free. */
static gnutls_datum_t slurp(const char *name)
{
    char path[256];
    gnutls_datum_t d;

    path_of(path, sizeof(path), name);
    assert_int_equal(gnutls_load_file(path, &d), 0);
    return d;
}

static bool same_file(const gnutls_datum_t *before, const char *name)
{
    gnutls_datum_t now = slurp(name);
    bool same = now.size == before->size && memcmp(now.data, before->data, now.size) == 0;

    gnutls_free(now.data);
    return same;
}

static unsigned int mode_of(const char *name)
{
    char path[256];
    struct stat st;

    path_of(path, sizeof(path), name);
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 0777;
}

static sb_err create(const char *sa, time_t now)
{
    return sb_dev_pki_create(dir, TD, "dev", sa, now, err, sizeof(err));
}

static void test_files_and_modes(void **state)
{
    assert_int_equal(create("client", time(NULL)), SB_OK);

    assert_int_equal(mode_of("."), 0700);
    assert_int_equal(mode_of(SB_DEV_PKI_CA_KEY), 0600);
    assert_int_equal(mode_of(SB_DEV_PKI_SERVER_KEY), 0600);
    assert_int_equal(mode_of(SB_DEV_PKI_CLIENT_KEY), 0600);
    assert_int_equal(mode_of(SB_DEV_PKI_CA_CERT) & 0600, 0600);
    assert_int_equal(mode_of(SB_DEV_PKI_CLIENT_CERT) & 0600, 0600);

    gnutls_datum_t key = slurp(SB_DEV_PKI_CLIENT_KEY);
    assert_non_null(strstr((const char *)key.data, "-----BEGIN PRIVATE KEY-----"));
    gnutls_free(key.data);
}

static void test_client_chains_and_is_an_svid(void **state)
{
    gnutls_x509_crt_t ca, client;
    unsigned int status = 99;
    char san[256];
    size_t size = sizeof(san);
    unsigned int type = 0;

    assert_int_equal(create("client", time(NULL)), SB_OK);
    ca = load_crt(SB_DEV_PKI_CA_CERT);
    client = load_crt(SB_DEV_PKI_CLIENT_CERT);

    assert_int_equal(gnutls_x509_crt_verify(client, &ca, 1, 0, &status), 0);
    assert_int_equal(status, 0);
    assert_int_equal(gnutls_x509_crt_get_subject_alt_name2(client, 0, san, &size, &type, NULL),
                     GNUTLS_SAN_URI);
    assert_int_equal(size, strlen(CLIENT_ID));
    assert_memory_equal(san, CLIENT_ID, size);
    size = sizeof(san);
    assert_int_equal(gnutls_x509_crt_get_subject_alt_name2(client, 1, san, &size, &type, NULL),
                     GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE);
    assert_int_equal(gnutls_x509_crt_get_pk_algorithm(client, NULL), GNUTLS_PK_ECDSA);
    assert_int_equal(gnutls_x509_crt_get_signature_algorithm(client), GNUTLS_SIGN_ECDSA_SHA256);

    gnutls_x509_crt_deinit(client);
    gnutls_x509_crt_deinit(ca);
}

static void test_client_passes_identity(void **state)
{
    const sb_identity_opts opts = {.trust_domain = TD};
    gnutls_x509_crt_t client, server, ca;
    gnutls_datum_t der;
    sb_identity id;
    unsigned char serial[32];
    size_t serial_len = sizeof(serial);

    assert_int_equal(create("client", time(NULL)), SB_OK);
    client = load_crt(SB_DEV_PKI_CLIENT_CERT);
    assert_int_equal(gnutls_x509_crt_export2(client, GNUTLS_X509_FMT_DER, &der), 0);
    assert_int_equal(sb_identity_from_der(der.data, der.size, &opts, &id, NULL), SB_OK);
    assert_string_equal(id.ns, "dev");
    assert_string_equal(id.sa, "client");
    assert_int_equal(gnutls_x509_crt_get_serial(client, serial, &serial_len), 0);
    assert_int_equal(serial_len, 16);
    assert_int_equal(strlen(id.serial), 32);
    gnutls_free(der.data);
    gnutls_x509_crt_deinit(client);

    /* The server and CA certificates are no client identities. */
    server = load_crt(SB_DEV_PKI_SERVER_CERT);
    assert_int_equal(gnutls_x509_crt_export2(server, GNUTLS_X509_FMT_DER, &der), 0);
    assert_int_equal(sb_identity_check_leaf(der.data, der.size, NULL), SB_E_UNAUTHORIZED);
    gnutls_free(der.data);
    gnutls_x509_crt_deinit(server);
    ca = load_crt(SB_DEV_PKI_CA_CERT);
    assert_int_equal(gnutls_x509_crt_export2(ca, GNUTLS_X509_FMT_DER, &der), 0);
    assert_int_equal(sb_identity_check_leaf(der.data, der.size, NULL), SB_E_UNAUTHORIZED);
    gnutls_free(der.data);
    gnutls_x509_crt_deinit(ca);
}

static void test_server_names_and_lifetimes(void **state)
{
    gnutls_x509_crt_t ca, server;
    unsigned int status = 99;
    unsigned char v4[4], v6[16];
    time_t now = time(NULL);

    assert_int_equal(create("client", now), SB_OK);
    ca = load_crt(SB_DEV_PKI_CA_CERT);
    server = load_crt(SB_DEV_PKI_SERVER_CERT);

    assert_int_equal(gnutls_x509_crt_verify(server, &ca, 1, 0, &status), 0);
    assert_int_equal(status, 0);
    assert_true(gnutls_x509_crt_check_hostname(server, "localhost"));
    assert_int_equal(inet_pton(AF_INET, "127.0.0.1", v4), 1);
    assert_int_equal(inet_pton(AF_INET6, "::1", v6), 1);
    assert_true(gnutls_x509_crt_check_ip(server, v4, sizeof(v4), 0));
    assert_true(gnutls_x509_crt_check_ip(server, v6, sizeof(v6), 0));
    assert_true(gnutls_x509_crt_check_key_purpose(server, GNUTLS_KP_TLS_WWW_SERVER, 0));
    assert_false(gnutls_x509_crt_check_key_purpose(server, GNUTLS_KP_TLS_WWW_CLIENT, 0));

    /* CA one year, leaves thirty days (give or take the backdating). */
    time_t ca_days = (gnutls_x509_crt_get_expiration_time(ca) - now) / DAY;
    time_t leaf_days = (gnutls_x509_crt_get_expiration_time(server) - now) / DAY;
    assert_int_equal(ca_days, 365);
    assert_int_equal(leaf_days, 30);
    assert_true(gnutls_x509_crt_get_activation_time(server) <= now);

    gnutls_x509_crt_deinit(server);
    gnutls_x509_crt_deinit(ca);
}

static void test_second_run_reuses(void **state)
{
    time_t now = time(NULL);

    assert_int_equal(create("client", now), SB_OK);
    gnutls_datum_t ca = slurp(SB_DEV_PKI_CA_CERT);
    gnutls_datum_t key = slurp(SB_DEV_PKI_CLIENT_KEY);

    assert_int_equal(create("client", now + 3600), SB_OK);
    assert_true(same_file(&ca, SB_DEV_PKI_CA_CERT));
    assert_true(same_file(&key, SB_DEV_PKI_CLIENT_KEY));
    /* 28 days on, the leaves still have more than a day left. */
    assert_int_equal(create("client", now + 28 * DAY), SB_OK);
    assert_true(same_file(&ca, SB_DEV_PKI_CA_CERT));

    /* With less than a day left, everything is made anew. */
    assert_int_equal(create("client", now + 29 * DAY + DAY / 2), SB_OK);
    assert_false(same_file(&ca, SB_DEV_PKI_CA_CERT));
    assert_false(same_file(&key, SB_DEV_PKI_CLIENT_KEY));
    gnutls_free(ca.data);
    gnutls_free(key.data);
}

static void test_other_identity_or_damage_remakes(void **state)
{
    time_t now = time(NULL);
    char path[256];

    assert_int_equal(create("client", now), SB_OK);
    gnutls_datum_t ca = slurp(SB_DEV_PKI_CA_CERT);

    /* Another ServiceAccount: a new client certificate naming it. */
    assert_int_equal(create("other", now), SB_OK);
    assert_false(same_file(&ca, SB_DEV_PKI_CA_CERT));
    gnutls_free(ca.data);
    gnutls_datum_t client = slurp(SB_DEV_PKI_CLIENT_CERT);
    assert_true(same_file(&client, SB_DEV_PKI_CLIENT_CERT));

    /* A missing key: remade. */
    path_of(path, sizeof(path), SB_DEV_PKI_SERVER_KEY);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(create("other", now), SB_OK);
    assert_int_equal(mode_of(SB_DEV_PKI_SERVER_KEY), 0600);
    assert_false(same_file(&client, SB_DEV_PKI_CLIENT_CERT));
    gnutls_free(client.data);

    /* A key that belongs to another certificate: remade. */
    client = slurp(SB_DEV_PKI_CLIENT_CERT);
    gnutls_datum_t key = slurp(SB_DEV_PKI_CLIENT_KEY);
    path_of(path, sizeof(path), SB_DEV_PKI_SERVER_KEY);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(key.data, 1, key.size, f), key.size);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(create("other", now), SB_OK);
    assert_false(same_file(&client, SB_DEV_PKI_CLIENT_CERT));
    assert_false(same_file(&key, SB_DEV_PKI_SERVER_KEY));
    gnutls_free(key.data);
    gnutls_free(client.data);
}

static void test_rejects_bad_input(void **state)
{
    time_t now = time(NULL);

    assert_int_equal(sb_dev_pki_create(dir, "Cluster.local", "dev", "c", now, err, sizeof(err)),
                     SB_E_CONFIG);
    assert_int_equal(sb_dev_pki_create(dir, "", "dev", "c", now, err, sizeof(err)), SB_E_CONFIG);
    assert_int_equal(sb_dev_pki_create(dir, TD, "Dev", "c", now, err, sizeof(err)), SB_E_CONFIG);
    assert_int_equal(sb_dev_pki_create(dir, TD, "dev", "", now, err, sizeof(err)), SB_E_CONFIG);
    assert_int_equal(sb_dev_pki_create(dir, TD, "dev", "a/b", now, err, sizeof(err)), SB_E_CONFIG);
    assert_true(strlen(err) > 0);
}

static void test_unwritable_dir(void **state)
{
    char file[128], below[160];
    FILE *f;

    snprintf(file, sizeof(file), "%s/plain-file", root);
    f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(below, sizeof(below), "%s/pki", file);

    err[0] = '\0';
    assert_int_equal(sb_dev_pki_create(below, TD, "dev", "c", time(NULL), err, sizeof(err)),
                     SB_E_IO);
    assert_non_null(strstr(err, "plain-file"));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    snprintf(root, sizeof(root), "/tmp/test_pki.XXXXXX");
    if (!mkdtemp(root))
        return -1;
    /* A nested directory that does not exist yet. */
    snprintf(dir, sizeof(dir), "%s/state/pki", root);
    return 0;
}

static int teardown(void **state)
{
    return nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_files_and_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_chains_and_is_an_svid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_passes_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_names_and_lifetimes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_run_reuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_identity_or_damage_remakes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritable_dir, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
