/*
 * faultfs.c: an LD_PRELOAD shim for the fault-injection and power-loss
 * tests (tests/faultfs.py builds it with the system C compiler and starts
 * child processes with it; nothing of it is part of the engine).
 *
 * It stands between the process and libc for the calls through which a
 * storage engine meets the disk: fdatasync, fsync, msync, posix_fallocate,
 * fallocate, ftruncate, write, pwrite, writev and the wall clock
 * (clock_gettime, gettimeofday, time). Every call goes to the real function
 * found with dlsym(RTLD_NEXT) unless a rule says otherwise. The C core,
 * LMDB (inside py-lmdb) and Python's own file I/O all call these through
 * the dynamic linker, so one shim covers the three.
 *
 * Control (called from Python with ctypes on the preloaded library):
 *   faultfs_rule(call, path_part, action, err, skip, count)
 *       the next calls of `call` on a file whose path contains path_part
 *       (or is exactly it, written "=path"):
 *       let `skip` of them through, then make `count` of them (-1: all)
 *       fail with errno `err` (action 0), or write only half of their bytes
 *       and report that (action 1: a short write, write/pwrite only).
 *   faultfs_clear(), faultfs_hits(call): rules off; faults injected so far.
 *   faultfs_clock_offset_ms(ms): add ms to every CLOCK_REALTIME reading.
 *   faultfs_trace(root, snapdir): from now on keep, in snapdir, what of the
 *       files under root is durable: at every successful fdatasync/fsync/
 *       msync of a file its content as it was when the call began (copied
 *       before the real call, kept only if it succeeds), at every fsync of a
 *       directory the names it held, and for writes to a file opened with
 *       O_DSYNC/O_SYNC (LMDB's meta pages) the bytes written.
 *   faultfs_cut(dest): copy, under the trace lock, snapdir to dest/durable
 *       and the files under root to dest/current: the durable state and
 *       the page cache at one moment, from which crash images are built.
 * Paths are looked up through /proc/self/fd and /proc/self/maps (Linux).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------ real calls */

static int (*real_fdatasync)(int);
static int (*real_fsync)(int);
static int (*real_msync)(void *, size_t, int);
static int (*real_posix_fallocate)(int, off_t, off_t);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_ftruncate)(int, off_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_gettimeofday)(struct timeval *, void *);
static time_t (*real_time)(time_t *);

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_real(void)
{
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_msync = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "msync");
    real_posix_fallocate = (int (*)(int, off_t, off_t))dlsym(RTLD_NEXT, "posix_fallocate");
    real_fallocate = (int (*)(int, int, off_t, off_t))dlsym(RTLD_NEXT, "fallocate");
    real_ftruncate = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate");
    real_write = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    real_pwrite = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    real_writev = (ssize_t(*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    real_gettimeofday = (int (*)(struct timeval *, void *))dlsym(RTLD_NEXT, "gettimeofday");
    real_time = (time_t(*)(time_t *))dlsym(RTLD_NEXT, "time");
}

#define REAL() pthread_once(&once, init_real)

/* ----------------------------------------------------------------- rules */

#define MAX_RULES 32

typedef struct rule {
    char call[32];
    char part[256];
    int action; /* 0: fail with err; 1: short write */
    int err;
    int skip;
    int count; /* -1: every call */
} rule;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* rules and hits */
static rule rules[MAX_RULES];
static int nrules;
static struct {
    char call[32];
    long hits;
} hit_table[MAX_RULES];
static int nhits;
static long long clock_offset_ms; /* read with __atomic */

EXPORT int faultfs_rule(const char *call, const char *part, int action, int err, int skip, int count)
{
    pthread_mutex_lock(&mu);
    if (nrules == MAX_RULES) {
        pthread_mutex_unlock(&mu);
        return -1;
    }
    rule *r = &rules[nrules];
    memset(r, 0, sizeof(*r));
    snprintf(r->call, sizeof(r->call), "%s", call);
    snprintf(r->part, sizeof(r->part), "%s", part ? part : "");
    r->action = action;
    r->err = err;
    r->skip = skip;
    r->count = count;
    __atomic_store_n(&nrules, nrules + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&mu);
    return 0;
}

EXPORT void faultfs_clear(void)
{
    pthread_mutex_lock(&mu);
    __atomic_store_n(&nrules, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&mu);
}

EXPORT long faultfs_hits(const char *call)
{
    long n = 0;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < nhits; i++)
        if (strcmp(hit_table[i].call, call) == 0)
            n = hit_table[i].hits;
    pthread_mutex_unlock(&mu);
    return n;
}

EXPORT void faultfs_clock_offset_ms(long long ms)
{
    __atomic_store_n(&clock_offset_ms, ms, __ATOMIC_SEQ_CST);
}

static void count_hit(const char *call)
{
    for (int i = 0; i < nhits; i++)
        if (strcmp(hit_table[i].call, call) == 0) {
            hit_table[i].hits++;
            return;
        }
    if (nhits < MAX_RULES) {
        snprintf(hit_table[nhits].call, sizeof(hit_table[nhits].call), "%s", call);
        hit_table[nhits++].hits = 1;
    }
}

/* The action for this call on `path`: -1 none, else the rule's action with
 * *err set. */
static int match(const char *call, const char *path, int *err)
{
    int act = -1;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < nrules; i++) {
        rule *r = &rules[i];
        if (r->count == 0 || strcmp(r->call, call) != 0)
            continue;
        /* "=path": exactly that path; otherwise any path containing part */
        if (r->part[0] == '=' ? strcmp(path, r->part + 1) != 0 : !strstr(path, r->part))
            continue;
        if (r->skip > 0) {
            r->skip--;
            break;
        }
        if (r->count > 0)
            r->count--;
        act = r->action;
        *err = r->err;
        count_hit(call);
        break;
    }
    pthread_mutex_unlock(&mu);
    return act;
}

static void fd_path(int fd, char *out, size_t cap)
{
    char link[64];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, cap - 1);
    out[n > 0 ? n : 0] = 0;
}

/* The file mapped at addr, from /proc/self/maps ("" if none). */
static void map_path(const void *addr, char *out, size_t cap)
{
    out[0] = 0;
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return;
    char line[PATH_MAX + 256];
    uintptr_t a = (uintptr_t)addr;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        int pos = 0;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &pos) < 2)
            continue;
        if (a >= lo && a < hi && pos > 0) {
            char *p = line + pos;
            p[strcspn(p, "\n")] = 0;
            snprintf(out, cap, "%s", p);
            break;
        }
    }
    fclose(f);
}

/* ----------------------------------------------------------------- trace */

static pthread_mutex_t trace_mu = PTHREAD_MUTEX_INITIALIZER;
static char trace_root[PATH_MAX];
static char trace_snap[PATH_MAX];
static int tracing;
static unsigned long copy_seq;

#define MAX_FILES 4096
static struct {
    char rel[256];
    unsigned long seq; /* of the copy kept */
} kept[MAX_FILES];
static int nkept;

EXPORT int faultfs_trace(const char *root, const char *snapdir)
{
    pthread_mutex_lock(&trace_mu);
    snprintf(trace_root, sizeof(trace_root), "%s", root);
    snprintf(trace_snap, sizeof(trace_snap), "%s", snapdir);
    char p[PATH_MAX + 8];
    mkdir(trace_snap, 0755);
    snprintf(p, sizeof(p), "%s/f", trace_snap);
    mkdir(p, 0755);
    snprintf(p, sizeof(p), "%s/d", trace_snap);
    mkdir(p, 0755);
    tracing = 1;
    pthread_mutex_unlock(&trace_mu);
    return 0;
}

/* The path relative to the traced root, with '/' as '%' ("@" for the
 * root itself), or 0 when it lies outside. */
static int rel_name(const char *path, char *out, size_t cap)
{
    size_t rl = strlen(trace_root);
    if (!tracing || strncmp(path, trace_root, rl) != 0 || (path[rl] != '/' && path[rl] != 0))
        return 0;
    const char *r = path + rl;
    while (*r == '/')
        r++;
    if (!*r) {
        snprintf(out, cap, "@");
        return 1;
    }
    size_t i = 0;
    for (; *r && i + 1 < cap; r++)
        out[i++] = *r == '/' ? '%' : *r;
    out[i] = 0;
    return 1;
}

static int copy_fd_to(int src, const char *dst)
{
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0)
        return -1;
    static __thread char buf[1 << 16];
    off_t off = 0;
    for (;;) {
        ssize_t n = pread(src, buf, sizeof(buf), off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (real_write(out, buf, (size_t)n) != n) {
            close(out);
            return -1;
        }
        off += n;
    }
    close(out);
    return 0;
}

/* Before a sync of the file at `path` (open as fd, or -1): copy it aside.
 * Returns the copy's sequence number (0: not traced). */
static unsigned long trace_before(const char *path, int fd, char *tmp, size_t cap)
{
    char rel[256];
    pthread_mutex_lock(&trace_mu);
    if (!rel_name(path, rel, sizeof(rel))) {
        pthread_mutex_unlock(&trace_mu);
        return 0;
    }
    unsigned long seq = ++copy_seq;
    struct stat st;
    int src = fd >= 0 ? fd : open(path, O_RDONLY | O_CLOEXEC);
    int ok = src >= 0 && fstat(src, &st) == 0;
    if (ok && S_ISDIR(st.st_mode)) {
        /* a directory: the names it holds now are durable once it syncs */
        snprintf(tmp, cap, "%s/d/%s.tmp%lu", trace_snap, rel, seq);
        FILE *o = fopen(tmp, "we");
        DIR *d = fdopendir(dup(src));
        if (d)
            rewinddir(d);
        if (o && d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL)
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                    fprintf(o, "%s\n", e->d_name);
        }
        if (d)
            closedir(d);
        if (o)
            fclose(o);
    } else if (ok) {
        snprintf(tmp, cap, "%s/f/%s.tmp%lu", trace_snap, rel, seq);
        if (copy_fd_to(src, tmp) != 0)
            seq = 0;
    } else {
        seq = 0;
    }
    if (fd < 0 && src >= 0)
        close(src);
    pthread_mutex_unlock(&trace_mu);
    return seq;
}

/* After the sync: keep the copy if it succeeded and is newer than the kept one. */
static void trace_after(const char *path, unsigned long seq, const char *tmp, int ok)
{
    if (!seq)
        return;
    char rel[256], final_[PATH_MAX + 300];
    pthread_mutex_lock(&trace_mu);
    rel_name(path, rel, sizeof(rel));
    int i = 0;
    for (; i < nkept; i++)
        if (strcmp(kept[i].rel, rel) == 0)
            break;
    if (!ok || (i < nkept && kept[i].seq > seq)) {
        unlink(tmp);
    } else {
        const char *kind = strstr(tmp, "/d/") ? "d" : "f";
        snprintf(final_, sizeof(final_), "%s/%s/%s", trace_snap, kind, rel);
        rename(tmp, final_);
        if (i == nkept && nkept < MAX_FILES)
            snprintf(kept[nkept++].rel, sizeof(kept[0].rel), "%s", rel);
        if (i < MAX_FILES)
            kept[i].seq = seq;
    }
    pthread_mutex_unlock(&trace_mu);
}

/* A write to a file opened O_DSYNC is durable when it returns: patch the
 * kept copy with the bytes written. */
static void trace_dsync_write(int fd, const void *buf, size_t n, off_t off)
{
    if (!tracing || n == 0)
        return;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || !(fl & (O_DSYNC | O_SYNC)))
        return;
    char path[PATH_MAX], rel[256], final_[PATH_MAX + 300];
    fd_path(fd, path, sizeof(path));
    pthread_mutex_lock(&trace_mu);
    if (rel_name(path, rel, sizeof(rel))) {
        snprintf(final_, sizeof(final_), "%s/f/%s", trace_snap, rel);
        int o = open(final_, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (o >= 0) {
            (void)real_pwrite(o, buf, n, off);
            close(o);
        }
    }
    pthread_mutex_unlock(&trace_mu);
}

static int copy_tree(const char *from, const char *to)
{
    mkdir(to, 0755);
    DIR *d = opendir(from);
    if (!d)
        return -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || strstr(e->d_name, ".tmp"))
            continue;
        char a[PATH_MAX + 300], b[PATH_MAX + 300];
        snprintf(a, sizeof(a), "%s/%s", from, e->d_name);
        snprintf(b, sizeof(b), "%s/%s", to, e->d_name);
        struct stat st;
        if (stat(a, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            rc |= copy_tree(a, b);
        } else {
            int src = open(a, O_RDONLY | O_CLOEXEC);
            if (src < 0 || copy_fd_to(src, b) != 0)
                rc = -1;
            if (src >= 0)
                close(src);
        }
    }
    closedir(d);
    return rc;
}

EXPORT int faultfs_cut(const char *dest)
{
    REAL();
    char a[PATH_MAX + 32], b[PATH_MAX + 32];
    snprintf(a, sizeof(a), "%s/durable", dest);
    snprintf(b, sizeof(b), "%s/current", dest);
    mkdir(dest, 0755);
    /* Both copies under the lock: a sync that completes meanwhile cannot
     * return to its caller (trace_after waits for the lock), so nothing that
     * depends on it (an acknowledgement, LMDB's meta page after its data,
     * the durable end mark) is in the current copy either. */
    pthread_mutex_lock(&trace_mu);
    int rc = copy_tree(trace_snap, a);
    rc |= copy_tree(trace_root, b);
    pthread_mutex_unlock(&trace_mu);
    return rc;
}

/* ------------------------------------------------------------- the calls */

static int sync_call(const char *call, int fd, int (*real)(int))
{
    char path[PATH_MAX], tmp[PATH_MAX + 300];
    fd_path(fd, path, sizeof(path));
    int err = 0;
    if (match(call, path, &err) == 0) {
        errno = err;
        return -1;
    }
    unsigned long seq = tracing ? trace_before(path, fd, tmp, sizeof(tmp)) : 0;
    int rc = real(fd);
    int e = errno;
    trace_after(path, seq, tmp, rc == 0);
    errno = e;
    return rc;
}

EXPORT int fdatasync(int fd)
{
    REAL();
    return sync_call("fdatasync", fd, real_fdatasync);
}

EXPORT int fsync(int fd)
{
    REAL();
    return sync_call("fsync", fd, real_fsync);
}

EXPORT int msync(void *addr, size_t len, int flags)
{
    REAL();
    char path[PATH_MAX], tmp[PATH_MAX + 300];
    map_path(addr, path, sizeof(path));
    int err = 0;
    if (match("msync", path, &err) == 0) {
        errno = err;
        return -1;
    }
    unsigned long seq = tracing && (flags & MS_SYNC) ? trace_before(path, -1, tmp, sizeof(tmp)) : 0;
    int rc = real_msync(addr, len, flags);
    int e = errno;
    trace_after(path, seq, tmp, rc == 0);
    errno = e;
    return rc;
}

static int fallocate_fault(int fd)
{
    char path[PATH_MAX];
    fd_path(fd, path, sizeof(path));
    int err = 0;
    return match("posix_fallocate", path, &err) == 0 ? err : 0;
}

EXPORT int posix_fallocate(int fd, off_t off, off_t len)
{
    REAL();
    int err = fallocate_fault(fd);
    return err ? err : real_posix_fallocate(fd, off, len); /* returns its error */
}

EXPORT int posix_fallocate64(int fd, off_t off, off_t len)
{
    return posix_fallocate(fd, off, len);
}

EXPORT int fallocate(int fd, int mode, off_t off, off_t len)
{
    REAL();
    int err = fallocate_fault(fd);
    if (err) {
        errno = err;
        return -1;
    }
    return real_fallocate(fd, mode, off, len);
}

EXPORT int fallocate64(int fd, int mode, off_t off, off_t len)
{
    return fallocate(fd, mode, off, len);
}

EXPORT int ftruncate(int fd, off_t len)
{
    REAL();
    char path[PATH_MAX];
    fd_path(fd, path, sizeof(path));
    int err = 0;
    if (match("ftruncate", path, &err) == 0) {
        errno = err;
        return -1;
    }
    return real_ftruncate(fd, len);
}

EXPORT int ftruncate64(int fd, off_t len)
{
    return ftruncate(fd, len);
}

/* 1: go on with n bytes (maybe halved); 0: fail with errno set. */
static int write_fault(int fd, size_t *n)
{
    if (!__atomic_load_n(&nrules, __ATOMIC_RELAXED))
        return 1; /* a quick look: rules are set before the writes they target */
    char path[PATH_MAX];
    fd_path(fd, path, sizeof(path));
    int err = 0;
    int act = match("write", path, &err);
    if (act == 0) {
        errno = err;
        return 0;
    }
    if (act == 1 && *n > 1)
        *n /= 2;
    return 1;
}

EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
    REAL();
    if (fd > 2 && !write_fault(fd, &n))
        return -1;
    ssize_t rc = real_write(fd, buf, n);
    if (rc > 0 && tracing && fd > 2) {
        off_t end = lseek(fd, 0, SEEK_CUR);
        if (end >= rc)
            trace_dsync_write(fd, buf, (size_t)rc, end - rc);
    }
    return rc;
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    REAL();
    if (!write_fault(fd, &n))
        return -1;
    ssize_t rc = real_pwrite(fd, buf, n, off);
    if (rc > 0)
        trace_dsync_write(fd, buf, (size_t)rc, off);
    return rc;
}

EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    return pwrite(fd, buf, n, off);
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    REAL();
    size_t total = 0;
    for (int i = 0; i < cnt; i++)
        total += iov[i].iov_len;
    size_t n = total;
    if (fd > 2 && !write_fault(fd, &n))
        return -1;
    if (n < total) { /* a short write: the first iovec's worth, halved */
        size_t first = iov[0].iov_len / 2 ? iov[0].iov_len / 2 : 1;
        return real_write(fd, iov[0].iov_base, first);
    }
    return real_writev(fd, iov, cnt);
}

/* ----------------------------------------------------------------- clock */

EXPORT int clock_gettime(clockid_t id, struct timespec *ts)
{
    REAL();
    int rc = real_clock_gettime(id, ts);
    long long off = __atomic_load_n(&clock_offset_ms, __ATOMIC_RELAXED);
    if (rc == 0 && off && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + off * 1000000LL;
        ts->tv_sec = (time_t)(ns / 1000000000LL);
        ts->tv_nsec = (long)(ns % 1000000000LL);
    }
    return rc;
}

EXPORT int gettimeofday(struct timeval *tv, void *tz)
{
    REAL();
    int rc = real_gettimeofday(tv, tz);
    long long off = __atomic_load_n(&clock_offset_ms, __ATOMIC_RELAXED);
    if (rc == 0 && off) {
        long long us = (long long)tv->tv_sec * 1000000LL + tv->tv_usec + off * 1000LL;
        tv->tv_sec = (time_t)(us / 1000000LL);
        tv->tv_usec = (suseconds_t)(us % 1000000LL);
    }
    return rc;
}

EXPORT time_t time(time_t *out)
{
    REAL();
    time_t t = real_time(NULL) + (time_t)(__atomic_load_n(&clock_offset_ms, __ATOMIC_RELAXED) / 1000);
    if (out)
        *out = t;
    return t;
}
