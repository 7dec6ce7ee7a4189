/*
 * vivid_capture: capture from a V4L2 camera into buffers allocated by
 * dmabroker, through V4L2_MEMORY_DMABUF, and check the frames on the CPU
 * through the dmabroker mapping begin/end API.
 *
 *   1. open the device (default /dev/video0: the vivid virtual camera in the
 *      test VM) and set YUYV 640x480 with VIDIOC_S_FMT; use what the driver
 *      answers (format, size, bytesperline, sizeimage);
 *   2. lay that format out with dmabroker_layout_new and check it against
 *      the driver's answer; the buffer size is the larger of the two;
 *   3. allocate BUFFERS buffers by the device's constraints
 *      (dmabroker_constraints_probe + dma-buf needed + dmabroker_alloc_for,
 *      printing the chosen heap and why); when that fails, from the heap
 *      "dma-heap/system" by size;
 *   4. clear them through a read-write mapping (begin WRITE / end), queue
 *      their fds with V4L2_MEMORY_DMABUF, stream on, capture FRAMES frames;
 *   5. read each frame in place (begin READ / end): it must hold non-zero
 *      bytes, and consecutive frames must differ (vivid's OSD counters move).
 *
 * No /dev/video0: prints "SKIP vivid_capture: no /dev/video0" and exits 0,
 * except under DMABROKER_VM=1 (the test VM), where that is a failure.
 *
 * Build: cc vivid_capture.c $(pkg-config --cflags --libs dmabroker)
 *        examples/c/vm-build.sh OUTDIR   (static, for vm/run.sh)
 * Run:   ./vivid_capture [DEVICE]
 */
#define _GNU_SOURCE
#include <dmabroker.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define BUFFERS 4
#define FRAMES 8
#define WIDTH 640
#define HEIGHT 480

static int xioctl(int fd, unsigned long request, void *arg) {
    int r;
    do {
        r = ioctl(fd, request, arg);
    } while (r < 0 && errno == EINTR);
    return r;
}

static int fail(const char *what) {
    fprintf(stderr, "vivid_capture: %s failed: %s\n", what, strerror(errno));
    return 0;
}

static int dmb_fail(const char *what, dmabroker_status st) {
    fprintf(stderr, "vivid_capture: %s failed: %s: %s\n", what, dmabroker_status_name(st),
            dmabroker_last_error());
    return 0;
}

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3u;
    }
    return h;
}

struct capture {
    int fd;
    struct v4l2_format fmt;
    uint64_t size;
    dmabroker_heaps *heaps;
    dmabroker_buffer *buf[BUFFERS];
    dmabroker_mapping *map[BUFFERS];
    int streaming;
    int reqbufs;
};

/* Allocate the buffers: by the device's constraints, else from dma-heap/system. */
static int allocate(struct capture *c, const char *dev) {
    dmabroker_status st = dmabroker_heaps_discover(&c->heaps);
    if (st != DMABROKER_OK) return dmb_fail("dmabroker_heaps_discover", st);

    dmabroker_constraints *cons = NULL;
    st = dmabroker_constraints_probe(dev, &cons);
    if (st == DMABROKER_OK) st = dmabroker_constraints_set_dma_buf(cons, true);
    if (st == DMABROKER_OK) {
        char *text = NULL;
        if (dmabroker_constraints_describe(cons, &text) == DMABROKER_OK) {
            printf("constraints of %s:\n  %s\n", dev, text);
            dmabroker_string_free(text);
        }
        for (int i = 0; i < BUFFERS && st == DMABROKER_OK; i++) {
            dmabroker_choice_info info;
            char name[32];
            snprintf(name, sizeof name, "vivid-%d", i);
            st = dmabroker_alloc_for(c->heaps, cons, c->size, name, &c->buf[i], &info);
            if (st == DMABROKER_OK && i == 0)
                printf("alloc_for: %" PRIu64 " bytes from %s: %s\n", info.allocated_len, info.heap,
                       info.reasons);
            dmabroker_choice_info_clear(&info);
        }
    }
    dmabroker_constraints_free(cons);
    if (st != DMABROKER_OK) {
        printf("allocation by constraints failed (%s: %s); using dma-heap/system\n",
               dmabroker_status_name(st), dmabroker_last_error());
        for (int i = 0; i < BUFFERS; i++) {
            dmabroker_buffer_free(c->buf[i]);
            c->buf[i] = NULL;
        }
        dmabroker_alloc_options opts = {0};
        opts.name = "vivid";
        for (int i = 0; i < BUFFERS; i++) {
            st = dmabroker_alloc(c->heaps, "dma-heap/system", c->size, &opts, &c->buf[i]);
            if (st != DMABROKER_OK) return dmb_fail("dmabroker_alloc(dma-heap/system)", st);
        }
    }
    for (int i = 0; i < BUFFERS; i++) {
        dmabroker_buffer_info bi;
        st = dmabroker_buffer_get_info(c->buf[i], &bi);
        if (st != DMABROKER_OK) return dmb_fail("dmabroker_buffer_get_info", st);
        if (!bi.device_importable) {
            fprintf(stderr, "vivid_capture: buffer %d from %s is not a dma-buf\n", i, bi.heap);
            return 0;
        }
        if (i == 0) printf("buffers: %d x %" PRIu64 " bytes, heap %s\n", BUFFERS, bi.len, bi.heap);
        /* Clear it through the mapping: frames must then be the device's work. */
        st = dmabroker_buffer_map(c->buf[i], DMABROKER_MAP_MODE_READ_WRITE, &c->map[i]);
        if (st != DMABROKER_OK) return dmb_fail("dmabroker_buffer_map", st);
        void *data;
        size_t len;
        st = dmabroker_mapping_begin(c->map[i], DMABROKER_ACCESS_WRITE, &data, &len);
        if (st != DMABROKER_OK) return dmb_fail("dmabroker_mapping_begin(WRITE)", st);
        memset(data, 0, len);
        st = dmabroker_mapping_end(c->map[i]);
        if (st != DMABROKER_OK) return dmb_fail("dmabroker_mapping_end", st);
    }
    return 1;
}

static int set_format(struct capture *c) {
    struct v4l2_capability cap;
    memset(&cap, 0, sizeof cap);
    if (xioctl(c->fd, VIDIOC_QUERYCAP, &cap) < 0) return fail("VIDIOC_QUERYCAP");
    uint32_t caps = (cap.capabilities & V4L2_CAP_DEVICE_CAPS) ? cap.device_caps : cap.capabilities;
    printf("device: %s (%s), caps %#x\n", (const char *)cap.card, (const char *)cap.driver, caps);
    if (!(caps & V4L2_CAP_VIDEO_CAPTURE) || !(caps & V4L2_CAP_STREAMING)) {
        fprintf(stderr, "vivid_capture: not a single-planar streaming capture device\n");
        return 0;
    }
    memset(&c->fmt, 0, sizeof c->fmt);
    c->fmt.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    c->fmt.fmt.pix.width = WIDTH;
    c->fmt.fmt.pix.height = HEIGHT;
    c->fmt.fmt.pix.pixelformat = V4L2_PIX_FMT_YUYV;
    c->fmt.fmt.pix.field = V4L2_FIELD_NONE;
    if (xioctl(c->fd, VIDIOC_S_FMT, &c->fmt) < 0) return fail("VIDIOC_S_FMT");
    const struct v4l2_pix_format *pix = &c->fmt.fmt.pix;
    char fourcc[5] = {(char)(pix->pixelformat & 0xff), (char)((pix->pixelformat >> 8) & 0xff),
                      (char)((pix->pixelformat >> 16) & 0xff), (char)(pix->pixelformat >> 24), 0};
    printf("S_FMT answered: %s %ux%u, bytesperline %u, sizeimage %u, field %u\n", fourcc,
           pix->width, pix->height, pix->bytesperline, pix->sizeimage, pix->field);

    /* The driver's answer, laid out by dmabroker. */
    dmabroker_layout *layout = NULL;
    dmabroker_status st = dmabroker_layout_new(fourcc, pix->width, pix->height, 0, &layout);
    if (st != DMABROKER_OK) return dmb_fail("dmabroker_layout_new", st);
    dmabroker_plane_layout plane;
    st = dmabroker_layout_get_plane(layout, 0, &plane);
    if (st != DMABROKER_OK) {
        dmabroker_layout_free(layout);
        return dmb_fail("dmabroker_layout_get_plane", st);
    }
    uint64_t total = dmabroker_layout_total_size(layout);
    printf("layout: %s, %zu plane(s), plane 0: offset %" PRIu64 ", bytesperline %" PRIu64
           ", lines %u, size %" PRIu64 "; total %" PRIu64 " bytes\n",
           dmabroker_layout_format_name(layout), dmabroker_layout_plane_count(layout),
           plane.offset, plane.bytesperline, plane.lines, plane.size, total);
    int pixelformat_ok = dmabroker_layout_v4l2_pixelformat(layout) == pix->pixelformat;
    dmabroker_layout_free(layout);
    if (!pixelformat_ok) {
        fprintf(stderr, "vivid_capture: the layout's V4L2 code differs from the driver's\n");
        return 0;
    }
    if (plane.bytesperline != pix->bytesperline || total != pix->sizeimage)
        printf("note: the driver pads the frame (bytesperline %u, sizeimage %u)\n",
               pix->bytesperline, pix->sizeimage);
    c->size = total > pix->sizeimage ? total : pix->sizeimage;
    return 1;
}

static int queue(struct capture *c, uint32_t index) {
    struct v4l2_buffer b;
    memset(&b, 0, sizeof b);
    b.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    b.memory = V4L2_MEMORY_DMABUF;
    b.index = index;
    b.m.fd = dmabroker_buffer_fd(c->buf[index]); /* borrowed: the handle keeps it */
    b.length = (uint32_t)dmabroker_buffer_len(c->buf[index]);
    if (xioctl(c->fd, VIDIOC_QBUF, &b) < 0) return fail("VIDIOC_QBUF");
    return 1;
}

static int capture(struct capture *c) {
    struct v4l2_requestbuffers req;
    memset(&req, 0, sizeof req);
    req.count = BUFFERS;
    req.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    req.memory = V4L2_MEMORY_DMABUF;
    if (xioctl(c->fd, VIDIOC_REQBUFS, &req) < 0) return fail("VIDIOC_REQBUFS(DMABUF)");
    c->reqbufs = 1;
    if (req.count < BUFFERS) {
        fprintf(stderr, "vivid_capture: the driver gave %u buffer slots, not %d\n", req.count,
                BUFFERS);
        return 0;
    }
    for (uint32_t i = 0; i < BUFFERS; i++)
        if (!queue(c, i)) return 0;
    int type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    if (xioctl(c->fd, VIDIOC_STREAMON, &type) < 0) return fail("VIDIOC_STREAMON");
    c->streaming = 1;

    uint64_t previous = 0;
    int changed = 0, ok = 1;
    for (int n = 0; n < FRAMES; n++) {
        struct pollfd pfd = {c->fd, POLLIN, 0};
        int r = poll(&pfd, 1, 20000);
        if (r <= 0) {
            fprintf(stderr, "vivid_capture: no frame within 20 s (%s)\n",
                    r < 0 ? strerror(errno) : "timeout");
            return 0;
        }
        struct v4l2_buffer b;
        memset(&b, 0, sizeof b);
        b.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        b.memory = V4L2_MEMORY_DMABUF;
        if (xioctl(c->fd, VIDIOC_DQBUF, &b) < 0) return fail("VIDIOC_DQBUF");
        if (b.index >= BUFFERS) {
            fprintf(stderr, "vivid_capture: DQBUF returned index %u\n", b.index);
            return 0;
        }
        /* Read the frame in place: begin READ makes the device's writes visible. */
        void *data;
        size_t len;
        dmabroker_status st =
            dmabroker_mapping_begin(c->map[b.index], DMABROKER_ACCESS_READ, &data, &len);
        if (st != DMABROKER_OK) return dmb_fail("dmabroker_mapping_begin(READ)", st);
        size_t used = b.bytesused < len ? b.bytesused : len;
        const uint8_t *bytes = data;
        size_t nonzero = 0;
        for (size_t i = 0; i < used; i++) nonzero += bytes[i] != 0;
        uint64_t sum = fnv1a(bytes, used);
        st = dmabroker_mapping_end(c->map[b.index]);
        if (st != DMABROKER_OK) return dmb_fail("dmabroker_mapping_end", st);

        int differs = n > 0 && sum != previous;
        changed += differs;
        int frame_ok = used > 0 && nonzero > used / 4 && !(b.flags & V4L2_BUF_FLAG_ERROR);
        printf("frame %d: buffer %u, sequence %u, %u bytes, %zu non-zero, checksum %016" PRIx64
               "%s%s\n",
               n, b.index, b.sequence, b.bytesused, nonzero, sum,
               n == 0 ? "" : (differs ? ", changed" : ", SAME as the previous frame"),
               frame_ok ? "" : "  <-- BAD");
        ok &= frame_ok;
        previous = sum;
        if (!queue(c, b.index)) return 0;
    }
    printf("%d frames captured, %d of %d changed from the one before\n", FRAMES, changed,
           FRAMES - 1);
    if (changed == 0) {
        fprintf(stderr, "vivid_capture: every frame is the same: the device is not writing\n");
        ok = 0;
    }
    return ok;
}

static void teardown(struct capture *c) {
    if (c->streaming) {
        int type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        if (xioctl(c->fd, VIDIOC_STREAMOFF, &type) < 0) fail("VIDIOC_STREAMOFF");
    }
    if (c->reqbufs) {
        struct v4l2_requestbuffers req;
        memset(&req, 0, sizeof req);
        req.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        req.memory = V4L2_MEMORY_DMABUF;
        if (xioctl(c->fd, VIDIOC_REQBUFS, &req) < 0) fail("VIDIOC_REQBUFS(0)");
    }
    for (int i = 0; i < BUFFERS; i++) {
        dmabroker_mapping_free(c->map[i]);
        dmabroker_buffer_free(c->buf[i]);
    }
    dmabroker_heaps_free(c->heaps);
    if (c->fd >= 0) close(c->fd);
}

int main(int argc, char **argv) {
    const char *dev = argc > 1 ? argv[1] : "/dev/video0";
    const char *vm = getenv("DMABROKER_VM");
    int in_vm = vm && strcmp(vm, "1") == 0;
    struct capture c;
    memset(&c, 0, sizeof c);
    c.fd = open(dev, O_RDWR | O_CLOEXEC);
    if (c.fd < 0) {
        if (errno == ENOENT && !in_vm) {
            printf("SKIP vivid_capture: no %s\n", dev);
            return 0;
        }
        fprintf(stderr, "vivid_capture: open %s: %s%s\n", dev, strerror(errno),
                in_vm ? " (DMABROKER_VM=1: the VM must have it)" : "");
        return 1;
    }
    int ok = set_format(&c) && allocate(&c, dev) && capture(&c);
    teardown(&c);
    printf("vivid_capture: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
