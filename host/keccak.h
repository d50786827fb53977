/* keccak.h -- Keccak-256 as Ethereum uses it (original padding 0x01, not SHA3's 0x06). */
#ifndef NV_KECCAK_H
#define NV_KECCAK_H

#include <stddef.h>
#include <stdint.h>

#define NV_KECCAK256_BYTES 32   /* digest length */
#define NV_KECCAK256_RATE 136   /* bytes absorbed per permutation: (1600 - 2 * 256) / 8 */

/* An incremental hash; the layout is public only so that callers can keep it
 * on the stack (no allocation on a hot path). Touch it through the functions. */
typedef struct nv_keccak {
    uint64_t a[25];                 /* the 5x5 lanes of the state */
    uint8_t buf[NV_KECCAK256_RATE]; /* a partial block not yet absorbed */
    size_t len;                     /* bytes in buf, always < NV_KECCAK256_RATE */
} nv_keccak;

void nv_keccak256_init(nv_keccak *k);
void nv_keccak256_update(nv_keccak *k, const void *in, size_t len);
void nv_keccak256_final(nv_keccak *k, uint8_t out[NV_KECCAK256_BYTES]); /* k is wiped */
void nv_keccak256(const void *in, size_t len, uint8_t out[NV_KECCAK256_BYTES]);

#endif
