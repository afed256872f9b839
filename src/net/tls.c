/* TLS credentials, client-certificate verification and reload (see
 * tls.h). */
#include "net/tls.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "auth/identity.h"
#include "core/alloc.h"
#include "core/secret.h"
#include "obs/log.h"
#include "obs/metrics.h"

#define PRIO_TLS13 "NORMAL:-VERS-ALL:+VERS-TLS1.3:%SERVER_PRECEDENCE"
/* TLS 1.2 only with forward secrecy and AEAD ciphers. */
#define PRIO_TLS12                                                                                 \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:"            \
    "+CHACHA20-POLY1305:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:%SERVER_PRECEDENCE"

struct sb_tls_cred {
    atomic_uint refs;
    gnutls_certificate_credentials_t cred;
    gnutls_datum_t ticket_key;
};

struct file_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    bool present;
};

struct sb_tls {
    pthread_mutex_t lock; /* guards current and the file ids */
    sb_tls_cred *current;
    char *ca_path, *cert_path, *key_path;
    struct file_id ids[3];    /* what is loaded */
    struct file_id failed[3]; /* the last set that failed to load */
    char *initial_cert, *initial_key;
    bool tls12;
};

static void cred_unref(sb_tls_cred *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    gnutls_certificate_free_credentials(c->cred);
    sb_wipe(c->ticket_key.data, c->ticket_key.size);
    gnutls_free(c->ticket_key.data);
    free(c);
}

/* Maps a verification status to the metric's reason; the first matching
 * bit wins, most specific first. */
static sb_metrics_tls_reason status_reason(unsigned status)
{
    if (status & GNUTLS_CERT_EXPIRED)
        return SB_METRICS_TLS_EXPIRED;
    if (status & GNUTLS_CERT_NOT_ACTIVATED)
        return SB_METRICS_TLS_NOT_YET_VALID;
    if (status & GNUTLS_CERT_PURPOSE_MISMATCH)
        return SB_METRICS_TLS_BAD_PURPOSE;
    if (status & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA | GNUTLS_CERT_INVALID))
        return SB_METRICS_TLS_UNTRUSTED;
    return SB_METRICS_TLS_OTHER;
}

static int refuse(gnutls_session_t session, sb_metrics_tls_reason reason,
                  gnutls_alert_description_t alert, const char *why)
{
    sb_metrics_tls_failure(reason);
    SB_DEBUG("tls", NULL, "client certificate refused: %s", why);
    /* libmicrohttpd closes without an alert; send one so the client can
     * tell why (RFC 8446 section 6.2). */
    gnutls_alert_send(session, GNUTLS_AL_FATAL, alert);
    return GNUTLS_E_CERTIFICATE_ERROR;
}

/* Runs inside every handshake once the client's certificate arrived. */
static int verify_client(gnutls_session_t session)
{
    gnutls_typed_vdata_st purpose = {.type = GNUTLS_DT_KEY_PURPOSE_OID,
                                     .data = (unsigned char *)GNUTLS_KP_TLS_WWW_CLIENT};
    unsigned status = 0;
    const gnutls_datum_t *chain;
    unsigned n = 0;

    chain = gnutls_certificate_get_peers(session, &n);
    if (!chain || n == 0)
        return refuse(session, SB_METRICS_TLS_NO_CERTIFICATE, GNUTLS_A_CERTIFICATE_REQUIRED,
                      "no certificate");
    if (n > SB_MAX_CERT_CHAIN)
        return refuse(session, SB_METRICS_TLS_OTHER, GNUTLS_A_BAD_CERTIFICATE, "chain too long");

    /* Chain to the bundle, validity now, and the clientAuth key purpose
     * (RFC 5280 section 4.2.1.12) in one verification. */
    if (gnutls_certificate_verify_peers(session, &purpose, 1, &status) < 0)
        return refuse(session, SB_METRICS_TLS_OTHER, GNUTLS_A_BAD_CERTIFICATE, "unverifiable");
    if (status != 0) {
        sb_metrics_tls_reason r = status_reason(status);
        gnutls_alert_description_t alert =
            r == SB_METRICS_TLS_EXPIRED || r == SB_METRICS_TLS_NOT_YET_VALID
                ? GNUTLS_A_CERTIFICATE_EXPIRED
            : r == SB_METRICS_TLS_UNTRUSTED ? GNUTLS_A_UNKNOWN_CA
                                            : GNUTLS_A_BAD_CERTIFICATE;
        return refuse(session, r, alert, "chain, validity or purpose");
    }

    /* That the leaf is no CA (X509-SVID section 5.2) was checked when its
     * Certificate message arrived (on_certificate_msg), before this runs;
     * the identity is parsed once more per connection, later. */
    return 0;
}

static size_t read24(const unsigned char *p)
{
    return ((size_t)p[0] << 16) | ((size_t)p[1] << 8) | p[2];
}

/* Sees the client's Certificate message before GnuTLS processes it. An
 * empty certificate list would make GnuTLS end the handshake silently
 * (libmicrohttpd sends no alert); answer it with the alert RFC 8446
 * section 4.4.2.4 names, certificate_required (handshake_failure before
 * TLS 1.3). */
static int on_certificate_msg(gnutls_session_t session, unsigned htype, unsigned when,
                              unsigned incoming, const gnutls_datum_t *msg)
{
    size_t pos = 0;

    if (!incoming || htype != GNUTLS_HANDSHAKE_CERTIFICATE_PKT || when != GNUTLS_HOOK_PRE)
        return 0;
    bool tls13 = gnutls_protocol_get_version(session) == GNUTLS_TLS1_3;
    if (tls13) {
        if (msg->size < 1)
            return 0;
        pos = 1 + (size_t)msg->data[0]; /* certificate_request_context */
    }
    if (msg->size < pos + 3)
        return 0; /* malformed: GnuTLS itself refuses it */
    size_t list_len = read24(msg->data + pos);
    if (list_len == 0) {
        sb_metrics_tls_failure(SB_METRICS_TLS_NO_CERTIFICATE);
        SB_DEBUG("tls", NULL, "client sent no certificate");
        gnutls_alert_send(session, GNUTLS_AL_FATAL,
                          tls13 ? GNUTLS_A_CERTIFICATE_REQUIRED : GNUTLS_A_HANDSHAKE_FAILURE);
        return GNUTLS_E_NO_CERTIFICATE_FOUND;
    }

    /* The leaf comes first. A CA or a certificate without clientAuth is
     * refused here with an alert; GnuTLS would otherwise stop at its own
     * key-usage check and say nothing to the client. */
    const char *why = NULL;
    pos += 3;
    if (msg->size < pos + 3 || msg->size - pos - 3 < read24(msg->data + pos))
        return 0;
    if (sb_identity_check_leaf(msg->data + pos + 3, read24(msg->data + pos), &why) == SB_OK)
        return 0;
    sb_metrics_tls_failure(strstr(why, "CA") ? SB_METRICS_TLS_CA_AS_LEAF
                                             : SB_METRICS_TLS_BAD_PURPOSE);
    SB_DEBUG("tls", NULL, "client certificate refused: %s", why);
    gnutls_alert_send(session, GNUTLS_AL_FATAL, GNUTLS_A_UNSUPPORTED_CERTIFICATE);
    return GNUTLS_E_CERTIFICATE_ERROR;
}

static bool file_id_of(const char *path, struct file_id *out)
{
    struct stat st;

    /* stat follows symlinks, so Kubernetes' atomic "..data" swap shows as a
     * new inode. */
    memset(out, 0, sizeof(*out));
    if (stat(path, &st) != 0)
        return false;
    *out = (struct file_id){.dev = st.st_dev,
                            .ino = st.st_ino,
                            .size = st.st_size,
                            .mtime = st.st_mtim,
                            .present = true};
    return true;
}

static bool same_ids(const struct file_id *a, const struct file_id *b)
{
    for (size_t i = 0; i < 3; i++) {
        if (a[i].present != b[i].present || a[i].dev != b[i].dev || a[i].ino != b[i].ino ||
            a[i].size != b[i].size || a[i].mtime.tv_sec != b[i].mtime.tv_sec ||
            a[i].mtime.tv_nsec != b[i].mtime.tv_nsec)
            return false;
    }
    return true;
}

static sb_err load(sb_tls *t, sb_tls_cred **out, char *err, size_t errlen)
{
    sb_tls_cred *c = sb_xcalloc(1, sizeof(*c));
    int rc;

    atomic_init(&c->refs, 1);
    if (gnutls_certificate_allocate_credentials(&c->cred) < 0)
        abort();
    /* The key must match the certificate: GnuTLS checks the pair here. */
    rc = gnutls_certificate_set_x509_key_file2(c->cred, t->cert_path, t->key_path,
                                               GNUTLS_X509_FMT_PEM, NULL, 0);
    if (rc < 0) {
        snprintf(err, errlen, "MTLS_SERVER_CERT_PATH/MTLS_SERVER_KEY_PATH: %s",
                 gnutls_strerror(rc));
        goto out_free;
    }
    rc = gnutls_certificate_set_x509_trust_file(c->cred, t->ca_path, GNUTLS_X509_FMT_PEM);
    if (rc <= 0) {
        snprintf(err, errlen, "MTLS_CA_CERT_PATH: %s",
                 rc == 0 ? "no certificate in the bundle" : gnutls_strerror(rc));
        goto out_free;
    }
    gnutls_certificate_set_verify_function(c->cred, verify_client);
    if (gnutls_session_ticket_key_generate(&c->ticket_key) < 0)
        abort();
    *out = c;
    return SB_OK;

out_free:
    cred_unref(c);
    return SB_E_CONFIG;
}

static char *read_pem(const char *path)
{
    gnutls_datum_t d = {NULL, 0};

    if (gnutls_load_file(path, &d) < 0)
        return NULL;
    char *s = sb_xstrndup((const char *)d.data, d.size);
    sb_wipe(d.data, d.size);
    gnutls_free(d.data);
    return s;
}

sb_err sb_tls_new(const sb_config *cfg, sb_tls **out, char *err, size_t errlen)
{
    sb_tls *t = sb_xcalloc(1, sizeof(*t));

    pthread_mutex_init(&t->lock, NULL);
    t->ca_path = sb_xstrdup(cfg->ca_path);
    t->cert_path = sb_xstrdup(cfg->cert_path);
    t->key_path = sb_xstrdup(cfg->key_path);
    t->tls12 = cfg->tls12_allowed;
    file_id_of(t->ca_path, &t->ids[0]);
    file_id_of(t->cert_path, &t->ids[1]);
    file_id_of(t->key_path, &t->ids[2]);

    if (load(t, &t->current, err, errlen) != SB_OK) {
        sb_tls_free(t);
        return SB_E_CONFIG;
    }
    t->initial_cert = read_pem(t->cert_path);
    t->initial_key = read_pem(t->key_path);
    if (!t->initial_cert || !t->initial_key) {
        snprintf(err, errlen, "MTLS_SERVER_KEY_PATH: cannot be read");
        sb_tls_free(t);
        return SB_E_CONFIG;
    }
    *out = t;
    return SB_OK;
}

void sb_tls_free(sb_tls *t)
{
    if (!t)
        return;
    cred_unref(t->current);
    free(t->ca_path);
    free(t->cert_path);
    free(t->key_path);
    free(t->initial_cert);
    if (t->initial_key) {
        sb_wipe(t->initial_key, strlen(t->initial_key));
        free(t->initial_key);
    }
    pthread_mutex_destroy(&t->lock);
    free(t);
}

const char *sb_tls_priorities(const sb_tls *t)
{
    return t->tls12 ? PRIO_TLS12 : PRIO_TLS13;
}

const char *sb_tls_initial_cert_pem(const sb_tls *t)
{
    return t->initial_cert;
}

const char *sb_tls_initial_key_pem(const sb_tls *t)
{
    return t->initial_key;
}

sb_err sb_tls_session_setup(sb_tls *t, gnutls_session_t session, sb_tls_cred **out)
{
    pthread_mutex_lock(&t->lock);
    sb_tls_cred *c = t->current;
    atomic_fetch_add(&c->refs, 1);
    pthread_mutex_unlock(&t->lock);

    if (gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, c->cred) < 0 ||
        gnutls_session_ticket_enable_server(session, &c->ticket_key) < 0) {
        cred_unref(c);
        return SB_E_CRYPTO;
    }
    gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE);
    gnutls_handshake_set_hook_function(session, GNUTLS_HANDSHAKE_CERTIFICATE_PKT, GNUTLS_HOOK_PRE,
                                       on_certificate_msg);
    *out = c;
    return SB_OK;
}

void sb_tls_session_done(sb_tls_cred *cred)
{
    cred_unref(cred);
}

bool sb_tls_reload_if_changed(sb_tls *t)
{
    struct file_id now[3];
    char err[256];
    sb_tls_cred *fresh = NULL;

    file_id_of(t->ca_path, &now[0]);
    file_id_of(t->cert_path, &now[1]);
    file_id_of(t->key_path, &now[2]);
    pthread_mutex_lock(&t->lock);
    bool unchanged = same_ids(now, t->ids) || same_ids(now, t->failed);
    pthread_mutex_unlock(&t->lock);
    if (unchanged)
        return false;

    if (load(t, &fresh, err, sizeof(err)) != SB_OK) {
        pthread_mutex_lock(&t->lock);
        for (size_t i = 0; i < 3; i++)
            t->failed[i] = now[i];
        pthread_mutex_unlock(&t->lock);
        sb_metrics_tls_reload(false);
        SB_ERROR("tls", NULL, "new TLS files rejected, keeping the current ones: %s", err);
        return false;
    }

    pthread_mutex_lock(&t->lock);
    sb_tls_cred *old = t->current;
    t->current = fresh;
    for (size_t i = 0; i < 3; i++) {
        t->ids[i] = now[i];
        t->failed[i] = (struct file_id){0};
    }
    pthread_mutex_unlock(&t->lock);
    cred_unref(old);
    sb_metrics_tls_reload(true);
    SB_INFO("tls", NULL, "TLS certificate, key and client CA bundle reloaded");
    return true;
}

sb_err sb_tls_peer_leaf(gnutls_session_t session, const unsigned char **out_der, size_t *out_len)
{
    unsigned n = 0;
    const gnutls_datum_t *chain = gnutls_certificate_get_peers(session, &n);

    if (!chain || n == 0)
        return SB_E_UNAUTHORIZED;
    *out_der = chain[0].data;
    *out_len = chain[0].size;
    return SB_OK;
}
