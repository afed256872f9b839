/* Fuzz target for the SigV4 signer of src/clients/sigv4, whose canonical
 * forms parse paths, queries and headers. The input is text: a method line,
 * a path line, a query line, "name:value" header lines up to an empty line,
 * then the body. Beyond not crashing: a refusal is SB_E_INTERNAL; a signed
 * request has well-formed outputs, signs the same twice, and its canonical
 * query signs as itself; every secure-memory byte is handed back. */
#include "corpus_driver.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "clients/sigv4.h"
#include "core/alloc.h"
#include "core/secmem.h"

#define MAX_HEADERS 64
#define DATE        "20150830T123600Z"

static const sb_sigv4_creds CREDS = {
    .access_key = "AKIDEXAMPLE",
    .secret_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    .session_token = "FwoGZXIvYXdzEXAMPLETOKEN",
};

/* Cuts the next line off *text (NUL-terminating it in place). */
static char *next_line(char **text, char *end)
{
    char *line = *text;
    char *nl = line < end ? memchr(line, '\n', (size_t)(end - line)) : NULL;

    if (!nl) {
        *text = end;
        return line;
    }
    *nl = '\0';
    *text = nl + 1;
    return line;
}

static size_t read_headers(char **text, char *end, sb_sigv4_header *hdrs)
{
    size_t n = 0;

    while (*text < end && n < MAX_HEADERS) {
        char *line = next_line(text, end);
        char *colon = strchr(line, ':');
        if (!*line)
            break;
        hdrs[n].name = line;
        hdrs[n].value = "";
        if (colon) {
            *colon = '\0';
            hdrs[n].value = colon + 1;
        }
        n++;
    }
    return n;
}

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return strlen(s) == n;
}

/* The line-th line (from 0) of the canonical request, copied. */
static char *canonical_line(const char *cr, int line)
{
    for (int i = 0; i < line; i++)
        cr = strchr(cr, '\n') + 1;
    return sb_xstrndup(cr, strcspn(cr, "\n"));
}

/* Canonical URI and query: only unreserved characters, separators and
 * escapes with upper-case hex. */
static bool is_canonical(const char *s, const char *separators)
{
    for (; *s; s++) {
        bool plain = (*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
                     (*s >= '0' && *s <= '9') || strchr("-_.~", *s) || strchr(separators, *s);
        bool esc = *s == '%' && s[1] && s[2] && strchr("0123456789ABCDEF", s[1]) &&
                   strchr("0123456789ABCDEF", s[2]);
        if (!plain && !esc)
            return false;
    }
    return true;
}

static void check_signed(const sb_sigv4_request *req, const sb_sigv4_result *res)
{
    sb_sigv4_result again;
    char *query = canonical_line(res->canonical_request, 2);
    char *uri = canonical_line(res->canonical_request, 1);

    if (!is_lower_hex(res->signature, 64) || !strstr(res->authorization, res->signature))
        abort();
    if (uri[0] != '/' || !is_canonical(uri, "/") || !is_canonical(query, "=&"))
        abort();

    /* Signing is deterministic, and a canonical query is its own form. */
    sb_sigv4_request canon = *req;
    canon.query = query;
    if (sb_sigv4_sign(&canon, &CREDS, "us-east-1", "service", DATE, &again) != SB_OK)
        abort();
    if (strcmp(again.canonical_request, res->canonical_request) != 0)
        abort();
    sb_sigv4_result_free(&again);
    free(query);
    free(uri);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = sb_xmalloc(size + 1);
    char *end = text + size;
    char *cursor = text;
    sb_sigv4_header hdrs[MAX_HEADERS];
    size_t before = sb_secmem_in_use();
    sb_sigv4_result res;

    memcpy(text, data, size);
    text[size] = '\0';
    sb_sigv4_request req = {.method = next_line(&cursor, end)};
    req.path = next_line(&cursor, end);
    req.query = next_line(&cursor, end);
    req.header_count = read_headers(&cursor, end, hdrs);
    req.headers = hdrs;
    req.body = (const unsigned char *)cursor;
    req.body_len = (size_t)(end - cursor);

    sb_err err = sb_sigv4_sign(&req, &CREDS, "us-east-1", "service", DATE, &res);
    if (err != SB_OK && err != SB_E_INTERNAL)
        abort();
    if (err == SB_OK) {
        check_signed(&req, &res);
        sb_sigv4_result_free(&res);
    }
    if (sb_secmem_in_use() != before)
        abort();
    free(text);
    return 0;
}
