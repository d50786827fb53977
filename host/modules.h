/* modules.h -- the table of C modules preloaded into every Lua state. */
#ifndef NV_MODULES_H
#define NV_MODULES_H

#include <lua.h>

typedef struct nv_module {
    const char *name;      /* require name, e.g. "nuvion.pg_c" */
    lua_CFunction open;
} nv_module;

extern const nv_module nv_modules[]; /* ends with {NULL, NULL} */

#endif
