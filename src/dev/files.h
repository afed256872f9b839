/* File helpers for the development mode: private directories, and files
 * written whole under a temporary name so a crash never leaves half a key
 * or half a JSON document behind. Start-up only; not for request paths. */
#ifndef SB_DEV_FILES_H
#define SB_DEV_FILES_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

/* Creates dir and any missing parents (mode 0700), and makes dir itself
 * private (0700) if it exists with group or other access. SB_E_IO with a
 * line in err on failure. */
SB_MUST_CHECK sb_err sb_dev_mkdir_private(const char *dir, char *err, size_t errlen);

/* Writes len bytes to path with the given mode, through "<path>.tmp" and
 * fsync. With replace, an existing file is replaced atomically; without,
 * an existing file is left alone and *out_written (when not NULL) is set to
 * false. SB_E_IO with a line in err on failure; the data never appears in
 * err. */
SB_MUST_CHECK sb_err sb_dev_write_file(const char *path, const void *data, size_t len,
                                       unsigned int mode, bool replace, bool *out_written,
                                       char *err, size_t errlen);

#endif
