/* TLS for the API port: the server certificate and key, the client CA
 * bundle, and the rules every client certificate must pass during the
 * handshake (chain to the bundle, valid now, usable for client auth, not a
 * CA). libmicrohttpd only *requests* a client certificate when given a CA,
 * so each new connection gets this module's credentials and a mandatory,
 * verifying certificate request before its handshake starts.
 *
 * The files are watched: changed files are loaded and, when valid, used
 * for new handshakes without touching open connections; bad new material
 * keeps the old. Each load gets a fresh session-ticket key, so a session
 * made under an old CA bundle cannot be resumed under a new one. */
#ifndef SB_NET_TLS_H
#define SB_NET_TLS_H

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/error.h"

typedef struct sb_tls sb_tls;

/* A reference to the credentials one connection was set up with. */
typedef struct sb_tls_cred sb_tls_cred;

/* Loads the files named by cfg. SB_E_CONFIG with one line in err when they
 * are unreadable, mismatched or empty. */
SB_MUST_CHECK sb_err sb_tls_new(const sb_config *cfg, sb_tls **out, char *err, size_t errlen);
void sb_tls_free(sb_tls *t);

/* The priority string for libmicrohttpd (TLS 1.3, or 1.3 and 1.2). */
const char *sb_tls_priorities(const sb_tls *t);

/* The PEM server certificate and key as first loaded: libmicrohttpd needs
 * them to start in TLS mode (each session then uses the current ones). */
const char *sb_tls_initial_cert_pem(const sb_tls *t);
const char *sb_tls_initial_key_pem(const sb_tls *t);

/* Prepares a new server session before its handshake: current
 * credentials, a required and verified client certificate, session
 * tickets. Returns the credential reference the connection holds until
 * sb_tls_session_done. Any HTTP thread. */
SB_MUST_CHECK sb_err sb_tls_session_setup(sb_tls *t, gnutls_session_t session, sb_tls_cred **out);
void sb_tls_session_done(sb_tls_cred *cred); /* accepts NULL */

/* Looks at the files and reloads them when they changed. Returns true when
 * new credentials are now in use. Any thread; one reload at a time. */
bool sb_tls_reload_if_changed(sb_tls *t);

/* The DER leaf certificate the peer presented (and TLS verified), or
 * SB_E_UNAUTHORIZED when there is none. The bytes belong to the session. */
SB_MUST_CHECK sb_err sb_tls_peer_leaf(gnutls_session_t session, const unsigned char **out_der,
                                      size_t *out_len);

#endif
