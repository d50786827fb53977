/* test_crypto.c -- unit tests of crypto.c and crypto_ec.c through their nv_ffi_crypto_* entry points. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "crypto.h"
#include "nv.h"
#include "test.h"

static unsigned char out[4096];
static const char *err;

/* Bytes of a hex literal, in a static buffer of the caller's choice. */
static size_t unhex(const char *h, unsigned char *buf)
{
    size_t n = 0;
    const char *e = NULL;
    if (nv_ffi_crypto_hex_decode(h, strlen(h), buf, &n, &e) != NV_CRYPTO_OK) {
        printf("bad hex literal in a test\n");
        exit(1);
    }
    return n;
}

static void check_hex(const unsigned char *d, size_t n, const char *want)
{
    char h[2 * 128 + 1];
    nv_assert(n <= 128);
    size_t m = nv_ffi_crypto_hex_encode((const char *)d, n, h);
    CHECK_MEM_EQ(h, m, want);
}

static void test_sha_million_a(void)
{
    char *a = malloc(1000000);
    CHECK(a != NULL);
    if (a == NULL) return;
    memset(a, 'a', 1000000);
    CHECK_INT_EQ(nv_ffi_crypto_sha(256, a, 1000000, out), NV_CRYPTO_OK);
    check_hex(out, 32, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    CHECK_INT_EQ(nv_ffi_crypto_sha(512, a, 1000000, out), NV_CRYPTO_OK);
    check_hex(out, 64, "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973ebde0ff244877ea60a4cb0432ce577c"
                       "31beb009c5c2c49aa2e4eadb217ad8cc09b");
    CHECK_INT_EQ(nv_ffi_crypto_sha(384, a, 1, out), NV_CRYPTO_ERROR);
    free(a);
}

static void test_hmac_rfc4231_case2_and_errors(void)
{
    const char *msg = "what do ya want for nothing?";
    CHECK_INT_EQ(nv_ffi_crypto_hmac(256, "Jefe", 4, msg, strlen(msg), out, &err), NV_CRYPTO_OK);
    check_hex(out, 32, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    CHECK_INT_EQ(nv_ffi_crypto_hmac(1, "Jefe", 4, msg, strlen(msg), out, &err), NV_CRYPTO_ERROR);
    CHECK(strstr(err, "unsupported digest") != NULL);
    CHECK_INT_EQ(nv_ffi_crypto_hmac(256, "", 0, "", 0, out, &err), NV_CRYPTO_OK);
    check_hex(out, 32, "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

static void test_equal(void)
{
    CHECK_INT_EQ(nv_ffi_crypto_equal("abc", 3, "abc", 3), 1);
    CHECK_INT_EQ(nv_ffi_crypto_equal("abc", 3, "abd", 3), 0);
    CHECK_INT_EQ(nv_ffi_crypto_equal("abc", 3, "abc", 2), 0);
    CHECK_INT_EQ(nv_ffi_crypto_equal(NULL, 0, NULL, 0), 1);
}

static void test_random(void)
{
    unsigned char a[32], b[32];
    CHECK_INT_EQ(nv_ffi_crypto_random(a, sizeof(a), &err), NV_CRYPTO_OK);
    CHECK_INT_EQ(nv_ffi_crypto_random(b, sizeof(b), &err), NV_CRYPTO_OK);
    CHECK(memcmp(a, b, sizeof(a)) != 0);
    CHECK_INT_EQ(nv_ffi_crypto_random(a, (size_t)1 << 40, &err), NV_CRYPTO_ERROR);
}

static int b64_dec(const char *in, int url, const char *want)
{
    size_t n = 0;
    int rc = nv_ffi_crypto_b64_decode(in, strlen(in), out, &n, url, &err);
    if (want == NULL) return rc == NV_CRYPTO_ERROR;
    return rc == NV_CRYPTO_OK && n == strlen(want) && memcmp(out, want, n) == 0;
}

static void test_base64_strict(void)
{
    char enc[16];
    CHECK_MEM_EQ(enc, nv_ffi_crypto_b64_encode("fooba", 5, enc, 0), "Zm9vYmE=");
    CHECK_MEM_EQ(enc, nv_ffi_crypto_b64_encode("fooba", 5, enc, 1), "Zm9vYmE");
    CHECK_MEM_EQ(enc, nv_ffi_crypto_b64_encode("\xfb\xff", 2, enc, 0), "+/8=");
    CHECK_MEM_EQ(enc, nv_ffi_crypto_b64_encode("\xfb\xff", 2, enc, 1), "-_8");
    CHECK(b64_dec("Zm9vYmE=", 0, "fooba"));
    CHECK(b64_dec("Zm9vYmE", 1, "fooba"));
    CHECK(b64_dec("", 0, ""));
    CHECK(b64_dec("", 1, ""));
    CHECK(b64_dec("Zm9vYmE", 0, NULL));  /* padding missing */
    CHECK(b64_dec("Zm9vYmE=", 1, NULL)); /* padding in base64url */
    CHECK(b64_dec("Zm9vYmF=", 0, NULL)); /* stray bits after the last byte */
    CHECK(b64_dec("Zm9vY", 1, NULL));    /* 5 characters encode no whole byte count */
    CHECK(b64_dec("Zm9v\nYmE=", 0, NULL));
    CHECK(b64_dec("Zm=v", 0, NULL));
    CHECK(b64_dec("-_8", 0, NULL));
    CHECK(b64_dec("+/8=", 1, NULL));
    CHECK(err != NULL && strcmp(err, "invalid base64") == 0);
}

/* Strictness as a property: whatever random text decodes must encode back to
 * exactly that text (one accepted encoding per byte string), for both
 * alphabets; and nothing read past the input (ASan runs this too). */
static void test_base64_canonical_property(void)
{
    static const char abc[] = "ABYZabyz0189+/-_=\n .";
    unsigned int seed = 12345;
    char in[16], re[16];
    int decoded = 0;
    for (int i = 0; i < 200000; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t len = (seed >> 16) % 13;
        for (size_t j = 0; j < len; j++) {
            seed = seed * 1103515245u + 12345u;
            in[j] = abc[(seed >> 16) % (sizeof(abc) - 1)];
        }
        for (int url = 0; url <= 1; url++) {
            size_t n = 0;
            if (nv_ffi_crypto_b64_decode(in, len, out, &n, url, &err) != NV_CRYPTO_OK) continue;
            decoded++;
            size_t m = nv_ffi_crypto_b64_encode((const char *)out, n, re, url);
            CHECK(m == len && memcmp(re, in, len) == 0);
        }
    }
    CHECK(decoded > 1000); /* the property was exercised, not vacuous */
}

static void test_hex(void)
{
    size_t n = 0;
    char enc[8];
    CHECK_MEM_EQ(enc, nv_ffi_crypto_hex_encode("\x00\xff\x10", 3, enc), "00ff10");
    CHECK_INT_EQ(nv_ffi_crypto_hex_decode("00FFaB", 6, out, &n, &err), NV_CRYPTO_OK);
    CHECK(n == 3 && out[0] == 0 && out[1] == 0xff && out[2] == 0xab);
    CHECK_INT_EQ(nv_ffi_crypto_hex_decode("0", 1, out, &n, &err), NV_CRYPTO_ERROR);
    CHECK_INT_EQ(nv_ffi_crypto_hex_decode("0g", 2, out, &n, &err), NV_CRYPTO_ERROR);
}

/* McGrew-Viega test case 16 (AES-256, 60-byte plaintext, 20-byte AAD). */
static void test_gcm_vector_and_forgery(void)
{
    unsigned char key[32], iv[12], pt[60], aad[20], sealed[76], opened[60];
    unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", key);
    unhex("cafebabefacedbaddecaf888", iv);
    unhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0"
          "de657ba637b39",
          pt);
    unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2", aad);
    CHECK_INT_EQ(nv_ffi_crypto_aes256gcm_encrypt((char *)key, 32, (char *)iv, 12, (char *)aad, 20, (char *)pt, 60,
                                                 sealed, &err),
                 NV_CRYPTO_OK);
    check_hex(sealed + 44, 32, "56828838c5f61e6393ba7a0abcc9f66276fc6ece0f4e1768cddf8853bb2d551b");
    CHECK_INT_EQ(nv_ffi_crypto_aes256gcm_decrypt((char *)key, 32, (char *)iv, 12, (char *)aad, 20, (char *)sealed,
                                                 76, opened, &err),
                 NV_CRYPTO_OK);
    CHECK(memcmp(opened, pt, 60) == 0);
    sealed[75] ^= 1;
    memset(opened, 0x55, sizeof(opened));
    CHECK_INT_EQ(nv_ffi_crypto_aes256gcm_decrypt((char *)key, 32, (char *)iv, 12, (char *)aad, 20, (char *)sealed,
                                                 76, opened, &err),
                 NV_CRYPTO_DECLINED);
    CHECK(strcmp(err, "authentication failed") == 0);
    /* The unauthenticated plaintext written before the tag check is wiped. */
    static const unsigned char zero[60];
    CHECK(memcmp(opened, zero, 60) == 0);
    CHECK_INT_EQ(nv_ffi_crypto_aes256gcm_encrypt((char *)key, 31, (char *)iv, 12, NULL, 0, "x", 1, sealed, &err),
                 NV_CRYPTO_ERROR);
    CHECK(strcmp(err, "invalid key length") == 0);
    CHECK_INT_EQ(nv_ffi_crypto_aes256gcm_decrypt((char *)key, 32, (char *)iv, 12, NULL, 0, "short", 5, opened, &err),
                 NV_CRYPTO_ERROR);
}

/* RFC 6979 A.2.5, P-256 with SHA-256, message "sample". */
static void test_p256_rfc6979(void)
{
    unsigned char priv[32], pub[65], sig[64], der[72], got[65];
    size_t n = 0;
    unhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721", priv);
    unhex("0460fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb67903fe1008b8bc99a41ae9e95628bc64f2f1b20c"
          "2d7e9f5177a3c294d4462299",
          pub);
    unhex("efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9"
          "aff4064dc4ab2f843acda8",
          sig);
    CHECK_INT_EQ(nv_ffi_crypto_p256_public((char *)priv, 32, got, &err), NV_CRYPTO_OK);
    CHECK(memcmp(got, pub, 65) == 0);
    CHECK_INT_EQ(nv_ffi_crypto_p256_verify((char *)pub, 65, "sample", 6, (char *)sig, 64, 0, &err), NV_CRYPTO_OK);
    CHECK_INT_EQ(nv_ffi_crypto_p256_verify((char *)pub, 65, "samplE", 6, (char *)sig, 64, 0, &err),
                 NV_CRYPTO_DECLINED);
    CHECK_INT_EQ(nv_ffi_crypto_p256_sign((char *)priv, 32, "x", 1, der, &n, 1, &err), NV_CRYPTO_OK);
    CHECK(n >= 8 && n <= 72 && der[0] == 0x30);
    CHECK_INT_EQ(nv_ffi_crypto_p256_verify((char *)pub, 65, "x", 1, (char *)der, n, 1, &err), NV_CRYPTO_OK);
    CHECK_INT_EQ(nv_ffi_crypto_p256_verify((char *)pub, 65, "x", 1, "\x30\x02\x01", 3, 1, &err), NV_CRYPTO_ERROR);
    pub[64] ^= 1; /* off the curve */
    CHECK_INT_EQ(nv_ffi_crypto_p256_verify((char *)pub, 65, "sample", 6, (char *)sig, 64, 0, &err), NV_CRYPTO_ERROR);
    CHECK(strcmp(err, "invalid public key") == 0);
}

/* RFC 8032 7.1 TEST 2. */
static void test_ed25519_rfc8032(void)
{
    unsigned char seed[32], pub[32], sig[64], got[64];
    unhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb", seed);
    unhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", pub);
    unhex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4"
          "302aeeb00d291612bb0c00",
          sig);
    CHECK_INT_EQ(nv_ffi_crypto_ed25519_public((char *)seed, 32, got, &err), NV_CRYPTO_OK);
    CHECK(memcmp(got, pub, 32) == 0);
    CHECK_INT_EQ(nv_ffi_crypto_ed25519_sign((char *)seed, 32, "\x72", 1, got, &err), NV_CRYPTO_OK);
    CHECK(memcmp(got, sig, 64) == 0);
    CHECK_INT_EQ(nv_ffi_crypto_ed25519_verify((char *)pub, 32, "\x72", 1, (char *)sig, 64, &err), NV_CRYPTO_OK);
    CHECK_INT_EQ(nv_ffi_crypto_ed25519_verify((char *)pub, 32, "\x73", 1, (char *)sig, 64, &err),
                 NV_CRYPTO_DECLINED);
    CHECK_INT_EQ(nv_ffi_crypto_ed25519_verify((char *)pub, 31, "\x72", 1, (char *)sig, 64, &err), NV_CRYPTO_ERROR);
}

/* web3.js: accounts.sign("Some data", 0x4c08...) and the key's address. */
static void test_secp256k1_ethereum(void)
{
    unsigned char priv[32], hash[32], sig[65], pub[65], rec[65], addr_hash[32];
    unhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318", priv);
    unhex("1da44b586eb0729ff70a73c326926f6ed5a25f5b056e7f47fbc6e58d86871655", hash);
    CHECK_INT_EQ(nv_ffi_crypto_k1_sign((char *)priv, 32, (char *)hash, 32, sig, &err), NV_CRYPTO_OK);
    check_hex(sig, 65, "b91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd6007e74cd82e037b800186422fc2"
                       "da167c747ef045e5d18a5f5d4300f8e1a0291c");
    CHECK_INT_EQ(nv_ffi_crypto_k1_public((char *)priv, 32, pub, &err), NV_CRYPTO_OK);
    CHECK_INT_EQ(nv_ffi_crypto_k1_recover((char *)hash, 32, (char *)sig, 65, rec, &err), NV_CRYPTO_OK);
    CHECK(memcmp(pub, rec, 65) == 0);
    CHECK_INT_EQ(nv_ffi_crypto_keccak256((char *)pub + 1, 64, addr_hash), NV_CRYPTO_OK);
    check_hex(addr_hash + 12, 20, "2c7536e3605d9c16a7a3d7b1898e529396a65c23");
    CHECK_INT_EQ(nv_ffi_crypto_k1_verify((char *)pub, 65, (char *)hash, 32, (char *)sig, 64, &err), NV_CRYPTO_OK);
    hash[0] ^= 1;
    CHECK_INT_EQ(nv_ffi_crypto_k1_verify((char *)pub, 65, (char *)hash, 32, (char *)sig, 64, &err),
                 NV_CRYPTO_DECLINED);
    sig[64] = 31;
    CHECK_INT_EQ(nv_ffi_crypto_k1_recover((char *)hash, 32, (char *)sig, 65, rec, &err), NV_CRYPTO_ERROR);
    memset(priv, 0, 32);
    CHECK_INT_EQ(nv_ffi_crypto_k1_sign((char *)priv, 32, (char *)hash, 32, sig, &err), NV_CRYPTO_ERROR);
    CHECK(strcmp(err, "invalid private key") == 0);
}

/* The Lua C API module: its HMAC and the limits it hands to crypto.lua. */
static void test_lua_module(void)
{
    lua_State *L = luaL_newstate();
    CHECK(L != NULL);
    if (L == NULL) return;
    luaL_openlibs(L);
    lua_pushcfunction(L, luaopen_nuvion_crypto_c);
    CHECK_INT_EQ(lua_pcall(L, 0, 1, 0), 0);
    lua_setglobal(L, "c");
    CHECK_INT_EQ(luaL_dostring(L, "return c.abi_version == 1 and c.master_keys_max > 0 and "
                                  "#c.hmac_sha256('Jefe', 'what do ya want for nothing?') == 32 and "
                                  "not pcall(c.hmac_sha256, nil, 'x')"),
                 0);
    CHECK(lua_toboolean(L, -1));
    lua_close(L);
}

int main(void)
{
    TEST_RUN(test_sha_million_a);
    TEST_RUN(test_hmac_rfc4231_case2_and_errors);
    TEST_RUN(test_equal);
    TEST_RUN(test_random);
    TEST_RUN(test_base64_strict);
    TEST_RUN(test_base64_canonical_property);
    TEST_RUN(test_hex);
    TEST_RUN(test_gcm_vector_and_forgery);
    TEST_RUN(test_p256_rfc6979);
    TEST_RUN(test_ed25519_rfc8032);
    TEST_RUN(test_secp256k1_ethereum);
    TEST_RUN(test_lua_module);
    return TEST_DONE();
}
