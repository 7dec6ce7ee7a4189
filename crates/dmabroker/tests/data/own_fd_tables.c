/* Test helper: N threads, each in a file descriptor table of its own
   (unshare(CLONE_FILES)); prints "ready" once all are, then waits.
   Used by the accounting and broker holder-scan tests. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static int ready;
static void *own(void *p) {
    (void)p;
    if (unshare(CLONE_FILES) == 0) __atomic_add_fetch(&ready, 1, __ATOMIC_SEQ_CST);
    for (;;) pause();
    return 0;
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 0;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 65536);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &a, own, 0)) return 1;
    }
    while (__atomic_load_n(&ready, __ATOMIC_SEQ_CST) < n) usleep(1000);
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
