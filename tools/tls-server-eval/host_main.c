/* The host side of the measurement: serves one real TLS connection on 127.0.0.1:PORT with the
 * same server.c and configuration, then prints the heap high-water mark mbedtls needed. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int picolet_serve_one(void *, const unsigned char *, size_t, const unsigned char *, size_t,
                      const unsigned char *, size_t, size_t *);
int picolet_send(void *ctx, const unsigned char *buf, size_t len) { return (int)write(*(int *)ctx, buf, len); }
int picolet_recv(void *ctx, unsigned char *buf, size_t len) { return (int)read(*(int *)ctx, buf, len); }
int mbedtls_hardware_poll(void *d, unsigned char *o, size_t len, size_t *olen) {
    (void)d; int fd = open("/dev/urandom", O_RDONLY); *olen = (size_t)read(fd, o, len); close(fd); return 0;
}
static size_t slurp(const char *path, unsigned char *buf, size_t cap) {
    FILE *f = fopen(path, "rb"); if (!f) { perror(path); exit(2); }
    size_t n = fread(buf, 1, cap, f); fclose(f); return n;
}
int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: PORT CA.der CERT.der KEY.der\n"); return 2; }
    static unsigned char ca[4096], cert[4096], key[4096];
    size_t ca_len = slurp(argv[2], ca, sizeof ca), cert_len = slurp(argv[3], cert, sizeof cert),
           key_len = slurp(argv[4], key, sizeof key);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) { perror("listen"); return 2; }
    printf("listening\n"); fflush(stdout);
    int c = accept(s, NULL, NULL);
    size_t peak = 0;
    int ret = picolet_serve_one(&c, ca, ca_len, cert, cert_len, key, key_len, &peak);
    printf("result %d heap_peak %zu\n", ret, peak);
    return ret != 0;
}
