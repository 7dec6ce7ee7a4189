/*
 * pool_keep: a frame pool made for a pixel format, whose consumer holds
 * several frames at once, through the C API.
 *
 * The process forks. The parent is the producer: it describes the devices
 * that will touch the frames (here one that needs nothing special, so the
 * cheapest heap wins and the program runs anywhere), lays out NV12 320x240
 * and makes a pool of 6 buffers sized for that layout
 * (dmabroker_producer_new_for_layout), printing which heap was chosen and
 * why. It fills FRAMES frames (each plane with a pattern of the frame
 * number) and submits each with its checksum; every third frame asks for a
 * sync_file (DMABROKER_FRAME_FLAG_SYNC_FILE), which a memfd pool ignores.
 * It also checks dmabroker_producer_new_for (constraints, no layout).
 *
 * The child is the consumer: it connects asking for sync_files and keeps a
 * window of the last KEEP frames (a reorder or compare window): each new
 * frame is received while the older ones are still held, their pointers
 * stay valid, and before the oldest is freed its bytes are checked again,
 * so a buffer reused while held would be caught. It checks that every
 * frame comes without a sync_file (fd -1: memfd pool) and that
 * dmabroker_consumer_held_count follows the window. Frames are freed
 * oldest first, except every fifth, which is freed at once (frames are
 * independent). Exit status 0 when both sides saw every frame intact.
 *
 * Build: cc pool_keep.c $(pkg-config --cflags --libs dmabroker)
 * Run:   ./pool_keep [SOCKET_PATH]    (default: a socket in a fresh /tmp dir)
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

#define FRAMES 48
#define BUFFERS 6
#define KEEP 3
#define WIDTH 320
#define HEIGHT 240

static const char *who = "pool_keep";

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

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* One held frame of the consumer's window. */
struct held {
    dmabroker_frame *frame;
    const uint8_t *data;
    size_t len;
    uint64_t seq, meta;
};

/* The frame's bytes still match the checksum it came with. */
static int intact(const struct held *h) { return fnv1a(h->data, h->len) == h->meta; }

static int consumer(const char *path) {
    who = "pool_keep consumer";
    dmabroker_consumer_options opts = {0};
    opts.wait = DMABROKER_WAIT_MODE_BLOCK;
    opts.want_sync_files = true;
    dmabroker_consumer *c = NULL;
    dmabroker_status st = DMABROKER_ERROR_NO_PRODUCER;
    /* The producer listens after the fork: retry for up to 20 s (valgrind is slow). */
    for (int tries = 0; tries < 2000 && st == DMABROKER_ERROR_NO_PRODUCER; tries++) {
        st = dmabroker_consumer_connect_with(path, &opts, &c);
        if (st == DMABROKER_ERROR_NO_PRODUCER) sleep_ms(10);
    }
    CHECK(st);

    struct held window[KEEP + 1];
    size_t kept = 0;
    unsigned received = 0, bad = 0, max_held = 0;
    for (;;) {
        dmabroker_frame *frame = NULL;
        st = dmabroker_consumer_recv(c, 10000, &frame);
        if (st == DMABROKER_ERROR_CLOSED) break;
        if (st != DMABROKER_OK) {
            fprintf(stderr, "%s: recv: %s: %s\n", who, dmabroker_status_name(st),
                    dmabroker_last_error());
            bad++;
            break;
        }
        dmabroker_frame_info info;
        struct held h = {frame, NULL, 0, 0, 0};
        const void *data = NULL;
        int sync_fd = 7;
        if (dmabroker_frame_get_info(frame, &info) != DMABROKER_OK ||
            dmabroker_frame_data(frame, &data, &h.len) != DMABROKER_OK ||
            dmabroker_frame_take_sync_file(frame, &sync_fd) != DMABROKER_OK) {
            fprintf(stderr, "%s: frame: %s\n", who, dmabroker_last_error());
            dmabroker_frame_free(frame);
            bad++;
            break;
        }
        h.data = data;
        h.seq = info.seq;
        h.meta = info.meta;
        if (info.seq != received || !intact(&h) || sync_fd != -1 ||
            (info.flags & DMABROKER_FRAME_FLAG_SYNC_FILE) != 0) {
            bad++;
            printf("consumer: BAD frame seq %" PRIu64 " (want %u) flags %#x sync_fd %d\n", info.seq,
                   received, info.flags, sync_fd);
        }
        received++;
        if (info.seq % 5 == 4) {
            dmabroker_frame_free(frame); /* not kept: freed at once */
        } else {
            window[kept++] = h;
        }
        size_t held = 0;
        CHECK(dmabroker_consumer_held_count(c, &held));
        if (held != kept) {
            bad++;
            printf("consumer: holds %zu buffers, the window has %zu frames\n", held, kept);
        }
        if (held > max_held) max_held = (unsigned)held;
        if (kept > KEEP) {
            /* The oldest leaves the window: it must still be what was sent. */
            if (!intact(&window[0])) {
                bad++;
                printf("consumer: frame %" PRIu64 " changed while held\n", window[0].seq);
            }
            dmabroker_frame_free(window[0].frame);
            memmove(&window[0], &window[1], (kept - 1) * sizeof window[0]);
            kept--;
        }
    }
    for (size_t i = 0; i < kept; i++) {
        if (!intact(&window[i])) bad++;
        dmabroker_frame_free(window[i].frame);
    }
    dmabroker_consumer_free(c);
    printf("consumer: %u frames received, %u bad, up to %u held at once\n", received, bad,
           max_held);
    return (received == FRAMES && bad == 0 && max_held == KEEP + 1) ? 0 : 1;
}

static int wait_child(pid_t child) {
    int status = 0;
    if (waitpid(child, &status, 0) < 0) {
        perror("pool_keep: waitpid");
        return 1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "pool_keep: the consumer failed (status %#x)\n", status);
        return 1;
    }
    return 0;
}

/* A pool by constraints alone (no layout): sized as asked. */
static int check_new_for(dmabroker_constraints *device) {
    dmabroker_producer *p = NULL;
    dmabroker_choice_info why;
    CHECK(dmabroker_producer_new_for(NULL, device, 2, 10000, NULL, &p, &why));
    dmabroker_buffer *b = NULL;
    dmabroker_status st = dmabroker_producer_get_buffer(p, 1, &b);
    int ok = st == DMABROKER_OK && dmabroker_producer_buffer_count(p) == 2 &&
             dmabroker_buffer_len(b) >= 10000 && why.len >= 10000;
    printf("producer: new_for: 2 buffers of %" PRIu64 " bytes from %s\n", why.allocated_len,
           why.heap);
    dmabroker_buffer_free(b);
    dmabroker_choice_info_clear(&why);
    dmabroker_producer_free(p);
    return ok ? 0 : 1;
}

/* Fill every plane of frame `i`; returns the checksum of `used` bytes. */
static uint64_t fill(uint8_t *bytes, const dmabroker_layout *layout, unsigned i, uint64_t used) {
    memset(bytes, 0, used);
    for (size_t p = 0; p < dmabroker_layout_plane_count(layout); p++) {
        dmabroker_plane_layout plane;
        if (dmabroker_layout_get_plane(layout, p, &plane) != DMABROKER_OK) continue;
        for (uint32_t y = 0; y < plane.lines; y++) {
            uint8_t *row = bytes + plane.offset + y * plane.bytesperline;
            for (uint64_t x = 0; x < plane.bytesperline; x++)
                row[x] = (uint8_t)(x + y * 3u + i * 11u + p * 101u);
        }
    }
    return fnv1a(bytes, used);
}

/* On every failure path the producer is freed first, which closes the
 * stream: the consumer then ends too, and is waited for. */
static int producer(const char *path, pid_t child) {
    who = "pool_keep producer";
    dmabroker_constraints *device = NULL;
    dmabroker_layout *layout = NULL;
    dmabroker_producer *p = NULL;
    dmabroker_choice_info why;
    dmabroker_pool_options opts = {0};
    opts.name = "pool-keep";
    dmabroker_status st = dmabroker_constraints_new("viewer", &device);
    if (st == DMABROKER_OK) st = dmabroker_constraints_set_dma_buf(device, false);
    if (st == DMABROKER_OK) st = dmabroker_layout_new("NV12", WIDTH, HEIGHT, 0, &layout);
    if (st == DMABROKER_OK)
        st = dmabroker_producer_new_for_layout(NULL, device, layout, BUFFERS, &opts, &p, &why);
    if (st == DMABROKER_OK) {
        printf("producer: %u buffers of %" PRIu64 " bytes (NV12 %ux%u) from %s: %s\n",
               dmabroker_producer_buffer_count(p), why.allocated_len, WIDTH, HEIGHT, why.heap,
               why.reasons);
        dmabroker_choice_info_clear(&why);
        st = dmabroker_producer_listen(p, path);
    }
    if (st == DMABROKER_OK) st = dmabroker_producer_wait_for_consumers(p, 1, 20000);
    if (st != DMABROKER_OK) {
        fprintf(stderr, "%s: setup: %s: %s\n", who, dmabroker_status_name(st),
                dmabroker_last_error());
        dmabroker_producer_free(p);
        dmabroker_layout_free(layout);
        dmabroker_constraints_free(device);
        wait_child(child);
        return 1;
    }
    uint64_t used = dmabroker_layout_total_size(layout);
    for (unsigned i = 0; i < FRAMES && st == DMABROKER_OK; i++) {
        uint32_t index;
        void *data;
        size_t len;
        st = dmabroker_producer_acquire(p, 10000, &index, &data, &len);
        if (st != DMABROKER_OK) break;
        uint64_t sum = fill(data, layout, i, used);
        uint32_t flags = (i % 3 == 0) ? DMABROKER_FRAME_FLAG_SYNC_FILE : 0;
        st = dmabroker_producer_submit(p, used, flags, sum, NULL);
    }
    if (st != DMABROKER_OK) {
        fprintf(stderr, "%s: %s: %s\n", who, dmabroker_status_name(st), dmabroker_last_error());
        dmabroker_producer_free(p);
        dmabroker_layout_free(layout);
        dmabroker_constraints_free(device);
        wait_child(child);
        return 1;
    }
    dmabroker_producer_close(p);
    int rc = wait_child(child);
    dmabroker_pool_stats stats = {0};
    if (dmabroker_producer_get_stats(p, &stats) != DMABROKER_OK) rc = 1;
    printf("producer: %" PRIu64 " frames produced, %" PRIu64 " dropped\n", stats.produced,
           stats.dropped);
    dmabroker_producer_free(p);
    if (rc == 0) rc = check_new_for(device);
    dmabroker_layout_free(layout);
    dmabroker_constraints_free(device);
    return (rc == 0 && stats.produced == FRAMES && stats.dropped == 0) ? 0 : 1;
}

int main(int argc, char **argv) {
    char dir[] = "/tmp/dmabroker-pool-keep.XXXXXX";
    char path[256];
    int made_dir = 0;
    if (argc > 1) {
        snprintf(path, sizeof path, "%s", argv[1]);
    } else {
        if (!mkdtemp(dir)) {
            perror("pool_keep: mkdtemp");
            return 1;
        }
        made_dir = 1;
        snprintf(path, sizeof path, "%s/pool.sock", dir);
    }
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) {
        perror("pool_keep: fork");
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
    printf("pool_keep: %s\n", rc == 0 ? "every frame arrived intact, several held at once" : "FAILED");
    return rc;
}
