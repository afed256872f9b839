/* The API port's request handling: parse and validate, identify the
 * caller, run each asked-for secret through the broker, audit, respond
 * (DESIGN.md sections 2 and 5). Called by net/server on HTTP threads; the
 * broker's completions resume suspended requests from the loop thread. */
#ifndef SB_NET_API_H
#define SB_NET_API_H

#include <microhttpd.h>

#include "net/server.h"

typedef struct sb_api_req sb_api_req;

/* A new request, from libmicrohttpd's URI log callback (the raw target as
 * sent, before decoding). */
sb_api_req *sb_api_begin(sb_server *s, struct MHD_Connection *conn, const char *raw_uri);

/* libmicrohttpd's access handler for the API port. */
enum MHD_Result sb_api_handle(sb_api_req *r, struct MHD_Connection *conn, const char *method,
                              const char *upload_data, size_t *upload_data_size);

/* libmicrohttpd is done with the request (answered or not). */
void sb_api_end(sb_api_req *r, enum MHD_RequestTerminationCode toe);

#endif
