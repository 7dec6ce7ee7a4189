/*
 * alloc_publish: allocate a buffer through the broker, write a pattern
 * into it, and publish it under a name for other processes.
 *
 * Build: cc alloc_publish.c $(pkg-config --cflags --libs dmabroker)
 * Run:   dmabroker serve &   (or systemctl start dmabroker.socket)
 *        ./alloc_publish [NAME [HEAP [SIZE]]]
 * then:  ./import_check NAME [SIZE]
 *
 * The socket is $DMABROKER_SOCKET, else the broker's default. It also
 * prints what the broker charges to this process's cgroup.
 */
#include <dmabroker.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                              \
    do {                                                                         \
        dmabroker_status status_ = (call);                                       \
        if (status_ != DMABROKER_OK) {                                           \
            fprintf(stderr, "alloc_publish: %s failed: %s: %s\n", #call,         \
                    dmabroker_status_name(status_), dmabroker_last_error());     \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

/* The pattern import_check expects: byte i is (i * 7 + 3) mod 256. */
static uint8_t pattern(size_t i) { return (uint8_t)(i * 7u + 3u); }

/* What the broker charges to this process's cgroup, and the policy's
 * [[cgroup]] rules for it. The info structs start with struct_size: set it
 * to sizeof, and the library fills only the fields this header declares. */
static void report_cgroup(dmabroker_client *client, uint64_t size) {
    dmabroker_cgroup_stats *stats = NULL;
    CHECK(dmabroker_client_get_cgroup_stats(client, &stats));
    dmabroker_cgroup_info info = {0};
    info.struct_size = sizeof info;
    CHECK(dmabroker_cgroup_stats_get_info(stats, &info));
    if (!info.available) {
        printf("the broker is older than protocol version 4: no cgroup stats\n");
    } else if (info.path == NULL) {
        printf("the broker does not know this process's cgroup: %s\n", info.unknown);
    } else {
        printf("cgroup %s: %" PRIu64 " bytes in %" PRIu64 " buffer(s) through the broker, %zu rule(s)\n",
               info.path, info.used_bytes, info.used_buffers, info.rule_count);
        if (info.used_bytes < size) {
            fprintf(stderr, "alloc_publish: the %" PRIu64 "-byte buffer is not charged to the cgroup\n", size);
            exit(1);
        }
    }
    for (size_t i = 0; i < info.rule_count; i++) {
        dmabroker_cgroup_rule_info rule = {0};
        rule.struct_size = sizeof rule;
        CHECK(dmabroker_cgroup_stats_get_rule(stats, i, &rule));
        printf("  rule %s (line %u): %" PRIu64 " bytes used in %s\n", rule.rule, rule.line, rule.used_bytes,
               rule.unit);
    }
    dmabroker_cgroup_stats_free(stats);
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "c-example";
    const char *heap = argc > 2 ? argv[2] : "memfd";
    uint64_t size = argc > 3 ? strtoull(argv[3], NULL, 0) : (1u << 20);

    dmabroker_client *client = NULL;
    CHECK(dmabroker_client_connect(NULL, &client));

    dmabroker_alloc_options alloc = {0};
    alloc.name = name;
    dmabroker_buffer *buffer = NULL;
    CHECK(dmabroker_client_alloc(client, heap, size, &alloc, &buffer));

    report_cgroup(client, size);

    dmabroker_mapping *map = NULL;
    CHECK(dmabroker_buffer_map(buffer, DMABROKER_MAP_MODE_READ_WRITE, &map));
    void *data = NULL;
    size_t len = 0;
    CHECK(dmabroker_mapping_begin(map, DMABROKER_ACCESS_WRITE, &data, &len));
    uint8_t *bytes = data;
    for (size_t i = 0; i < len; i++) bytes[i] = pattern(i);
    CHECK(dmabroker_mapping_end(map));
    dmabroker_mapping_free(map);

    /* Anyone who can reach the broker may import it, read-only. */
    const char *grants[] = {"any:ro"};
    dmabroker_publish_options publish = {0};
    publish.name = name;
    publish.grants = grants;
    publish.grant_count = 1;
    char *key = NULL;
    CHECK(dmabroker_client_publish(client, buffer, &publish, &key));
    printf("published %zu bytes from %s as %s\n", len, heap, key);

    /* The broker holds the buffer now: this process may go. */
    dmabroker_string_free(key);
    dmabroker_buffer_free(buffer);
    dmabroker_client_free(client);
    return 0;
}
