/* Names, HTTP statuses and retry classes of the project's error codes. */
#include "core/error.h"

struct err_info {
    const char *code;
    int status;
    bool retryable;
};

static const struct err_info infos[SB_E_COUNT_] = {
    [SB_OK] = {"ok", 200, false},
    [SB_E_BAD_REQUEST] = {"bad_request", 400, false},
    [SB_E_UNAUTHORIZED] = {"unauthorized", 401, false},
    [SB_E_FORBIDDEN] = {"forbidden", 403, false},
    [SB_E_NOT_FOUND] = {"not_found", 404, false},
    [SB_E_METHOD] = {"method_not_allowed", 405, false},
    [SB_E_TOO_LARGE] = {"payload_too_large", 413, false},
    [SB_E_URI_TOO_LONG] = {"uri_too_long", 414, false},
    [SB_E_RATE_LIMITED] = {"rate_limited", 429, false},
    [SB_E_UPSTREAM] = {"bad_gateway", 502, false},
    [SB_E_UNAVAILABLE] = {"backend_unavailable", 503, true},
    [SB_E_THROTTLED] = {"backend_throttled", 503, true},
    [SB_E_TIMEOUT] = {"gateway_timeout", 504, true},
    [SB_E_CREDENTIALS] = {"backend_credentials", 503, false},
    [SB_E_AUDIT] = {"audit_unavailable", 503, false},
    [SB_E_CONFIG] = {"configuration", 500, false},
    [SB_E_IO] = {"io", 500, false},
    [SB_E_CRYPTO] = {"crypto", 500, false},
    [SB_E_INTERNAL] = {"internal", 500, false},
    [SB_E_SHUTDOWN] = {"shutting_down", 503, true},
};

static const struct err_info *info(sb_err err)
{
    if ((unsigned)err >= SB_E_COUNT_)
        return &infos[SB_E_INTERNAL];
    return &infos[err];
}

const char *sb_err_code(sb_err err)
{
    return info(err)->code;
}

int sb_err_http_status(sb_err err)
{
    return info(err)->status;
}

bool sb_err_retryable(sb_err err)
{
    return info(err)->retryable;
}
