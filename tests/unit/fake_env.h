/* A fake environment for the unit tests of code that reads its settings
 * through a lookup function (core/config, clients/aws_creds and
 * clients/aws_proto): set() adds a variable, lookup() finds one, and
 * assigning nvars keeps only the first nvars (0 empties it). Included by
 * one test program at a time, so the definitions are static. */
#ifndef SB_TESTS_UNIT_FAKE_ENV_H
#define SB_TESTS_UNIT_FAKE_ENV_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_ENV_MAX 32

static const char *vars[FAKE_ENV_MAX][2];
static size_t nvars;

static const char *lookup(const char *name)
{
    for (size_t i = 0; i < nvars; i++) {
        if (!strcmp(vars[i][0], name))
            return vars[i][1];
    }
    return NULL;
}

static void set(const char *name, const char *value)
{
    if (nvars == FAKE_ENV_MAX)
        abort(); /* a test with more variables: raise FAKE_ENV_MAX */
    vars[nvars][0] = name;
    vars[nvars][1] = value;
    nvars++;
}

#endif
