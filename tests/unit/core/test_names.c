/* Unit tests of core/names: the Kubernetes name rules every request is
 * checked against. */
#include "core/names.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "core/limits.h"

#define S(x) x, strlen(x)

static void test_label(void **state)
{
    assert_true(sb_name_is_label(S("shop")));
    assert_true(sb_name_is_label(S("a")));
    assert_true(sb_name_is_label(S("team-1")));
    assert_false(sb_name_is_label(S("")));
    assert_false(sb_name_is_label(S("-shop")));
    assert_false(sb_name_is_label(S("shop-")));
    assert_false(sb_name_is_label(S("Shop")));
    assert_false(sb_name_is_label(S("a.b")));
    assert_false(sb_name_is_label("a\0b", 3));

    char long_label[SB_MAX_NAMESPACE + 2];
    memset(long_label, 'a', sizeof(long_label));
    assert_true(sb_name_is_label(long_label, SB_MAX_NAMESPACE));
    assert_false(sb_name_is_label(long_label, SB_MAX_NAMESPACE + 1));
}

static void test_subdomain(void **state)
{
    assert_true(sb_name_is_subdomain(S("db")));
    assert_true(sb_name_is_subdomain(S("db.prod-1.example")));
    assert_true(sb_name_is_subdomain(S("0")));
    assert_false(sb_name_is_subdomain(S("")));
    assert_false(sb_name_is_subdomain(S(".db")));
    assert_false(sb_name_is_subdomain(S("db.")));
    assert_false(sb_name_is_subdomain(S("db..x")));
    assert_false(sb_name_is_subdomain(S("..")));
    assert_false(sb_name_is_subdomain(S("db.-x")));
    assert_false(sb_name_is_subdomain(S("db_x")));
    assert_false(sb_name_is_subdomain(S("DB")));
    assert_false(sb_name_is_subdomain(S("db/x")));
    assert_false(sb_name_is_subdomain("db\0", 3));

    char name[SB_MAX_SECRET_NAME + 2];
    memset(name, 'a', sizeof(name));
    assert_true(sb_name_is_subdomain(name, SB_MAX_SECRET_NAME));
    assert_false(sb_name_is_subdomain(name, SB_MAX_SECRET_NAME + 1));
}

static void test_key(void **state)
{
    assert_true(sb_name_is_secret_key(S("password")));
    assert_true(sb_name_is_secret_key(S("tls.crt")));
    assert_true(sb_name_is_secret_key(S(".dotfile")));
    assert_true(sb_name_is_secret_key(S("A_b-c.9")));
    assert_true(sb_name_is_secret_key(S("...")));
    assert_false(sb_name_is_secret_key(S(".")));
    assert_false(sb_name_is_secret_key(S("..")));
    assert_false(sb_name_is_secret_key(S("")));
    assert_false(sb_name_is_secret_key(S("a/b")));
    assert_false(sb_name_is_secret_key(S("a b")));
    assert_false(sb_name_is_secret_key(S("a%2e")));
    assert_false(sb_name_is_secret_key("a\0", 2));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_label),
        cmocka_unit_test(test_subdomain),
        cmocka_unit_test(test_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
