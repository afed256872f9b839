/* Example secrets for the development mode, in the file backend's format,
 * so `secrets-broker --dev` has something to serve and to refuse.
 *
 * The file backend format: one JSON file per secret at
 * <dir>/<namespace>/<name>.json, holding one flat JSON object whose members
 * are the secret's keys and whose values are strings (UTF-8):
 *
 *     {"user": "app", "password": "5f0c..."}
 *
 * <namespace> is a DNS label, <name> a DNS subdomain, keys are
 * [-._a-zA-Z0-9]+. Directories are 0700, files 0600. */
#ifndef SB_DEV_EXAMPLES_H
#define SB_DEV_EXAMPLES_H

#include <stddef.h>

#include "core/error.h"

/* Writes, under dir (created 0700 if missing):
 *   <ns>/db.json        {"user": "app", "password": <random>}
 *   <ns>/api.json       {"token": <random>}
 *   <other_ns>/db.json  {"user": "other-app", "password": <random>}
 * The last one is there to be refused: in development mode a caller reads
 * its own namespace only. Random values are 32 hex characters, fresh each
 * time a file is made; existing files are never overwritten (a value the
 * developer changed stays). ns and other_ns must be different DNS labels
 * (else SB_E_CONFIG); SB_E_IO with one line in err when a file cannot be
 * written. Start-up only. */
SB_MUST_CHECK sb_err sb_dev_examples_create(const char *dir, const char *ns, const char *other_ns,
                                            char *err, size_t errlen);

#endif
