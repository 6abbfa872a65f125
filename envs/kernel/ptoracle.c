/*
 * ptoracle: replay a normalized op script on the running kernel and print the
 * process's VmPTE delta (KiB) after every op.
 *
 * Input (stdin): the normalized form produced by Script.normalized() in
 * envs/sim/opscript.py -- one op per line, every number in decimal bytes, no
 * comments, no "mayfail".  The format is specified in OPSCRIPT.md.
 *
 * Output (stdout): exactly one line per op, "DELTA_KIB<TAB>STATUS", where
 * STATUS is "ok" or "FAILED:<op>:<ERRNAME>" (ERRNAME is an errno name or
 * SIGSEGV/SIGBUS for a touch).  A "maps" op first prints one line per VMA
 * inside a script slot: "#maps ID START_KIB END_KIB PERMS".
 *
 * Options: -t          leave THP enabled (default: PR_SET_THP_DISABLE first)
 *          -d DIR      directory for the `file` backing files (must be ext4;
 *                      default $PTORACLE_DIR, else /tmp or /var/tmp)
 *          -z          after every madvise and munmap op, print for each 2 MiB
 *                      slot its range overlaps "#zap ID SLOT_KIB USED": the
 *                      pages of that slot holding a non-none entry (present,
 *                      zero page included, swapped, or a guard marker), as the
 *                      PAGEMAP_SCAN ioctl (Linux 6.7+) reports them.  The
 *                      refcount design of envs/sim/mechanisms.py frees exactly
 *                      the tables whose slot is left with USED 0.
 *
 * Exit status: 0 after replaying every op (failed ops included), 2 for
 * malformed input or usage, 3 when this machine cannot serve as the oracle
 * (no VmPTE, no ext4 directory for file backings), 4 when this script cannot
 * be replayed because one of its slots holds the program's own memory (ID 223:
 * the stack), 1 for an unexpected internal error.
 *
 * Measurement hygiene (the reason for most of the structure below): the
 * numbers are deltas of the *whole process's* page-table count, so the
 * program itself must not allocate or free a page table of its own once the
 * baseline has been read.  Therefore everything the run needs is set up and
 * exercised before the baseline: the input is parsed into memory, the stack is
 * pre-grown, every libc path is called once, and every page of the program's
 * own mappings is faulted in (and written back where writable, so that each
 * writable VMA already has its anon_vma and fork copies the same own tables
 * in every child).  After the baseline only static buffers and raw
 * syscalls (write(2), read(2)) are used: no malloc, no stdio.  The program
 * also re-executes itself once with ASLR off (see fixed_layout), so its own
 * memory sits in the same place on every run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Old headers lack some of these; values from include/uapi/asm-generic/mman-common.h. */
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_FREE
#define MADV_FREE 8
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
#ifndef MADV_KEEPONFORK
#define MADV_KEEPONFORK 19
#endif
#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_GUARD_REMOVE
#define MADV_GUARD_REMOVE 103
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 1U
#endif
#ifndef O_TMPFILE
#define O_TMPFILE (020000000 | O_DIRECTORY)
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef PR_SET_THP_DISABLE
#define PR_SET_THP_DISABLE 41
#endif
#ifndef PR_GET_THP_DISABLE
#define PR_GET_THP_DISABLE 42
#endif

#define EXT4_MAGIC 0xEF53L
#define TMPFS_MAGIC_ 0x01021994L
#define RAMFS_MAGIC_ 0x858458f6L

#define KIB 1024ULL
#define GIB (1024ULL * 1024 * 1024)
#define PAGE_SZ 4096ULL
/* Must match SLOT_BASE / SLOT_SIZE / MAX_ID in envs/sim/opscript.py. */
#define SLOT_BASE (16ULL * 1024 * GIB)
#define SLOT_SIZE (512ULL * GIB)
#define MAX_ID 223
#define NIDS (MAX_ID + 1)
#define BACKING_SIZE (64ULL * GIB)
#define MAX_WORDS 24

enum opcode {
	OP_MMAP, OP_TOUCH, OP_MADVISE, OP_MUNMAP, OP_MPROTECT, OP_MREMAP,
	OP_MLOCK, OP_MUNLOCK, OP_PUNCH, OP_TRUNCATE, OP_FORK, OP_THP,
	OP_SLEEP, OP_STAT, OP_NOP, OP_MAPS,
};

static const char *const op_names[] = {
	"mmap", "touch", "madvise", "munmap", "mprotect", "mremap",
	"mlock", "munlock", "punch", "truncate", "fork", "thp",
	"sleep", "stat", "nop", "maps",
};

enum kind { K_ANON, K_FILE, K_SHMEM };

#define F_RO 1u
#define F_POPULATE 2u
#define F_NORSV 4u
#define F_FIXED 8u
#define F_HUGE 16u
#define F_NOHUGE 32u

struct op {
	enum opcode code;
	int id;
	int dst_id;      /* mremap destination ID, -1 = resize in place */
	int fd_id;       /* mmap fd=ID2, -1 = own backing */
	enum kind kind;
	int shared;
	unsigned flags;
	int write;
	int dontunmap;
	int advice;
	int prot;
	uint64_t off, len, new_len, dst_off, foff, stride, value;
};

struct name_val {
	const char *name;
	int val;
};

static const struct name_val advices[] = {
	{"DONTNEED", MADV_DONTNEED}, {"DONTNEED_LOCKED", MADV_DONTNEED_LOCKED},
	{"FREE", MADV_FREE}, {"PAGEOUT", MADV_PAGEOUT}, {"COLD", MADV_COLD},
	{"WILLNEED", MADV_WILLNEED}, {"REMOVE", MADV_REMOVE},
	{"COLLAPSE", MADV_COLLAPSE}, {"HUGEPAGE", MADV_HUGEPAGE},
	{"NOHUGEPAGE", MADV_NOHUGEPAGE}, {"POPULATE_READ", MADV_POPULATE_READ},
	{"POPULATE_WRITE", MADV_POPULATE_WRITE}, {"DONTFORK", MADV_DONTFORK},
	{"DOFORK", MADV_DOFORK}, {"WIPEONFORK", MADV_WIPEONFORK},
	{"KEEPONFORK", MADV_KEEPONFORK}, {"GUARD_INSTALL", MADV_GUARD_INSTALL},
	{"GUARD_REMOVE", MADV_GUARD_REMOVE}, {"NORMAL", MADV_NORMAL},
	{"RANDOM", MADV_RANDOM}, {"SEQUENTIAL", MADV_SEQUENTIAL},
	{NULL, 0},
};

static const struct name_val prots[] = {
	{"none", PROT_NONE}, {"r", PROT_READ}, {"rw", PROT_READ | PROT_WRITE},
	{"rx", PROT_READ | PROT_EXEC}, {"rwx", PROT_READ | PROT_WRITE | PROT_EXEC},
	{NULL, 0},
};

/* A table rather than strerrorname_np(): works with any libc, no locale paths. */
static const struct name_val errnames[] = {
	{"EPERM", EPERM}, {"ENOENT", ENOENT}, {"ESRCH", ESRCH}, {"EINTR", EINTR},
	{"EIO", EIO}, {"ENXIO", ENXIO}, {"E2BIG", E2BIG}, {"EBADF", EBADF},
	{"ECHILD", ECHILD}, {"EAGAIN", EAGAIN}, {"ENOMEM", ENOMEM},
	{"EACCES", EACCES}, {"EFAULT", EFAULT}, {"EBUSY", EBUSY},
	{"EEXIST", EEXIST}, {"EXDEV", EXDEV}, {"ENODEV", ENODEV},
	{"ENOTDIR", ENOTDIR}, {"EISDIR", EISDIR}, {"EINVAL", EINVAL},
	{"ENFILE", ENFILE}, {"EMFILE", EMFILE}, {"ENOTTY", ENOTTY},
	{"ETXTBSY", ETXTBSY}, {"EFBIG", EFBIG}, {"ENOSPC", ENOSPC},
	{"ESPIPE", ESPIPE}, {"EROFS", EROFS}, {"EPIPE", EPIPE},
	{"ERANGE", ERANGE}, {"ENOSYS", ENOSYS}, {"EOVERFLOW", EOVERFLOW},
	{"EOPNOTSUPP", EOPNOTSUPP}, {"EDQUOT", EDQUOT},
#ifdef EHWPOISON
	{"EHWPOISON", EHWPOISON},
#endif
	{NULL, 0},
};

/* PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7+; 6.14+ for PAGE_IS_GUARD),
 * spelled out because libc headers may predate it. */
struct pz_region {
	uint64_t start, end, categories;
};

struct pz_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

#define PZ_PAGEMAP_SCAN _IOWR('f', 16, struct pz_scan_arg)
#define PZ_IS_PRESENT (1ULL << 3)
#define PZ_IS_SWAPPED (1ULL << 4)
#define PZ_IS_GUARD (1ULL << 8)
#define PZ_VEC 512 /* regions per call: a 2 MiB slot has at most 256 runs */
#define SLOT_2M (2ULL * 1024 * 1024)

/* ---- state set up before the baseline ----------------------------------- */

static struct op *ops;
static size_t nops;
static int used_id[NIDS];       /* IDs whose slot the script maps into */
static int file_fd[NIDS];       /* `file` backing per ID, -1 = not created yet */
static int shm_fd[NIDS];        /* `shmem` backing per ID */
static int last_fd[NIDS];       /* backing of ID's latest file/shmem mmap (punch/truncate) */
static const char *file_dir;
static int pipe_rd = -1, pipe_wr = -1;
static long base_kib;           /* parent's VmPTE before the first op */
static long ref_child_kib;      /* reference child's VmPTE */
static int zap_report;          /* -z: print #zap lines after madvise/munmap */
static int pagemap_fd = -1;     /* /proc/self/pagemap, for -z */
static uint64_t zap_mask;       /* categories that mean "not none" */
static struct pz_region zap_vec[PZ_VEC];

/* ---- static buffers used after the baseline ----------------------------- */

static char status_buf[16384];
static char maps_buf[65536];
static char out_buf[512];

/* Signal plumbing for touch: SIGSEGV/SIGBUS inside a touch jump back. */
static sigjmp_buf touch_env;
static volatile sig_atomic_t in_touch;
static volatile sig_atomic_t touch_sig;
static volatile uintptr_t bad_address = 16; /* below mmap_min_addr: never mapped */

static uint64_t slot(int id)
{
	return SLOT_BASE + (uint64_t)id * SLOT_SIZE;
}

static void die(int code, const char *msg1, const char *msg2)
{
	/* Before the baseline only; stdio is fine here. */
	fprintf(stderr, "ptoracle: %s%s\n", msg1, msg2 ? msg2 : "");
	exit(code);
}

/* ---- small output helpers (no stdio after the baseline) ----------------- */

static size_t put_str(char *buf, size_t pos, const char *s)
{
	while (*s && pos < sizeof out_buf - 1)
		buf[pos++] = *s++;
	return pos;
}

static size_t put_long(char *buf, size_t pos, long v)
{
	char tmp[24];
	int n = 0;
	unsigned long u = v < 0 ? 0UL - (unsigned long)v : (unsigned long)v;

	if (v < 0 && pos < sizeof out_buf - 1)
		buf[pos++] = '-';
	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	while (n && pos < sizeof out_buf - 1)
		buf[pos++] = tmp[--n];
	return pos;
}

static void write_all(const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(1, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			_exit(1);
		}
		buf += n;
		len -= (size_t)n;
	}
}

static const char *errname(int err)
{
	static char other[24] = "ERRNO";  /* unknown errno: "ERRNO<n>" */
	char tmp[12];
	size_t pos = 5;
	unsigned u = (unsigned)err;
	int i, n = 0;

	for (i = 0; errnames[i].name; i++)
		if (errnames[i].val == err)
			return errnames[i].name;
	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	while (n)
		other[pos++] = tmp[--n];
	other[pos] = 0;
	return other;
}

/* ---- /proc readers ------------------------------------------------------- */

/* VmPTE of the calling process in KiB, or -1. */
static long read_vmpte(void)
{
	size_t have = 0;
	ssize_t n;
	const char *p;
	long v = 0;
	int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	while (have < sizeof status_buf - 1) {
		n = read(fd, status_buf + have, sizeof status_buf - 1 - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	close(fd);
	status_buf[have] = 0;
	p = strstr(status_buf, "\nVmPTE:");
	if (!p)
		return -1;
	p += 7;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p < '0' || *p > '9')
		return -1;
	while (*p >= '0' && *p <= '9')
		v = v * 10 + (*p++ - '0');
	return v;
}

typedef void (*maps_cb)(uint64_t start, uint64_t end, const char *perms,
			const char *name, void *ctx);

static int parse_hex(const char **pp, uint64_t *out)
{
	const char *p = *pp;
	uint64_t v = 0;
	int n = 0;

	for (;; p++, n++) {
		int c = *p;

		if (c >= '0' && c <= '9')
			v = v * 16 + (uint64_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v * 16 + (uint64_t)(c - 'a' + 10);
		else
			break;
	}
	*pp = p;
	*out = v;
	return n > 0;
}

static void maps_line(char *line, maps_cb cb, void *ctx)
{
	const char *p = line;
	uint64_t start, end;
	char perms[5];
	int field;

	if (!parse_hex(&p, &start) || *p++ != '-' || !parse_hex(&p, &end) || *p++ != ' ')
		return;
	memcpy(perms, p, 4);
	perms[4] = 0;
	/* skip perms, offset, dev, inode; the rest (after spaces) is the name */
	for (field = 0; field < 4; field++) {
		while (*p && *p != ' ')
			p++;
		while (*p == ' ')
			p++;
	}
	cb(start, end, perms, p, ctx);
}

/* Stream /proc/self/maps through a static buffer, one callback per VMA. */
static int walk_maps(maps_cb cb, void *ctx)
{
	size_t have = 0, startl, i;
	ssize_t n;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return errno;
	for (;;) {
		n = read(fd, maps_buf + have, sizeof maps_buf - 1 - have);
		if (n < 0) {
			int e = errno;

			if (e == EINTR)
				continue;
			close(fd);
			return e;
		}
		have += (size_t)n;
		startl = 0;
		for (i = 0; i < have; i++) {
			if (maps_buf[i] == '\n') {
				maps_buf[i] = 0;
				maps_line(maps_buf + startl, cb, ctx);
				startl = i + 1;
			}
		}
		if (n == 0) {
			if (startl < have) {
				maps_buf[have] = 0;
				maps_line(maps_buf + startl, cb, ctx);
			}
			break;
		}
		memmove(maps_buf, maps_buf + startl, have - startl);
		have -= startl;
		if (have == sizeof maps_buf - 1) /* absurdly long line: drop it */
			have = 0;
	}
	close(fd);
	return 0;
}

/* ---- signal handling for touch ----------------------------------------- */

static void fault_handler(int sig)
{
	if (!in_touch) {
		/* A genuine bug: let the re-executed access kill us normally. */
		signal(sig, SIG_DFL);
		return;
	}
	in_touch = 0;
	touch_sig = sig;
	siglongjmp(touch_env, 1);
}

/*
 * Access one byte every `stride` bytes in [addr, addr + len), increasing.
 * Returns 0, or the signal that stopped it.  With `keep_going`, a faulting
 * page is skipped instead (used to pre-fault the program's own memory).
 * `writeback` re-writes the byte just read (own memory: same value).
 */
static int touch_range(uint64_t addr, uint64_t len, uint64_t stride, int write,
		       int writeback, int keep_going)
{
	static volatile uint64_t pos;  /* static: survives siglongjmp */
	static volatile int failed_sig;

	failed_sig = 0;
	pos = addr;
	while (pos < addr + len) {
		if (sigsetjmp(touch_env, 1) == 0) {
			in_touch = 1;
			for (; pos < addr + len; pos += stride) {
				volatile char *p = (volatile char *)(uintptr_t)pos;

				if (write) {
					*p = 1;
				} else if (writeback) {
					char c = *p;
					*p = c;
				} else {
					(void)*p;
				}
			}
			in_touch = 0;
		} else {
			if (!keep_going)
				return touch_sig;
			failed_sig = touch_sig;
			pos += stride;
		}
	}
	return keep_going ? 0 : failed_sig;
}

/* ---- input parsing ------------------------------------------------------ */

static unsigned long cur_line;

static void bad(const char *problem, const char *word)
{
	fprintf(stderr, "ptoracle: stdin line %lu: %s%s%s%s\n", cur_line, problem,
		word ? " '" : "", word ? word : "", word ? "'" : "");
	exit(2);
}

static uint64_t num(const char *w, const char *what)
{
	uint64_t v = 0;
	const char *p = w;

	if (!*p)
		bad(what, w);
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			bad("expected a decimal number for", what);
		if (v > (UINT64_MAX - 9) / 10)
			bad("number too large:", w);
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v > (1ULL << 62))
		bad("number too large:", w);
	return v;
}

static int ident(const char *w)
{
	uint64_t v = num(w, "ID");

	if (v > MAX_ID)
		bad("ID must be at most 223, got", w);
	return (int)v;
}

static int lookup(const struct name_val *t, const char *w, const char *what)
{
	int i;

	for (i = 0; t[i].name; i++)
		if (!strcmp(t[i].name, w))
			return t[i].val;
	bad(what, w);
	return 0;
}

static void within_slot(uint64_t off, uint64_t len)
{
	if (off > SLOT_SIZE || len > SLOT_SIZE - off)
		bad("range ends past its ID's 512 GiB slot", NULL);
}

static void need(int nw, int lo, int hi, const char *name)
{
	if (nw < lo || nw > hi)
		bad("wrong number of arguments for", name);
}

static void parse_line(char *line, struct op *op)
{
	char *w[MAX_WORDS];
	int nw = 0, i;
	char *p = line;
	const char *name;

	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == '\r')
			*p++ = 0;
		if (!*p)
			break;
		if (nw == MAX_WORDS)
			bad("too many words", NULL);
		w[nw++] = p;
		while (*p && *p != ' ' && *p != '\t' && *p != '\r')
			p++;
	}
	if (nw == 0)
		bad("empty line (expected one op per line)", NULL);
	memset(op, 0, sizeof *op);
	op->dst_id = -1;
	op->fd_id = -1;
	name = w[0];
	for (i = 0; i <= OP_MAPS; i++)
		if (!strcmp(op_names[i], name))
			break;
	if (i > OP_MAPS)
		bad("unknown op", name);
	op->code = (enum opcode)i;

	switch (op->code) {
	case OP_MMAP:
		if (nw < 6)
			bad("mmap takes ID KIND SHARE SIZE OFF [opts]", NULL);
		op->id = ident(w[1]);
		if (!strcmp(w[2], "anon"))
			op->kind = K_ANON;
		else if (!strcmp(w[2], "file"))
			op->kind = K_FILE;
		else if (!strcmp(w[2], "shmem"))
			op->kind = K_SHMEM;
		else
			bad("unknown mmap KIND", w[2]);
		if (!strcmp(w[3], "shared"))
			op->shared = 1;
		else if (strcmp(w[3], "private"))
			bad("unknown mmap SHARE", w[3]);
		op->len = num(w[4], "SIZE");
		op->off = num(w[5], "OFF");
		for (i = 6; i < nw; i++) {
			if (!strcmp(w[i], "ro"))
				op->flags |= F_RO;
			else if (!strcmp(w[i], "populate"))
				op->flags |= F_POPULATE;
			else if (!strcmp(w[i], "norsv"))
				op->flags |= F_NORSV;
			else if (!strcmp(w[i], "fixed"))
				op->flags |= F_FIXED;
			else if (!strcmp(w[i], "hugepage"))
				op->flags |= F_HUGE;
			else if (!strcmp(w[i], "nohugepage"))
				op->flags |= F_NOHUGE;
			else if (!strncmp(w[i], "foff=", 5))
				op->foff = num(w[i] + 5, "foff");
			else if (!strncmp(w[i], "fd=", 3))
				op->fd_id = ident(w[i] + 3);
			else
				bad("unknown mmap option", w[i]);
		}
		if (op->kind == K_ANON && (op->foff || op->fd_id >= 0))
			bad("foff= and fd= apply to file and shmem mappings only", NULL);
		if (op->foff % PAGE_SZ)
			bad("foff must be a multiple of 4096", w[nw - 1]);
		within_slot(op->off, op->len);
		used_id[op->id] = 1;
		break;
	case OP_TOUCH:
		need(nw, 6, 6, "touch (ID OFF LEN read|write STRIDE)");
		op->id = ident(w[1]);
		op->off = num(w[2], "OFF");
		op->len = num(w[3], "LEN");
		if (!strcmp(w[4], "write"))
			op->write = 1;
		else if (strcmp(w[4], "read"))
			bad("touch access must be read or write, got", w[4]);
		op->stride = num(w[5], "STRIDE");
		if (!op->stride)
			bad("STRIDE must be positive", NULL);
		within_slot(op->off, op->len);
		used_id[op->id] = 1;
		break;
	case OP_MADVISE:
		need(nw, 5, 5, "madvise (ID OFF LEN ADVICE)");
		op->id = ident(w[1]);
		op->off = num(w[2], "OFF");
		op->len = num(w[3], "LEN");
		op->advice = lookup(advices, w[4], "unknown madvise ADVICE");
		within_slot(op->off, op->len);
		used_id[op->id] = 1;
		break;
	case OP_MUNMAP:
	case OP_MLOCK:
	case OP_MUNLOCK:
		need(nw, 4, 4, name);
		op->id = ident(w[1]);
		op->off = num(w[2], "OFF");
		op->len = num(w[3], "LEN");
		within_slot(op->off, op->len);
		used_id[op->id] = 1;
		break;
	case OP_MPROTECT:
		need(nw, 5, 5, "mprotect (ID OFF LEN none|r|rw|rx|rwx)");
		op->id = ident(w[1]);
		op->off = num(w[2], "OFF");
		op->len = num(w[3], "LEN");
		op->prot = lookup(prots, w[4], "unknown mprotect PROT");
		within_slot(op->off, op->len);
		used_id[op->id] = 1;
		break;
	case OP_MREMAP:
		if (nw > 1 && !strcmp(w[nw - 1], "dontunmap")) {
			op->dontunmap = 1;
			nw--;
		}
		if (nw != 5 && nw != 7)
			bad("mremap takes ID OFF OLDLEN NEWLEN [DSTID DSTOFF] [dontunmap]", NULL);
		op->id = ident(w[1]);
		op->off = num(w[2], "OFF");
		op->len = num(w[3], "OLDLEN");
		op->new_len = num(w[4], "NEWLEN");
		within_slot(op->off, op->len > op->new_len ? op->len : op->new_len);
		if (nw == 7) {
			op->dst_id = ident(w[5]);
			op->dst_off = num(w[6], "DSTOFF");
			within_slot(op->dst_off, op->new_len);
			used_id[op->dst_id] = 1;
		} else if (op->dontunmap) {
			bad("dontunmap needs a destination", NULL);
		}
		used_id[op->id] = 1;
		break;
	case OP_PUNCH:
		need(nw, 4, 4, "punch (ID FOFF LEN)");
		op->id = ident(w[1]);
		op->off = num(w[2], "FOFF");
		op->len = num(w[3], "LEN");
		break;
	case OP_TRUNCATE:
		need(nw, 3, 3, "truncate (ID SIZE)");
		op->id = ident(w[1]);
		op->value = num(w[2], "SIZE");
		break;
	case OP_THP:
		need(nw, 2, 2, "thp (on|off)");
		if (!strcmp(w[1], "on"))
			op->value = 1;
		else if (strcmp(w[1], "off"))
			bad("thp takes on or off, got", w[1]);
		break;
	case OP_SLEEP:
		need(nw, 2, 2, "sleep (MS)");
		op->value = num(w[1], "MS");
		if (op->value > 3600 * 1000)
			bad("sleep longer than an hour:", w[1]);
		break;
	case OP_FORK:
	case OP_STAT:
	case OP_NOP:
	case OP_MAPS:
		need(nw, 1, 1, name);
		break;
	}
}

static void read_input(void)
{
	size_t cap = 1 << 16, have = 0, i, start, k;
	char *buf = malloc(cap);
	ssize_t n;

	if (!buf)
		die(1, "out of memory", NULL);
	for (;;) {
		if (have + 1 >= cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				die(1, "out of memory", NULL);
		}
		n = read(0, buf + have, cap - 1 - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die(2, "cannot read stdin: ", strerror(errno));
		if (n == 0)
			break;
		have += (size_t)n;
	}
	buf[have] = 0;
	if (memchr(buf, 0, have))
		die(2, "stdin contains a NUL byte", NULL);
	/* count lines: every '\n' ends one; a final unterminated line counts too */
	for (i = 0, nops = 0; i < have; i++)
		if (buf[i] == '\n')
			nops++;
	if (have && buf[have - 1] != '\n')
		nops++;
	ops = calloc(nops ? nops : 1, sizeof *ops);
	if (!ops)
		die(1, "out of memory", NULL);
	for (i = 0, start = 0, k = 0; k < nops; i++) {
		if (i == have || buf[i] == '\n') {
			buf[i] = 0;
			cur_line = k + 1;
			parse_line(buf + start, &ops[k]);
			k++;
			start = i + 1;
		}
	}
	free(buf);
}

/* ---- setup before the baseline ----------------------------------------- */

static int is_ext4(const char *dir, char *why, size_t whylen)
{
	struct statfs sf;

	if (statfs(dir, &sf) != 0) {
		snprintf(why, whylen, "%s: %s", dir, strerror(errno));
		return 0;
	}
	if ((long)sf.f_type == EXT4_MAGIC)
		return 1;
	if ((long)sf.f_type == TMPFS_MAGIC_ || (long)sf.f_type == RAMFS_MAGIC_)
		snprintf(why, whylen, "%s is tmpfs/ramfs, whose files behave like shmem", dir);
	else
		snprintf(why, whylen, "%s is not ext4 (statfs f_type 0x%lx)", dir,
			 (unsigned long)sf.f_type);
	return 0;
}

static void choose_file_dir(const char *opt_dir)
{
	static const char *const defaults[] = {"/tmp", "/var/tmp", NULL};
	char why[512], first_why[512];
	int i;

	if (!opt_dir)
		opt_dir = getenv("PTORACLE_DIR");
	if (opt_dir && *opt_dir) {
		if (!is_ext4(opt_dir, why, sizeof why))
			die(3, "file backing directory unusable: ", why);
		file_dir = opt_dir;
		return;
	}
	first_why[0] = 0;
	for (i = 0; defaults[i]; i++) {
		if (is_ext4(defaults[i], why, sizeof why)) {
			file_dir = defaults[i];
			return;
		}
		if (!first_why[0])
			memcpy(first_why, why, sizeof why);
	}
	die(3, "no ext4 directory for `file` mappings (set PTORACLE_DIR or -d): ", first_why);
}

struct overlap_ctx {
	int bad_id;
	uint64_t start, end;
};

static void check_overlap(uint64_t start, uint64_t end, const char *perms,
			  const char *name, void *vctx)
{
	struct overlap_ctx *ctx = vctx;
	int id;

	(void)perms;
	(void)name;
	for (id = 0; id < NIDS; id++) {
		if (used_id[id] && start < slot(id) + SLOT_SIZE && end > slot(id)) {
			ctx->bad_id = id;
			ctx->start = start;
			ctx->end = end;
		}
	}
}

static int in_used_slot(uint64_t start, uint64_t end)
{
	int id;

	for (id = 0; id < NIDS; id++)
		if (used_id[id] && start < slot(id) + SLOT_SIZE && end > slot(id))
			return 1;
	return 0;
}

static void prefault_cb(uint64_t start, uint64_t end, const char *perms,
			const char *name, void *ctx)
{
	(void)ctx;
	if (perms[0] != 'r' || in_used_slot(start, end))
		return;
	/* Special mappings whose pages may SIGBUS or that we never touch. */
	if (!strcmp(name, "[vvar]") || !strcmp(name, "[vvar_vclock]") ||
	    !strcmp(name, "[vsyscall]"))
		return;
	touch_range(start, end - start, PAGE_SZ, 0,
		    perms[1] == 'w' && perms[3] == 'p', 1);
}

static void noop_cb(uint64_t start, uint64_t end, const char *perms,
		    const char *name, void *ctx)
{
	(void)start;
	(void)end;
	(void)perms;
	(void)name;
	(void)ctx;
}

/* Deep stack use before the baseline so later frames land on mapped pages. */
static __attribute__((noinline)) void grow_stack(void)
{
	volatile char big[512 * 1024];
	size_t i;

	for (i = sizeof big; i >= PAGE_SZ; i -= PAGE_SZ)
		big[i - 1] = 0;
	big[0] = 0;
}

static int do_fork(long *child_kib);

static void warm_up(int need_fork)
{
	struct timespec ts = {0, 0};
	long dummy;

	/* Exercise every syscall wrapper the ops use, with arguments that touch
	 * nothing (zero lengths, unaligned addresses), so any first-call work in
	 * libc happens now. */
	(void)madvise((void *)(uintptr_t)1, 0, MADV_NORMAL);
	(void)mprotect((void *)(uintptr_t)1, 0, PROT_NONE);
	(void)munmap((void *)(uintptr_t)1, 0);
	(void)mmap(NULL, 0, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	(void)mremap((void *)(uintptr_t)1, 0, 0, 0);
	(void)mlock((void *)(uintptr_t)1, 0);
	(void)munlock((void *)(uintptr_t)1, 0);
	(void)fallocate(-1, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 0);
	(void)ftruncate(-1, 0);
	(void)prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
	(void)nanosleep(&ts, NULL);
	(void)read_vmpte();
	(void)walk_maps(noop_cb, NULL);
	(void)touch_range(bad_address, 1, PAGE_SZ, 0, 0, 0); /* SIGSEGV path */
	(void)errname(EINVAL);
	(void)errname(9999);
	if (need_fork)
		(void)do_fork(&dummy);
}

/* ---- the ops -------------------------------------------------------------- */

static int create_backing(enum kind kind)
{
	int fd;

	if (kind == K_SHMEM) {
		fd = memfd_create("ptoracle", MFD_CLOEXEC);
	} else {
		fd = open(file_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
			/* No O_TMPFILE: a named file, unlinked right away. */
			static char path[4096];
			size_t dl = strlen(file_dir);

			if (dl + 20 >= sizeof path) {
				errno = ENAMETOOLONG;
				return -1;
			}
			memcpy(path, file_dir, dl);
			memcpy(path + dl, "/ptoracle.XXXXXX", 17);
			fd = mkostemp(path, O_CLOEXEC);
			if (fd >= 0)
				unlink(path);
		}
	}
	if (fd < 0)
		return -1;
	if (ftruncate(fd, (off_t)BACKING_SIZE) != 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int backing(int id, enum kind kind)
{
	int *tab = kind == K_SHMEM ? shm_fd : file_fd;

	if (tab[id] < 0)
		tab[id] = create_backing(kind);
	return tab[id];
}

/* Returns 0, or an errno (>0), or -signal for a touch. */
static int do_mmap(const struct op *op)
{
	uint64_t addr = slot(op->id) + op->off;
	int prot = op->flags & F_RO ? PROT_READ : PROT_READ | PROT_WRITE;
	int flags = op->shared ? MAP_SHARED : MAP_PRIVATE;
	int fd = -1;
	void *p;

	flags |= op->flags & F_FIXED ? MAP_FIXED : MAP_FIXED_NOREPLACE;
	if (op->flags & F_NORSV)
		flags |= MAP_NORESERVE;
	if (op->flags & F_POPULATE)
		flags |= MAP_POPULATE;
	if (op->kind == K_ANON) {
		flags |= MAP_ANONYMOUS;
	} else {
		fd = backing(op->fd_id >= 0 ? op->fd_id : op->id, op->kind);
		if (fd < 0)
			return errno;
		last_fd[op->id] = fd;
	}
	p = mmap((void *)(uintptr_t)addr, op->len, prot, flags, fd, (off_t)op->foff);
	if (p == MAP_FAILED)
		return errno;
	if ((uint64_t)(uintptr_t)p != addr) {
		/* A kernel without MAP_FIXED_NOREPLACE treats it as a hint. */
		munmap(p, op->len);
		return EEXIST;
	}
	if ((op->flags & F_HUGE) && madvise(p, op->len, MADV_HUGEPAGE) != 0)
		return errno;
	if ((op->flags & F_NOHUGE) && madvise(p, op->len, MADV_NOHUGEPAGE) != 0)
		return errno;
	return 0;
}

static int do_fork(long *child_kib)
{
	long v;
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return errno;
	if (pid == 0) {
		/* Child: report own VmPTE, then leave without running atexit hooks. */
		v = read_vmpte();
		if (write(pipe_wr, &v, sizeof v) != (ssize_t)sizeof v)
			_exit(1);
		_exit(0);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return errno;
	/* The child has exited, so its 8 bytes (atomic: < PIPE_BUF) are in the pipe
	 * or never will be; the read end is non-blocking. */
	if (read(pipe_rd, &v, sizeof v) != (ssize_t)sizeof v || v < 0)
		return EIO;
	*child_kib = v;
	return 0;
}

struct maps_ctx {
	size_t count;
};

/* Pages of [start, end) with a non-none entry, or -errno. */
static long used_pages(uint64_t start, uint64_t end)
{
	struct pz_scan_arg arg;
	long pages = 0;
	int n, i;

	while (start < end) {
		memset(&arg, 0, sizeof arg);
		arg.size = sizeof arg;
		arg.start = start;
		arg.end = end;
		arg.vec = (uint64_t)(uintptr_t)zap_vec;
		arg.vec_len = PZ_VEC;
		arg.category_anyof_mask = zap_mask;
		arg.return_mask = zap_mask;
		n = ioctl(pagemap_fd, PZ_PAGEMAP_SCAN, &arg);
		if (n < 0)
			return -errno;
		for (i = 0; i < n; i++)
			pages += (long)((zap_vec[i].end - zap_vec[i].start) / PAGE_SZ);
		if (arg.walk_end <= start)
			break;
		start = arg.walk_end;
	}
	return pages;
}

/* Open the pagemap and find the categories this kernel knows (before the baseline). */
static void setup_zap_report(void)
{
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0)
		die(3, "-z: cannot open /proc/self/pagemap: ", strerror(errno));
	zap_mask = PZ_IS_PRESENT | PZ_IS_SWAPPED | PZ_IS_GUARD;
	if (used_pages(SLOT_BASE, SLOT_BASE + SLOT_2M) == -EINVAL) {
		zap_mask &= ~PZ_IS_GUARD; /* before 6.14 markers have no category */
		if (used_pages(SLOT_BASE, SLOT_BASE + SLOT_2M) < 0)
			die(3, "-z: the PAGEMAP_SCAN ioctl fails (Linux 6.7+ needed): ",
			    strerror(errno));
	}
}

/* -z: one "#zap ID SLOT_KIB USED" line per 2 MiB slot that [off, off+len) of ID overlaps. */
static void print_zap(const struct op *op)
{
	uint64_t lo, hi, s;
	long used;
	size_t pos;

	if (!zap_report || (op->code != OP_MADVISE && op->code != OP_MUNMAP) || !op->len)
		return;
	lo = op->off / SLOT_2M * SLOT_2M;
	hi = (op->off + op->len + SLOT_2M - 1) / SLOT_2M * SLOT_2M;
	for (s = lo; s < hi && s < SLOT_SIZE; s += SLOT_2M) {
		used = used_pages(slot(op->id) + s, slot(op->id) + s + SLOT_2M);
		if (used < 0)
			_exit(1);
		pos = put_str(out_buf, 0, "#zap ");
		pos = put_long(out_buf, pos, op->id);
		pos = put_str(out_buf, pos, " ");
		pos = put_long(out_buf, pos, (long)(s / KIB));
		pos = put_str(out_buf, pos, " ");
		pos = put_long(out_buf, pos, used);
		pos = put_str(out_buf, pos, "\n");
		write_all(out_buf, pos);
	}
}

static void print_maps_cb(uint64_t start, uint64_t end, const char *perms,
			  const char *name, void *vctx)
{
	struct maps_ctx *ctx = vctx;
	size_t pos = 0;
	int id;

	(void)name;
	if (start < SLOT_BASE)
		return;
	id = (int)((start - SLOT_BASE) / SLOT_SIZE);
	if (id > MAX_ID || !used_id[id])
		return;
	pos = put_str(out_buf, pos, "#maps ");
	pos = put_long(out_buf, pos, id);
	pos = put_str(out_buf, pos, " ");
	pos = put_long(out_buf, pos, (long)((start - slot(id)) / KIB));
	pos = put_str(out_buf, pos, " ");
	pos = put_long(out_buf, pos, (long)((end - slot(id)) / KIB));
	pos = put_str(out_buf, pos, " ");
	pos = put_str(out_buf, pos, perms);
	pos = put_str(out_buf, pos, "\n");
	write_all(out_buf, pos);
	ctx->count++;
}

/*
 * Run one op.  Returns 0, a positive errno, or a negative signal number.
 * For fork, *child_kib receives the child's VmPTE.
 */
static int run_op(const struct op *op, long *child_kib)
{
	uint64_t a = slot(op->id) + op->off;
	void *addr = (void *)(uintptr_t)a;
	int r = 0, fd;

	switch (op->code) {
	case OP_MMAP:
		return do_mmap(op);
	case OP_TOUCH:
		r = touch_range(a, op->len, op->stride, op->write, 0, 0);
		return r ? -r : 0;
	case OP_MADVISE:
		r = madvise(addr, op->len, op->advice);
		break;
	case OP_MUNMAP:
		r = munmap(addr, op->len);
		break;
	case OP_MPROTECT:
		r = mprotect(addr, op->len, op->prot);
		break;
	case OP_MLOCK:
		r = mlock(addr, op->len);
		break;
	case OP_MUNLOCK:
		r = munlock(addr, op->len);
		break;
	case OP_MREMAP: {
		void *p;

		if (op->dst_id < 0) {
			p = mremap(addr, op->len, op->new_len, 0);
		} else {
			uint64_t dst = slot(op->dst_id) + op->dst_off;
			int flags = MREMAP_MAYMOVE | MREMAP_FIXED;

			if (op->dontunmap)
				flags |= MREMAP_DONTUNMAP;
			p = mremap(addr, op->len, op->new_len, flags, (void *)(uintptr_t)dst);
		}
		return p == MAP_FAILED ? errno : 0;
	}
	case OP_PUNCH:
		fd = last_fd[op->id];
		if (fd < 0)
			return EBADF;
		r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)op->off, (off_t)op->len);
		break;
	case OP_TRUNCATE:
		fd = last_fd[op->id];
		if (fd < 0)
			return EBADF;
		r = ftruncate(fd, (off_t)op->value);
		break;
	case OP_FORK:
		return do_fork(child_kib);
	case OP_THP:
		r = prctl(PR_SET_THP_DISABLE, op->value ? 0 : 1, 0, 0, 0);
		break;
	case OP_SLEEP: {
		struct timespec ts;

		ts.tv_sec = (time_t)(op->value / 1000);
		ts.tv_nsec = (long)(op->value % 1000) * 1000000L;
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
		return 0;
	}
	case OP_MAPS: {
		struct maps_ctx ctx = {0};

		return walk_maps(print_maps_cb, &ctx);
	}
	case OP_STAT:
	case OP_NOP:
		return 0;
	}
	return r ? errno : 0;
}

/*
 * Re-exec once with ASLR off and a bounded stack rlimit.  Then the program's
 * own memory always lies in the same place: binary and heap near 4 MiB (static
 * non-PIE build), stack, vdso and any mmap just below 128 TiB, inside the last
 * slot.  So every ID but 223 is usable on every run (with ASLR the mmap base
 * can reach down into slot 222, and with an unlimited stack rlimit the legacy
 * bottom-up layout puts mmaps near 42 TiB, i.e. in slot 53), and two runs of a
 * script see the same layout.  If any step fails we carry on as we are: the
 * slot-overlap check still refuses a script whose slots hold our memory.
 */
#define STACK_RLIMIT (8ULL * 1024 * 1024)
static void fixed_layout(char **argv)
{
	int pers = personality(0xffffffff);
	struct rlimit rl;
	int big_stack;

	if (pers == -1 || getenv("PTORACLE_REEXEC"))
		return;
	big_stack = getrlimit(RLIMIT_STACK, &rl) == 0 &&
		    (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > STACK_RLIMIT);
	if ((pers & ADDR_NO_RANDOMIZE) && !big_stack)
		return;
	if (big_stack) {
		rl.rlim_cur = STACK_RLIMIT;
		if (setrlimit(RLIMIT_STACK, &rl) != 0)
			return;
	}
	if (personality((unsigned long)pers | ADDR_NO_RANDOMIZE) == -1)
		return;
	if (setenv("PTORACLE_REEXEC", "1", 1) != 0)
		return;
	execv("/proc/self/exe", argv);
	(void)personality((unsigned long)pers);
}

static void usage(const char *problem)
{
	fprintf(stderr, "ptoracle: %s; usage: ptoracle [-t] [-z] [-d DIR] < normalized-script\n",
		problem);
	exit(2);
}

int main(int argc, char **argv)
{
	int thp = 0, opt, i, need_fork = 0, need_file = 0, tries;
	const char *opt_dir = NULL;
	struct sigaction sa;
	struct rlimit rl;
	struct overlap_ctx octx = {-1, 0, 0};
	int pfd[2];
	size_t k;

	fixed_layout(argv); /* before getopt, which permutes argv */
	opterr = 0; /* report bad options ourselves, in one line */
	while ((opt = getopt(argc, argv, "tzd:h")) != -1) {
		switch (opt) {
		case 't':
			thp = 1;
			break;
		case 'z':
			zap_report = 1;
			break;
		case 'd':
			opt_dir = optarg;
			break;
		case 'h':
			usage("help");
			break;
		default:
			usage(optopt == 'd' ? "-d needs a directory" : "unknown option");
		}
	}
	if (optind != argc)
		usage("unexpected argument");
	/* THP decides how the very first faults are served: set it before anything. */
	if (!thp && prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0)
		die(3, "prctl(PR_SET_THP_DISABLE) failed: ", strerror(errno));

	for (i = 0; i < NIDS; i++)
		file_fd[i] = shm_fd[i] = last_fd[i] = -1;
	read_input();
	for (k = 0; k < nops; k++) {
		if (ops[k].code == OP_FORK)
			need_fork = 1;
		if (ops[k].code == OP_MMAP && ops[k].kind == K_FILE)
			need_file = 1;
	}

	if (read_vmpte() < 0)
		die(3, "no VmPTE line in /proc/self/status", NULL);
	if (need_file)
		choose_file_dir(opt_dir);
	/* Root ignores RLIMIT_MEMLOCK; for others allow as much as the hard limit. */
	if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_MEMLOCK, &rl);
	}

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = fault_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_NODEFER;
	if (sigaction(SIGSEGV, &sa, NULL) != 0 || sigaction(SIGBUS, &sa, NULL) != 0)
		die(1, "sigaction failed: ", strerror(errno));
	if (need_fork) {
		if (pipe2(pfd, O_CLOEXEC | O_NONBLOCK) != 0)
			die(1, "pipe2 failed: ", strerror(errno));
		pipe_rd = pfd[0];
		pipe_wr = pfd[1];
	}

	/* A slot holding our own memory would share its tables with the script. */
	if (walk_maps(check_overlap, &octx) != 0)
		die(3, "cannot read /proc/self/maps", NULL);
	if (octx.bad_id >= 0) {
		char msg[256];

		snprintf(msg, sizeof msg,
			 "slot of ID %d overlaps the oracle's own mapping %llx-%llx; use a smaller ID",
			 octx.bad_id, (unsigned long long)octx.start,
			 (unsigned long long)octx.end);
		die(4, msg, NULL);
	}

	if (zap_report)
		setup_zap_report();
	warm_up(need_fork);
	grow_stack();
	/* Twice: the first pass may itself fault in pages (e.g. of maps_buf). */
	for (i = 0; i < 2; i++)
		if (walk_maps(prefault_cb, NULL) != 0)
			die(3, "cannot read /proc/self/maps", NULL);
	if (need_fork && do_fork(&ref_child_kib) != 0)
		die(3, "reference fork failed", NULL);
	/* The baseline must be stable before it means anything. */
	for (tries = 0;; tries++) {
		long a = read_vmpte(), b = read_vmpte();

		if (a == b) {
			base_kib = a;
			break;
		}
		if (tries == 10)
			die(3, "VmPTE does not settle before the first op", NULL);
	}

	/* ---- from here on: no malloc, no stdio ---- */
	for (k = 0; k < nops; k++) {
		const struct op *op = &ops[k];
		long child_kib = 0, now, delta;
		int r = run_op(op, &child_kib);
		size_t pos = 0;

		print_zap(op);
		if (op->code == OP_FORK && r == 0) {
			delta = child_kib - ref_child_kib;
		} else {
			now = read_vmpte();
			if (now < 0)
				_exit(1);
			delta = now - base_kib;
		}
		pos = put_long(out_buf, pos, delta);
		if (r == 0) {
			pos = put_str(out_buf, pos, "\tok\n");
		} else {
			pos = put_str(out_buf, pos, "\tFAILED:");
			pos = put_str(out_buf, pos, op_names[op->code]);
			pos = put_str(out_buf, pos, ":");
			if (r < 0)
				pos = put_str(out_buf, pos, -r == SIGBUS ? "SIGBUS" :
					      -r == SIGSEGV ? "SIGSEGV" : "SIGNAL");
			else
				pos = put_str(out_buf, pos, errname(r));
			pos = put_str(out_buf, pos, "\n");
		}
		write_all(out_buf, pos);
	}
	return 0;
}
