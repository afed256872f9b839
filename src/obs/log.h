/* Structured logs: one JSON object per line on stderr, with a level, a
 * module tag, the request id when there is one, and a message. The message
 * is JSON-escaped and cut at SB_MAX_LOG_FIELD bytes, so user-controlled text
 * cannot forge lines. Lower layers return errors; the layer that handles an
 * error logs it once. Never pass secret material. Any thread. */
#ifndef SB_OBS_LOG_H
#define SB_OBS_LOG_H

#include <stdbool.h>

#include "core/config.h"

/* Sets the lowest level written. Call before starting threads. */
void sb_log_set_level(sb_log_level level);

bool sb_log_enabled(sb_log_level level);

/* Writes one line. request_id may be NULL. Prefer the SB_LOG macro, which
 * skips formatting when the level is off. */
void sb_log_write(sb_log_level level, const char *module, const char *request_id, const char *fmt,
                  ...) __attribute__((format(printf, 4, 5)));

/* Writes one line with extra fields: fields_json is a JSON object (built
 * with jansson or by hand, already valid) whose members are added to the
 * line. */
void sb_log_fields(sb_log_level level, const char *module, const char *request_id, const char *msg,
                   const char *fields_json);

#define SB_LOG(level, module, rid, ...)                                                            \
    do {                                                                                           \
        if (sb_log_enabled(level))                                                                 \
            sb_log_write((level), (module), (rid), __VA_ARGS__);                                   \
    } while (0)

#define SB_DEBUG(module, rid, ...) SB_LOG(SB_LOG_DEBUG, module, rid, __VA_ARGS__)
#define SB_INFO(module, rid, ...)  SB_LOG(SB_LOG_INFO, module, rid, __VA_ARGS__)
#define SB_WARN(module, rid, ...)  SB_LOG(SB_LOG_WARN, module, rid, __VA_ARGS__)
#define SB_ERROR(module, rid, ...) SB_LOG(SB_LOG_ERROR, module, rid, __VA_ARGS__)

/* Appends s (n bytes) to out as the inside of a JSON string: quotes,
 * backslashes, control characters and invalid UTF-8 are escaped, output is
 * cut at max bytes of input. Returns the number of bytes written, never more
 * than outlen - 1 (out is NUL-terminated). Used for logs and audit lines. */
size_t sb_json_escape(char *out, size_t outlen, const char *s, size_t n, size_t max);

#endif
