/* serve.h -- `nuvion serve`: a supervisor and its HTTP worker processes. */
#ifndef NV_SERVE_H
#define NV_SERVE_H

int nv_serve(const char *service);

#endif
