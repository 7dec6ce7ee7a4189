/*
 * alloc_map: the in-process path of the dmabroker C API, end to end.
 *
 *   1. discover the heaps and print what each can do;
 *   2. allocate a buffer (from the heap named on the command line, default
 *      "memfd", present everywhere);
 *   3. map it read-write and write a pattern inside begin/end;
 *   4. duplicate its fd (an int we own), import that fd as a new buffer
 *      (the library takes it), map the import read-only and check the
 *      pattern through begin/end;
 *   5. print its physical segments when the kernel shows them (root).
 *
 * Build: cc alloc_map.c $(pkg-config --cflags --libs dmabroker)
 * Run:   ./alloc_map [HEAP [SIZE]]
 */
#include <dmabroker.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Print the failed call, its status and the library's message; exit. */
#define CHECK(call)                                                              \
    do {                                                                         \
        dmabroker_status status_ = (call);                                       \
        if (status_ != DMABROKER_OK) {                                           \
            fprintf(stderr, "alloc_map: %s failed: %s: %s\n", #call,             \
                    dmabroker_status_name(status_), dmabroker_last_error());     \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static uint8_t pattern(size_t i) { return (uint8_t)(i * 7u + 3u); }

static const char *heap_kind(dmabroker_heap_kind kind) {
    switch (kind) {
    case DMABROKER_HEAP_KIND_DMA_HEAP: return "dma-heap";
    case DMABROKER_HEAP_KIND_UDMABUF: return "udmabuf";
    case DMABROKER_HEAP_KIND_MEMFD: return "memfd";
    case DMABROKER_HEAP_KIND_HUGETLB: return "hugetlb";
    default: return "other";
    }
}

static void print_heaps(const dmabroker_heaps *heaps) {
    size_t n = dmabroker_heaps_count(heaps);
    printf("%zu heaps:\n", n);
    for (size_t i = 0; i < n; i++) {
        dmabroker_heap_info info;
        CHECK(dmabroker_heaps_get_info(heaps, i, &info));
        char contiguous[32];
        if (info.contiguous_up_to == DMABROKER_UNLIMITED)
            snprintf(contiguous, sizeof contiguous, "whole buffer");
        else
            snprintf(contiguous, sizeof contiguous, "%" PRIu64 " bytes", info.contiguous_up_to);
        printf("  %-20s %-9s page %-8" PRIu64 " contiguous %-14s %s%s%s%s\n", info.name,
               heap_kind(info.kind), info.page_size, contiguous,
               info.device_importable ? "device-importable " : "",
               info.usable ? "usable" : "UNUSABLE", info.note ? ": " : "",
               info.note ? info.note : "");
    }
}

static void print_info(const char *what, const dmabroker_buffer *buffer) {
    dmabroker_buffer_info info;
    CHECK(dmabroker_buffer_get_info(buffer, &info));
    printf("%s: %" PRIu64 " bytes from %s, name %s, inode %" PRIu64 ", kind %u, page %" PRIu64
           "%s%s\n",
           what, info.len, info.heap, info.name ? info.name : "(none)", info.inode,
           (unsigned)info.kind, info.page_size, info.device_importable ? ", device-importable" : "",
           info.size_sealed ? ", size sealed" : "");
}

static void print_segments(const dmabroker_buffer *buffer) {
    size_t count = 0;
    dmabroker_status status = dmabroker_buffer_segments(buffer, NULL, 0, &count);
    if (status == DMABROKER_ERROR_PERMISSION_DENIED) {
        printf("segments: not shown (%s)\n", dmabroker_last_error());
        return;
    }
    if (status != DMABROKER_ERROR_BUFFER_TOO_SMALL && status != DMABROKER_OK) {
        fprintf(stderr, "alloc_map: segments: %s: %s\n", dmabroker_status_name(status),
                dmabroker_last_error());
        exit(1);
    }
    dmabroker_segment *segments = calloc(count ? count : 1, sizeof *segments);
    if (!segments) exit(1);
    CHECK(dmabroker_buffer_segments(buffer, segments, count, &count));
    printf("segments: %zu%s\n", count, count == 1 ? " (physically contiguous)" : "");
    for (size_t i = 0; i < count && i < 8; i++)
        printf("  0x%012" PRIx64 " + %" PRIu64 "\n", segments[i].phys_addr, segments[i].len);
    free(segments);
}

int main(int argc, char **argv) {
    const char *heap = argc > 1 ? argv[1] : "memfd";
    uint64_t size = argc > 2 ? strtoull(argv[2], NULL, 0) : (1u << 20);
    printf("dmabroker %s\n", dmabroker_version());

    dmabroker_heaps *heaps = NULL;
    CHECK(dmabroker_heaps_discover(&heaps));
    print_heaps(heaps);

    /* Allocate. */
    dmabroker_alloc_options options = {0};
    options.name = "alloc_map";
    dmabroker_buffer *buffer = NULL;
    CHECK(dmabroker_alloc(heaps, heap, size, &options, &buffer));
    print_info("allocated", buffer);

    /* Write the pattern inside a CPU access bracket. */
    dmabroker_mapping *map = NULL;
    CHECK(dmabroker_buffer_map(buffer, DMABROKER_MAP_MODE_READ_WRITE, &map));
    void *data = NULL;
    size_t len = 0;
    CHECK(dmabroker_mapping_begin(map, DMABROKER_ACCESS_WRITE, &data, &len));
    uint8_t *bytes = data;
    for (size_t i = 0; i < len; i++) bytes[i] = pattern(i);
    CHECK(dmabroker_mapping_end(map));
    dmabroker_mapping_free(map);
    printf("wrote %zu bytes\n", len);

    /* An fd of our own, handed to the import, which takes it. */
    int fd = -1;
    CHECK(dmabroker_buffer_dup_fd(buffer, &fd));
    dmabroker_buffer *imported = NULL;
    CHECK(dmabroker_buffer_from_fd(fd, DMABROKER_FD_OWNERSHIP_TAKE, &imported));
    fd = -1; /* the library's now */
    print_info("imported", imported);

    dmabroker_buffer_info a, b;
    CHECK(dmabroker_buffer_get_info(buffer, &a));
    CHECK(dmabroker_buffer_get_info(imported, &b));
    if (a.inode != b.inode || a.len != b.len) {
        fprintf(stderr, "alloc_map: the import is not the same buffer\n");
        return 1;
    }
    /* The original handle is no longer needed: the import keeps the memory. */
    dmabroker_buffer_free(buffer);

    /* Read back through a read-only mapping of the import. */
    CHECK(dmabroker_buffer_map(imported, DMABROKER_MAP_MODE_READ, &map));
    CHECK(dmabroker_mapping_begin(map, DMABROKER_ACCESS_READ, &data, &len));
    const uint8_t *in = data;
    size_t bad = 0;
    for (size_t i = 0; i < len; i++) bad += in[i] != pattern(i);
    CHECK(dmabroker_mapping_end(map));
    dmabroker_mapping_free(map);
    if (bad || len != b.len) {
        fprintf(stderr, "alloc_map: %zu of %zu bytes differ\n", bad, len);
        return 1;
    }
    printf("read back %zu bytes: pattern intact\n", len);

    print_segments(imported);
    dmabroker_buffer_free(imported);
    dmabroker_heaps_free(heaps);
    printf("alloc_map: OK\n");
    return 0;
}
