/* crypto.c -- hashes, HMAC, compare, CSPRNG, hex/base64 and AES-256-GCM for Lua, through FFI entry points. */
#include "crypto.h"

#include <string.h>

#include <lauxlib.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "keccak.h"
#include "nv.h"
#include "nv_limits.h"

static const char ERR_INIT[] = "crypto library initialisation failed";
static const char ERR_LIB[] = "crypto library call failed";
static const char ERR_ALG[] = "unsupported digest (want 256 or 512)";
static const char ERR_KEY_LEN[] = "invalid key length";
static const char ERR_NONCE_LEN[] = "invalid nonce length";
static const char ERR_TOO_LONG[] = "input too long";
static const char ERR_SHORT[] = "ciphertext shorter than its tag";
static const char ERR_HEX[] = "invalid hex";
static const char ERR_B64[] = "invalid base64";

/* Fetched once per process: OpenSSL 3's implicit fetch on every call (SHA256(),
 * HMAC()) costs more than hashing a small message. A worker is one thread, so
 * the contexts are reused without locks; they stay reachable until exit. */
static struct {
    int ready;
    EVP_MD *sha256, *sha512;
    EVP_MD_CTX *md;
    EVP_MAC *hmac;
    EVP_MAC_CTX *hmac256, *hmac512;
    EVP_CIPHER *gcm;
    EVP_CIPHER_CTX *gcm_ctx;
} cr;

static EVP_MAC_CTX *hmac_ctx_new(const char *digest)
{
    EVP_MAC_CTX *c = EVP_MAC_CTX_new(cr.hmac);
    OSSL_PARAM p[] = {OSSL_PARAM_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)digest, 0), OSSL_PARAM_END};
    if (c != NULL && EVP_MAC_CTX_set_params(c, p) != 1) {
        EVP_MAC_CTX_free(c);
        return NULL;
    }
    return c;
}

static int crypto_init(void)
{
    if (cr.ready) return NV_OK;
    cr.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    cr.sha512 = EVP_MD_fetch(NULL, "SHA512", NULL);
    cr.md = EVP_MD_CTX_new();
    cr.hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    cr.gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    cr.gcm_ctx = EVP_CIPHER_CTX_new();
    if (cr.sha256 == NULL || cr.sha512 == NULL || cr.md == NULL || cr.hmac == NULL || cr.gcm == NULL ||
        cr.gcm_ctx == NULL)
        goto err;
    cr.hmac256 = hmac_ctx_new("SHA256");
    cr.hmac512 = hmac_ctx_new("SHA512");
    if (cr.hmac256 == NULL || cr.hmac512 == NULL) goto err;
    cr.ready = 1;
    return NV_OK;
err:
    EVP_MAC_CTX_free(cr.hmac256);
    EVP_MAC_CTX_free(cr.hmac512);
    EVP_CIPHER_CTX_free(cr.gcm_ctx);
    EVP_CIPHER_free(cr.gcm);
    EVP_MAC_free(cr.hmac);
    EVP_MD_CTX_free(cr.md);
    EVP_MD_free(cr.sha512);
    EVP_MD_free(cr.sha256);
    memset(&cr, 0, sizeof(cr));
    return NV_ERR;
}

int nv_ffi_crypto_abi_version(void)
{
    return NV_CRYPTO_ABI_VERSION;
}

/* ---- hashes, HMAC, compare, random ------------------------------------ */

int nv_ffi_crypto_sha(int alg, const char *in, size_t len, unsigned char *out)
{
    if (crypto_init() != NV_OK || (alg != 256 && alg != 512)) return NV_CRYPTO_ERROR;
    if (EVP_DigestInit_ex2(cr.md, alg == 256 ? cr.sha256 : cr.sha512, NULL) != 1 ||
        EVP_DigestUpdate(cr.md, in, len) != 1 || EVP_DigestFinal_ex(cr.md, out, NULL) != 1)
        return NV_CRYPTO_ERROR;
    return NV_CRYPTO_OK;
}

int nv_ffi_crypto_keccak256(const char *in, size_t len, unsigned char *out)
{
    nv_keccak256(in, len, out);
    return NV_CRYPTO_OK;
}

int nv_ffi_crypto_hmac(int alg, const char *key, size_t key_len, const char *msg, size_t msg_len,
                       unsigned char *out, const char **err)
{
    size_t n = 0;
    if (crypto_init() != NV_OK) return *err = ERR_INIT, NV_CRYPTO_ERROR;
    if (alg != 256 && alg != 512) return *err = ERR_ALG, NV_CRYPTO_ERROR;
    if (key_len > NV_CRYPTO_HMAC_KEY_BYTES_MAX) return *err = ERR_KEY_LEN, NV_CRYPTO_ERROR;
    EVP_MAC_CTX *c = alg == 256 ? cr.hmac256 : cr.hmac512;
    /* An empty key is legal HMAC; OpenSSL wants a non-NULL pointer for it. */
    if (EVP_MAC_init(c, (const unsigned char *)(key_len ? key : ""), key_len, NULL) != 1 ||
        EVP_MAC_update(c, (const unsigned char *)msg, msg_len) != 1 ||
        EVP_MAC_final(c, out, &n, NV_CRYPTO_SHA512_BYTES) != 1)
        return *err = ERR_LIB, NV_CRYPTO_ERROR;
    nv_assert(n == (size_t)alg / 8);
    return NV_CRYPTO_OK;
}

int nv_ffi_crypto_equal(const char *a, size_t a_len, const char *b, size_t b_len)
{
    /* The lengths are public (a MAC's length is its algorithm's); the bytes are not. */
    if (a_len != b_len) return 0;
    return a_len == 0 || CRYPTO_memcmp(a, b, a_len) == 0;
}

int nv_ffi_crypto_random(unsigned char *out, size_t len, const char **err)
{
    if (len > NV_CRYPTO_RANDOM_BYTES_MAX) return *err = ERR_TOO_LONG, NV_CRYPTO_ERROR;
    if (len == 0) return NV_CRYPTO_OK;
    if (RAND_bytes(out, (int)len) != 1) return *err = "random generator failed", NV_CRYPTO_ERROR;
    return NV_CRYPTO_OK;
}

/* ---- hex and base64 (RFC 4648) ---------------------------------------- */

static const char hex_digits[] = "0123456789abcdef";

size_t nv_ffi_crypto_hex_encode(const char *in, size_t len, char *out)
{
    const unsigned char *p = (const unsigned char *)in;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex_digits[p[i] >> 4];
        out[2 * i + 1] = hex_digits[p[i] & 15];
    }
    return 2 * len;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int nv_ffi_crypto_hex_decode(const char *in, size_t len, unsigned char *out, size_t *out_len,
                             const char **err)
{
    const unsigned char *p = (const unsigned char *)in;
    if (len % 2 != 0) return *err = ERR_HEX, NV_CRYPTO_ERROR;
    for (size_t i = 0; i < len; i += 2) {
        int hi = hex_value(p[i]), lo = hex_value(p[i + 1]);
        if (hi < 0 || lo < 0) return *err = ERR_HEX, NV_CRYPTO_ERROR;
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    *out_len = len / 2;
    return NV_CRYPTO_OK;
}

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t nv_ffi_crypto_b64_encode(const char *in, size_t len, char *out, int url)
{
    const unsigned char *p = (const unsigned char *)in;
    const char *abc = url ? b64_url : b64_std;
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        if (i + 1 < len) out[o++] = abc[(v >> 6) & 63];
        else if (!url) out[o++] = '=';
        if (!url) out[o++] = '=';
    }
    return o;
}

static int b64_value(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == (url ? '-' : '+')) return 62;
    if (c == (url ? '_' : '/')) return 63;
    return -1;
}

/* Strict: the standard alphabet needs its padding, base64url has none; no
 * whitespace; the bits past the last byte must be zero, so each byte string
 * has exactly one accepted encoding (a MAC over it cannot be sidestepped). */
int nv_ffi_crypto_b64_decode(const char *in, size_t len, unsigned char *out, size_t *out_len, int url,
                             const char **err)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t pad = 0, o = 0;
    if (!url) {
        if (len % 4 != 0) return *err = ERR_B64, NV_CRYPTO_ERROR;
        if (len > 0 && p[len - 1] == '=') pad++;
        if (len > 1 && p[len - 2] == '=') pad++;
        len -= pad;
    } else if (len % 4 == 1) {
        return *err = ERR_B64, NV_CRYPTO_ERROR;
    }
    uint32_t acc = 0;
    size_t bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value(p[i], url);
        if (v < 0) return *err = ERR_B64, NV_CRYPTO_ERROR;
        acc = (acc << 6 | (uint32_t)v) & 0xFFFFFF;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0) return *err = ERR_B64, NV_CRYPTO_ERROR;
    *out_len = o;
    return NV_CRYPTO_OK;
}

/* ---- AES-256-GCM --------------------------------------------------------- */

static int gcm_check(size_t key_len, size_t nonce_len, size_t aad_len, size_t len, const char **err)
{
    if (crypto_init() != NV_OK) return *err = ERR_INIT, NV_ERR;
    if (key_len != NV_CRYPTO_AES_KEY_BYTES) return *err = ERR_KEY_LEN, NV_ERR;
    if (nonce_len != NV_CRYPTO_GCM_NONCE_BYTES) return *err = ERR_NONCE_LEN, NV_ERR;
    if (len > NV_CRYPTO_AEAD_BYTES_MAX + NV_CRYPTO_GCM_TAG_BYTES || aad_len > NV_CRYPTO_AEAD_BYTES_MAX)
        return *err = ERR_TOO_LONG, NV_ERR;
    return NV_OK;
}

int nv_ffi_crypto_aes256gcm_encrypt(const char *key, size_t key_len, const char *nonce, size_t nonce_len,
                                    const char *aad, size_t aad_len, const char *in, size_t len,
                                    unsigned char *out, const char **err)
{
    EVP_CIPHER_CTX *c;
    int n = 0;
    if (gcm_check(key_len, nonce_len, aad_len, len, err) != NV_OK) return NV_CRYPTO_ERROR;
    if (len > NV_CRYPTO_AEAD_BYTES_MAX) return *err = ERR_TOO_LONG, NV_CRYPTO_ERROR;
    /* Reused, not reset: the key schedule of the last call stays in it until
     * the next one (a reset per call frees and reallocates its state). */
    c = cr.gcm_ctx;
    /* 12 bytes is GCM's default IV length: no EVP_CTRL_GCM_SET_IVLEN needed. */
    if (EVP_EncryptInit_ex2(c, cr.gcm, (const unsigned char *)key, (const unsigned char *)nonce, NULL) != 1 ||
        (aad_len > 0 && EVP_EncryptUpdate(c, NULL, &n, (const unsigned char *)aad, (int)aad_len) != 1) ||
        (len > 0 && EVP_EncryptUpdate(c, out, &n, (const unsigned char *)in, (int)len) != 1) ||
        EVP_EncryptFinal_ex(c, out + len, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, NV_CRYPTO_GCM_TAG_BYTES, out + len) != 1)
        return *err = ERR_LIB, NV_CRYPTO_ERROR;
    return NV_CRYPTO_OK;
}

int nv_ffi_crypto_aes256gcm_decrypt(const char *key, size_t key_len, const char *nonce, size_t nonce_len,
                                    const char *aad, size_t aad_len, const char *in, size_t len,
                                    unsigned char *out, const char **err)
{
    EVP_CIPHER_CTX *c;
    int n = 0;
    if (gcm_check(key_len, nonce_len, aad_len, len, err) != NV_OK) return NV_CRYPTO_ERROR;
    if (len < NV_CRYPTO_GCM_TAG_BYTES) return *err = ERR_SHORT, NV_CRYPTO_ERROR;
    len -= NV_CRYPTO_GCM_TAG_BYTES;
    c = cr.gcm_ctx;
    if (EVP_DecryptInit_ex2(c, cr.gcm, (const unsigned char *)key, (const unsigned char *)nonce, NULL) != 1 ||
        (aad_len > 0 && EVP_DecryptUpdate(c, NULL, &n, (const unsigned char *)aad, (int)aad_len) != 1) ||
        (len > 0 && EVP_DecryptUpdate(c, out, &n, (const unsigned char *)in, (int)len) != 1) ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, NV_CRYPTO_GCM_TAG_BYTES, (void *)(in + len)) != 1)
        return *err = ERR_LIB, NV_CRYPTO_ERROR;
    if (EVP_DecryptFinal_ex(c, out + len, &n) != 1) {
        /* The plaintext written so far is not authentic: it must not leak out. */
        OPENSSL_cleanse(out, len);
        return *err = "authentication failed", NV_CRYPTO_DECLINED;
    }
    return NV_CRYPTO_OK;
}

/* ---- nuvion.crypto_c: the Lua C API boundary, for comparison ------------ */

static int l_hmac_sha256(lua_State *L)
{
    size_t key_len, msg_len;
    const char *key = luaL_checklstring(L, 1, &key_len);
    const char *msg = luaL_checklstring(L, 2, &msg_len);
    unsigned char out[NV_CRYPTO_SHA256_BYTES];
    const char *err = NULL;
    if (nv_ffi_crypto_hmac(256, key, key_len, msg, msg_len, out, &err) != NV_CRYPTO_OK) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushlstring(L, (const char *)out, sizeof(out));
    return 1;
}

int luaopen_nuvion_crypto_c(lua_State *L)
{
    static const luaL_Reg fns[] = {{"hmac_sha256", l_hmac_sha256}, {NULL, NULL}};
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_pushinteger(L, NV_CRYPTO_ABI_VERSION);
    lua_setfield(L, -2, "abi_version");
    /* Limits the Lua side enforces, so that they stay in nv_limits.h alone. */
    lua_pushinteger(L, NV_CRYPTO_MASTER_KEYS_MAX);
    lua_setfield(L, -2, "master_keys_max");
    lua_pushinteger(L, NV_CRYPTO_KEY_ID_BYTES_MAX);
    lua_setfield(L, -2, "key_id_bytes_max");
    lua_pushinteger(L, NV_CRYPTO_AEAD_BYTES_MAX);
    lua_setfield(L, -2, "aead_bytes_max");
    lua_pushinteger(L, NV_CRYPTO_RANDOM_BYTES_MAX);
    lua_setfield(L, -2, "random_bytes_max");
    return 1;
}
