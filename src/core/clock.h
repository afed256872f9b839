/* Time. Code that decides by time (TTLs, breakers, token refresh) takes
 * `now` as an argument and never reads the clock itself, so tests drive it
 * with plain numbers; only the edges (request start, timers) read these. */
#ifndef SB_CORE_CLOCK_H
#define SB_CORE_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic time in milliseconds / microseconds, for deadlines and TTLs. */
int64_t sb_clock_mono_ms(void);
int64_t sb_clock_mono_us(void);

/* Wall-clock time in milliseconds since the epoch, for records and AWS. */
int64_t sb_clock_wall_ms(void);

/* Formats a wall time as RFC 3339 UTC with milliseconds,
 * "2026-12-03T19:09:39.123Z". out must hold SB_CLOCK_RFC3339_LEN bytes. */
#define SB_CLOCK_RFC3339_LEN 32
void sb_clock_rfc3339(int64_t wall_ms, char out[SB_CLOCK_RFC3339_LEN]);

/* Parses an RFC 3339 UTC timestamp ("...Z", optional fraction) into wall
 * milliseconds. Returns 0 on success, -1 when it is not one. */
int sb_clock_parse_rfc3339(const char *s, int64_t *out_wall_ms);

#endif
