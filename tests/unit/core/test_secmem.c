/* Unit tests of src/core/secmem: size classes, alignment, reuse, exact
 * in-use accounting under threads, and the property the arena exists for:
 * a value planted in secret memory is gone from it once freed, whether it
 * lived in a small block, a large one, a secret or a growing buffer. */
#include "core/secmem.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/secret.h"

#define THREADS    4
#define PER_THREAD 20000

/* A canary unlikely to occur by chance; built at run time, so the only
 * copies the arena can hold are the ones a test puts there. */
static void make_canary(char *out, size_t len, const char *label)
{
    snprintf(out, len, "sbcanary-%s-%08x", label, (unsigned)(uintptr_t)out ^ 0x5eedu);
}

static void test_size_classes(void **state)
{
    assert_int_equal(sb_secmem_footprint(0), 16);
    assert_int_equal(sb_secmem_footprint(1), 16);
    assert_int_equal(sb_secmem_footprint(16), 16);
    assert_int_equal(sb_secmem_footprint(17), 32);
    assert_int_equal(sb_secmem_footprint(128), 128);
    assert_int_equal(sb_secmem_footprint(129), 144);
    assert_int_equal(sb_secmem_footprint(256), 256);
    assert_int_equal(sb_secmem_footprint(257), 272);
    /* A 1 KiB secret: 16 bytes of header, 1024 of value, a NUL. */
    assert_int_equal(sb_secmem_footprint(1041), 1088);
    assert_int_equal(sb_secmem_footprint(16384), 16384);
    assert_true(sb_secmem_footprint(16385) >= 16385 + 32);

    /* Never more than an eighth wasted above 128 bytes, a sixteenth
     * above 256. */
    for (size_t n = 129; n <= 16384; n++) {
        size_t f = sb_secmem_footprint(n);
        assert_true(f >= n);
        assert_true((f - n) * (n > 256 ? 16 : 8) <= n);
        assert_int_equal(f % 16, 0);
    }
}

static void test_alignment_and_reuse(void **state)
{
    size_t sizes[] = {1, 15, 16, 100, 1041, 5000, 16384, 16385, 300000};

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        unsigned char *p = sb_secmem_alloc(sizes[i]);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xab, sizes[i]); /* the whole block is writable */
        sb_secmem_free(p, sizes[i]);
    }

    /* A freed small block is the next one handed out in its class. */
    void *a = sb_secmem_alloc(1041);
    sb_secmem_free(a, 1041);
    void *b = sb_secmem_alloc(1080);
    assert_ptr_equal(a, b);
    sb_secmem_free(b, 1080);
    sb_secmem_free(NULL, 10);
}

static void test_in_use_is_exact(void **state)
{
    size_t base = sb_secmem_in_use();
    void *a = sb_secmem_alloc(1041);
    void *b = sb_secmem_alloc(70000);

    assert_int_equal(sb_secmem_in_use() - base,
                     sb_secmem_footprint(1041) + sb_secmem_footprint(70000));
    sb_secmem_free(a, 1041);
    sb_secmem_free(b, 70000);
    assert_int_equal(sb_secmem_in_use(), base);
}

static void test_canary_gone_after_free_small_and_large(void **state)
{
    char canary[64];
    size_t sizes[] = {48, 1041, 9000, 40000};

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        make_canary(canary, sizeof(canary), "block");
        size_t n = strlen(canary);
        unsigned char *p = sb_secmem_alloc(sizes[i]);
        memset(p, 'x', sizes[i]);
        memcpy(p + sizes[i] - n, canary, n); /* at the very end of the block */
        assert_int_equal(sb_secmem_count(canary, n), 1);
        sb_secmem_free(p, sizes[i]);
        assert_int_equal(sb_secmem_count(canary, n), 0);
    }
}

static void test_canary_gone_from_secret_and_buffer(void **state)
{
    char canary[64];
    sb_buf buf;

    make_canary(canary, sizeof(canary), "secret");
    size_t n = strlen(canary);
    sb_secret *s = sb_secret_new(canary, n);
    sb_secret *again = sb_secret_ref(s);
    assert_int_equal(sb_secmem_count(canary, n), 1);
    sb_secret_unref(s);
    assert_int_equal(sb_secmem_count(canary, n), 1); /* a reference remains */
    sb_secret_unref(again);
    assert_int_equal(sb_secmem_count(canary, n), 0);

    /* A buffer that grows moves its bytes: the old block must not keep them. */
    sb_buf_init(&buf, 0);
    assert_int_equal(sb_buf_append(&buf, canary, n), SB_OK);
    for (int i = 0; i < 100; i++)
        assert_int_equal(sb_buf_append_str(&buf, "padding-padding-padding-"), SB_OK);
    assert_int_equal(sb_secmem_count(canary, n), 1);
    sb_buf_reset(&buf);
    assert_int_equal(sb_secmem_count(canary, n), 0);
    sb_buf_free(&buf);
}

static void *churn(void *arg)
{
    uint32_t x = (uint32_t)(uintptr_t)arg * 2654435761u + 1;
    void *held[16] = {0};
    size_t sizes[16] = {0};

    for (int i = 0; i < PER_THREAD; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        size_t slot = x % 16;
        sb_secmem_free(held[slot], sizes[slot]);
        sizes[slot] = 1 + x % (x & 1 ? 2000 : 20000);
        held[slot] = sb_secmem_alloc(sizes[slot]);
        memset(held[slot], (int)slot, sizes[slot]);
    }
    for (size_t s = 0; s < 16; s++)
        sb_secmem_free(held[s], sizes[s]);
    return NULL;
}

static void test_threads_balance(void **state)
{
    pthread_t t[THREADS];
    size_t base = sb_secmem_in_use();

    for (uintptr_t i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, churn, (void *)i), 0);
    for (size_t i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(sb_secmem_in_use(), base);
}

static void test_locked_answers(void **state)
{
    /* Whether mlock works depends on RLIMIT_MEMLOCK; asking twice gives
     * the same answer and maps nothing twice. */
    bool first = sb_secmem_locked();
    assert_int_equal(sb_secmem_locked(), first);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_classes),
        cmocka_unit_test(test_alignment_and_reuse),
        cmocka_unit_test(test_in_use_is_exact),
        cmocka_unit_test(test_canary_gone_after_free_small_and_large),
        cmocka_unit_test(test_canary_gone_from_secret_and_buffer),
        cmocka_unit_test(test_threads_balance),
        cmocka_unit_test(test_locked_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
