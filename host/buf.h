/* buf.h -- a contiguous byte buffer that grows up to a stated bound. */
#ifndef NV_BUF_H
#define NV_BUF_H

#include <stdlib.h>
#include <string.h>

#include "nv.h"

typedef struct nv_buf {
    char *data;
    size_t len; /* bytes in use, data[0..len) */
    size_t cap; /* bytes allocated */
} nv_buf;

/* Makes room for `extra` more bytes without growing past `max` bytes in all.
 * Returns NV_OK, or NV_ERR when the bound or memory would be exceeded. */
static inline int nv_buf_reserve(nv_buf *b, size_t extra, size_t max) {
    nv_assert(b->len <= b->cap);
    /* The bound holds even when capacity is already there (a buffer reused
     * with a smaller bound), and the sums below cannot overflow. */
    if (b->len > max || extra > max - b->len) return NV_ERR;
    if (extra <= b->cap - b->len) return NV_OK;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra) cap *= 2;
    if (cap > max) cap = max;
    char *p = realloc(b->data, cap);
    if (p == NULL) return NV_ERR;
    b->data = p;
    b->cap = cap;
    return NV_OK;
}

static inline int nv_buf_append(nv_buf *b, const void *p, size_t n, size_t max) {
    if (nv_buf_reserve(b, n, max) != NV_OK) return NV_ERR;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return NV_OK;
}

/* Drops the first n bytes, keeping the rest at the front. */
static inline void nv_buf_consume(nv_buf *b, size_t n) {
    nv_assert(n <= b->len);
    if (n < b->len) memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

/* Gives back memory of a buffer that grew large for one big message. */
static inline void nv_buf_shrink(nv_buf *b, size_t keep_cap) {
    if (b->cap > keep_cap && b->len == 0) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

static inline void nv_buf_free(nv_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

#endif
