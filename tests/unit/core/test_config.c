/* Unit tests of core/config: defaults, every kind of bad value, and the
 * cross-field rules, through a fake environment. */
#include "core/config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "../fake_env.h"

/* A minimal valid environment: TLS files named. */
static int base(void **state)
{
    nvars = 0;
    set("MTLS_CA_CERT_PATH", "/tls/ca.crt");
    set("MTLS_SERVER_CERT_PATH", "/tls/tls.crt");
    set("MTLS_SERVER_KEY_PATH", "/tls/tls.key");
    return 0;
}

static sb_err load(sb_config *cfg, char *err)
{
    return sb_config_load(cfg, lookup, err, 256);
}

static void test_defaults(void **state)
{
    sb_config cfg;
    char err[256];

    assert_int_equal(load(&cfg, err), SB_OK);
    assert_int_equal(cfg.backend_count, 2);
    assert_int_equal(cfg.backends[0], SB_BACKEND_K8S);
    assert_int_equal(cfg.backends[1], SB_BACKEND_AWS);
    assert_int_equal(cfg.port, 8443);
    assert_int_equal(cfg.ops_port, 8081);
    assert_int_equal(cfg.authz_allow_ttl_ms, 30000);
    assert_int_equal(cfg.authz_deny_ttl_ms, 5000);
    assert_int_equal(cfg.cache_ttl_ms, 300000);
    assert_true(cfg.mtls_enabled);
    assert_false(cfg.cn_fallback);
    assert_string_equal(cfg.trust_domain, "cluster.local");
    assert_int_equal(cfg.auth_mode, SB_AUTH_IMPERSONATE);
    sb_config_free(&cfg);
}

static void test_values(void **state)
{
    sb_config cfg;
    char err[256];

    set("SECRETS_BACKEND", "aws-secrets-manager, k8s");
    set("LOG_LEVEL", "WARNING");
    set("CACHE_TTL_SECONDS", "0");
    set("AUTHZ_ALLOW_TTL_SECONDS", "2");
    set("AUTH_MODE", "tokenrequest");
    set("TLS_MIN_VERSION", "1.2");
    assert_int_equal(load(&cfg, err), SB_OK);
    assert_int_equal(cfg.backends[0], SB_BACKEND_AWS);
    assert_int_equal(cfg.log_level, SB_LOG_WARN);
    assert_int_equal(cfg.cache_ttl_ms, 0);
    assert_int_equal(cfg.authz_allow_ttl_ms, 2000);
    assert_int_equal(cfg.auth_mode, SB_AUTH_TOKENREQUEST);
    assert_true(cfg.tls12_allowed);
    sb_config_free(&cfg);

    set("DEBUG_MODE", "true");
    assert_int_equal(load(&cfg, err), SB_OK);
    assert_int_equal(cfg.log_level, SB_LOG_DEBUG);
    sb_config_free(&cfg);
}

/* Each bad value stops the load with a line that names its variable. */
static void expect_bad(const char *name, const char *value)
{
    sb_config cfg;
    char err[256] = "";

    base(NULL);
    set(name, value);
    if (load(&cfg, err) != SB_E_CONFIG)
        fail_msg("%s=%s was accepted", name, value);
    if (!strstr(err, name))
        fail_msg("the error for %s does not name it: %s", name, err);
}

static void test_bad_values(void **state)
{
    expect_bad("SERVER_PORT", "0");
    expect_bad("SERVER_PORT", "70000");
    expect_bad("SERVER_PORT", "84x3");
    expect_bad("SERVER_PORT", "8081"); /* same as OPS_PORT: named in the message */
    expect_bad("WORKERS", "-1");
    expect_bad("CACHE_ENABLED", "maybe");
    expect_bad("SECRETS_BACKEND", "vault");
    expect_bad("SECRETS_BACKEND", "k8s,k8s");
    expect_bad("SECRETS_BACKEND", ",");
    expect_bad("AUTHZ_ALLOW_TTL_SECONDS", "31");
    expect_bad("AUTHZ_DENY_TTL_SECONDS", "6");
    expect_bad("LOG_LEVEL", "loud");
    expect_bad("AUTH_MODE", "trust-me");
    expect_bad("K8S_NAMESPACE", "Not_A_Namespace");
    expect_bad("SPIFFE_TRUST_DOMAIN", "Cluster.Local");
    expect_bad("TLS_MIN_VERSION", "1.1");
    expect_bad("RATE_LIMIT_PER_SECOND", "-3");
    expect_bad("AWS_SECRET_ID_TEMPLATE", "{prefix}/{namespace}");
}

static void test_rules(void **state)
{
    sb_config cfg;
    char err[256];

    /* mTLS off needs a required bearer token or the insecure flag. */
    set("MTLS_ENABLED", "false");
    assert_int_equal(load(&cfg, err), SB_E_CONFIG);
    assert_non_null(strstr(err, "MTLS_ENABLED"));
    set("BEARER_TOKEN", "required");
    assert_int_equal(load(&cfg, err), SB_OK);
    sb_config_free(&cfg);

    base(NULL);
    set("SECRETS_BACKEND", "file");
    set("FILE_BACKEND_DIR", "/srv/secrets");
    assert_int_equal(load(&cfg, err), SB_OK);
    assert_int_equal(cfg.auth_mode, SB_AUTH_OWN_NAMESPACE);
    sb_config_free(&cfg);

    base(NULL);
    set("SECRETS_BACKEND", "file");
    assert_int_equal(load(&cfg, err), SB_E_CONFIG);
    assert_non_null(strstr(err, "FILE_BACKEND_DIR"));

    base(NULL);
    set("SECRETS_BACKEND", "file,k8s");
    set("FILE_BACKEND_DIR", "/srv/secrets");
    assert_int_equal(load(&cfg, err), SB_E_CONFIG);

    base(NULL);
    nvars = 1; /* CA only */
    assert_int_equal(load(&cfg, err), SB_E_CONFIG);
    assert_non_null(strstr(err, "MTLS_SERVER_CERT_PATH"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, base),
        cmocka_unit_test_setup(test_values, base),
        cmocka_unit_test_setup(test_bad_values, base),
        cmocka_unit_test_setup(test_rules, base),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
