/* The ops port: GET /healthz (the process is alive), GET /readyz (ready to
 * serve, or why not, per backend and for the audit log) and GET /metrics
 * (Prometheus text). Plain HTTP for the kubelet and Prometheus; no secret
 * is ever served here. */
#ifndef SB_NET_OPS_H
#define SB_NET_OPS_H

#include <microhttpd.h>

#include "net/server.h"

/* libmicrohttpd's access handler for the ops port. */
enum MHD_Result sb_ops_handle(sb_server *s, struct MHD_Connection *conn, const char *url,
                              const char *method, size_t *upload_data_size, void **con_cls);

#endif
