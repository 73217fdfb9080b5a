/*
 * loadgen: the load generator and the backend of tpemu's end-to-end benchmark (bench/e2e.py).
 *
 * One single-threaded, non-blocking epoll loop per process, IPv4 or IPv6 ("[::1]:port"). Every
 * loop is bounded by a duration and a connection/error cap; every subcommand raises
 * RLIMIT_NOFILE to its hard limit first. Results are one JSON object per line on stdout;
 * diagnostics go to stderr. Built by bench/loadgen/__init__.py (gcc -O2).
 *
 *   loadgen serve --listen HOST:PORT --mode reply|source [--max-seconds S]
 *       Backend. Prints {"port": N} once listening. reply: after the first bytes of a
 *       connection, write one byte ("x") and keep reading until the client closes. source:
 *       after the first bytes, stream data as fast as the socket accepts (64 KiB writes),
 *       until the client closes. Exits when stdin reaches EOF or after --max-seconds
 *       (default 3600).
 *
 *   loadgen connrate --target HOST:PORT --concurrency N --duration S --payload FILE
 *                    [--warmup S] [--max-conns N] [--timeout S]
 *       Keeps N connections in flight: connect, send the payload (a TLS ClientHello), wait for
 *       >= 1 byte back, close (an orderly FIN), start the next. Connections that finish during
 *       the warm-up are not counted ("all_connections" counts them too, for CPU-per-connection
 *       figures). Prints {"connections", "all_connections", "errors", "error_kinds",
 *       "duration_s", "conn_per_s", "p50_us", "p99_us", "mean_us"}; latency is from socket()
 *       to the first byte back. Stops early at --max-conns (default 5,000,000) counted
 *       connections or 100,000 errors. --timeout bounds one connection (default 5 s).
 *
 *   loadgen throughput --target HOST:PORT --streams N --duration S --payload FILE [--warmup S]
 *       Opens N connections, sends the payload on each, then reads whatever comes back as fast
 *       as possible. Prints {"streams", "bytes", "all_bytes", "duration_s", "mb_per_s", "errors"};
 *       "bytes" leaves out the warm-up, "all_bytes" does not; MB = 10^6 bytes.
 *
 *   loadgen idle --target HOST:PORT --count N --payload FILE --hold S [--concurrency K]
 *                [--open-timeout S] [--bind HOST]
 *       Opens N connections (at most K connecting at once, default 64), sends the payload on
 *       each and waits for >= 1 byte back, then prints {"ready", "errors", "error_kinds",
 *       "open_s"} and holds them until stdin reaches EOF or S seconds pass; then prints
 *       {"held", "dropped"} (dropped = closed by the other side while held) and exits.
 *
 * --bind HOST (connrate, idle): connect from this local address (port chosen at connect, with
 * IP_BIND_ADDRESS_NO_PORT), so that several loopback sources (127.0.0.x) each get their own
 * range of ephemeral ports: past ~28,000 connections to one target one source runs out.
 *
 * Exit status: 0 after a run (even one with errors: they are in the JSON), 2 on usage errors,
 * 1 when the run could not start (bad address, cannot listen or connect at all).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 1024
#define MAX_PAYLOAD 65536
#define CHUNK 65536
#define READ_BUF (256 * 1024)
#define MAX_ERRORS 100000

static char rbuf[READ_BUF];
static char wbuf[CHUNK];

/* -- small helpers ------------------------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(const char *msg) {
    fprintf(stderr, "loadgen: %s (see the header of loadgen.c for usage)\n", msg);
    exit(2);
}

static int raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur > 1048576 ? 1048576 : (int)rl.rlim_cur;
}

struct addr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* "127.0.0.1:80", "[::1]:80" or "localhost:80" -> a numeric socket address. */
static void parse_addr(const char *text, struct addr *out) {
    char host[256];
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text) usage("address must be HOST:PORT");
    size_t hlen = (size_t)(colon - text);
    if (hlen >= sizeof host) usage("host too long");
    memcpy(host, text, hlen);
    host[hlen] = 0;
    char *h = host;
    if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') {
        h[hlen - 1] = 0;
        h++;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(h, colon + 1, &hints, &res);
    if (rc != 0 || res == NULL) {
        fprintf(stderr, "loadgen: cannot resolve %s: %s\n", text, gai_strerror(rc));
        exit(1);
    }
    memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
}

static size_t read_payload(const char *path, char *buf) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) die(path);
    size_t n = fread(buf, 1, MAX_PAYLOAD, f);
    fclose(f);
    if (n == 0) usage("the payload file is empty");
    return n;
}

static void epoll_set(int ep, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev = {.events = events, .data.u64 = data};
    if (epoll_ctl(ep, op, fd, &ev) != 0 && op != EPOLL_CTL_DEL) die("epoll_ctl");
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Watch stdin for EOF when it is a pipe or a terminal (epoll refuses regular files). */
static int watch_stdin(int ep, uint64_t tag) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag};
    return epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) == 0;
}

/* stdin readable: returns 1 at EOF (or error). */
static int stdin_closed(void) {
    char b[256];
    ssize_t n = read(0, b, sizeof b);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

/* Error categories reported in "error_kinds". */
enum { E_CONNECT, E_ADDRNOTAVAIL, E_EOF, E_RESET, E_TIMEOUT, E_WRITE, E_OTHER, E_KINDS };
static const char *error_names[E_KINDS] = {"connect", "addrnotavail", "eof", "reset", "timeout", "write", "other"};

static void print_error_kinds(const long *kinds) {
    printf("\"error_kinds\": {");
    int first = 1;
    for (int i = 0; i < E_KINDS; i++) {
        if (kinds[i] == 0) continue;
        printf("%s\"%s\": %ld", first ? "" : ", ", error_names[i], kinds[i]);
        first = 0;
    }
    printf("}");
}

static int error_kind(int err) {
    switch (err) {
    case EADDRNOTAVAIL: return E_ADDRNOTAVAIL;
    case ECONNREFUSED: return E_CONNECT;
    case ECONNRESET: case EPIPE: return E_RESET;
    case ETIMEDOUT: return E_TIMEOUT;
    default: return E_OTHER;
    }
}

/* -- option parsing ----------------------------------------------------------------------- */

struct opts {
    const char *listen, *mode, *target, *payload, *bind;
    long concurrency, duration_ms, warmup_ms, max_conns, streams, count, hold_ms, timeout_ms, open_timeout_ms,
        max_ms;
};

static long parse_num(const char *s, double scale) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != 0 || v < 0) usage("bad number");
    return (long)(v * scale + 0.5);
}

static void parse_opts(int argc, char **argv, struct opts *o) {
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc) usage("option without a value");
        const char *v = argv[++i];
        if (!strcmp(k, "--listen")) o->listen = v;
        else if (!strcmp(k, "--mode")) o->mode = v;
        else if (!strcmp(k, "--target")) o->target = v;
        else if (!strcmp(k, "--payload")) o->payload = v;
        else if (!strcmp(k, "--bind")) o->bind = v;
        else if (!strcmp(k, "--concurrency")) o->concurrency = parse_num(v, 1);
        else if (!strcmp(k, "--duration")) o->duration_ms = parse_num(v, 1000);
        else if (!strcmp(k, "--warmup")) o->warmup_ms = parse_num(v, 1000);
        else if (!strcmp(k, "--max-conns")) o->max_conns = parse_num(v, 1);
        else if (!strcmp(k, "--streams")) o->streams = parse_num(v, 1);
        else if (!strcmp(k, "--count")) o->count = parse_num(v, 1);
        else if (!strcmp(k, "--hold")) o->hold_ms = parse_num(v, 1000);
        else if (!strcmp(k, "--timeout")) o->timeout_ms = parse_num(v, 1000);
        else if (!strcmp(k, "--open-timeout")) o->open_timeout_ms = parse_num(v, 1000);
        else if (!strcmp(k, "--max-seconds")) o->max_ms = parse_num(v, 1000);
        else usage("unknown option");
    }
}

/* -- serve -------------------------------------------------------------------------------- */

enum { S_FREE = 0, S_FIRST, S_REPLIED, S_STREAMING };
#define TAG_LISTEN ((uint64_t)1 << 40)
#define TAG_STDIN ((uint64_t)2 << 40)

static int serve(struct opts *o, int nofile) {
    if (o->listen == NULL || o->mode == NULL) usage("serve needs --listen and --mode");
    int source = !strcmp(o->mode, "source");
    if (!source && strcmp(o->mode, "reply")) usage("--mode is reply or source");
    struct addr a;
    parse_addr(o->listen, &a);
    int lfd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&a.ss, a.len) != 0) die("bind");
    if (listen(lfd, 4096) != 0) die("listen");
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    getsockname(lfd, (struct sockaddr *)&bound, &blen);
    int port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                 : ((struct sockaddr_in *)&bound)->sin_port);
    printf("{\"port\": %d}\n", port);
    fflush(stdout);

    unsigned char *state = calloc((size_t)nofile, 1);
    if (state == NULL) die("calloc");
    memset(wbuf, 'x', sizeof wbuf);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    epoll_set(ep, EPOLL_CTL_ADD, lfd, EPOLLIN, TAG_LISTEN);
    watch_stdin(ep, TAG_STDIN);
    double deadline = now_s() + (o->max_ms ? (double)o->max_ms / 1000 : 3600.0);
    struct epoll_event evs[MAX_EVENTS];
    while (now_s() < deadline) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_STDIN) {
                if (stdin_closed()) return 0;
                continue;
            }
            if (tag == TAG_LISTEN) {
                for (int k = 0; k < 256; k++) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) {
                        if (errno == EMFILE || errno == ENFILE) fprintf(stderr, "loadgen serve: out of descriptors\n");
                        break;
                    }
                    if (fd >= nofile) {
                        close(fd);
                        continue;
                    }
                    nodelay(fd);
                    state[fd] = S_FIRST;
                    epoll_set(ep, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLRDHUP, (uint64_t)fd);
                }
                continue;
            }
            int fd = (int)tag;
            int dead = (evs[i].events & EPOLLERR) != 0;
            if (!dead && (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) {
                /* Read what is queued (bounded); the first bytes trigger the mode's answer. */
                for (int k = 0; k < 4; k++) {
                    ssize_t r = read(fd, rbuf, sizeof rbuf);
                    if (r > 0) {
                        if (state[fd] == S_FIRST) {
                            if (source) {
                                state[fd] = S_STREAMING;
                                epoll_set(ep, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLRDHUP | EPOLLOUT, (uint64_t)fd);
                            } else {
                                state[fd] = S_REPLIED;
                                if (send(fd, "x", 1, MSG_NOSIGNAL) != 1) dead = 1;
                            }
                        }
                        if ((size_t)r < sizeof rbuf) break;
                    } else if (r == 0) {
                        dead = 1;
                        break;
                    } else {
                        if (errno != EAGAIN && errno != EINTR) dead = 1;
                        break;
                    }
                }
            }
            if (!dead && state[fd] == S_STREAMING && (evs[i].events & EPOLLOUT)) {
                for (int k = 0; k < 16; k++) {
                    ssize_t w = send(fd, wbuf, sizeof wbuf, MSG_NOSIGNAL);
                    if (w < 0) {
                        if (errno != EAGAIN && errno != EINTR) dead = 1;
                        break;
                    }
                }
            }
            if (dead) {
                state[fd] = S_FREE;
                close(fd); /* closing removes it from the epoll set */
            }
        }
    }
    return 0;
}

/* -- connrate ----------------------------------------------------------------------------- */

struct slot {
    int fd;
    int state; /* 0 idle (start at retry_at), 1 connecting, 2 waiting for the first byte */
    double started;
    double retry_at;
    size_t sent;
};

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

struct runner {
    struct addr target;
    struct addr source; /* source.len == 0: the kernel chooses */
    const char *payload;
    size_t payload_len;
    int ep;
    long errors;
    long kinds[E_KINDS];
};

static void count_error(struct runner *r, int kind) {
    r->errors++;
    r->kinds[kind]++;
}

/* Start a connection in slot i; returns 0, or -1 after counting an error (the slot retries later). */
static int slot_start(struct runner *r, struct slot *s, int i, double now) {
    s->started = now;
    s->sent = 0;
    s->fd = socket(r->target.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        count_error(r, E_OTHER);
        s->state = 0;
        s->retry_at = now + 0.01;
        return -1;
    }
    nodelay(s->fd);
    if (r->source.len) {
#ifdef IP_BIND_ADDRESS_NO_PORT
        int one = 1;
        setsockopt(s->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
#endif
        if (bind(s->fd, (struct sockaddr *)&r->source.ss, r->source.len) != 0) {
            count_error(r, E_OTHER);
            close(s->fd);
            s->fd = -1;
            s->state = 0;
            s->retry_at = now + 0.01;
            return -1;
        }
    }
    if (connect(s->fd, (struct sockaddr *)&r->target.ss, r->target.len) != 0 && errno != EINPROGRESS) {
        count_error(r, error_kind(errno) == E_ADDRNOTAVAIL ? E_ADDRNOTAVAIL : E_CONNECT);
        close(s->fd);
        s->fd = -1;
        s->state = 0;
        s->retry_at = now + 0.001; /* out of ports or refused: do not spin */
        return -1;
    }
    s->state = 1;
    epoll_set(r->ep, EPOLL_CTL_ADD, s->fd, EPOLLOUT, (uint64_t)i);
    return 0;
}

static void slot_fail(struct runner *r, struct slot *s, int kind, double now) {
    count_error(r, kind);
    close(s->fd);
    s->fd = -1;
    s->state = 0;
    s->retry_at = now + 0.001;
}

/* Drive one event on a slot. Returns 1 when the first byte arrived (the connection stays open
 * and is the caller's), 0 otherwise. */
static int slot_event(struct runner *r, struct slot *s, int i, uint32_t events, double now) {
    if (s->state == 1) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            slot_fail(r, s, err == ECONNREFUSED ? E_CONNECT : error_kind(err), now);
            return 0;
        }
        ssize_t w = send(s->fd, r->payload + s->sent, r->payload_len - s->sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN) slot_fail(r, s, E_WRITE, now);
            return 0;
        }
        s->sent += (size_t)w;
        if (s->sent == r->payload_len) {
            s->state = 2;
            epoll_set(r->ep, EPOLL_CTL_MOD, s->fd, EPOLLIN | EPOLLRDHUP, (uint64_t)i);
        }
        return 0;
    }
    (void)events;
    ssize_t n = read(s->fd, rbuf, sizeof rbuf);
    if (n > 0) return 1;
    if (n == 0) slot_fail(r, s, E_EOF, now);
    else if (errno != EAGAIN && errno != EINTR) slot_fail(r, s, error_kind(errno), now);
    return 0;
}

static int connrate(struct opts *o) {
    if (o->target == NULL || o->payload == NULL || o->concurrency <= 0 || o->duration_ms <= 0)
        usage("connrate needs --target, --payload, --concurrency > 0 and --duration > 0");
    static char payload[MAX_PAYLOAD];
    struct runner r = {0};
    parse_addr(o->target, &r.target);
    if (o->bind) {
        char with_port[300];
        snprintf(with_port, sizeof with_port, "%s:0", o->bind);
        parse_addr(with_port, &r.source);
    }
    r.payload = payload;
    r.payload_len = read_payload(o->payload, payload);
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    if (r.ep < 0) die("epoll_create1");
    long max_conns = o->max_conns ? o->max_conns : 5000000;
    double timeout = o->timeout_ms ? (double)o->timeout_ms / 1000 : 5.0;
    size_t cap = 65536, nlat = 0;
    long all_done = 0; /* completions including the warm-up: for CPU-per-connection figures */
    uint32_t *lat = malloc(cap * sizeof *lat);
    struct slot *slots = calloc((size_t)o->concurrency, sizeof *slots);
    if (lat == NULL || slots == NULL) die("malloc");

    double t0 = now_s();
    double start = t0 + (double)o->warmup_ms / 1000;
    double end = start + (double)o->duration_ms / 1000;
    double stop_at = end;
    long errors_at_start = -1;
    long kinds_at_start[E_KINDS] = {0};
    for (int i = 0; i < o->concurrency; i++) slot_start(&r, &slots[i], i, t0);
    struct epoll_event evs[MAX_EVENTS];
    double last_sweep = t0;
    for (;;) {
        double now = now_s();
        if (now >= start && errors_at_start < 0) {
            errors_at_start = r.errors;
            memcpy(kinds_at_start, r.kinds, sizeof r.kinds);
        }
        if (now >= end || (long)nlat >= max_conns || r.errors >= MAX_ERRORS) {
            stop_at = now < end ? now : end;
            break;
        }
        int n = epoll_wait(r.ep, evs, MAX_EVENTS, 2);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        now = now_s();
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u64;
            struct slot *s = &slots[i];
            if (s->state == 0) continue;
            if (slot_event(&r, s, i, evs[k].events, now)) {
                all_done++;
                if (now >= start && now < end) {
                    if (nlat == cap) {
                        cap *= 2;
                        lat = realloc(lat, cap * sizeof *lat);
                        if (lat == NULL) die("realloc");
                    }
                    double us = (now - s->started) * 1e6;
                    lat[nlat++] = us > 4e9 ? 4000000000u : (uint32_t)us;
                }
                close(s->fd); /* orderly close: FIN, as a real client would */
                s->fd = -1;
                if (now < end) slot_start(&r, s, i, now);
                else s->state = 0;
            }
        }
        /* Restart slots that failed, and time out stuck ones (swept every 10 ms). */
        if (now - last_sweep >= 0.01 || n == 0) {
            last_sweep = now;
            for (int i = 0; i < o->concurrency; i++) {
                struct slot *s = &slots[i];
                if (s->state == 0 && now >= s->retry_at && now < end) slot_start(&r, s, i, now);
                else if (s->state != 0 && now - s->started > timeout) slot_fail(&r, s, E_TIMEOUT, now);
            }
        }
    }
    for (int i = 0; i < o->concurrency; i++)
        if (slots[i].state != 0 && slots[i].fd >= 0) close(slots[i].fd);
    if (errors_at_start < 0) errors_at_start = r.errors;
    double dur = stop_at - start;
    if (dur <= 0) dur = 1e-9;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++) sum += lat[i];
    long kinds[E_KINDS];
    for (int i = 0; i < E_KINDS; i++) kinds[i] = r.kinds[i] - kinds_at_start[i];
    printf("{\"connections\": %zu, \"all_connections\": %ld, \"errors\": %ld, ", nlat, all_done,
           r.errors - errors_at_start);
    print_error_kinds(kinds);
    printf(", \"duration_s\": %.3f, \"conn_per_s\": %.1f, \"p50_us\": %u, \"p99_us\": %u, \"mean_us\": %.1f}\n", dur,
           (double)nlat / dur, nlat ? lat[nlat / 2] : 0, nlat ? lat[(nlat * 99) / 100] : 0,
           nlat ? sum / (double)nlat : 0.0);
    return 0;
}

/* -- throughput --------------------------------------------------------------------------- */

static int throughput(struct opts *o) {
    if (o->target == NULL || o->payload == NULL || o->streams <= 0 || o->duration_ms <= 0)
        usage("throughput needs --target, --payload, --streams > 0 and --duration > 0");
    static char payload[MAX_PAYLOAD];
    struct addr a;
    parse_addr(o->target, &a);
    size_t plen = read_payload(o->payload, payload);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    int *fds = calloc((size_t)o->streams, sizeof *fds);
    if (fds == NULL) die("calloc");
    long errors = 0, alive = 0;
    for (long i = 0; i < o->streams; i++) {
        /* A blocking connect and send are fine here: the set-up is not measured. */
        int fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) die("socket");
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *)&a.ss, a.len) != 0 ||
            send(fd, payload, plen, MSG_NOSIGNAL) != (ssize_t)plen) {
            fprintf(stderr, "loadgen throughput: stream %ld: %s\n", i, strerror(errno));
            close(fd);
            fds[i] = -1;
            errors++;
            continue;
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        fds[i] = fd;
        alive++;
        epoll_set(ep, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLRDHUP, (uint64_t)i);
    }
    if (alive == 0) {
        fprintf(stderr, "loadgen throughput: no stream could be opened\n");
        return 1;
    }
    double t0 = now_s();
    double start = t0 + (double)o->warmup_ms / 1000;
    double end = start + (double)o->duration_ms / 1000;
    unsigned long long bytes = 0, all_bytes = 0;
    struct epoll_event evs[MAX_EVENTS];
    double now = t0;
    while (alive > 0) {
        now = now_s();
        if (now >= end) break;
        int n = epoll_wait(ep, evs, MAX_EVENTS, 10);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int k = 0; k < n; k++) {
            long i = (long)evs[k].data.u64;
            if (fds[i] < 0) continue;
            for (int j = 0; j < 4; j++) {
                ssize_t r = read(fds[i], rbuf, sizeof rbuf);
                if (r > 0) {
                    all_bytes += (unsigned long long)r;
                    if (now_s() >= start) bytes += (unsigned long long)r;
                    if ((size_t)r < sizeof rbuf) break;
                    continue;
                }
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                close(fds[i]); /* the stream ended early */
                fds[i] = -1;
                errors++;
                alive--;
                break;
            }
        }
    }
    now = now_s();
    double stop_at = now < end ? now : end;
    for (long i = 0; i < o->streams; i++)
        if (fds[i] >= 0) close(fds[i]);
    double dur = stop_at - start;
    if (dur <= 0) dur = 1e-9;
    printf("{\"streams\": %ld, \"bytes\": %llu, \"all_bytes\": %llu, \"duration_s\": %.3f, \"mb_per_s\": %.1f, "
           "\"errors\": %ld}\n", o->streams, bytes, all_bytes, dur, (double)bytes / dur / 1e6, errors);
    return 0;
}

/* -- idle --------------------------------------------------------------------------------- */

static int idle(struct opts *o) {
    if (o->target == NULL || o->payload == NULL || o->count <= 0)
        usage("idle needs --target, --payload and --count > 0");
    static char payload[MAX_PAYLOAD];
    struct runner r = {0};
    parse_addr(o->target, &r.target);
    if (o->bind) {
        char with_port[300];
        snprintf(with_port, sizeof with_port, "%s:0", o->bind);
        parse_addr(with_port, &r.source);
    }
    r.payload = payload;
    r.payload_len = read_payload(o->payload, payload);
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    if (r.ep < 0) die("epoll_create1");
    long k_max = o->concurrency ? o->concurrency : 64;
    double open_timeout = o->open_timeout_ms ? (double)o->open_timeout_ms / 1000 : 60.0;
    double hold = o->hold_ms ? (double)o->hold_ms / 1000 : 60.0;
    /* Slots 0..count-1 are the connections; "state 3" = held. */
    struct slot *slots = calloc((size_t)o->count, sizeof *slots);
    if (slots == NULL) die("calloc");
    for (long i = 0; i < o->count; i++) slots[i].fd = -1;
    watch_stdin(r.ep, TAG_STDIN);
    double t0 = now_s();
    long next = 0, inflight = 0, held = 0, attempts = 0, dropped = 0;
    long max_attempts = o->count * 2 + 1000;
    struct epoll_event evs[MAX_EVENTS];
    /* Opening: at most k_max connecting at once; a failed slot is retried until max_attempts. */
    long *retry = calloc((size_t)o->count, sizeof *retry);
    long nretry = 0;
    if (retry == NULL) die("calloc");
    while (held < o->count) {
        double now = now_s();
        if (now - t0 > open_timeout || attempts >= max_attempts) break;
        while (inflight < k_max && attempts < max_attempts && (next < o->count || nretry > 0)) {
            long i = nretry > 0 ? retry[--nretry] : next++;
            attempts++;
            if (slot_start(&r, &slots[i], (int)i, now) == 0) inflight++;
            else retry[nretry++] = i;
        }
        if (inflight == 0 && next >= o->count && nretry == 0) break;
        int n = epoll_wait(r.ep, evs, MAX_EVENTS, 10);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        now = now_s();
        for (int k = 0; k < n; k++) {
            uint64_t tag = evs[k].data.u64;
            if (tag == TAG_STDIN) {
                if (stdin_closed()) goto done;
                continue;
            }
            long i = (long)tag;
            struct slot *s = &slots[i];
            if (s->state == 3) { /* a held connection closed or sent more */
                ssize_t m = read(s->fd, rbuf, sizeof rbuf);
                if (m == 0 || (m < 0 && errno != EAGAIN)) {
                    close(s->fd);
                    s->fd = -1;
                    s->state = 0;
                    held--;
                    count_error(&r, E_EOF);
                }
                continue;
            }
            if (s->state == 0) continue;
            int before = s->state;
            if (slot_event(&r, s, (int)i, evs[k].events, now)) {
                s->state = 3;
                held++;
                inflight--;
            } else if (s->state == 0 && before != 0) {
                inflight--;
                retry[nretry++] = i;
            }
        }
        for (long i = 0; i < next; i++) { /* connection timeouts (cheap: count is small) */
            struct slot *s = &slots[i];
            if ((s->state == 1 || s->state == 2) && now - s->started > 5.0) {
                slot_fail(&r, s, E_TIMEOUT, now);
                inflight--;
                retry[nretry++] = i;
            }
        }
    }
    printf("{\"ready\": %ld, \"errors\": %ld, ", held, r.errors);
    print_error_kinds(r.kinds);
    printf(", \"open_s\": %.3f}\n", now_s() - t0);
    fflush(stdout);
    /* Hold: until stdin closes or the hold time passes. */
    double hold_end = now_s() + hold;
    for (;;) {
        double now = now_s();
        if (now >= hold_end) break;
        int n = epoll_wait(r.ep, evs, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int k = 0; k < n; k++) {
            uint64_t tag = evs[k].data.u64;
            if (tag == TAG_STDIN) {
                if (stdin_closed()) goto done;
                continue;
            }
            struct slot *s = &slots[(long)tag];
            if (s->fd < 0) continue;
            ssize_t m = read(s->fd, rbuf, sizeof rbuf);
            if (m == 0 || (m < 0 && errno != EAGAIN)) {
                epoll_set(r.ep, EPOLL_CTL_DEL, s->fd, 0, 0);
                close(s->fd);
                s->fd = -1;
                if (s->state == 3) {
                    held--;
                    dropped++;
                }
                s->state = 0;
            }
        }
    }
done:
    for (long i = 0; i < o->count; i++)
        if (slots[i].fd >= 0) close(slots[i].fd);
    printf("{\"held\": %ld, \"dropped\": %ld}\n", held, dropped);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) usage("missing subcommand");
    signal(SIGPIPE, SIG_IGN);
    int nofile = raise_nofile();
    struct opts o = {0};
    parse_opts(argc, argv, &o);
    if (!strcmp(argv[1], "serve")) return serve(&o, nofile);
    if (!strcmp(argv[1], "connrate")) return connrate(&o);
    if (!strcmp(argv[1], "throughput")) return throughput(&o);
    if (!strcmp(argv[1], "idle")) return idle(&o);
    usage("unknown subcommand");
    return 2;
}
