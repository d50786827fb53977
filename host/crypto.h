/* crypto.h -- nuvion.crypto's C side: hashes, HMAC, encodings, AES-256-GCM, P-256, Ed25519, secp256k1. */
#ifndef NV_CRYPTO_H
#define NV_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

/* Bumped when a signature below changes; lua/lib/nuvion/crypto.lua refuses
 * to load against another version (its ffi.cdef would lie). */
#define NV_CRYPTO_ABI_VERSION 1

/* What every nv_ffi_crypto_* call returns (crypto.lua mirrors them). */
#define NV_CRYPTO_OK 0        /* done; a signature verified, a tag authenticated */
#define NV_CRYPTO_ERROR (-1)  /* bad input or a library failure; *err says which, never with a key */
#define NV_CRYPTO_DECLINED (-5) /* well-formed but not authentic: a bad signature or tag */

/* Sizes, fixed by the algorithms. */
#define NV_CRYPTO_SHA256_BYTES 32
#define NV_CRYPTO_SHA512_BYTES 64
#define NV_CRYPTO_AES_KEY_BYTES 32
#define NV_CRYPTO_GCM_NONCE_BYTES 12 /* the only size we accept: 96 bits, NIST SP 800-38D's default */
#define NV_CRYPTO_GCM_TAG_BYTES 16
#define NV_CRYPTO_EC_PUB_BYTES 65    /* SEC1 uncompressed: 0x04 || x || y */
#define NV_CRYPTO_EC_PRIV_BYTES 32
#define NV_CRYPTO_EC_SIG_RAW_BYTES 64 /* r || s */
#define NV_CRYPTO_EC_SIG_DER_BYTES_MAX 72
#define NV_CRYPTO_ED25519_KEY_BYTES 32
#define NV_CRYPTO_ED25519_SIG_BYTES 64
#define NV_CRYPTO_K1_SIG_BYTES 65     /* r || s || v, v = 27 + recovery id */

int nv_ffi_crypto_abi_version(void);

/* Hashes and MACs: out holds the digest; alg is 256 or 512. */
int nv_ffi_crypto_sha(int alg, const char *in, size_t len, unsigned char *out);
int nv_ffi_crypto_keccak256(const char *in, size_t len, unsigned char *out);
int nv_ffi_crypto_hmac(int alg, const char *key, size_t key_len, const char *msg, size_t msg_len,
                       unsigned char *out, const char **err);
/* 1 when equal, 0 when not; time depends on the lengths only. */
int nv_ffi_crypto_equal(const char *a, size_t a_len, const char *b, size_t b_len);
int nv_ffi_crypto_random(unsigned char *out, size_t len, const char **err);

/* Encodings. Encoders return the length written (out sized by the caller:
 * 2n for hex, 4 * ceil(n / 3) for base64). Decoders write *out_len, out
 * sized at least (in_len / 2) or (in_len / 4 * 3 + 3). url: base64url
 * alphabet without padding. */
size_t nv_ffi_crypto_hex_encode(const char *in, size_t len, char *out);
int nv_ffi_crypto_hex_decode(const char *in, size_t len, unsigned char *out, size_t *out_len,
                             const char **err);
size_t nv_ffi_crypto_b64_encode(const char *in, size_t len, char *out, int url);
int nv_ffi_crypto_b64_decode(const char *in, size_t len, unsigned char *out, size_t *out_len, int url,
                             const char **err);

/* AES-256-GCM, 12-byte nonce. Encrypt writes ciphertext || tag (len + 16);
 * decrypt reads ciphertext || tag and writes len - 16 bytes. */
int nv_ffi_crypto_aes256gcm_encrypt(const char *key, size_t key_len, const char *nonce, size_t nonce_len,
                                    const char *aad, size_t aad_len, const char *in, size_t len,
                                    unsigned char *out, const char **err);
int nv_ffi_crypto_aes256gcm_decrypt(const char *key, size_t key_len, const char *nonce, size_t nonce_len,
                                    const char *aad, size_t aad_len, const char *in, size_t len,
                                    unsigned char *out, const char **err);

/* ECDSA P-256 with SHA-256 over msg. der: 1 for a DER signature, 0 for r || s.
 * Public keys: SEC1, uncompressed (65) or compressed (33). */
int nv_ffi_crypto_p256_verify(const char *pub, size_t pub_len, const char *msg, size_t msg_len,
                              const char *sig, size_t sig_len, int der, const char **err);
int nv_ffi_crypto_p256_sign(const char *priv, size_t priv_len, const char *msg, size_t msg_len,
                            unsigned char *out, size_t *out_len, int der, const char **err);
int nv_ffi_crypto_p256_public(const char *priv, size_t priv_len, unsigned char *out, const char **err);
/* SPKI public key, PEM ("-----BEGIN PUBLIC KEY-----") or DER, to 65 bytes. */
int nv_ffi_crypto_p256_public_from_spki(const char *in, size_t len, int pem, unsigned char *out,
                                        const char **err);

/* Ed25519 (RFC 8032): 32-byte seed as the private key, 32-byte public key. */
int nv_ffi_crypto_ed25519_verify(const char *pub, size_t pub_len, const char *msg, size_t msg_len,
                                 const char *sig, size_t sig_len, const char **err);
int nv_ffi_crypto_ed25519_sign(const char *seed, size_t seed_len, const char *msg, size_t msg_len,
                               unsigned char *out, const char **err);
int nv_ffi_crypto_ed25519_public(const char *seed, size_t seed_len, unsigned char *out, const char **err);

/* secp256k1 through libsecp256k1, over a 32-byte hash. Signatures r || s
 * (64) or r || s || v (65); public keys 33 or 65 bytes in, 65 out. */
int nv_ffi_crypto_k1_verify(const char *pub, size_t pub_len, const char *hash, size_t hash_len,
                            const char *sig, size_t sig_len, const char **err);
int nv_ffi_crypto_k1_sign(const char *priv, size_t priv_len, const char *hash, size_t hash_len,
                          unsigned char *out, const char **err);
int nv_ffi_crypto_k1_recover(const char *hash, size_t hash_len, const char *sig, size_t sig_len,
                             unsigned char *out, const char **err);
int nv_ffi_crypto_k1_public(const char *priv, size_t priv_len, unsigned char *out, const char **err);

/* nuvion.crypto_c: the same HMAC through the Lua C API, kept to measure the
 * two boundaries against each other (bench/crypto, docs/crypto.md). */
int luaopen_nuvion_crypto_c(lua_State *L);

#endif
