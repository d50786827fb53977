/* peer.c -- bench/crypto's peer: the same four operations as run.lua, called on OpenSSL and libsecp256k1
 * directly from a C loop, the way a careful C service would (contexts fetched once, nothing cached across
 * calls that run.lua does not cache either). Prints "<op> <ops per CPU second>", best of the rounds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <secp256k1.h>

#define MSG_BYTES 1024

static unsigned char msg[MSG_BYTES], key[32], nonce[12], k1_pub[65], k1_hash[32], k1_sig[64], ed_pub[32], ed_sig[64];
static secp256k1_context *k1;
static EVP_MAC_CTX *hmac;
static EVP_CIPHER *gcm;
static EVP_CIPHER_CTX *gcm_ctx;
static volatile int sink;

static void die(const char *what)
{
    fprintf(stderr, "peer: %s failed\n", what);
    exit(1);
}

static int unhex(const char *h, unsigned char *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (sscanf(h + 2 * i, "%2hhx", &out[i]) != 1) return -1;
    return 0;
}

static void op_k1_verify(void)
{
    secp256k1_pubkey pk;
    secp256k1_ecdsa_signature s;
    if (secp256k1_ec_pubkey_parse(k1, &pk, k1_pub, 65) != 1 ||
        secp256k1_ecdsa_signature_parse_compact(k1, &s, k1_sig) != 1 ||
        secp256k1_ecdsa_verify(k1, &s, k1_hash, &pk) != 1)
        die("secp256k1 verify");
}

static void op_ed25519_verify(void)
{
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, ed_pub, 32);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (pkey == NULL || c == NULL || EVP_DigestVerifyInit_ex(c, NULL, NULL, NULL, NULL, pkey, NULL) != 1 ||
        EVP_DigestVerify(c, ed_sig, 64, msg, MSG_BYTES) != 1)
        die("ed25519 verify");
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(pkey);
}

static void op_hmac(void)
{
    unsigned char out[32];
    size_t n;
    if (EVP_MAC_init(hmac, key, sizeof(key), NULL) != 1 || EVP_MAC_update(hmac, msg, MSG_BYTES) != 1 ||
        EVP_MAC_final(hmac, out, &n, sizeof(out)) != 1)
        die("hmac");
    sink += out[0];
}

/* The same on 64 bytes, where a boundary's fixed cost weighs most. */
static void op_hmac64(void)
{
    unsigned char out[32];
    size_t n;
    if (EVP_MAC_init(hmac, key, sizeof(key), NULL) != 1 || EVP_MAC_update(hmac, msg, 64) != 1 ||
        EVP_MAC_final(hmac, out, &n, sizeof(out)) != 1)
        die("hmac");
    sink += out[0];
}

static void op_gcm(void)
{
    unsigned char out[MSG_BYTES + 16];
    int n;
    if (EVP_EncryptInit_ex2(gcm_ctx, gcm, key, nonce, NULL) != 1 ||
        EVP_EncryptUpdate(gcm_ctx, out, &n, msg, MSG_BYTES) != 1 || EVP_EncryptFinal_ex(gcm_ctx, out + n, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(gcm_ctx, EVP_CTRL_GCM_GET_TAG, 16, out + MSG_BYTES) != 1)
        die("gcm");
    sink += out[0];
}

static double best_ops(void (*op)(void), long n, int rounds)
{
    double best = 0;
    for (long i = 0; i < n / 10; i++) op(); /* warm-up */
    for (int r = 0; r < rounds; r++) {
        clock_t t0 = clock();
        for (long i = 0; i < n; i++) op();
        double dt = (double)(clock() - t0) / CLOCKS_PER_SEC;
        if (dt > 0 && n / dt > best) best = n / dt;
    }
    return best;
}

static void setup(void)
{
    /* The vectors run.lua hands over: the same keys, message and signatures. */
    const char *v[] = {"BENCH_K1_PUB", "BENCH_K1_HASH", "BENCH_K1_SIG", "BENCH_ED_PUB", "BENCH_ED_SIG"};
    unsigned char *dst[] = {k1_pub, k1_hash, k1_sig, ed_pub, ed_sig};
    size_t len[] = {65, 32, 64, 32, 64};
    for (int i = 0; i < 5; i++) {
        const char *h = getenv(v[i]);
        if (h == NULL || strlen(h) != 2 * len[i] || unhex(h, dst[i], len[i]) != 0) die(v[i]);
    }
    for (int i = 0; i < MSG_BYTES; i++) msg[i] = (unsigned char)(i * 7 + 1);
    for (int i = 0; i < 32; i++) key[i] = (unsigned char)(i + 1);
    for (int i = 0; i < 12; i++) nonce[i] = (unsigned char)(i + 101);
    k1 = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    hmac = mac ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM p[] = {OSSL_PARAM_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0), OSSL_PARAM_END};
    gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    gcm_ctx = EVP_CIPHER_CTX_new();
    if (k1 == NULL || hmac == NULL || EVP_MAC_CTX_set_params(hmac, p) != 1 || gcm == NULL || gcm_ctx == NULL)
        die("setup");
    EVP_MAC_free(mac);
}

int main(int argc, char **argv)
{
    double scale = argc > 1 ? atof(argv[1]) : 1.0;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    setup();
    printf("secp256k1_verify %.0f\n", best_ops(op_k1_verify, (long)(4000 * scale), rounds));
    printf("ed25519_verify %.0f\n", best_ops(op_ed25519_verify, (long)(3000 * scale), rounds));
    printf("hmac_sha256_1k %.0f\n", best_ops(op_hmac, (long)(60000 * scale), rounds));
    printf("aes_gcm_encrypt_1k %.0f\n", best_ops(op_gcm, (long)(150000 * scale), rounds));
    printf("hmac_sha256_64 %.0f\n", best_ops(op_hmac64, (long)(150000 * scale), rounds));
    secp256k1_context_destroy(k1);
    EVP_MAC_CTX_free(hmac);
    EVP_CIPHER_CTX_free(gcm_ctx);
    EVP_CIPHER_free(gcm);
    return 0;
}
