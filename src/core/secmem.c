/* Secret memory (see secmem.h). Chunks of 1 MiB are mapped on demand and
 * cut into runs of 4 to 64 KiB (sixteen blocks, in whole pages); each run
 * serves one size class, handing out blocks from its start and taking
 * freed blocks back on a per-class free list. A run is locked in RAM when
 * it is cut, so only runs in use are resident: a few small blocks in many
 * classes take a few pages each, not a whole chunk. Chunks are never
 * unmapped, so the arena is as large as its peak. Freed
 * blocks are wiped before they go on the list; the list pointer in their
 * first bytes is the only thing a freed block holds. The process is also
 * non-dumpable (sb_secret_harden_process): MADV_DONTDUMP is the second line
 * of defence, for a core dump forced by other means. */
#include "core/secmem.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/secret.h"

#define CHUNK_BYTES  (1024 * 1024)
#define RUN_BLOCKS   16
#define RUN_MIN      (4 * 1024)
#define RUN_MAX      (64 * 1024)
#define SMALL_MAX    (16 * 1024) /* larger blocks get a mapping of their own */
#define CLASSES      112         /* 16 of 16..256 bytes, then 16 per doubling to 16 KiB */
#define LARGE_HEADER 32          /* keeps large blocks 16-byte aligned */

struct size_class {
    pthread_mutex_t lock;
    void *free;          /* freed blocks, linked through their first bytes */
    unsigned char *next; /* never-used blocks of the current run start here */
    unsigned char *end;
};

struct chunk {
    struct chunk *older;
    unsigned char *base;
    size_t used; /* bytes handed to runs */
};

/* A block over SMALL_MAX: its own mapping, with this header in front. */
struct large {
    struct large *prev, *next;
    size_t map_len;
    size_t size;
};

static struct size_class classes[CLASSES];
static pthread_mutex_t arena_lock = PTHREAD_MUTEX_INITIALIZER; /* chunks and large */
static struct chunk *chunks;
static struct large *larges;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static atomic_size_t in_use;
static atomic_int lock_state; /* 0 not tried, 1 every mlock so far worked, -1 one failed */

static void init_classes(void)
{
    for (size_t i = 0; i < CLASSES; i++)
        pthread_mutex_init(&classes[i].lock, NULL);
}

/* Size classes: multiples of 16 up to 256, then sixteen steps per
 * doubling, so above 256 bytes at most a sixteenth of a block is unused (a
 * cached 1 KiB value, with its header, takes 1,088 bytes). Every class is
 * a multiple of 16, which keeps blocks 16-byte aligned. */
static size_t class_of(size_t size)
{
    if (size <= 256)
        return size ? (size - 1) / 16 : 0;
    unsigned p = 63u - (unsigned)__builtin_clzll(size - 1); /* 2^p < size <= 2^(p+1) */
    size_t step = (size_t)1 << (p - 4);
    return 16 + (p - 8) * 16 + (size - ((size_t)1 << p) - 1) / step;
}

static size_t class_size(size_t idx)
{
    if (idx < 16)
        return (idx + 1) * 16;
    size_t p = 8 + (idx - 16) / 16;
    size_t k = (idx - 16) % 16 + 1;
    return ((size_t)1 << p) + k * ((size_t)1 << (p - 4));
}

static size_t page_round(size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (n + page - 1) / page * page;
}

/* mlock is tried on every new run and large block until it fails once
 * (RLIMIT_MEMLOCK reached, or no CAP_IPC_LOCK where the limit is 0), then
 * never again. */
static void try_lock(void *p, size_t len)
{
    if (atomic_load(&lock_state) < 0)
        return;
    if (mlock(p, len) != 0) {
        atomic_store(&lock_state, -1);
        return;
    }
    int untried = 0;
    atomic_compare_exchange_strong(&lock_state, &untried, 1);
}

/* Maps len bytes kept out of core dumps and forks; the caller locks what
 * it uses. */
static void *map_secret(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED)
        abort(); /* out of memory: the project's policy (core/alloc.h) */
    /* Best effort: kernels without these advices still run the broker,
     * which is non-dumpable anyway. */
    madvise(p, len, MADV_DONTDUMP);
#ifdef MADV_WIPEONFORK
    madvise(p, len, MADV_WIPEONFORK);
#endif
    return p;
}

/* A run's length for blocks of size bytes: room for RUN_BLOCKS of them in
 * whole pages, within RUN_MIN and RUN_MAX (a multiple of the page size,
 * which divides CHUNK_BYTES). */
static size_t run_bytes(size_t size)
{
    size_t n = size * RUN_BLOCKS;

    n = n < RUN_MIN ? RUN_MIN : n > RUN_MAX ? RUN_MAX : n;
    return page_round(n);
}

/* A fresh run for a size class. Called with the class lock held. */
static void new_run(struct size_class *sc, size_t size)
{
    size_t len = run_bytes(size);

    pthread_mutex_lock(&arena_lock);
    /* The tail of a chunk too short for this run stays unused. */
    if (!chunks || CHUNK_BYTES - chunks->used < len) {
        struct chunk *c = sb_xcalloc(1, sizeof(*c));
        c->base = map_secret(CHUNK_BYTES);
        c->older = chunks;
        chunks = c;
    }
    sc->next = chunks->base + chunks->used;
    sc->end = sc->next + len;
    chunks->used += len;
    pthread_mutex_unlock(&arena_lock);
    try_lock(sc->next, len);
}

static void *small_alloc(size_t idx)
{
    struct size_class *sc = &classes[idx];
    size_t size = class_size(idx);
    void *p;

    pthread_mutex_lock(&sc->lock);
    if (sc->free) {
        p = sc->free;
        memcpy(&sc->free, p, sizeof(void *));
        memset(p, 0, sizeof(void *));
    } else {
        if (!sc->next || (size_t)(sc->end - sc->next) < size)
            new_run(sc, size);
        p = sc->next;
        sc->next += size;
    }
    pthread_mutex_unlock(&sc->lock);
    return p;
}

static void small_free(void *p, size_t idx)
{
    struct size_class *sc = &classes[idx];

    sb_wipe(p, class_size(idx));
    pthread_mutex_lock(&sc->lock);
    memcpy(p, &sc->free, sizeof(void *));
    sc->free = p;
    pthread_mutex_unlock(&sc->lock);
}

static void *large_alloc(size_t size)
{
    size_t len = page_round(LARGE_HEADER + size);
    struct large *l = map_secret(len);

    try_lock(l, len);
    l->map_len = len;
    l->size = size;
    pthread_mutex_lock(&arena_lock);
    l->next = larges;
    if (larges)
        larges->prev = l;
    larges = l;
    pthread_mutex_unlock(&arena_lock);
    return (unsigned char *)l + LARGE_HEADER;
}

static void large_free(void *p)
{
    struct large *l = (struct large *)((unsigned char *)p - LARGE_HEADER);

    pthread_mutex_lock(&arena_lock);
    if (l->prev)
        l->prev->next = l->next;
    else
        larges = l->next;
    if (l->next)
        l->next->prev = l->prev;
    pthread_mutex_unlock(&arena_lock);

    size_t len = l->map_len;
    sb_wipe(l, LARGE_HEADER + l->size);
    munmap(l, len);
}

size_t sb_secmem_footprint(size_t size)
{
    if (size > SMALL_MAX)
        return page_round(LARGE_HEADER + size);
    return class_size(class_of(size));
}

void *sb_secmem_alloc(size_t size)
{
    pthread_once(&init_once, init_classes);
    atomic_fetch_add_explicit(&in_use, sb_secmem_footprint(size), memory_order_relaxed);
    if (size > SMALL_MAX)
        return large_alloc(size);
    return small_alloc(class_of(size));
}

void sb_secmem_free(void *p, size_t size)
{
    if (!p)
        return;
    atomic_fetch_sub_explicit(&in_use, sb_secmem_footprint(size), memory_order_relaxed);
    if (size > SMALL_MAX)
        large_free(p);
    else
        small_free(p, class_of(size));
}

size_t sb_secmem_in_use(void)
{
    return atomic_load_explicit(&in_use, memory_order_relaxed);
}

bool sb_secmem_locked(void)
{
    pthread_mutex_lock(&arena_lock);
    if (!chunks) {
        struct chunk *c = sb_xcalloc(1, sizeof(*c));
        c->base = map_secret(CHUNK_BYTES);
        chunks = c;
        /* One page tells whether locking works; runs are locked as cut. */
        try_lock(c->base, page_round(1));
    }
    pthread_mutex_unlock(&arena_lock);
    return atomic_load(&lock_state) == 1;
}

static size_t count_in(const unsigned char *p, size_t n, const void *needle, size_t len)
{
    size_t found = 0;
    const unsigned char *end = p + n;

    while (p < end) {
        const unsigned char *hit = memmem(p, (size_t)(end - p), needle, len);
        if (!hit)
            break;
        found++;
        p = hit + 1;
    }
    return found;
}

size_t sb_secmem_count(const void *needle, size_t len)
{
    size_t found = 0;

    if (!len)
        return 0;
    pthread_mutex_lock(&arena_lock);
    for (const struct chunk *c = chunks; c; c = c->older)
        found += count_in(c->base, c->used, needle, len);
    for (const struct large *l = larges; l; l = l->next)
        found += count_in((const unsigned char *)l + LARGE_HEADER, l->size, needle, len);
    pthread_mutex_unlock(&arena_lock);
    return found;
}
