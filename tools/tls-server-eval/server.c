/* One mbedtls TLS 1.2 server handshake with a required client certificate, then one HTTP
 * request and answer: the code the kubelet port would need. On the RP2040 target it is only
 * linked (to measure flash and static RAM); on the host it runs against a real client to
 * measure the heap the handshake needs. Used only for the README's evaluation. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "mbedtls/ctr_drbg.h"
#include "mbedtls/entropy.h"
#include "mbedtls/memory_buffer_alloc.h"
#include "mbedtls/oid.h"
#include "mbedtls/pk.h"
#include "mbedtls/ssl.h"
#include "mbedtls/x509_crt.h"

#ifndef PICOLET_HEAP_BYTES
#define PICOLET_HEAP_BYTES (48 * 1024)
#endif
static unsigned char heap[PICOLET_HEAP_BYTES];

/* Provided by the platform: transport and entropy. */
int picolet_send(void *ctx, const unsigned char *buf, size_t len);
int picolet_recv(void *ctx, unsigned char *buf, size_t len);
int mbedtls_hardware_poll(void *data, unsigned char *output, size_t len, size_t *olen);

/* What the kubelet port needs to know about the caller. */
static char caller_cn[96];

static int verify_cb(void *ctx, mbedtls_x509_crt *crt, int depth, uint32_t *flags) {
    (void)ctx;
    if (depth == 0 && *flags == 0) {
        mbedtls_x509_name *n = &crt->subject;
        for (; n != NULL; n = n->next) {
            if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0 && n->val.len < sizeof caller_cn) {
                memcpy(caller_cn, n->val.p, n->val.len);
                caller_cn[n->val.len] = 0;
            }
        }
    }
    return 0;
}

int picolet_serve_one(void *io, const unsigned char *ca, size_t ca_len, const unsigned char *cert,
                      size_t cert_len, const unsigned char *key, size_t key_len, size_t *heap_peak) {
    mbedtls_memory_buffer_alloc_init(heap, sizeof heap);
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt ca_crt, srv_crt;
    mbedtls_pk_context pk;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    int ret;
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    mbedtls_x509_crt_init(&ca_crt);
    mbedtls_x509_crt_init(&srv_crt);
    mbedtls_pk_init(&pk);
    mbedtls_ssl_config_init(&conf);
    mbedtls_ssl_init(&ssl);
    if ((ret = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, NULL, 0)) != 0) goto out;
    if ((ret = mbedtls_x509_crt_parse_der(&ca_crt, ca, ca_len)) != 0) goto out;
    if ((ret = mbedtls_x509_crt_parse_der(&srv_crt, cert, cert_len)) != 0) goto out;
    if ((ret = mbedtls_pk_parse_key(&pk, key, key_len, NULL, 0)) != 0) goto out;
    if ((ret = mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                           MBEDTLS_SSL_PRESET_DEFAULT)) != 0) goto out;
    mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &drbg);
    mbedtls_ssl_conf_ca_chain(&conf, &ca_crt, NULL);
    mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_verify(&conf, verify_cb, NULL);
    if ((ret = mbedtls_ssl_conf_own_cert(&conf, &srv_crt, &pk)) != 0) goto out;
    if ((ret = mbedtls_ssl_setup(&ssl, &conf)) != 0) goto out;
    mbedtls_ssl_set_bio(&ssl, io, picolet_send, picolet_recv, NULL);
    while ((ret = mbedtls_ssl_handshake(&ssl)) != 0) {
        if (ret != MBEDTLS_ERR_SSL_WANT_READ && ret != MBEDTLS_ERR_SSL_WANT_WRITE) goto out;
    }
    unsigned char req[512];
    ret = mbedtls_ssl_read(&ssl, req, sizeof req);
    if (ret < 0) goto out;
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    ret = mbedtls_ssl_write(&ssl, (const unsigned char *)resp, sizeof resp - 1);
    if (ret < 0) goto out;
    mbedtls_ssl_close_notify(&ssl);
    ret = 0;
out:
    mbedtls_ssl_free(&ssl);
    mbedtls_ssl_config_free(&conf);
    mbedtls_pk_free(&pk);
    mbedtls_x509_crt_free(&srv_crt);
    mbedtls_x509_crt_free(&ca_crt);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
#ifdef MBEDTLS_MEMORY_DEBUG
    size_t max_used, max_blocks;
    mbedtls_memory_buffer_alloc_max_get(&max_used, &max_blocks);
    *heap_peak = max_used;
#else
    (void)heap_peak;
#endif
    mbedtls_memory_buffer_alloc_free();
    return ret;
}
