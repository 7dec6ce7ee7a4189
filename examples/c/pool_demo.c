/*
 * pool_demo: a zero-copy frame pool between two processes, through the C API.
 *
 * The process forks. The parent is the producer: it makes a pool of 4 memfd
 * buffers, listens on a socket, waits for the consumer, then fills FRAMES
 * frames (a pattern that changes every frame, a varying length) through
 * acquire (a write pointer inside the begin/end bracket) and submits each
 * with its FNV-1a checksum as the frame's application word (meta). The child
 * is the consumer: it connects, receives every frame, checks its sequence
 * number, flags, timestamp, length and checksum against the bytes it reads
 * in place, frees the frame (which gives the buffer back), and stops at the
 * end of the stream (DMABROKER_ERROR_CLOSED). Exit status 0 when both sides
 * saw every frame intact.
 *
 * Build: cc pool_demo.c $(pkg-config --cflags --libs dmabroker)
 * Run:   ./pool_demo [SOCKET_PATH]    (default: a socket in a fresh /tmp dir)
 */
#define _GNU_SOURCE
#include <dmabroker.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FRAMES 64
#define BUFFERS 4
#define BUFFER_LEN (64u * 1024u)

static const char *who = "pool_demo";

#define CHECK(call)                                                              \
    do {                                                                         \
        dmabroker_status status_ = (call);                                       \
        if (status_ != DMABROKER_OK) {                                           \
            fprintf(stderr, "%s: %s failed: %s: %s\n", who, #call,               \
                    dmabroker_status_name(status_), dmabroker_last_error());     \
            return 1;                                                            \
        }                                                                        \
    } while (0)

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3u;
    }
    return h;
}

static uint64_t frame_len(unsigned i) { return BUFFER_LEN - (uint64_t)i * 97u; }

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int consumer(const char *path) {
    who = "pool_demo consumer";
    dmabroker_consumer *c = NULL;
    dmabroker_status st = DMABROKER_ERROR_NO_PRODUCER;
    /* The producer listens after the fork: retry for up to 20 s (valgrind is slow). */
    for (int tries = 0; tries < 2000 && st == DMABROKER_ERROR_NO_PRODUCER; tries++) {
        st = dmabroker_consumer_connect(path, DMABROKER_WAIT_MODE_BLOCK, &c);
        if (st == DMABROKER_ERROR_NO_PRODUCER) sleep_ms(10);
    }
    CHECK(st);
    dmabroker_consumer_self_stats self;
    CHECK(dmabroker_consumer_get_stats(c, &self));
    printf("consumer: attached as slot %u, %u buffers of %" PRIu64 " bytes\n", self.slot,
           self.buffer_count, self.buffer_len);

    unsigned received = 0, bad = 0;
    uint64_t last_ts = 0;
    for (;;) {
        dmabroker_frame *frame = NULL;
        st = dmabroker_consumer_recv(c, 10000, &frame);
        if (st == DMABROKER_ERROR_CLOSED) break;
        if (st != DMABROKER_OK) {
            fprintf(stderr, "%s: recv: %s: %s\n", who, dmabroker_status_name(st),
                    dmabroker_last_error());
            dmabroker_consumer_free(c);
            return 1;
        }
        dmabroker_frame_info info;
        const void *data = NULL;
        size_t len = 0;
        if (dmabroker_frame_get_info(frame, &info) != DMABROKER_OK ||
            dmabroker_frame_data(frame, &data, &len) != DMABROKER_OK) {
            fprintf(stderr, "%s: frame: %s\n", who, dmabroker_last_error());
            dmabroker_frame_free(frame);
            dmabroker_consumer_free(c);
            return 1;
        }
        uint64_t sum = fnv1a(data, len);
        uint32_t want_flags = (received % 4 == 0) ? DMABROKER_FRAME_FLAG_KEY_FRAME : 0;
        if (info.seq != received || len != frame_len(received) || info.bytes_used != len ||
            sum != info.meta || info.flags != want_flags || info.index >= BUFFERS ||
            info.timestamp_ns < last_ts || info.timestamp_ns == 0) {
            bad++;
            printf("consumer: BAD frame seq %" PRIu64 " (want %u) index %u len %zu flags %u "
                   "checksum %016" PRIx64 " meta %016" PRIx64 "\n",
                   info.seq, received, info.index, len, info.flags, sum, info.meta);
        }
        last_ts = info.timestamp_ns;
        received++;
        dmabroker_frame_free(frame); /* gives the buffer back to the producer */
    }
    CHECK(dmabroker_consumer_get_stats(c, &self));
    dmabroker_consumer_free(c);
    printf("consumer: %u frames received, %u bad, %" PRIu64 " dropped, %" PRIu64 " wake-ups\n",
           received, bad, self.dropped, self.wakes);
    return (received == FRAMES && bad == 0) ? 0 : 1;
}

static int wait_child(pid_t child) {
    int status = 0;
    if (waitpid(child, &status, 0) < 0) {
        perror("pool_demo: waitpid");
        return 1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "pool_demo: the consumer failed (status %#x)\n", status);
        return 1;
    }
    return 0;
}

/* On every failure path the producer is freed first, which closes the
 * stream: the consumer then ends too, and is waited for. */
static int producer(const char *path, pid_t child) {
    who = "pool_demo producer";
    dmabroker_pool_options opts = {0};
    opts.name = "pool-demo";
    dmabroker_producer *p = NULL;
    CHECK(dmabroker_producer_new(NULL, "memfd", BUFFERS, BUFFER_LEN, &opts, &p));
    dmabroker_status st = dmabroker_producer_listen(p, path);
    if (st == DMABROKER_OK) st = dmabroker_producer_wait_for_consumers(p, 1, 20000);
    if (st != DMABROKER_OK) {
        fprintf(stderr, "%s: listen/wait: %s: %s\n", who, dmabroker_status_name(st),
                dmabroker_last_error());
        dmabroker_producer_free(p);
        wait_child(child);
        return 1;
    }
    printf("producer: %u buffers of %u bytes, consumer attached on %s\n",
           dmabroker_producer_buffer_count(p), BUFFER_LEN, path);
    for (unsigned i = 0; i < FRAMES; i++) {
        uint32_t index;
        void *data;
        size_t len;
        st = dmabroker_producer_acquire(p, 10000, &index, &data, &len);
        if (st != DMABROKER_OK) break;
        uint64_t used = frame_len(i);
        uint8_t *bytes = data;
        for (size_t k = 0; k < used; k++) bytes[k] = (uint8_t)(k * 31u + i * 7u + (k >> 8));
        uint64_t sum = fnv1a(bytes, used);
        uint32_t flags = (i % 4 == 0) ? DMABROKER_FRAME_FLAG_KEY_FRAME : 0;
        uint64_t seq;
        st = dmabroker_producer_submit(p, used, flags, sum, &seq);
        if (st != DMABROKER_OK) break;
    }
    if (st != DMABROKER_OK) {
        fprintf(stderr, "%s: %s: %s\n", who, dmabroker_status_name(st), dmabroker_last_error());
        dmabroker_producer_free(p);
        wait_child(child);
        return 1;
    }
    CHECK(dmabroker_producer_close(p));
    dmabroker_pool_stats stats;
    CHECK(dmabroker_producer_get_stats(p, &stats));
    printf("producer: %" PRIu64 " frames produced, %" PRIu64 " dropped, %zu consumers\n",
           stats.produced, stats.dropped, stats.consumers);
    for (size_t i = 0; i < stats.consumers; i++) {
        dmabroker_consumer_stats cs;
        CHECK(dmabroker_producer_get_consumer_stats(p, i, &cs));
        printf("producer: consumer pid %u: delivered %" PRIu64 ", released %" PRIu64 "\n",
               cs.pid, cs.delivered, cs.released);
    }
    /* The producer lives on until the consumer has drained the stream. */
    int rc = wait_child(child);
    dmabroker_producer_free(p);
    return (rc == 0 && stats.produced == FRAMES) ? 0 : 1;
}

int main(int argc, char **argv) {
    char dir[] = "/tmp/dmabroker-pool-demo.XXXXXX";
    char path[256];
    int made_dir = 0;
    if (argc > 1) {
        snprintf(path, sizeof path, "%s", argv[1]);
    } else {
        if (!mkdtemp(dir)) {
            perror("pool_demo: mkdtemp");
            return 1;
        }
        made_dir = 1;
        snprintf(path, sizeof path, "%s/pool.sock", dir);
    }
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) {
        perror("pool_demo: fork");
        return 1;
    }
    if (child == 0) {
        int rc = consumer(path);
        fflush(stdout);
        return rc;
    }
    int rc = producer(path, child);
    if (made_dir) {
        unlink(path);
        rmdir(dir);
    }
    printf("pool_demo: %s\n", rc == 0 ? "every frame arrived intact" : "FAILED");
    return rc;
}
