/* Clock reading and RFC 3339 formatting (see clock.h). */
#include "core/clock.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static int64_t read_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t sb_clock_mono_ms(void)
{
    return read_ns(CLOCK_MONOTONIC) / 1000000;
}

int64_t sb_clock_mono_us(void)
{
    return read_ns(CLOCK_MONOTONIC) / 1000;
}

int64_t sb_clock_wall_ms(void)
{
    return read_ns(CLOCK_REALTIME) / 1000000;
}

void sb_clock_rfc3339(int64_t wall_ms, char out[SB_CLOCK_RFC3339_LEN])
{
    /* Every audit record and log line has a time stamp: the date part is
     * formatted once per second and thread, the milliseconds by hand. */
    static _Thread_local int64_t cached_sec = -1;
    static _Thread_local char cached[24];
    static _Thread_local size_t cached_len;
    int64_t sec = wall_ms / 1000;
    unsigned ms = (unsigned)(wall_ms % 1000);

    if (sec != cached_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        cached_len = strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = sec;
    }
    memcpy(out, cached, cached_len);
    out[cached_len] = '.';
    out[cached_len + 1] = (char)('0' + ms / 100);
    out[cached_len + 2] = (char)('0' + ms / 10 % 10);
    out[cached_len + 3] = (char)('0' + ms % 10);
    out[cached_len + 4] = 'Z';
    out[cached_len + 5] = '\0';
}

int sb_clock_parse_rfc3339(const char *s, int64_t *out_wall_ms)
{
    struct tm tm = {0};
    int ms = 0;
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);

    if (!p)
        return -1;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
        }
        for (; digits < 3 && digits > 0; digits++)
            ms *= 10;
    }
    if (strcmp(p, "Z") != 0 && strcmp(p, "+00:00") != 0)
        return -1;

    *out_wall_ms = (int64_t)timegm(&tm) * 1000 + ms;
    return 0;
}
