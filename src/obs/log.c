/* JSON-lines logging on stderr (see log.h). Each line is built in a stack
 * buffer and written with one write(2), so lines from different threads do
 * not interleave. */
#include "obs/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/limits.h"

#define LINE_MAX_BYTES 4096
#define MODULE_MAX     32 /* module tags are short literals */
#define LINE_TAIL      64 /* kept free after the message for the line's end */

static atomic_int min_level = SB_LOG_INFO;

void sb_log_set_level(sb_log_level level)
{
    atomic_store(&min_level, (int)level);
}

bool sb_log_enabled(sb_log_level level)
{
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

static size_t put(char *out, size_t outlen, size_t pos, const char *s)
{
    size_t n = strlen(s);

    if (pos + 1 >= outlen)
        return pos;
    if (n > outlen - pos - 1)
        n = outlen - pos - 1;
    memcpy(out + pos, s, n);
    out[pos + n] = '\0';
    return pos + n;
}

size_t sb_json_escape(char *out, size_t outlen, const char *s, size_t n, size_t max)
{
    static const char hex[] = "0123456789abcdef";
    size_t pos = 0;

    if (outlen == 0)
        return 0;
    if (n > max)
        n = max;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        size_t elen = 0;

        /* The common case, a plain character, without the copy below. */
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            if (pos + 1 >= outlen)
                break;
            out[pos++] = (char)c;
            continue;
        }
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else {
            /* Control characters, and non-ASCII byte by byte: lines stay
             * valid JSON and ASCII-only whatever the input's encoding. */
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if (pos + elen >= outlen)
            break;
        memcpy(out + pos, esc, elen);
        pos += elen;
    }
    out[pos] = '\0';
    return pos;
}

static void emit(sb_log_level level, const char *module, const char *request_id, const char *msg,
                 const char *fields_json)
{
    char line[LINE_MAX_BYTES];
    char ts[SB_CLOCK_RFC3339_LEN];
    size_t pos = 0;

    sb_clock_rfc3339(sb_clock_wall_ms(), ts);
    pos = put(line, sizeof(line), pos, "{\"ts\":\"");
    pos = put(line, sizeof(line), pos, ts);
    pos = put(line, sizeof(line), pos, "\",\"level\":\"");
    pos = put(line, sizeof(line), pos, sb_log_level_name(level));
    pos = put(line, sizeof(line), pos, "\",\"module\":\"");
    pos += sb_json_escape(line + pos, sizeof(line) - pos, module, strlen(module), MODULE_MAX);
    if (request_id) {
        pos = put(line, sizeof(line), pos, "\",\"request_id\":\"");
        pos += sb_json_escape(line + pos, sizeof(line) - pos, request_id, strlen(request_id),
                              SB_MAX_REQUEST_ID);
    }
    pos = put(line, sizeof(line), pos, "\",\"msg\":\"");
    /* Keep room after the message for the closing of the line. The
     * fields before it are capped, so pos is far below the tail here. */
    pos += sb_json_escape(line + pos, sizeof(line) - LINE_TAIL - pos, msg, strlen(msg), 2048);
    pos = put(line, sizeof(line), pos, "\"");

    /* Extra fields are a JSON object; splice its members into the line, or
     * drop them whole when they do not fit. */
    if (fields_json && fields_json[0] == '{' && fields_json[1] != '}') {
        size_t flen = strlen(fields_json);
        if (flen >= 2 && flen < sizeof(line) - 8 - pos) {
            line[pos++] = ',';
            memcpy(line + pos, fields_json + 1, flen - 2);
            pos += flen - 2;
        }
    }
    pos = put(line, sizeof(line), pos, "}\n");
    if (line[pos - 1] != '\n')
        line[pos - 1] = '\n';

    /* A failed log write has nowhere better to be reported. */
    if (write(STDERR_FILENO, line, pos) < 0)
        return;
}

void sb_log_write(sb_log_level level, const char *module, const char *request_id, const char *fmt,
                  ...)
{
    char msg[2048];
    va_list ap;

    if (!sb_log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    emit(level, module, request_id, msg, NULL);
}

void sb_log_fields(sb_log_level level, const char *module, const char *request_id, const char *msg,
                   const char *fields_json)
{
    if (!sb_log_enabled(level))
        return;
    emit(level, module, request_id, msg, fields_json);
}
