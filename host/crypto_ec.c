/* crypto_ec.c -- signatures for Lua: ECDSA P-256 and Ed25519 (OpenSSL), secp256k1 (libsecp256k1). */
#include "crypto.h"

#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <secp256k1.h>
#include <secp256k1_recovery.h>

#include "nv.h"
#include "nv_limits.h"

static const char ERR_INIT[] = "crypto library initialisation failed";
static const char ERR_LIB[] = "crypto library call failed";
static const char ERR_PUB[] = "invalid public key";
static const char ERR_PRIV[] = "invalid private key";
static const char ERR_SIG[] = "invalid signature encoding";
static const char ERR_SIG_LEN[] = "invalid signature length";
static const char ERR_HASH_LEN[] = "invalid hash length (want 32 bytes)";
static const char ERR_BAD[] = "signature mismatch";

/* ---- ECDSA P-256 ----------------------------------------------------------- */

/* Built from SEC1 bytes: fromdata decodes the point with EC_POINT_oct2point,
 * which refuses a point off the curve. */
static EVP_PKEY *p256_from_pub(const char *pub, size_t pub_len)
{
    EVP_PKEY *pkey = NULL;
    if (!((pub_len == 65 && pub[0] == 0x04) || (pub_len == 33 && (pub[0] == 0x02 || pub[0] == 0x03))))
        return NULL;
    OSSL_PARAM p[] = {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0),
                      OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pub, pub_len), OSSL_PARAM_END};
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (c == NULL || EVP_PKEY_fromdata_init(c) != 1 || EVP_PKEY_fromdata(c, &pkey, EVP_PKEY_PUBLIC_KEY, p) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(c);
    return pkey;
}

/* Public point of a private scalar, SEC1 uncompressed; NV_ERR for a scalar
 * outside [1, n - 1]. */
static int p256_pub_of(const BIGNUM *d, unsigned char out[NV_CRYPTO_EC_PUB_BYTES])
{
    int rc = NV_ERR;
    EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    EC_POINT *q = g ? EC_POINT_new(g) : NULL;
    if (q == NULL) goto err;
    if (BN_is_zero(d) || BN_is_negative(d) || BN_cmp(d, EC_GROUP_get0_order(g)) >= 0) goto err;
    if (EC_POINT_mul(g, q, d, NULL, NULL, NULL) != 1 ||
        EC_POINT_point2oct(g, q, POINT_CONVERSION_UNCOMPRESSED, out, NV_CRYPTO_EC_PUB_BYTES, NULL) !=
            NV_CRYPTO_EC_PUB_BYTES)
        goto err;
    rc = NV_OK;
err:
    EC_POINT_free(q);
    EC_GROUP_free(g);
    return rc;
}

static EVP_PKEY *p256_from_priv(const char *priv, size_t priv_len, const char **err)
{
    unsigned char pub[NV_CRYPTO_EC_PUB_BYTES];
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *c = NULL;
    OSSL_PARAM_BLD *b = NULL;
    BIGNUM *d = NULL;
    *err = ERR_PRIV;
    if (priv_len != NV_CRYPTO_EC_PRIV_BYTES) return NULL;
    d = BN_secure_new();
    if (d == NULL || BN_bin2bn((const unsigned char *)priv, (int)priv_len, d) == NULL) goto err;
    if (p256_pub_of(d, pub) != NV_OK) goto err;
    *err = ERR_LIB;
    b = OSSL_PARAM_BLD_new();
    if (b == NULL || OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_PRIV_KEY, d) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub)) != 1)
        goto err;
    params = OSSL_PARAM_BLD_to_param(b);
    c = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (params == NULL || c == NULL || EVP_PKEY_fromdata_init(c) != 1 ||
        EVP_PKEY_fromdata(c, &pkey, EVP_PKEY_KEYPAIR, params) != 1)
        pkey = NULL;
err:
    EVP_PKEY_CTX_free(c);
    OSSL_PARAM_free(params); /* d is a secure BN: the builder copied it into secure memory, cleared here */
    OSSL_PARAM_BLD_free(b);
    BN_clear_free(d);
    return pkey;
}

/* r || s to DER; returns the DER length or 0. */
static int p256_raw_to_der(const unsigned char *raw, unsigned char *der)
{
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, 32, NULL), *sv = BN_bin2bn(raw + 32, 32, NULL);
    int n = 0;
    if (s == NULL || r == NULL || sv == NULL || ECDSA_SIG_set0(s, r, sv) != 1) {
        BN_free(r);
        BN_free(sv);
        ECDSA_SIG_free(s);
        return 0;
    }
    n = i2d_ECDSA_SIG(s, &der); /* advances der; the caller kept its start */
    ECDSA_SIG_free(s);
    return n > 0 && n <= NV_CRYPTO_EC_SIG_DER_BYTES_MAX ? n : 0;
}

int nv_ffi_crypto_p256_verify(const char *pub, size_t pub_len, const char *msg, size_t msg_len,
                              const char *sig, size_t sig_len, int der, const char **err)
{
    unsigned char der_buf[NV_CRYPTO_EC_SIG_DER_BYTES_MAX];
    const unsigned char *s = (const unsigned char *)sig;
    size_t s_len = sig_len;
    int rc = NV_CRYPTO_ERROR;
    if (!der) {
        if (sig_len != NV_CRYPTO_EC_SIG_RAW_BYTES) return *err = ERR_SIG_LEN, NV_CRYPTO_ERROR;
        int n = p256_raw_to_der(s, der_buf);
        if (n == 0) return *err = ERR_SIG, NV_CRYPTO_ERROR;
        s = der_buf;
        s_len = (size_t)n;
    } else if (sig_len == 0 || sig_len > NV_CRYPTO_EC_SIG_DER_BYTES_MAX) {
        return *err = ERR_SIG_LEN, NV_CRYPTO_ERROR;
    }
    EVP_PKEY *pkey = p256_from_pub(pub, pub_len);
    if (pkey == NULL) return *err = ERR_PUB, NV_CRYPTO_ERROR;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (c == NULL || EVP_DigestVerifyInit_ex(c, NULL, "SHA256", NULL, NULL, pkey, NULL) != 1) {
        *err = ERR_LIB;
        goto done;
    }
    /* 1 good, 0 bad; a negative value is a malformed DER (OpenSSL also
     * refuses a DER that does not re-encode to the same bytes). */
    int v = EVP_DigestVerify(c, s, s_len, (const unsigned char *)msg, msg_len);
    if (v == 1) rc = NV_CRYPTO_OK;
    else if (v == 0) rc = (*err = ERR_BAD, NV_CRYPTO_DECLINED);
    else rc = (*err = der ? ERR_SIG : ERR_BAD, der ? NV_CRYPTO_ERROR : NV_CRYPTO_DECLINED);
done:
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(pkey);
    return rc;
}

static int p256_der_to_raw(const unsigned char *der, size_t len, unsigned char *out)
{
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &der, (long)len);
    if (s == NULL) return NV_ERR;
    int ok = BN_bn2binpad(ECDSA_SIG_get0_r(s), out, 32) == 32 && BN_bn2binpad(ECDSA_SIG_get0_s(s), out + 32, 32) == 32;
    ECDSA_SIG_free(s);
    return ok ? NV_OK : NV_ERR;
}

int nv_ffi_crypto_p256_sign(const char *priv, size_t priv_len, const char *msg, size_t msg_len,
                            unsigned char *out, size_t *out_len, int der, const char **err)
{
    unsigned char buf[NV_CRYPTO_EC_SIG_DER_BYTES_MAX];
    size_t n = sizeof(buf);
    int rc = NV_CRYPTO_ERROR;
    EVP_PKEY *pkey = p256_from_priv(priv, priv_len, err);
    if (pkey == NULL) return NV_CRYPTO_ERROR;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    *err = ERR_LIB;
    if (c == NULL || EVP_DigestSignInit_ex(c, NULL, "SHA256", NULL, NULL, pkey, NULL) != 1 ||
        EVP_DigestSign(c, buf, &n, (const unsigned char *)msg, msg_len) != 1)
        goto done;
    if (der) {
        memcpy(out, buf, n);
        *out_len = n;
    } else {
        if (p256_der_to_raw(buf, n, out) != NV_OK) goto done;
        *out_len = NV_CRYPTO_EC_SIG_RAW_BYTES;
    }
    rc = NV_CRYPTO_OK;
done:
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(pkey);
    return rc;
}

int nv_ffi_crypto_p256_public(const char *priv, size_t priv_len, unsigned char *out, const char **err)
{
    BIGNUM *d;
    int rc;
    if (priv_len != NV_CRYPTO_EC_PRIV_BYTES) return *err = ERR_PRIV, NV_CRYPTO_ERROR;
    d = BN_secure_new();
    if (d == NULL || BN_bin2bn((const unsigned char *)priv, (int)priv_len, d) == NULL) {
        BN_clear_free(d);
        return *err = ERR_LIB, NV_CRYPTO_ERROR;
    }
    rc = p256_pub_of(d, out);
    BN_clear_free(d);
    if (rc != NV_OK) return *err = ERR_PRIV, NV_CRYPTO_ERROR;
    return NV_CRYPTO_OK;
}

int nv_ffi_crypto_p256_public_from_spki(const char *in, size_t len, int pem, unsigned char *out,
                                        const char **err)
{
    EVP_PKEY *pkey = NULL;
    char group[32];
    size_t n = 0;
    int rc = NV_CRYPTO_ERROR;
    if (len == 0 || len > NV_CRYPTO_PEM_BYTES_MAX) return *err = ERR_PUB, NV_CRYPTO_ERROR;
    if (pem) {
        BIO *b = BIO_new_mem_buf(in, (int)len);
        if (b == NULL) return *err = ERR_LIB, NV_CRYPTO_ERROR;
        pkey = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
        BIO_free(b);
    } else {
        const unsigned char *p = (const unsigned char *)in;
        pkey = d2i_PUBKEY(NULL, &p, (long)len);
        if (pkey != NULL && p != (const unsigned char *)in + len) {
            EVP_PKEY_free(pkey); /* trailing bytes after the SPKI */
            pkey = NULL;
        }
    }
    *err = ERR_PUB;
    if (pkey == NULL || !EVP_PKEY_is_a(pkey, "EC") ||
        EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL) != 1 ||
        strcmp(group, "prime256v1") != 0)
        goto done;
    if (EVP_PKEY_set_utf8_string_param(pkey, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, "uncompressed") != 1 ||
        EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, out, NV_CRYPTO_EC_PUB_BYTES,
                                        &n) != 1 ||
        n != NV_CRYPTO_EC_PUB_BYTES)
        goto done;
    rc = NV_CRYPTO_OK;
done:
    EVP_PKEY_free(pkey);
    return rc;
}

/* ---- Ed25519 ------------------------------------------------------------- */

int nv_ffi_crypto_ed25519_verify(const char *pub, size_t pub_len, const char *msg, size_t msg_len,
                                 const char *sig, size_t sig_len, const char **err)
{
    int rc = NV_CRYPTO_ERROR;
    if (pub_len != NV_CRYPTO_ED25519_KEY_BYTES) return *err = ERR_PUB, NV_CRYPTO_ERROR;
    if (sig_len != NV_CRYPTO_ED25519_SIG_BYTES) return *err = ERR_SIG_LEN, NV_CRYPTO_ERROR;
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, (const unsigned char *)pub, pub_len);
    if (pkey == NULL) return *err = ERR_PUB, NV_CRYPTO_ERROR;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (c == NULL || EVP_DigestVerifyInit_ex(c, NULL, NULL, NULL, NULL, pkey, NULL) != 1) {
        *err = ERR_LIB;
        goto done;
    }
    /* A public key that does not decode to a point fails here, as a mismatch. */
    if (EVP_DigestVerify(c, (const unsigned char *)sig, sig_len, (const unsigned char *)msg, msg_len) == 1)
        rc = NV_CRYPTO_OK;
    else
        rc = (*err = ERR_BAD, NV_CRYPTO_DECLINED);
done:
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(pkey);
    return rc;
}

int nv_ffi_crypto_ed25519_sign(const char *seed, size_t seed_len, const char *msg, size_t msg_len,
                               unsigned char *out, const char **err)
{
    size_t n = NV_CRYPTO_ED25519_SIG_BYTES;
    int rc = NV_CRYPTO_ERROR;
    if (seed_len != NV_CRYPTO_ED25519_KEY_BYTES) return *err = ERR_PRIV, NV_CRYPTO_ERROR;
    EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, (const unsigned char *)seed, seed_len);
    if (pkey == NULL) return *err = ERR_PRIV, NV_CRYPTO_ERROR;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    *err = ERR_LIB;
    if (c != NULL && EVP_DigestSignInit_ex(c, NULL, NULL, NULL, NULL, pkey, NULL) == 1 &&
        EVP_DigestSign(c, out, &n, (const unsigned char *)msg, msg_len) == 1 && n == NV_CRYPTO_ED25519_SIG_BYTES)
        rc = NV_CRYPTO_OK;
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(pkey);
    return rc;
}

int nv_ffi_crypto_ed25519_public(const char *seed, size_t seed_len, unsigned char *out, const char **err)
{
    size_t n = NV_CRYPTO_ED25519_KEY_BYTES;
    if (seed_len != NV_CRYPTO_ED25519_KEY_BYTES) return *err = ERR_PRIV, NV_CRYPTO_ERROR;
    EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, (const unsigned char *)seed, seed_len);
    if (pkey == NULL) return *err = ERR_PRIV, NV_CRYPTO_ERROR;
    int ok = EVP_PKEY_get_raw_public_key(pkey, out, &n) == 1 && n == NV_CRYPTO_ED25519_KEY_BYTES;
    EVP_PKEY_free(pkey);
    if (!ok) return *err = ERR_LIB, NV_CRYPTO_ERROR;
    return NV_CRYPTO_OK;
}

/* ---- secp256k1 ----------------------------------------------------------- */

/* One context per process, randomised against side channels once; a worker
 * is one thread. It stays reachable until exit. */
static secp256k1_context *k1_ctx(void)
{
    static secp256k1_context *ctx;
    unsigned char seed[32];
    if (ctx != NULL) return ctx;
    secp256k1_context *c = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    if (c == NULL) return NULL;
    if (RAND_bytes(seed, sizeof(seed)) != 1 || secp256k1_context_randomize(c, seed) != 1) {
        secp256k1_context_destroy(c);
        return NULL;
    }
    OPENSSL_cleanse(seed, sizeof(seed));
    ctx = c;
    return ctx;
}

int nv_ffi_crypto_k1_verify(const char *pub, size_t pub_len, const char *hash, size_t hash_len,
                            const char *sig, size_t sig_len, const char **err)
{
    secp256k1_context *ctx = k1_ctx();
    secp256k1_pubkey pk;
    secp256k1_ecdsa_signature s;
    if (ctx == NULL) return *err = ERR_INIT, NV_CRYPTO_ERROR;
    if (hash_len != 32) return *err = ERR_HASH_LEN, NV_CRYPTO_ERROR;
    if (sig_len != 64 && sig_len != 65) return *err = ERR_SIG_LEN, NV_CRYPTO_ERROR;
    if ((pub_len != 33 && pub_len != 65) ||
        secp256k1_ec_pubkey_parse(ctx, &pk, (const unsigned char *)pub, pub_len) != 1)
        return *err = ERR_PUB, NV_CRYPTO_ERROR;
    /* r or s at or above the group order does not parse: an encoding error. */
    if (secp256k1_ecdsa_signature_parse_compact(ctx, &s, (const unsigned char *)sig) != 1)
        return *err = ERR_SIG, NV_CRYPTO_ERROR;
    /* libsecp256k1 verifies lower-S signatures only (BIP 62, Ethereum's
     * EIP-2): a high-S one is a mismatch, not silently normalised. */
    if (secp256k1_ecdsa_verify(ctx, &s, (const unsigned char *)hash, &pk) != 1)
        return *err = ERR_BAD, NV_CRYPTO_DECLINED;
    return NV_CRYPTO_OK;
}

int nv_ffi_crypto_k1_sign(const char *priv, size_t priv_len, const char *hash, size_t hash_len,
                          unsigned char *out, const char **err)
{
    secp256k1_context *ctx = k1_ctx();
    secp256k1_ecdsa_recoverable_signature s;
    int recid = 0;
    if (ctx == NULL) return *err = ERR_INIT, NV_CRYPTO_ERROR;
    if (hash_len != 32) return *err = ERR_HASH_LEN, NV_CRYPTO_ERROR;
    if (priv_len != 32 || secp256k1_ec_seckey_verify(ctx, (const unsigned char *)priv) != 1)
        return *err = ERR_PRIV, NV_CRYPTO_ERROR;
    /* RFC 6979 nonces (the library's default): the same key and hash always
     * give the same signature, as Ethereum tooling expects. */
    if (secp256k1_ecdsa_sign_recoverable(ctx, &s, (const unsigned char *)hash, (const unsigned char *)priv, NULL,
                                         NULL) != 1 ||
        secp256k1_ecdsa_recoverable_signature_serialize_compact(ctx, out, &recid, &s) != 1)
        return *err = ERR_LIB, NV_CRYPTO_ERROR;
    nv_assert(recid >= 0 && recid <= 3);
    out[64] = (unsigned char)(27 + recid);
    return NV_CRYPTO_OK;
}

int nv_ffi_crypto_k1_recover(const char *hash, size_t hash_len, const char *sig, size_t sig_len,
                             unsigned char *out, const char **err)
{
    secp256k1_context *ctx = k1_ctx();
    secp256k1_ecdsa_recoverable_signature s;
    secp256k1_pubkey pk;
    size_t n = NV_CRYPTO_EC_PUB_BYTES;
    if (ctx == NULL) return *err = ERR_INIT, NV_CRYPTO_ERROR;
    if (hash_len != 32) return *err = ERR_HASH_LEN, NV_CRYPTO_ERROR;
    if (sig_len != NV_CRYPTO_K1_SIG_BYTES) return *err = ERR_SIG_LEN, NV_CRYPTO_ERROR;
    /* v as Ethereum writes it: 27/28 (legacy, ecrecover) or 0/1 (typed transactions). */
    int v = (unsigned char)sig[64];
    int recid = v >= 27 ? v - 27 : v;
    if (recid < 0 || recid > 1) return *err = "invalid recovery id (v)", NV_CRYPTO_ERROR;
    if (secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, &s, (const unsigned char *)sig, recid) != 1)
        return *err = ERR_SIG, NV_CRYPTO_ERROR;
    if (secp256k1_ecdsa_recover(ctx, &pk, &s, (const unsigned char *)hash) != 1)
        return *err = "public key recovery failed", NV_CRYPTO_DECLINED;
    if (secp256k1_ec_pubkey_serialize(ctx, out, &n, &pk, SECP256K1_EC_UNCOMPRESSED) != 1 ||
        n != NV_CRYPTO_EC_PUB_BYTES)
        return *err = ERR_LIB, NV_CRYPTO_ERROR;
    return NV_CRYPTO_OK;
}

int nv_ffi_crypto_k1_public(const char *priv, size_t priv_len, unsigned char *out, const char **err)
{
    secp256k1_context *ctx = k1_ctx();
    secp256k1_pubkey pk;
    size_t n = NV_CRYPTO_EC_PUB_BYTES;
    if (ctx == NULL) return *err = ERR_INIT, NV_CRYPTO_ERROR;
    if (priv_len != 32 || secp256k1_ec_pubkey_create(ctx, &pk, (const unsigned char *)priv) != 1)
        return *err = ERR_PRIV, NV_CRYPTO_ERROR;
    if (secp256k1_ec_pubkey_serialize(ctx, out, &n, &pk, SECP256K1_EC_UNCOMPRESSED) != 1)
        return *err = ERR_LIB, NV_CRYPTO_ERROR;
    return NV_CRYPTO_OK;
}
