/* churn: allocate and free large blocks under a fixed seed, touching every
 * page it allocates, so the allocator's purging decides the page tables.
 *
 *   churn SECONDS [trim_every]
 *
 * Each step frees a random live block and allocates a new one of 64 KiB ..
 * 4 MiB (a power of two from 64 KiB to 2 MiB plus up to as much again), up
 * to LIVE blocks; in the last quarter of the run it
 * frees everything and idles.  With trim_every > 0 it calls malloc_trim(0)
 * every trim_every steps (glibc).  Run under jemalloc with
 *   LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:200,muzzy_decay_ms:0
 * (short decay: jemalloc purges with MADV_DONTNEED soon after frees).
 */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LIVE 400

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 20.0;
    long trim_every = argc > 2 ? atol(argv[2]) : 0;
    char *live[LIVE] = {0};
    double t0 = now();
    long step = 0;
    while (now() - t0 < seconds * 0.75) {
        int i = (int)(next() % LIVE);
        free(live[i]);
        /* 64 KiB << 0..5, plus up to as much again */
        size_t sz = (size_t)65536 << (next() % 6);
        sz += next() % sz;
        live[i] = malloc(sz);
        for (size_t off = 0; off < sz; off += 4096)
            live[i][off] = (char)step;
        step++;
        if (trim_every && step % trim_every == 0)
            malloc_trim(0);
        if (step % 50 == 0)
            sleep_ms(5);
    }
    for (int i = 0; i < LIVE; i++) {
        free(live[i]);
        live[i] = NULL;
    }
    if (trim_every)
        malloc_trim(0);
    while (now() - t0 < seconds)
        sleep_ms(50);
    printf("churn: %ld steps\n", step);
    return 0;
}
