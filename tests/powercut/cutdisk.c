/* cutdisk: a disk whose every write and flush is recorded, for the power-cut tests.
 *
 *   cutdisk MOUNTPOINT IMAGE LOG
 *
 * Serves one file, MOUNTPOINT/disk, over FUSE, holding IMAGE's bytes in memory. A loop device
 * on that file is a block device: ext4 on it issues its writes and its cache flushes (REQ_PREFLUSH
 * and FUA, which the loop driver turns into fsync of the file) as FUSE WRITE and FSYNC requests,
 * in the order the card would get them. Each is appended to LOG with its CLOCK_MONOTONIC time:
 *
 *   'W' u64 ns  u64 offset  u32 length  data[length]
 *   'F' u64 ns
 *
 * (little-endian, packed). What a power cut at time T leaves on the card is then IMAGE, every
 * write before the last flush before T, and any subset of the writes after it
 * (tests/powercut/disk.py). Single-threaded, so the log's order is the order requests were served.
 */
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fuse.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static unsigned char *image;
static size_t image_size;
static FILE *log_file;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void record(char kind, uint64_t offset, const char *data, uint32_t length) {
    uint64_t ns = now_ns();
    fputc(kind, log_file);
    fwrite(&ns, sizeof ns, 1, log_file);
    if (kind == 'W') {
        fwrite(&offset, sizeof offset, 1, log_file);
        fwrite(&length, sizeof length, 1, log_file);
        fwrite(data, 1, length, log_file);
    }
    /* The log is read only after the run, but a crash of this daemon must not cost its tail. */
    if (kind == 'F') fflush(log_file);
}

static int cd_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    memset(st, 0, sizeof *st);
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        return 0;
    }
    if (strcmp(path, "/disk") == 0) {
        st->st_mode = S_IFREG | 0600;
        st->st_nlink = 1;
        st->st_size = (off_t)image_size;
        return 0;
    }
    return -ENOENT;
}

static int cd_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    (void)off;
    (void)fi;
    (void)flags;
    if (strcmp(path, "/") != 0) return -ENOENT;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    fill(buf, "disk", NULL, 0, 0);
    return 0;
}

static int cd_open(const char *path, struct fuse_file_info *fi) {
    (void)fi;
    return strcmp(path, "/disk") == 0 ? 0 : -ENOENT;
}

static int cd_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    (void)fi;
    if ((size_t)off >= image_size) return 0;
    if ((size_t)off + size > image_size) size = image_size - (size_t)off;
    memcpy(buf, image + off, size);
    return (int)size;
}

static int cd_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    (void)fi;
    if ((size_t)off + size > image_size) return -ENOSPC;
    memcpy(image + off, buf, size);
    record('W', (uint64_t)off, buf, (uint32_t)size);
    return (int)size;
}

static int cd_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path;
    (void)datasync;
    (void)fi;
    record('F', 0, NULL, 0);
    return 0;
}

static int cd_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    (void)path;
    (void)fi;
    return (size_t)size == image_size ? 0 : -EPERM;
}

static void cd_destroy(void *data) {
    (void)data;
    fflush(log_file);
    fclose(log_file);
}

static const struct fuse_operations ops = {
    .getattr = cd_getattr,
    .readdir = cd_readdir,
    .open = cd_open,
    .read = cd_read,
    .write = cd_write,
    .fsync = cd_fsync,
    .truncate = cd_truncate,
    .destroy = cd_destroy,
};

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: cutdisk MOUNTPOINT IMAGE LOG\n");
        return 2;
    }
    FILE *in = fopen(argv[2], "rb");
    if (in == NULL) {
        perror(argv[2]);
        return 1;
    }
    fseek(in, 0, SEEK_END);
    image_size = (size_t)ftell(in);
    fseek(in, 0, SEEK_SET);
    image = malloc(image_size);
    if (image == NULL || fread(image, 1, image_size, in) != image_size) {
        fprintf(stderr, "cutdisk: cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(in);
    log_file = fopen(argv[3], "wb");
    if (log_file == NULL) {
        perror(argv[3]);
        return 1;
    }
    setvbuf(log_file, NULL, _IOFBF, 1 << 20);
    /* -f: foreground (the test owns the process), -s: one thread (the log's order). */
    char *fuse_argv[] = {argv[0], "-f", "-s", "-o", "fsname=cutdisk,default_permissions", argv[1], NULL};
    return fuse_main(6, fuse_argv, &ops, NULL);
}
