/* Memory allocation with the project's one out-of-memory policy: the process
 * aborts. A broker that cannot allocate a few hundred bytes cannot serve or
 * audit correctly, and Kubernetes restarts it; callers therefore never check
 * these results for NULL. */
#ifndef SB_CORE_ALLOC_H
#define SB_CORE_ALLOC_H

#include <stddef.h>

void *sb_xmalloc(size_t size);
void *sb_xcalloc(size_t count, size_t size);
void *sb_xrealloc(void *ptr, size_t size);
char *sb_xstrdup(const char *s);
char *sb_xstrndup(const char *s, size_t len);

/* Formats like snprintf into a new string; aborts on OOM. */
char *sb_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
