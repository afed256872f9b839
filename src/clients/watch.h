/* A metadata-only watch of Kubernetes Secrets, so cached values can be
 * dropped when their Secret changes (CACHE_INVALIDATION=watch, DESIGN.md
 * section 7). Only object metadata is asked for (the PartialObjectMetadata
 * representation), never the data; a handler hears "ns/name changed" and
 * "changes may have been missed".
 *
 * The watch lists once to learn the current resourceVersion, then watches
 * from it with bookmarks, resumes from the last version it saw when the
 * stream ends or breaks, lists again when the server says that version is
 * gone (410, as an HTTP status or an ERROR event), and retries failures
 * with capped, jittered backoff. Everything runs on the http loop thread,
 * and so do the handler's calls. */
#ifndef SB_CLIENTS_WATCH_H
#define SB_CLIENTS_WATCH_H

#include <stddef.h>

#include "clients/http.h"
#include "clients/kube.h"
#include "core/error.h"

typedef struct sb_watch sb_watch;

typedef struct sb_watch_handler {
    /* Secret ns/name was added, changed or deleted. */
    void (*changed)(void *ud, const char *ns, const char *name);
    /* Changes may have been missed (a new list was needed): anything kept
     * about any Secret may be stale. Also called after the first list, for
     * what was cached before the watch began. */
    void (*lost)(void *ud);
    void *ud;
} sb_watch_handler;

/* A watch of the Secrets of namespace ns, or of every namespace when ns is
 * NULL. It does nothing until started. */
sb_watch *sb_watch_new(sb_kube *kube, sb_http *http, const char *ns, sb_watch_handler handler);

/* Starts it on the loop. Any thread. */
void sb_watch_start(sb_watch *w);

/* Frees it. Call after sb_http_stop, which ends the stream. Accepts NULL. */
void sb_watch_free(sb_watch *w);

/* Reads a piece of the watch stream (JSON events, one a line) and applies
 * the events it completes. SB_OK: read on. SB_E_UNAVAILABLE: the server
 * ended the watch with an ERROR event; resume from the last version.
 * SB_E_UPSTREAM: an event could not be read, or the version is gone (410):
 * events may be lost, list again. Loop thread (and tests). */
SB_MUST_CHECK sb_err sb_watch_feed(sb_watch *w, const void *data, size_t len);

/* The resourceVersion a resumed watch starts from; "" before any. */
const char *sb_watch_resource_version(const sb_watch *w);

#endif
