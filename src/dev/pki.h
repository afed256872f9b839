/* The development-mode PKI (`secrets-broker --dev`): a private CA, a server
 * certificate for localhost and one client certificate that is an X.509
 * SVID for a chosen ServiceAccount, so the broker can run with mTLS on a
 * laptop and be called with curl. Never for production use. */
#ifndef SB_DEV_PKI_H
#define SB_DEV_PKI_H

#include <stddef.h>
#include <time.h>

#include "core/error.h"

/* The files sb_dev_pki_create leaves in its directory (PEM; keys PKCS#8). */
#define SB_DEV_PKI_CA_CERT     "ca.crt"
#define SB_DEV_PKI_CA_KEY      "ca.key"
#define SB_DEV_PKI_SERVER_CERT "server.crt"
#define SB_DEV_PKI_SERVER_KEY  "server.key"
#define SB_DEV_PKI_CLIENT_CERT "client.crt"
#define SB_DEV_PKI_CLIENT_KEY  "client.key"

/* Makes sure dir (created with mode 0700 if missing) holds:
 *   ca.crt, ca.key          CA, valid one year, keyCertSign/cRLSign
 *   server.crt, server.key  SAN DNS localhost, IP 127.0.0.1 and ::1,
 *                           EKU serverAuth, valid 30 days
 *   client.crt, client.key  the single URI SAN
 *                           spiffe://<trust_domain>/ns/<client_ns>/sa/<client_sa>,
 *                           EKU clientAuth, not a CA, valid 30 days
 * ECDSA P-256 keys, SHA-256 signatures, random 16-byte serials; key files
 * are 0600. When all six files exist, chain to the CA, match their keys,
 * name the same client identity and stay valid for more than a day after
 * now (wall-clock seconds), they are kept; otherwise all six are made
 * anew. Returns SB_E_CONFIG for an invalid trust domain, namespace or name,
 * SB_E_IO or SB_E_CRYPTO otherwise, with one line in err. Start-up only. */
SB_MUST_CHECK sb_err sb_dev_pki_create(const char *dir, const char *trust_domain,
                                       const char *client_ns, const char *client_sa, time_t now,
                                       char *err, size_t errlen);

#endif
