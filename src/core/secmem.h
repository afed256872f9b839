/* Memory for secret bytes: an arena of mmap'd chunks kept out of core dumps
 * (MADV_DONTDUMP), locked in RAM when the system allows it, and wiped on
 * free. Small blocks come from size classes (at most 1/16 wasted above 256
 * bytes), so a cached 1 KiB secret costs 1,088 bytes; blocks over 16 KiB
 * get a mapping of their own, unmapped on free. Used by secret.c; other
 * code uses sb_secret and sb_buf instead. */
#ifndef SB_CORE_SECMEM_H
#define SB_CORE_SECMEM_H

#include <stdbool.h>
#include <stddef.h>

/* Returns size bytes of secret memory, 16-byte aligned; aborts on OOM.
 * Any thread. */
void *sb_secmem_alloc(size_t size);

/* Wipes the block at p and releases it; size must be what was asked of
 * sb_secmem_alloc. Accepts NULL. Any thread. */
void sb_secmem_free(void *p, size_t size);

/* The memory a block of size bytes really takes (its size class, or its
 * pages), for byte budgets that must be exact. */
size_t sb_secmem_footprint(size_t size);

/* Bytes currently handed out, counted by footprint. */
size_t sb_secmem_in_use(void);

/* Whether secret memory is locked in RAM: mlock succeeded on the first
 * chunk's first page and on every run since (it is not tried again once
 * it fails).
 * Maps the first chunk if none is yet, so the answer is meaningful at
 * start-up, where main logs it once. */
bool sb_secmem_locked(void);

/* How many times needle occurs in the arena's chunks, blocks in use and
 * free alike, and in large blocks in use (freed large blocks are unmapped).
 * For tests that check a value is gone after it was freed; call it while
 * no other thread uses secret memory. */
size_t sb_secmem_count(const void *needle, size_t len);

#endif
