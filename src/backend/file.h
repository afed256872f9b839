/* The file backend, for local development: a directory of JSON files, one
 * per secret, <dir>/<namespace>/<name>.json, each a flat JSON object of
 * key -> string value. */
#ifndef SB_BACKEND_FILE_H
#define SB_BACKEND_FILE_H

#include "backend/backend.h"

/* A file backend reading under dir (copied). */
sb_backend *sb_file_backend_new(const char *dir);

#endif
