/* Tests of src/dev/examples: the example tree has the file backend's
 * format, private modes, a secret in another namespace, and is never
 * overwritten. */
#include "dev/examples.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[64];
static char dir[128];
static char err[256];

static void path_of(char *out, size_t outlen, const char *rel)
{
    snprintf(out, outlen, "%s/%s", dir, rel);
}

static unsigned int mode_of(const char *rel)
{
    char path[256];
    struct stat st;

    path_of(path, sizeof(path), rel);
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 0777;
}

static json_t *load(const char *rel)
{
    char path[256];
    json_error_t jerr;

    path_of(path, sizeof(path), rel);
    json_t *root_obj = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    assert_non_null(root_obj);
    assert_true(json_is_object(root_obj));
    return root_obj;
}

/* A random example value: 32 lower-case hex characters. */
static void assert_random_hex(json_t *obj, const char *key)
{
    const char *v = json_string_value(json_object_get(obj, key));

    assert_non_null(v);
    assert_int_equal(strlen(v), 32);
    assert_int_equal(strspn(v, "0123456789abcdef"), 32);
}

static void write_text(const char *rel, const char *text)
{
    char path[256];
    FILE *f;

    path_of(path, sizeof(path), rel);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static char *read_text(const char *rel)
{
    char path[256];
    static char buf[512];
    FILE *f;

    path_of(path, sizeof(path), rel);
    f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void test_tree_and_format(void **state)
{
    assert_int_equal(sb_dev_examples_create(dir, "dev", "other", err, sizeof(err)), SB_OK);

    json_t *db = load("dev/db.json");
    assert_string_equal(json_string_value(json_object_get(db, "user")), "app");
    assert_random_hex(db, "password");
    assert_int_equal(json_object_size(db), 2);
    json_t *api = load("dev/api.json");
    assert_random_hex(api, "token");
    assert_int_equal(json_object_size(api), 1);
    json_t *other = load("other/db.json");
    assert_string_equal(json_string_value(json_object_get(other, "user")), "other-app");
    assert_string_not_equal(json_string_value(json_object_get(other, "password")),
                            json_string_value(json_object_get(db, "password")));

    assert_int_equal(mode_of("."), 0700);
    assert_int_equal(mode_of("dev"), 0700);
    assert_int_equal(mode_of("other"), 0700);
    assert_int_equal(mode_of("dev/db.json"), 0600);
    assert_int_equal(mode_of("dev/api.json"), 0600);
    assert_int_equal(mode_of("other/db.json"), 0600);
    json_decref(db);
    json_decref(api);
    json_decref(other);
}

static void test_never_overwrites(void **state)
{
    char before[512];

    assert_int_equal(sb_dev_examples_create(dir, "dev", "other", err, sizeof(err)), SB_OK);
    snprintf(before, sizeof(before), "%s", read_text("dev/api.json"));
    write_text("dev/db.json", "{\"user\": \"me\", \"password\": \"mine\"}\n");

    assert_int_equal(sb_dev_examples_create(dir, "dev", "other", err, sizeof(err)), SB_OK);
    assert_string_equal(read_text("dev/api.json"), before);
    assert_string_equal(read_text("dev/db.json"), "{\"user\": \"me\", \"password\": \"mine\"}\n");

    /* A deleted example comes back; no temporary file is left behind. */
    char path[256];
    path_of(path, sizeof(path), "dev/api.json");
    assert_int_equal(unlink(path), 0);
    assert_int_equal(sb_dev_examples_create(dir, "dev", "other", err, sizeof(err)), SB_OK);
    json_decref(load("dev/api.json"));
    path_of(path, sizeof(path), "dev/api.json.tmp");
    assert_int_equal(access(path, F_OK), -1);
}

static void test_rejects_bad_namespaces(void **state)
{
    assert_int_equal(sb_dev_examples_create(dir, "dev", "dev", err, sizeof(err)), SB_E_CONFIG);
    assert_int_equal(sb_dev_examples_create(dir, "Dev", "other", err, sizeof(err)), SB_E_CONFIG);
    assert_int_equal(sb_dev_examples_create(dir, "dev", "../x", err, sizeof(err)), SB_E_CONFIG);
    assert_int_equal(sb_dev_examples_create(dir, "", "other", err, sizeof(err)), SB_E_CONFIG);
    assert_true(strlen(err) > 0);
    assert_int_equal(access(dir, F_OK), -1);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    snprintf(root, sizeof(root), "/tmp/test_examples.XXXXXX");
    if (!mkdtemp(root))
        return -1;
    snprintf(dir, sizeof(dir), "%s/secrets", root);
    return 0;
}

static int teardown(void **state)
{
    return nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tree_and_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_never_overwrites, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_bad_namespaces, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
