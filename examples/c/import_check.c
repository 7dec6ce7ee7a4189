/*
 * import_check: import a buffer published by alloc_publish, map it
 * read-only and check the pattern; then withdraw the publication.
 *
 * Build: cc import_check.c $(pkg-config --cflags --libs dmabroker)
 * Run:   ./import_check [NAME [SIZE]]
 */
#include <dmabroker.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                              \
    do {                                                                         \
        dmabroker_status status_ = (call);                                       \
        if (status_ != DMABROKER_OK) {                                           \
            fprintf(stderr, "import_check: %s failed: %s: %s\n", #call,          \
                    dmabroker_status_name(status_), dmabroker_last_error());     \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static uint8_t pattern(size_t i) { return (uint8_t)(i * 7u + 3u); }

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "c-example";
    uint64_t size = argc > 2 ? strtoull(argv[2], NULL, 0) : (1u << 20);

    dmabroker_client *client = NULL;
    CHECK(dmabroker_client_connect(NULL, &client));
    dmabroker_buffer *buffer = NULL;
    bool read_only = false;
    CHECK(dmabroker_client_import(client, name, &buffer, &read_only));

    dmabroker_buffer_info info;
    CHECK(dmabroker_buffer_get_info(buffer, &info));
    printf("imported %s: %" PRIu64 " bytes from %s (%s grant)\n", name, info.len, info.heap,
           read_only ? "read-only" : "read-write");
    if (info.len < size) {
        fprintf(stderr, "import_check: %" PRIu64 " bytes, expected %" PRIu64 "\n", info.len, size);
        return 1;
    }

    dmabroker_mapping *map = NULL;
    CHECK(dmabroker_buffer_map(buffer, DMABROKER_MAP_MODE_READ, &map));
    const void *data = NULL;
    size_t len = 0;
    CHECK(dmabroker_mapping_begin(map, DMABROKER_ACCESS_READ, (void **)&data, &len));
    const uint8_t *bytes = data;
    size_t bad = 0;
    for (size_t i = 0; i < len; i++) bad += bytes[i] != pattern(i);
    CHECK(dmabroker_mapping_end(map));
    dmabroker_mapping_free(map);
    if (bad) {
        fprintf(stderr, "import_check: %zu of %zu bytes differ\n", bad, len);
        return 1;
    }
    printf("pattern intact in %zu bytes\n", len);

    /* Gone for new importers; this process keeps its fd until the free. */
    CHECK(dmabroker_client_unpublish(client, name));
    dmabroker_buffer *again = NULL;
    dmabroker_status status = dmabroker_client_import(client, name, &again, NULL);
    if (status != DMABROKER_ERROR_NOT_FOUND) {
        fprintf(stderr, "import_check: import after unpublish gave %s\n", dmabroker_status_name(status));
        return 1;
    }
    dmabroker_buffer_free(buffer);
    dmabroker_client_free(client);
    printf("import_check: OK\n");
    return 0;
}
