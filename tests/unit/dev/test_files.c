/* Tests of src/dev/files: private directories and whole-file writes. */
#include "dev/files.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[64];
static char err[256];

static unsigned int mode_of(const char *path)
{
    struct stat st;

    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 0777;
}

static const char *read_text(const char *path)
{
    static char buf[256];
    FILE *f = fopen(path, "r");

    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void test_mkdir_private(void **state)
{
    char path[160], parent[160];

    snprintf(parent, sizeof(parent), "%s/a", root);
    snprintf(path, sizeof(path), "%s/a/b/c", root);
    assert_int_equal(sb_dev_mkdir_private(path, err, sizeof(err)), SB_OK);
    assert_int_equal(mode_of(path), 0700);
    assert_int_equal(mode_of(parent), 0700);

    /* An existing, readable directory is made private. */
    assert_int_equal(chmod(path, 0755), 0);
    assert_int_equal(sb_dev_mkdir_private(path, err, sizeof(err)), SB_OK);
    assert_int_equal(mode_of(path), 0700);

    /* Trailing slash, and again: both fine. */
    snprintf(path, sizeof(path), "%s/a/b/c/", root);
    assert_int_equal(sb_dev_mkdir_private(path, err, sizeof(err)), SB_OK);
    assert_int_equal(sb_dev_mkdir_private("", err, sizeof(err)), SB_E_IO);
}

static void test_mkdir_over_file(void **state)
{
    char file[160], path[200];

    snprintf(file, sizeof(file), "%s/f", root);
    assert_int_equal(sb_dev_write_file(file, "x", 1, 0600, true, NULL, err, sizeof(err)), SB_OK);
    assert_int_equal(sb_dev_mkdir_private(file, err, sizeof(err)), SB_E_IO);
    snprintf(path, sizeof(path), "%s/below", file);
    assert_int_equal(sb_dev_mkdir_private(path, err, sizeof(err)), SB_E_IO);
    assert_non_null(strstr(err, "/f"));
}

static void test_write_replace(void **state)
{
    char path[160], tmp[170];
    bool written = false;

    snprintf(path, sizeof(path), "%s/key.pem", root);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    assert_int_equal(sb_dev_write_file(path, "one", 3, 0600, true, &written, err, sizeof(err)),
                     SB_OK);
    assert_true(written);
    assert_string_equal(read_text(path), "one");
    assert_int_equal(mode_of(path), 0600);

    /* A stale temporary file from a crash does not get in the way. */
    assert_int_equal(sb_dev_write_file(tmp, "stale", 5, 0644, true, NULL, err, sizeof(err)), SB_OK);
    assert_int_equal(sb_dev_write_file(path, "two", 3, 0600, true, NULL, err, sizeof(err)), SB_OK);
    assert_string_equal(read_text(path), "two");
    assert_int_equal(access(tmp, F_OK), -1);
}

static void test_write_keep(void **state)
{
    char path[160], tmp[170];
    bool written = true;

    snprintf(path, sizeof(path), "%s/db.json", root);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    assert_int_equal(sb_dev_write_file(path, "{}", 2, 0600, false, &written, err, sizeof(err)),
                     SB_OK);
    assert_true(written);
    assert_int_equal(
        sb_dev_write_file(path, "{\"a\":\"b\"}", 9, 0600, false, &written, err, sizeof(err)),
        SB_OK);
    assert_false(written);
    assert_string_equal(read_text(path), "{}");
    assert_int_equal(access(tmp, F_OK), -1);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    snprintf(root, sizeof(root), "/tmp/test_files.XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state)
{
    return nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mkdir_private, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mkdir_over_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_replace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_keep, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
