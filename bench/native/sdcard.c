/* An SD card's sync latency for the processes of the bench's Pi profile (LD_PRELOAD).
 *
 * fsync() and fdatasync() first do the real call, then sleep what the modelled card would take:
 * a base latency drawn from a log-normal with the given median and 99th percentile (a card's
 * flush of a small write and the file system's journal commit), plus the bytes written to that
 * file descriptor since its last sync at the card's write rate. Every sync and every byte
 * written through write()/pwrite() and their vector forms is counted in a small stats file
 * (SDCARD_STATS_DIR/<pid>), so a bench can read how often each process of the box syncs.
 *
 * Environment (all optional): SDCARD_SYNC_MEDIAN_US (default 4000), SDCARD_SYNC_P99_US (default
 * 25000), SDCARD_WRITE_KBPS (default 10000: the speed class 10 floor), SDCARD_STATS_DIR, and
 * SDCARD_SEED. Figures and their sources: docs/footprint.md, "The Pi profile".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 4096

/* Laid out for a reader in another process: eight little-endian u64 counters. */
struct sd_stats {
    uint64_t version;   /* 1 */
    uint64_t syncs;     /* fsync + fdatasync calls */
    uint64_t sync_us;   /* time added by the model, microseconds */
    uint64_t written;   /* bytes written to regular files */
    uint64_t writes;    /* write calls to regular files */
    uint64_t fsyncs;
    uint64_t fdatasyncs;
    uint64_t reserved;
};

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);

static double mu, sigma, bytes_per_us;
static uint64_t dirty[MAX_FD];
static struct sd_stats *stats;
static struct sd_stats local_stats;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned int seed;

static double env_double(const char *name, double fallback) {
    const char *value = getenv(name);
    if (value == NULL || *value == '\0') return fallback;
    char *end;
    double parsed = strtod(value, &end);
    if (*end != '\0' || parsed <= 0) {
        fprintf(stderr, "sdcard shim: %s=%s is not a positive number; using %g\n", name, value, fallback);
        return fallback;
    }
    return parsed;
}

__attribute__((constructor)) static void sd_init(void) {
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_pwritev = dlsym(RTLD_NEXT, "pwritev");
    double median = env_double("SDCARD_SYNC_MEDIAN_US", 4000);
    double p99 = env_double("SDCARD_SYNC_P99_US", 25000);
    if (p99 < median) p99 = median;
    mu = log(median);
    sigma = (log(p99) - mu) / 2.3263478740408408; /* z of the 99th percentile */
    bytes_per_us = env_double("SDCARD_WRITE_KBPS", 10000) * 1000.0 / 1e6;
    const char *seed_text = getenv("SDCARD_SEED");
    seed = seed_text ? (unsigned int)strtoul(seed_text, NULL, 10) : (unsigned int)getpid();
    stats = &local_stats;
    stats->version = 1;
}

/* The stats file is made at the first write or sync (under the lock), so a process of the
 * profile that never writes a file leaves none. */
static void open_stats(void) {
    static int tried;
    if (tried) return;
    tried = 1;
    const char *dir = getenv("SDCARD_STATS_DIR");
    if (dir != NULL && *dir != '\0') {
        char path[512];
        snprintf(path, sizeof path, "%s/%d", dir, (int)getpid());
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0 && ftruncate(fd, sizeof(struct sd_stats)) == 0) {
            void *map = mmap(NULL, sizeof(struct sd_stats), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (map != MAP_FAILED) {
                memcpy(map, &local_stats, sizeof local_stats);
                stats = map;
            }
        }
        if (fd >= 0) close(fd);
    }
}

static int regular(int fd) {
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

static void count_write(int fd, ssize_t n) {
    if (n <= 0 || !regular(fd)) return;
    pthread_mutex_lock(&lock);
    open_stats();
    if (fd < MAX_FD) dirty[fd] += (uint64_t)n;
    stats->written += (uint64_t)n;
    stats->writes += 1;
    pthread_mutex_unlock(&lock);
}

/* A standard normal by Box-Muller from rand_r (under the lock). */
static double normal(void) {
    double u1 = (rand_r(&seed) + 1.0) / ((double)RAND_MAX + 2.0);
    double u2 = (rand_r(&seed) + 1.0) / ((double)RAND_MAX + 2.0);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static void card_latency(int fd, int data_only) {
    pthread_mutex_lock(&lock);
    open_stats();
    uint64_t bytes = fd >= 0 && fd < MAX_FD ? dirty[fd] : 0;
    if (fd >= 0 && fd < MAX_FD) dirty[fd] = 0;
    double us = exp(mu + sigma * normal()) + (double)bytes / bytes_per_us;
    stats->syncs += 1;
    stats->sync_us += (uint64_t)us;
    if (data_only) stats->fdatasyncs += 1; else stats->fsyncs += 1;
    pthread_mutex_unlock(&lock);
    struct timespec ts = {(time_t)(us / 1e6), (long)((us - (double)(time_t)(us / 1e6) * 1e6) * 1000.0)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

int fsync(int fd) {
    int saved, rc = real_fsync(fd);
    saved = errno;
    card_latency(fd, 0);
    errno = saved;
    return rc;
}

int fdatasync(int fd) {
    int saved, rc = real_fdatasync(fd);
    saved = errno;
    card_latency(fd, 1);
    errno = saved;
    return rc;
}

ssize_t write(int fd, const void *buf, size_t count) {
    ssize_t n = real_write(fd, buf, count);
    int saved = errno;
    count_write(fd, n);
    errno = saved;
    return n;
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    ssize_t n = real_pwrite(fd, buf, count, offset);
    int saved = errno;
    count_write(fd, n);
    errno = saved;
    return n;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    ssize_t n = real_pwrite64(fd, buf, count, offset);
    int saved = errno;
    count_write(fd, n);
    errno = saved;
    return n;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    ssize_t n = real_writev(fd, iov, iovcnt);
    int saved = errno;
    count_write(fd, n);
    errno = saved;
    return n;
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    ssize_t n = real_pwritev(fd, iov, iovcnt, offset);
    int saved = errno;
    count_write(fd, n);
    errno = saved;
    return n;
}
