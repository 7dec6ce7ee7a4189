/*
 * bad_args: every call of the dmabroker C API, given what a buggy caller
 * passes (NULL, fds -1 and 999999, a pipe, /dev/null, an empty memfd, zero
 * sizes, unknown heaps and enum values, calls out of order), returns an
 * error with a non-empty message instead of crashing, and leaves its
 * out-parameters cleared. Also checks the fd ownership rules of
 * dmabroker_buffer_from_fd.
 *
 * Build: cc bad_args.c $(pkg-config --cflags --libs dmabroker)
 */
#define _GNU_SOURCE
#include <dmabroker.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Not in the header: the library's own test hook, which panics in Rust. */
dmabroker_status dmabroker_private_test_panic(void);

static int checks, failures;

static void expect(const char *what, dmabroker_status got, dmabroker_status want) {
    checks++;
    const char *message = dmabroker_last_error();
    if (got != want) {
        failures++;
        printf("FAIL %s: got %s, want %s (%s)\n", what, dmabroker_status_name(got),
               dmabroker_status_name(want), message);
    } else if (got != DMABROKER_OK && (message == NULL || message[0] == '\0')) {
        failures++;
        printf("FAIL %s: %s with an empty message\n", what, dmabroker_status_name(got));
    } else {
        printf("ok   %-58s %s%s%s\n", what, dmabroker_status_name(got), got ? ": " : "",
               got ? message : "");
    }
}

static void expect_true(const char *what, int ok) {
    checks++;
    if (!ok) {
        failures++;
        printf("FAIL %s\n", what);
    } else {
        printf("ok   %s\n", what);
    }
}

static int is_open(int fd) { return fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

#define INVALID DMABROKER_ERROR_INVALID_ARGUMENT

int main(void) {
    dmabroker_heaps *heaps = (dmabroker_heaps *)1; /* must be cleared on failure */
    dmabroker_heap_info heap_info;
    dmabroker_buffer *buffer = (dmabroker_buffer *)1;
    dmabroker_buffer_info info;
    dmabroker_mapping *map = (dmabroker_mapping *)1;
    void *data = (void *)1;
    size_t len = 1, count = 1;
    int fd = 1;

    expect_true("last_error is \"\" before any failure", dmabroker_last_error()[0] == '\0');

    /* Heaps. */
    expect("heaps_discover(NULL)", dmabroker_heaps_discover(NULL), INVALID);
    expect("heaps_get_info(NULL heaps)", dmabroker_heaps_get_info(NULL, 0, &heap_info), INVALID);
    expect_true("heaps_count(NULL) == 0", dmabroker_heaps_count(NULL) == 0);
    expect("heaps_discover", dmabroker_heaps_discover(&heaps), DMABROKER_OK);
    expect("heaps_get_info(index out of range)", dmabroker_heaps_get_info(heaps, 100000, &heap_info),
           INVALID);
    expect("heaps_get_info(NULL out)", dmabroker_heaps_get_info(heaps, 0, NULL), INVALID);

    /* Allocation. */
    expect("alloc(NULL heap name)", dmabroker_alloc(heaps, NULL, 4096, NULL, &buffer), INVALID);
    expect_true("  out cleared to NULL", buffer == NULL);
    expect("alloc(size 0)", dmabroker_alloc(heaps, "memfd", 0, NULL, &buffer), INVALID);
    expect("alloc(unknown heap)", dmabroker_alloc(heaps, "no-such-heap", 4096, NULL, &buffer),
           DMABROKER_ERROR_NO_SUCH_HEAP);
    expect("alloc(unknown heap, no heaps handle)",
           dmabroker_alloc(NULL, "no-such-heap", 4096, NULL, &buffer), DMABROKER_ERROR_NO_SUCH_HEAP);
    expect("alloc(NULL out)", dmabroker_alloc(heaps, "memfd", 4096, NULL, NULL), INVALID);
    dmabroker_alloc_options options = {0};
    options.align = 3;
    expect("alloc(alignment 3)", dmabroker_alloc(heaps, "memfd", 4096, &options, &buffer), INVALID);
    options.align = 0;
    options.contiguous = true;
    expect("alloc(16 MiB contiguous from memfd)",
           dmabroker_alloc(heaps, "memfd", 16u << 20, &options, &buffer), DMABROKER_ERROR_UNSUPPORTED);
    expect("alloc(UINT64_MAX bytes)", dmabroker_alloc(heaps, "memfd", UINT64_MAX, NULL, &buffer),
           INVALID);
    expect("alloc(memfd, 4096) for the checks below",
           dmabroker_alloc(heaps, "memfd", 4096, NULL, &buffer), DMABROKER_OK);

    /* Buffer information and fds. */
    expect("buffer_get_info(NULL buffer)", dmabroker_buffer_get_info(NULL, &info), INVALID);
    expect("buffer_get_info(NULL out)", dmabroker_buffer_get_info(buffer, NULL), INVALID);
    expect_true("buffer_len(NULL) == 0", dmabroker_buffer_len(NULL) == 0);
    expect_true("buffer_fd(NULL) == -1", dmabroker_buffer_fd(NULL) == -1);
    expect("buffer_dup_fd(NULL buffer)", dmabroker_buffer_dup_fd(NULL, &fd), INVALID);
    expect_true("  fd_out set to -1", fd == -1);
    expect("buffer_dup_fd(NULL out)", dmabroker_buffer_dup_fd(buffer, NULL), INVALID);
    dmabroker_buffer *clone = (dmabroker_buffer *)1;
    expect("buffer_clone(NULL)", dmabroker_buffer_clone(NULL, &clone), INVALID);
    expect_true("  out cleared to NULL", clone == NULL);
    expect("buffer_clone(NULL out)", dmabroker_buffer_clone(buffer, NULL), INVALID);

    /* Import from bad fds. */
    dmabroker_buffer *imported = (dmabroker_buffer *)1, *buffer2 = NULL;
    expect("from_fd(-1, TAKE)", dmabroker_buffer_from_fd(-1, DMABROKER_FD_OWNERSHIP_TAKE, &imported),
           INVALID);
    expect_true("  out cleared to NULL", imported == NULL);
    expect("from_fd(999999, TAKE)",
           dmabroker_buffer_from_fd(999999, DMABROKER_FD_OWNERSHIP_TAKE, &imported), INVALID);
    expect("from_fd(999999, DUP)",
           dmabroker_buffer_from_fd(999999, DMABROKER_FD_OWNERSHIP_DUP, &imported), INVALID);
    int pipe_fds[2];
    if (pipe(pipe_fds) != 0) return 2;
    expect("from_fd(pipe, DUP)",
           dmabroker_buffer_from_fd(pipe_fds[0], DMABROKER_FD_OWNERSHIP_DUP, &imported),
           DMABROKER_ERROR_NOT_A_BUFFER);
    expect_true("  DUP left the caller's pipe fd open", is_open(pipe_fds[0]));
    expect("from_fd(pipe, bad ownership 7)", dmabroker_buffer_from_fd(pipe_fds[0], 7, &imported),
           INVALID);
    expect_true("  a bad ownership value leaves the fd open", is_open(pipe_fds[0]));
    expect("from_fd(pipe, TAKE)",
           dmabroker_buffer_from_fd(pipe_fds[0], DMABROKER_FD_OWNERSHIP_TAKE, &imported),
           DMABROKER_ERROR_NOT_A_BUFFER);
    expect_true("  TAKE closed the pipe fd although the call failed", !is_open(pipe_fds[0]));
    close(pipe_fds[1]);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    expect("from_fd(/dev/null, TAKE)",
           dmabroker_buffer_from_fd(devnull, DMABROKER_FD_OWNERSHIP_TAKE, &imported),
           DMABROKER_ERROR_NOT_A_BUFFER);
    int empty = memfd_create("bad_args-empty", MFD_CLOEXEC);
    expect("from_fd(empty memfd, TAKE)",
           dmabroker_buffer_from_fd(empty, DMABROKER_FD_OWNERSHIP_TAKE, &imported),
           DMABROKER_ERROR_NOT_A_BUFFER);
    int mfd = memfd_create("bad_args", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, 4096) != 0) return 2;
    expect("from_fd(memfd, TAKE, NULL out)",
           dmabroker_buffer_from_fd(mfd, DMABROKER_FD_OWNERSHIP_TAKE, NULL), INVALID);
    expect_true("  TAKE closed the fd although out was NULL", !is_open(mfd));

    /* An unsealed memfd: another holder could truncate it under a mapping
     * (SIGBUS), so mapping it is refused, naming the seals to add. */
    mfd = memfd_create("bad_args-unsealed", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, 4096) != 0) return 2;
    expect("from_fd(unsealed memfd, TAKE)",
           dmabroker_buffer_from_fd(mfd, DMABROKER_FD_OWNERSHIP_TAKE, &imported), DMABROKER_OK);
    expect("buffer_map(unsealed memfd, READ)",
           dmabroker_buffer_map(imported, DMABROKER_MAP_MODE_READ, &map),
           DMABROKER_ERROR_UNSUPPORTED);
    expect_true("  out cleared to NULL", map == NULL);
    dmabroker_buffer_free(imported);

    /* A read-only fd for a size-sealed memfd (what a read-only grant gives). */
    mfd = memfd_create("bad_args-ro", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0 || ftruncate(mfd, 4096) != 0) return 2;
    if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) return 2;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", mfd);
    int ro = open(path, O_RDONLY | O_CLOEXEC);
    close(mfd);
    expect("from_fd(read-only memfd, TAKE)",
           dmabroker_buffer_from_fd(ro, DMABROKER_FD_OWNERSHIP_TAKE, &imported), DMABROKER_OK);
    expect("buffer_map(read-only fd, READ_WRITE)",
           dmabroker_buffer_map(imported, DMABROKER_MAP_MODE_READ_WRITE, &map),
           DMABROKER_ERROR_READ_ONLY);
    expect_true("  out cleared to NULL", map == NULL);
    dmabroker_buffer_free(imported);

    /* Mappings and begin/end. */
    expect("buffer_map(NULL buffer)", dmabroker_buffer_map(NULL, DMABROKER_MAP_MODE_READ, &map),
           INVALID);
    expect("buffer_map(bad mode 42)", dmabroker_buffer_map(buffer, 42, &map), INVALID);
    expect("buffer_map(NULL out)", dmabroker_buffer_map(buffer, DMABROKER_MAP_MODE_READ, NULL),
           INVALID);
    expect("buffer_map(READ)", dmabroker_buffer_map(buffer, DMABROKER_MAP_MODE_READ, &map),
           DMABROKER_OK);
    expect("mapping_begin(NULL mapping)",
           dmabroker_mapping_begin(NULL, DMABROKER_ACCESS_READ, &data, &len), INVALID);
    expect_true("  data and len cleared", data == NULL && len == 0);
    expect("mapping_begin(bad access 9)", dmabroker_mapping_begin(map, 9, &data, &len), INVALID);
    expect("mapping_begin(NULL data)",
           dmabroker_mapping_begin(map, DMABROKER_ACCESS_READ, NULL, &len), INVALID);
    expect("mapping_begin(NULL len)",
           dmabroker_mapping_begin(map, DMABROKER_ACCESS_READ, &data, NULL), INVALID);
    expect("mapping_begin(WRITE on a read-only mapping)",
           dmabroker_mapping_begin(map, DMABROKER_ACCESS_WRITE, &data, &len),
           DMABROKER_ERROR_READ_ONLY);
    expect("mapping_end(nothing begun)", dmabroker_mapping_end(map), DMABROKER_ERROR_NOT_BEGUN);
    expect("mapping_end(NULL)", dmabroker_mapping_end(NULL), INVALID);
    expect("mapping_begin(READ)", dmabroker_mapping_begin(map, DMABROKER_ACCESS_READ, &data, &len),
           DMABROKER_OK);
    expect_true("  4096 bytes at a non-NULL address", data != NULL && len == 4096);
    void *data2 = (void *)1;
    size_t len2 = 1;
    expect("mapping_begin(second, while active)",
           dmabroker_mapping_begin(map, DMABROKER_ACCESS_READ, &data2, &len2), DMABROKER_ERROR_BUSY);
    expect_true("  its data and len cleared", data2 == NULL && len2 == 0);
    expect_true("mapping_len(NULL) == 0", dmabroker_mapping_len(NULL) == 0);
    /* Freed with the access active: the free ends it. */
    dmabroker_mapping_free(map);

    /* Segments. */
    expect("buffer_segments(NULL buffer)", dmabroker_buffer_segments(NULL, NULL, 0, &count),
           INVALID);
    expect("buffer_segments(NULL count)", dmabroker_buffer_segments(buffer, NULL, 0, NULL),
           INVALID);
    expect("buffer_segments(NULL array, capacity 4)",
           dmabroker_buffer_segments(buffer, NULL, 4, &count), INVALID);

    /* The broker client. */
    dmabroker_client *client = (dmabroker_client *)1;
    expect("client_connect(no broker there)",
           dmabroker_client_connect("/nonexistent/dmabroker.sock", &client), DMABROKER_ERROR_NO_BROKER);
    expect_true("  out cleared to NULL", client == NULL);
    expect("client_connect(NULL out)", dmabroker_client_connect(NULL, NULL), INVALID);
    char long_path[301];
    memset(long_path, 'x', sizeof long_path - 1);
    long_path[0] = '/';
    long_path[sizeof long_path - 1] = '\0';
    client = (dmabroker_client *)1;
    expect("client_connect(\"\")", dmabroker_client_connect("", &client), INVALID);
    expect_true("  out cleared to NULL", client == NULL);
    expect("client_connect(a 300-byte path)", dmabroker_client_connect(long_path, &client), INVALID);
    expect("client_alloc(NULL client)", dmabroker_client_alloc(NULL, "memfd", 4096, NULL, &buffer2),
           INVALID);
    char *key = (char *)1;
    expect("client_publish(NULL client)", dmabroker_client_publish(NULL, buffer, NULL, &key), INVALID);
    expect_true("  key cleared to NULL", key == NULL);
    expect("client_import(NULL client)", dmabroker_client_import(NULL, "x", &buffer2, NULL), INVALID);
    expect("client_unpublish(NULL client)", dmabroker_client_unpublish(NULL, "x"), INVALID);
    dmabroker_client_free(NULL);
    dmabroker_string_free(NULL);

    /* Constraints and allocation by constraints. */
    dmabroker_constraints *cons = (dmabroker_constraints *)1;
    expect("constraints_new(NULL device)", dmabroker_constraints_new(NULL, &cons), INVALID);
    expect_true("  out cleared to NULL", cons == NULL);
    expect("constraints_probe(/nonexistent)",
           dmabroker_constraints_probe("/nonexistent/video9", &cons), DMABROKER_ERROR_NOT_FOUND);
    expect("constraints_set_align(NULL)", dmabroker_constraints_set_align(NULL, 4096), INVALID);
    expect("constraints_new(\"dev\")", dmabroker_constraints_new("dev", &cons), DMABROKER_OK);
    expect("constraints_set_align(3)", dmabroker_constraints_set_align(cons, 3), INVALID);
    expect("constraints_set_address_bits(8)", dmabroker_constraints_set_address_bits(cons, 8),
           INVALID);
    expect("constraints_set_coherency(99)",
           dmabroker_constraints_set_coherency(cons, (dmabroker_coherency)99), INVALID);
    expect("constraints_merge(NULL src)", dmabroker_constraints_merge(cons, NULL), INVALID);
    dmabroker_choice_info choice;
    memset(&choice, 0xff, sizeof choice);
    expect("alloc_for(NULL constraints)",
           dmabroker_alloc_for(NULL, NULL, 4096, NULL, &buffer2, &choice), INVALID);
    expect_true("  choice_info cleared", choice.heap == NULL && choice.reasons == NULL);
    expect("alloc_for(size 0)", dmabroker_alloc_for(NULL, cons, 0, NULL, &buffer2, NULL), INVALID);
    dmabroker_choice_info_clear(&choice);
    dmabroker_choice_info_clear(NULL);
    dmabroker_constraints_free(cons);
    dmabroker_constraints_free(NULL);

    /* Layouts. */
    dmabroker_layout *layout = (dmabroker_layout *)1;
    expect("layout_new(\"BOGUS\")", dmabroker_layout_new("BOGUS", 64, 64, 0, &layout), INVALID);
    expect_true("  out cleared to NULL", layout == NULL);
    expect("layout_new(width 0)", dmabroker_layout_new("NV12", 0, 64, 0, &layout), INVALID);
    expect("layout_new(stride_align 3)", dmabroker_layout_new("NV12", 64, 64, 3, &layout), INVALID);
    dmabroker_plane_layout plane;
    expect("layout_get_plane(NULL)", dmabroker_layout_get_plane(NULL, 0, &plane), INVALID);
    expect_true("layout_total_size(NULL) == 0", dmabroker_layout_total_size(NULL) == 0);
    expect("alloc_format(NV12M: a buffer per plane)",
           dmabroker_alloc_format(NULL, "memfd", "NV12M", 64, 64, 0, NULL, &buffer2, &layout),
           DMABROKER_ERROR_UNSUPPORTED);
    expect_true("  out and layout cleared", buffer2 == NULL && layout == NULL);
    dmabroker_layout_free(NULL);

    /* Pools. */
    dmabroker_producer *producer = (dmabroker_producer *)1;
    expect("producer_new(0 buffers)",
           dmabroker_producer_new(NULL, "memfd", 0, 4096, NULL, &producer), INVALID);
    expect_true("  out cleared to NULL", producer == NULL);
    expect("producer_new(size 0)", dmabroker_producer_new(NULL, "memfd", 2, 0, NULL, &producer),
           INVALID);
    expect("producer_new(2 buffers)", dmabroker_producer_new(NULL, "memfd", 2, 4096, NULL, &producer),
           DMABROKER_OK);
    expect("producer_submit(nothing acquired)", dmabroker_producer_submit(producer, 1, 0, 0, NULL),
           DMABROKER_ERROR_NOT_BEGUN);
    expect("producer_cancel(nothing acquired)", dmabroker_producer_cancel(producer),
           DMABROKER_ERROR_NOT_BEGUN);
    uint32_t index = 0;
    expect("producer_acquire", dmabroker_producer_acquire(producer, 0, &index, &data, &len),
           DMABROKER_OK);
    expect("producer_acquire(second)", dmabroker_producer_acquire(producer, 0, &index, &data, &len),
           DMABROKER_ERROR_BUSY);
    expect_true("  index, data, len cleared", index == UINT32_MAX && data == NULL && len == 0);
    expect("producer_submit(reserved flag)", dmabroker_producer_submit(producer, 1, 1u << 17, 0, NULL),
           INVALID);
    expect("producer_submit(too long)", dmabroker_producer_submit(producer, 1u << 30, 0, 0, NULL),
           INVALID);
    expect("producer_cancel", dmabroker_producer_cancel(producer), DMABROKER_OK);
    expect("producer_listen(\"\")", dmabroker_producer_listen(producer, ""), INVALID);
    expect("producer_listen(a 300-byte path)", dmabroker_producer_listen(producer, long_path),
           INVALID);
    dmabroker_producer_free(producer);
    dmabroker_producer_free(NULL);
    dmabroker_constraints *any_device = NULL;
    expect("constraints_new(\"any\")", dmabroker_constraints_new("any", &any_device), DMABROKER_OK);
    dmabroker_choice_info why;
    memset(&why, 0xff, sizeof why);
    producer = (dmabroker_producer *)1;
    expect("producer_new_for(NULL constraints)",
           dmabroker_producer_new_for(NULL, NULL, 2, 4096, NULL, &producer, &why), INVALID);
    expect_true("  out and choice_info cleared",
                producer == NULL && why.heap == NULL && why.reasons == NULL && why.len == 0);
    expect("producer_new_for(NULL out)",
           dmabroker_producer_new_for(NULL, any_device, 2, 4096, NULL, NULL, &why), INVALID);
    expect("producer_new_for(0 buffers)",
           dmabroker_producer_new_for(NULL, any_device, 0, 4096, NULL, &producer, NULL), INVALID);
    expect("producer_new_for(size 0)",
           dmabroker_producer_new_for(NULL, any_device, 2, 0, NULL, &producer, NULL), INVALID);
    expect("producer_new_for_layout(NULL layout)",
           dmabroker_producer_new_for_layout(NULL, any_device, NULL, 2, NULL, &producer, &why),
           INVALID);
    expect_true("  out cleared to NULL", producer == NULL);
    dmabroker_layout *nv12 = NULL;
    expect("layout_new(NV12 64x64)", dmabroker_layout_new("NV12", 64, 64, 0, &nv12), DMABROKER_OK);
    expect("producer_new_for_layout(NULL constraints)",
           dmabroker_producer_new_for_layout(NULL, NULL, nv12, 2, NULL, &producer, NULL), INVALID);
    expect("producer_new_for_layout(NULL out)",
           dmabroker_producer_new_for_layout(NULL, any_device, nv12, 2, NULL, NULL, NULL), INVALID);
    expect("producer_new_for_layout(65 buffers)",
           dmabroker_producer_new_for_layout(NULL, any_device, nv12, 65, NULL, &producer, NULL),
           INVALID);
    dmabroker_layout_free(nv12);
    dmabroker_constraints_free(any_device);
    dmabroker_consumer *consumer = (dmabroker_consumer *)1;
    expect("consumer_connect(nobody there)",
           dmabroker_consumer_connect("/nonexistent/pool.sock", DMABROKER_WAIT_MODE_BLOCK, &consumer),
           DMABROKER_ERROR_NO_PRODUCER);
    expect_true("  out cleared to NULL", consumer == NULL);
    expect("consumer_connect(wait mode 7)",
           dmabroker_consumer_connect("/nonexistent/pool.sock", (dmabroker_wait_mode)7, &consumer),
           INVALID);
    expect("consumer_connect(\"\")",
           dmabroker_consumer_connect("", DMABROKER_WAIT_MODE_BLOCK, &consumer), INVALID);
    dmabroker_consumer_options consumer_opts = {0};
    consumer = (dmabroker_consumer *)1;
    expect("consumer_connect_with(nobody there)",
           dmabroker_consumer_connect_with("/nonexistent/pool.sock", &consumer_opts, &consumer),
           DMABROKER_ERROR_NO_PRODUCER);
    expect_true("  out cleared to NULL", consumer == NULL);
    expect("consumer_connect_with(NULL path)",
           dmabroker_consumer_connect_with(NULL, NULL, &consumer), INVALID);
    expect("consumer_connect_with(NULL out)",
           dmabroker_consumer_connect_with("/nonexistent/pool.sock", NULL, NULL), INVALID);
    consumer_opts.wait = (dmabroker_wait_mode)7;
    expect("consumer_connect_with(wait mode 7)",
           dmabroker_consumer_connect_with("/nonexistent/pool.sock", &consumer_opts, &consumer),
           INVALID);
    expect("consumer_connect_with(a 300-byte path)",
           dmabroker_consumer_connect_with(long_path, NULL, &consumer), INVALID);
    size_t held = 9;
    expect("consumer_held_count(NULL consumer)", dmabroker_consumer_held_count(NULL, &held), INVALID);
    expect_true("  count cleared to 0", held == 0);
    dmabroker_frame *frame = (dmabroker_frame *)1;
    expect("consumer_recv(NULL consumer)", dmabroker_consumer_recv(NULL, 0, &frame), INVALID);
    expect_true("  frame cleared to NULL", frame == NULL);
    const void *frame_data = (const void *)1;
    expect("frame_data(NULL frame)", dmabroker_frame_data(NULL, &frame_data, &len), INVALID);
    int sync_fd = 9;
    expect("frame_take_sync_file(NULL frame)", dmabroker_frame_take_sync_file(NULL, &sync_fd),
           INVALID);
    expect_true("  fd cleared to -1", sync_fd == -1);
    dmabroker_consumer_free(NULL);
    dmabroker_frame_free(NULL);

    /* Status names, panics, NULL frees. */
    expect_true("status_name(DMABROKER_ERROR_IO)",
                strcmp(dmabroker_status_name(DMABROKER_ERROR_IO), "DMABROKER_ERROR_IO") == 0);
    expect_true("status_name(12345) is DMABROKER_UNKNOWN_STATUS",
                strcmp(dmabroker_status_name((dmabroker_status)12345), "DMABROKER_UNKNOWN_STATUS") ==
                    0);
    printf("     (a Rust panic message on stderr is expected next)\n");
    fflush(stdout);
    expect("a Rust panic inside the library", dmabroker_private_test_panic(), DMABROKER_ERROR_PANIC);
    expect_true("  the message says panic", strstr(dmabroker_last_error(), "panic") != NULL);
    dmabroker_heaps_free(NULL);
    dmabroker_buffer_free(NULL);
    dmabroker_mapping_free(NULL);
    expect_true("*_free(NULL) are no-ops", 1);

    dmabroker_buffer_free(buffer);
    dmabroker_heaps_free(heaps);
    printf("bad_args: %d checks, %d passed, %d failed\n", checks, checks - failures, failures);
    return failures ? 1 : 0;
}
