/* Memory for secret bytes: excluded from core dumps (MADV_DONTDUMP), locked
 * in RAM when the system allows it, and wiped on free. Used by secret.c and
 * by the JSON allocator; other code uses sb_secret and sb_buf instead. */
#ifndef SB_CORE_SECMEM_H
#define SB_CORE_SECMEM_H

#include <stdbool.h>
#include <stddef.h>

/* Returns size bytes of secret memory; aborts on OOM. Any thread. */
void *sb_secmem_alloc(size_t size);

/* Wipes size bytes at p and releases them; size must be what was asked of
 * sb_secmem_alloc. Accepts NULL. Any thread. */
void sb_secmem_free(void *p, size_t size);

/* Bytes currently handed out, for the cache-bytes metric and tests. */
size_t sb_secmem_in_use(void);

/* Whether the memory is locked in RAM (mlock succeeded at least once and
 * never failed since start). Logged once at start-up by main. */
bool sb_secmem_locked(void);

#endif
