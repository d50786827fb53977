/* keccak.c -- Keccak-f[1600] and Keccak-256 with the original 0x01 padding, as Ethereum hashes. */
#include "keccak.h"

#include <string.h>

#include "nv.h"

#define NV_KECCAK_ROUNDS 24 /* rounds of Keccak-f[1600] (FIPS 202, 12 + 2 * l with l = 6) */

_Static_assert(NV_KECCAK256_RATE % 8 == 0, "the rate must be whole lanes");
_Static_assert(NV_KECCAK256_RATE == 200 - 2 * NV_KECCAK256_BYTES, "capacity is twice the digest");

static const uint64_t keccak_rc[NV_KECCAK_ROUNDS] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808aULL, 0x8000000080008000ULL,
    0x000000000000808bULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008aULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800aULL, 0x800000008000000aULL,
    0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL,
};

/* Rho offsets and pi destinations, walked along the pi cycle that starts at lane 1. */
static const unsigned keccak_rho[24] = {1,  3,  6,  10, 15, 21, 28, 36, 45, 55, 2,  14,
                                        27, 41, 56, 8,  25, 43, 62, 18, 39, 61, 20, 44};
static const unsigned keccak_pi[24] = {10, 7,  11, 17, 18, 3, 5,  16, 8,  21, 24, 4,
                                       15, 23, 19, 13, 12, 2, 20, 14, 22, 9,  6,  1};

static inline uint64_t rotl64(uint64_t x, unsigned n)
{
    return (x << n) | (x >> (64 - n)); /* n is 1..63 here: no shift by 64 */
}

static void keccak_f1600(uint64_t a[25])
{
    for (int round = 0; round < NV_KECCAK_ROUNDS; round++) {
        uint64_t c[5], t;
        /* theta */
        for (int x = 0; x < 5; x++) c[x] = a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20];
        for (int x = 0; x < 5; x++) {
            t = c[(x + 4) % 5] ^ rotl64(c[(x + 1) % 5], 1);
            for (int y = 0; y < 25; y += 5) a[y + x] ^= t;
        }
        /* rho and pi */
        t = a[1];
        for (int i = 0; i < 24; i++) {
            unsigned j = keccak_pi[i];
            uint64_t next = a[j];
            a[j] = rotl64(t, keccak_rho[i]);
            t = next;
        }
        /* chi */
        for (int y = 0; y < 25; y += 5) {
            for (int x = 0; x < 5; x++) c[x] = a[y + x];
            for (int x = 0; x < 5; x++) a[y + x] = c[x] ^ (~c[(x + 1) % 5] & c[(x + 2) % 5]);
        }
        /* iota */
        a[0] ^= keccak_rc[round];
    }
}

/* Lanes are little-endian whatever the host's byte order. */
static inline uint64_t load64_le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void keccak_absorb_block(nv_keccak *k, const uint8_t *block)
{
    for (int i = 0; i < NV_KECCAK256_RATE / 8; i++) k->a[i] ^= load64_le(block + 8 * i);
    keccak_f1600(k->a);
}

void nv_keccak256_init(nv_keccak *k)
{
    memset(k, 0, sizeof(*k));
}

void nv_keccak256_update(nv_keccak *k, const void *in, size_t len)
{
    const uint8_t *p = in;
    nv_assert(k->len < NV_KECCAK256_RATE);
    if (k->len > 0) {
        size_t take = NV_KECCAK256_RATE - k->len;
        if (take > len) take = len;
        memcpy(k->buf + k->len, p, take);
        k->len += take;
        p += take;
        len -= take;
        if (k->len < NV_KECCAK256_RATE) return;
        keccak_absorb_block(k, k->buf);
        k->len = 0;
    }
    for (; len >= NV_KECCAK256_RATE; p += NV_KECCAK256_RATE, len -= NV_KECCAK256_RATE)
        keccak_absorb_block(k, p);
    if (len > 0) memcpy(k->buf, p, len);
    k->len = len;
}

void nv_keccak256_final(nv_keccak *k, uint8_t out[NV_KECCAK256_BYTES])
{
    nv_assert(k->len < NV_KECCAK256_RATE);
    /* pad10*1 with Keccak's domain byte 0x01 (SHA3-256 would put 0x06 here);
     * when one byte is left, 0x01 and 0x80 land on it together as 0x81. */
    memset(k->buf + k->len, 0, NV_KECCAK256_RATE - k->len);
    k->buf[k->len] ^= 0x01;
    k->buf[NV_KECCAK256_RATE - 1] ^= 0x80;
    keccak_absorb_block(k, k->buf);
    for (int i = 0; i < NV_KECCAK256_BYTES; i++) out[i] = (uint8_t)(k->a[i / 8] >> (8 * (i % 8)));
    /* The state can hold a secret's trace (a private key hashed to an address). */
    volatile uint8_t *v = (volatile uint8_t *)k;
    for (size_t i = 0; i < sizeof(*k); i++) v[i] = 0;
}

void nv_keccak256(const void *in, size_t len, uint8_t out[NV_KECCAK256_BYTES])
{
    nv_keccak k;
    nv_keccak256_init(&k);
    nv_keccak256_update(&k, in, len);
    nv_keccak256_final(&k, out);
}
