/* nv.h -- status codes and small helpers shared by every module of the host. */
#ifndef NV_H
#define NV_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

/* Status codes returned by host functions. A module may add its own, but
 * these three mean the same everywhere. */
#define NV_OK 0     /* done */
#define NV_ERR (-1) /* failed; the caller has an error text or errno */
#define NV_AGAIN 1  /* not yet: wait for the loop and call again */

#define NV_UNUSED(x) ((void)(x))
#define NV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Assertions stay on in release builds: an invariant that breaks in
 * production must stop the worker (the supervisor respawns it) rather than
 * let it move money on a corrupt state. */
#define nv_assert(cond) assert(cond)

#endif
