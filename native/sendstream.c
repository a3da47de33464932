/*
 * btrsync.sendstream._native: an incremental, validating parser of btrfs send streams (v1-v3).
 *
 * The same state machine as btrsync/sendstream/_pyparser.py (the pure-Python fallback); both must
 * give identical events and identical errors for any input and any split into chunks, and the
 * tests check that. Tables here repeat btrsync/sendstream/format.py (checked by the tests too).
 *
 * Memory: a parser holds the 17-byte stream header, one command header and the non-data
 * attributes of one command (at most 34 distinct attributes of < 64 KiB each). File data
 * (the DATA attribute of WRITE / ENCODED_WRITE) is checksummed as it passes and reported as an
 * offset and a length into the stream, never copied.
 *
 * CRC32C: SSE4.2 crc32 instructions (three interleaved streams, combined with zero-operator
 * tables) when the CPU has them (checked at run time), table-driven slice-by-8 otherwise.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef BTRSYNC_SOURCE_SHA256 /* setup.py passes the SHA-256 of this file */
#define BTRSYNC_SOURCE_SHA256 "unknown"
#endif

/* BTRSYNC_NO_HW_CRC: build the portable code only (the tests compile it that way too) */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(BTRSYNC_NO_HW_CRC)
#define HAVE_X86_CRC 1
#include <nmmintrin.h>
#endif

/* ---------------------------------------------------------------------------------------------
 * CRC32C (Castagnoli, reflected polynomial 0x82f63b78), raw register update: no pre/post
 * inversion, as the kernel's crc32c(0, ...) that send streams use.
 */

#define POLY 0x82f63b78u

static uint32_t crc_table[8][256];

static void crc_init_tables(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = crc_table[0][c & 0xff] ^ (c >> 8);
            crc_table[k][n] = c;
        }
    }
}

static uint32_t crc32c_sw(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        /* byte-wise composition: endian-neutral, a single load on little-endian hosts */
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#ifdef HAVE_X86_CRC

/* Three independent crc32 streams hide the instruction's 3-cycle latency; the partial CRCs are
 * combined by "appending zeros" to the earlier one, a linear operator kept as 4 x 256 tables. */
#define LONG_BLOCK 8192
#define SHORT_BLOCK 256

static uint32_t crc_long[4][256];
static uint32_t crc_short[4][256];

static uint32_t gf2_matrix_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    while (vec) {
        if (vec & 1)
            sum ^= *mat;
        vec >>= 1;
        mat++;
    }
    return sum;
}

static void gf2_matrix_square(uint32_t *square, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        square[n] = gf2_matrix_times(mat, mat[n]);
}

/* The operator that appends len zero bytes to a CRC register; len is a power of two. */
static void crc_zeros_op(uint32_t *even, size_t len)
{
    uint32_t odd[32];
    uint32_t row = 1;

    odd[0] = POLY; /* one zero bit */
    for (int n = 1; n < 32; n++) {
        odd[n] = row;
        row <<= 1;
    }
    gf2_matrix_square(even, odd); /* two zero bits */
    gf2_matrix_square(odd, even); /* four zero bits */
    do {
        gf2_matrix_square(even, odd); /* first pass: one zero byte */
        len >>= 1;
        if (len == 0)
            return;
        gf2_matrix_square(odd, even);
        len >>= 1;
    } while (len);
    memcpy(even, odd, sizeof(odd));
}

static void crc_zeros_tables(uint32_t zeros[4][256], size_t len)
{
    uint32_t op[32];

    crc_zeros_op(op, len);
    for (uint32_t n = 0; n < 256; n++) {
        zeros[0][n] = gf2_matrix_times(op, n);
        zeros[1][n] = gf2_matrix_times(op, n << 8);
        zeros[2][n] = gf2_matrix_times(op, n << 16);
        zeros[3][n] = gf2_matrix_times(op, n << 24);
    }
}

static inline uint32_t crc_shift(uint32_t zeros[4][256], uint32_t crc)
{
    return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^ zeros[2][(crc >> 16) & 0xff] ^
           zeros[3][crc >> 24];
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p,
                                                            size_t n)
{
    uint64_t c0 = crc, c1, c2, a, b, d;

    while (n && ((uintptr_t)p & 7)) {
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
        n--;
    }
    while (n >= 3 * LONG_BLOCK) {
        const unsigned char *end = p + LONG_BLOCK;
        c1 = c2 = 0;
        do {
            memcpy(&a, p, 8);
            memcpy(&b, p + LONG_BLOCK, 8);
            memcpy(&d, p + 2 * LONG_BLOCK, 8);
            c0 = _mm_crc32_u64(c0, a);
            c1 = _mm_crc32_u64(c1, b);
            c2 = _mm_crc32_u64(c2, d);
            p += 8;
        } while (p < end);
        c0 = crc_shift(crc_long, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = crc_shift(crc_long, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * LONG_BLOCK;
        n -= 3 * LONG_BLOCK;
    }
    while (n >= 3 * SHORT_BLOCK) {
        const unsigned char *end = p + SHORT_BLOCK;
        c1 = c2 = 0;
        do {
            memcpy(&a, p, 8);
            memcpy(&b, p + SHORT_BLOCK, 8);
            memcpy(&d, p + 2 * SHORT_BLOCK, 8);
            c0 = _mm_crc32_u64(c0, a);
            c1 = _mm_crc32_u64(c1, b);
            c2 = _mm_crc32_u64(c2, d);
            p += 8;
        } while (p < end);
        c0 = crc_shift(crc_short, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = crc_shift(crc_short, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * SHORT_BLOCK;
        n -= 3 * SHORT_BLOCK;
    }
    while (n >= 8) {
        memcpy(&a, p, 8);
        c0 = _mm_crc32_u64(c0, a);
        p += 8;
        n -= 8;
    }
    while (n) {
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
        n--;
    }
    return (uint32_t)c0;
}

static int cpu_has_sse42(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") != 0;
}
#endif /* HAVE_X86_CRC */

typedef uint32_t (*crc_fn)(uint32_t, const unsigned char *, size_t);
static crc_fn crc32c = crc32c_sw;
static int crc_hw_available = 0;

/* ---------------------------------------------------------------------------------------------
 * The format (mirrors btrsync/sendstream/format.py)
 */

static const unsigned char MAGIC[13] = "btrfs-stream";  /* + the terminating NUL */
#define STREAM_HEADER_SIZE 17
#define CMD_HEADER_SIZE 10
#define MAX_VERSION 3
#define MAX_CMD_V1 65536u
#define MAX_BODY_V2 (16u * 1024 * 1024)
#define MAX_CMD 26
#define MAX_ATTR 35
#define CMD_SUBVOL 1
#define CMD_SNAPSHOT 2
#define CMD_END 21
#define A_PATH 15
#define A_DATA 19

enum kind { K_U8, K_U32, K_U64, K_UUID, K_TIMESPEC, K_STRING, K_BINARY, K_DATA };
static const uint32_t KIND_SIZE[] = {1, 4, 8, 16, 12, 0, 0, 0};
static const char *const KIND_NAME[] = {"u8", "u32", "u64", "uuid", "timespec", "string",
                                        "binary", "data"};

struct cmd_def {
    const char *name;
    int version;
    int required[8]; /* attribute numbers, 0-terminated, in the order btrfs receive asks */
};

static const struct cmd_def CMDS[MAX_CMD + 1] = {
    [1] = {"subvol", 1, {15, 1, 2}},
    [2] = {"snapshot", 1, {15, 1, 2, 20, 21}},
    [3] = {"mkfile", 1, {15, 3}},
    [4] = {"mkdir", 1, {15, 3}},
    [5] = {"mknod", 1, {15, 3, 5, 8}},
    [6] = {"mkfifo", 1, {15, 3}},
    [7] = {"mksock", 1, {15, 3}},
    [8] = {"symlink", 1, {15, 3, 17}},
    [9] = {"rename", 1, {15, 16}},
    [10] = {"link", 1, {15, 17}},
    [11] = {"unlink", 1, {15}},
    [12] = {"rmdir", 1, {15}},
    [13] = {"set_xattr", 1, {15, 13, 14}},
    [14] = {"remove_xattr", 1, {15, 13}},
    [15] = {"write", 1, {15, 18, 19}},
    [16] = {"clone", 1, {15, 18, 24, 20, 21, 22, 23}},
    [17] = {"truncate", 1, {15, 4}},
    [18] = {"chmod", 1, {15, 5}},
    [19] = {"chown", 1, {15, 6, 7}},
    [20] = {"utimes", 1, {15, 11, 10, 9}},
    [21] = {"end", 1, {0}},
    [22] = {"update_extent", 1, {15, 18, 4}},
    [23] = {"fallocate", 2, {15, 25, 18, 4}},
    [24] = {"fileattr", 2, {15, 26}},
    [25] = {"encoded_write", 2, {15, 18, 27, 28, 29, 19}},
    [26] = {"enable_verity", 3, {15, 32, 33, 34, 35}},
};

struct attr_def {
    const char *name;
    enum kind kind;
    int version;
};

static const struct attr_def ATTRS[MAX_ATTR + 1] = {
    [1] = {"uuid", K_UUID, 1},
    [2] = {"ctransid", K_U64, 1},
    [3] = {"ino", K_U64, 1},
    [4] = {"size", K_U64, 1},
    [5] = {"mode", K_U64, 1},
    [6] = {"uid", K_U64, 1},
    [7] = {"gid", K_U64, 1},
    [8] = {"rdev", K_U64, 1},
    [9] = {"ctime", K_TIMESPEC, 1},
    [10] = {"mtime", K_TIMESPEC, 1},
    [11] = {"atime", K_TIMESPEC, 1},
    [12] = {"otime", K_TIMESPEC, 1},
    [13] = {"xattr_name", K_STRING, 1},
    [14] = {"xattr_data", K_BINARY, 1},
    [15] = {"path", K_STRING, 1},
    [16] = {"path_to", K_STRING, 1},
    [17] = {"path_link", K_STRING, 1},
    [18] = {"file_offset", K_U64, 1},
    [19] = {"data", K_DATA, 1},
    [20] = {"clone_uuid", K_UUID, 1},
    [21] = {"clone_ctransid", K_U64, 1},
    [22] = {"clone_path", K_STRING, 1},
    [23] = {"clone_offset", K_U64, 1},
    [24] = {"clone_len", K_U64, 1},
    [25] = {"fallocate_mode", K_U32, 2},
    [26] = {"fileattr", K_U64, 2},
    [27] = {"unencoded_file_len", K_U64, 2},
    [28] = {"unencoded_len", K_U64, 2},
    [29] = {"unencoded_offset", K_U64, 2},
    [30] = {"compression", K_U32, 2},
    [31] = {"encryption", K_U32, 2},
    [32] = {"verity_algorithm", K_U8, 3},
    [33] = {"verity_block_size", K_U32, 3},
    [34] = {"verity_salt_data", K_BINARY, 3},
    [35] = {"verity_sig_data", K_BINARY, 3},
};

static PyObject *cmd_names[MAX_CMD + 1];   /* interned */
static PyObject *attr_names[MAX_ATTR + 1]; /* interned */
static PyObject *s_data_offset, *s_data_len;
static PyObject *StreamError;              /* btrsync.sendstream.format.StreamError */
static PyTypeObject *EventType;

static PyStructSequence_Field event_fields[] = {
    {"cmd", "command name"},
    {"path", "the PATH attribute, or None"},
    {"attrs", "the other attributes by name"},
    {"offset", "byte offset of the command in the stream"},
    {"size", "bytes of the command, header included"},
    {NULL, NULL},
};

static PyStructSequence_Desc event_desc = {
    "btrsync.sendstream._native.Event",
    "One checked command of a send stream: (cmd, path, attrs, offset, size).",
    event_fields,
    5,
};

static inline uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

static inline uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* ---------------------------------------------------------------------------------------------
 * The parser
 */

enum { S_MAGIC, S_CMDHDR, S_BODY, S_END };
enum { T_TYPE, T_LEN, T_VALUE, T_SKIP };
#define ERRLEN 200
#define RELEASE_GIL_AT 65536

typedef struct {
    PyObject_HEAD
    int state;
    int busy;
    uint32_t version;
    uint64_t pos;      /* stream offset of the next byte to consume */
    uint64_t commands; /* commands checked and reported */
    unsigned char hdr[STREAM_HEADER_SIZE];
    uint32_t hdr_have;

    /* the current command */
    uint64_t cmd_off;
    uint32_t cmd_len, body_left, crc_stored, crc;
    uint16_t cmd;

    /* its attributes */
    int tstate;
    unsigned char th[4];
    uint32_t th_have;
    uint64_t tlv_off;
    uint16_t ttype;
    uint32_t tleft;
    uint8_t present[MAX_ATTR + 1];
    uint32_t a_off[MAX_ATTR + 1], a_len[MAX_ATTR + 1]; /* values in abuf */
    uint64_t data_pos;
    uint32_t data_len;
    unsigned char *abuf;
    size_t abuf_len, abuf_cap;

    /* the first problem in the current command: reported once its CRC is known to be right */
    int perr;
    uint64_t perr_off;
    char perr_msg[ERRLEN];

    /* a parser that failed stays failed */
    int failed;
    uint64_t fail_off;
    char fail_msg[ERRLEN];
} Parser;

#define STREAM_FAIL (-1) /* a stream error: s->failed is set */
#define PY_FAIL (-2)     /* a Python exception is set */

static int fail(Parser *s, uint64_t off, const char *fmt, ...)
{
    va_list ap;

    s->failed = 1;
    s->fail_off = off;
    va_start(ap, fmt);
    vsnprintf(s->fail_msg, ERRLEN, fmt, ap);
    va_end(ap);
    return STREAM_FAIL;
}

static void problem(Parser *s, uint64_t off, const char *fmt, ...)
{
    va_list ap;

    if (!s->perr) {
        s->perr = 1;
        s->perr_off = off;
        va_start(ap, fmt);
        vsnprintf(s->perr_msg, ERRLEN, fmt, ap);
        va_end(ap);
    }
    s->tstate = T_SKIP;
}

static int abuf_reserve(Parser *s, size_t extra)
{
    size_t need = s->abuf_len + extra;
    if (need <= s->abuf_cap)
        return 0;
    size_t cap = s->abuf_cap ? s->abuf_cap : 4096;
    while (cap < need)
        cap *= 2;
    unsigned char *nb = realloc(s->abuf, cap);
    if (!nb) {
        PyErr_NoMemory();
        return PY_FAIL;
    }
    s->abuf = nb;
    s->abuf_cap = cap;
    return 0;
}

/* A type (and, for all but v2+ DATA, a length) is known: check it and start the value. */
static int begin_value(Parser *s, uint32_t tlen, uint64_t value_pos)
{
    uint16_t t = s->ttype;
    const struct attr_def *a = &ATTRS[t];

    if (a->kind == K_DATA) {
        s->data_pos = value_pos;
        s->data_len = tlen;
    } else {
        if (KIND_SIZE[a->kind] && tlen != KIND_SIZE[a->kind]) {
            problem(s, s->tlv_off, "attribute %s has %u bytes, expected %u", a->name, tlen,
                    KIND_SIZE[a->kind]);
            return 0;
        }
        if (abuf_reserve(s, tlen) < 0)
            return PY_FAIL;
        s->a_off[t] = (uint32_t)s->abuf_len;
        s->a_len[t] = tlen;
    }
    s->tleft = tlen;
    s->th_have = 0;
    if (tlen == 0) {
        s->present[t] = 1;
        s->tstate = T_TYPE;
    } else {
        s->tstate = T_VALUE;
    }
    return 0;
}

/* Walk the attributes in p[0..m), the next m body bytes; rem body bytes remain from p[0] on,
 * base is the stream offset of p[0]. Problems are recorded, not raised (the CRC comes first). */
static int walk_attrs(Parser *s, const unsigned char *p, size_t m, uint64_t base, uint32_t rem)
{
    size_t j = 0;

    while (j < m) {
        switch (s->tstate) {
        case T_SKIP:
            return 0;
        case T_TYPE: {
            if (s->th_have == 0) {
                s->tlv_off = base + j;
                if (rem - j < 2) {
                    problem(s, s->tlv_off, "attribute header cut by the end of the command");
                    return 0;
                }
            }
            s->th[s->th_have++] = p[j++];
            if (s->th_have < 2)
                break;
            uint16_t t = le16(s->th);
            uint32_t after = rem - (uint32_t)j; /* body bytes after the type */
            if (t == 0 || t > MAX_ATTR) {
                problem(s, s->tlv_off, "unknown attribute type %u", (unsigned)t);
                return 0;
            }
            if ((uint32_t)ATTRS[t].version > s->version) {
                problem(s, s->tlv_off, "attribute %s is not defined in version %u", ATTRS[t].name,
                        s->version);
                return 0;
            }
            if (s->present[t]) {
                problem(s, s->tlv_off, "duplicate attribute %s", ATTRS[t].name);
                return 0;
            }
            s->ttype = t;
            if (t == A_DATA && s->version >= 2) {
                if (begin_value(s, after, base + j) < 0)
                    return PY_FAIL;
            } else if (after < 2) {
                problem(s, s->tlv_off, "attribute header cut by the end of the command");
                return 0;
            } else {
                s->tstate = T_LEN;
            }
            break;
        }
        case T_LEN: {
            s->th[s->th_have++] = p[j++];
            if (s->th_have < 4)
                break;
            uint32_t tlen = le16(s->th + 2);
            uint32_t after = rem - (uint32_t)j;
            if (tlen > after) {
                problem(s, s->tlv_off, "attribute %s of %u bytes overruns the command (%u bytes left)",
                        ATTRS[s->ttype].name, tlen, after);
                return 0;
            }
            if (begin_value(s, tlen, base + j) < 0)
                return PY_FAIL;
            break;
        }
        case T_VALUE: {
            size_t k = m - j < s->tleft ? m - j : s->tleft;
            if (ATTRS[s->ttype].kind != K_DATA) {
                memcpy(s->abuf + s->abuf_len, p + j, k);
                s->abuf_len += k;
            }
            j += k;
            s->tleft -= (uint32_t)k;
            if (s->tleft == 0) {
                s->present[s->ttype] = 1;
                s->tstate = T_TYPE;
                s->th_have = 0;
            }
            break;
        }
        }
    }
    return 0;
}

static PyObject *decode_attr(Parser *s, int t)
{
    const unsigned char *v = s->abuf + s->a_off[t];
    uint32_t n = s->a_len[t];

    switch (ATTRS[t].kind) {
    case K_U8:
        return PyLong_FromUnsignedLong(v[0]);
    case K_U32:
        return PyLong_FromUnsignedLong(le32(v));
    case K_U64:
        return PyLong_FromUnsignedLongLong(le64(v));
    case K_UUID: {
        static const char hex[] = "0123456789abcdef";
        char out[36];
        int o = 0;
        for (int i = 0; i < 16; i++) {
            if (i == 4 || i == 6 || i == 8 || i == 10)
                out[o++] = '-';
            out[o++] = hex[v[i] >> 4];
            out[o++] = hex[v[i] & 15];
        }
        return PyUnicode_FromStringAndSize(out, 36);
    }
    case K_TIMESPEC: {
        PyObject *sec = PyLong_FromLongLong((long long)(int64_t)le64(v));
        PyObject *nsec = sec ? PyLong_FromUnsignedLong(le32(v + 8)) : NULL;
        PyObject *r = nsec ? PyTuple_Pack(2, sec, nsec) : NULL;
        Py_XDECREF(sec);
        Py_XDECREF(nsec);
        return r;
    }
    case K_STRING:
        return PyUnicode_DecodeUTF8((const char *)v, n, "surrogateescape");
    case K_BINARY:
        return PyBytes_FromStringAndSize((const char *)v, n);
    case K_DATA:
        break;
    }
    PyErr_SetString(PyExc_SystemError, "bad attribute kind");
    return NULL;
}

static int set_new(PyObject *d, PyObject *k, PyObject *v)
{
    if (!v)
        return -1;
    int r = PyDict_SetItem(d, k, v);
    Py_DECREF(v);
    return r;
}

static PyObject *make_event(Parser *s)
{
    PyObject *attrs = PyDict_New(), *path = NULL, *ev = NULL, *tmp;

    if (!attrs)
        return NULL;
    for (int t = 1; t <= MAX_ATTR; t++) {
        if (!s->present[t] || t == A_PATH)
            continue;
        if (ATTRS[t].kind == K_DATA) {
            if (set_new(attrs, s_data_offset, PyLong_FromUnsignedLongLong(s->data_pos)) < 0 ||
                set_new(attrs, s_data_len, PyLong_FromUnsignedLong(s->data_len)) < 0)
                goto error;
        } else if (set_new(attrs, attr_names[t], decode_attr(s, t)) < 0) {
            goto error;
        }
    }
    if (s->present[A_PATH]) {
        path = decode_attr(s, A_PATH);
        if (!path)
            goto error;
    } else {
        path = Py_NewRef(Py_None);
    }
    ev = PyStructSequence_New(EventType);
    if (!ev)
        goto error;
    PyStructSequence_SetItem(ev, 0, Py_NewRef(cmd_names[s->cmd]));
    PyStructSequence_SetItem(ev, 1, path);
    PyStructSequence_SetItem(ev, 2, attrs);
    if (!(tmp = PyLong_FromUnsignedLongLong(s->cmd_off))) {
        Py_DECREF(ev);
        return NULL;
    }
    PyStructSequence_SetItem(ev, 3, tmp);
    if (!(tmp = PyLong_FromUnsignedLong(CMD_HEADER_SIZE + s->cmd_len))) {
        Py_DECREF(ev);
        return NULL;
    }
    PyStructSequence_SetItem(ev, 4, tmp);
    return ev;

error:
    Py_DECREF(attrs);
    Py_XDECREF(path);
    return NULL;
}

/* The body of the current command is complete. */
static int end_command(Parser *s, PyObject *events)
{
    if (s->crc != s->crc_stored)
        return fail(s, s->cmd_off, "CRC32C mismatch (stored 0x%08x, computed 0x%08x)",
                    s->crc_stored, s->crc);
    if (s->perr)
        return fail(s, s->perr_off, "%s", s->perr_msg);
    const struct cmd_def *c = &CMDS[s->cmd];
    for (int i = 0; c->required[i]; i++) {
        if (!s->present[c->required[i]])
            return fail(s, s->cmd_off, "%s command lacks the %s attribute", c->name,
                        ATTRS[c->required[i]].name);
    }
    if (s->commands == 0 && s->cmd != CMD_SUBVOL && s->cmd != CMD_SNAPSHOT)
        return fail(s, s->cmd_off, "stream starts with %s, not subvol or snapshot", c->name);
    PyObject *ev = make_event(s);
    if (!ev)
        return PY_FAIL;
    int r = PyList_Append(events, ev);
    Py_DECREF(ev);
    if (r < 0)
        return PY_FAIL;
    s->commands++;
    s->state = s->cmd == CMD_END ? S_END : S_CMDHDR;
    s->hdr_have = 0;
    return 0;
}

static int begin_command(Parser *s, PyObject *events)
{
    uint32_t len = le32(s->hdr);
    uint16_t cmd = le16(s->hdr + 4);
    uint32_t limit = s->version == 1 ? MAX_CMD_V1 - CMD_HEADER_SIZE : MAX_BODY_V2;

    if (len > limit)
        return fail(s, s->cmd_off, "command length %u exceeds the limit of %u bytes", len, limit);
    s->cmd = cmd;
    s->cmd_len = s->body_left = len;
    s->crc_stored = le32(s->hdr + 6);
    memset(s->hdr + 6, 0, 4);
    s->crc = crc32c(0, s->hdr, CMD_HEADER_SIZE);
    s->perr = 0;
    memset(s->present, 0, sizeof(s->present));
    s->abuf_len = 0;
    s->tstate = T_TYPE;
    s->th_have = 0;
    if (cmd == 0 || cmd > MAX_CMD)
        problem(s, s->cmd_off, "unknown command type %u", (unsigned)cmd);
    else if ((uint32_t)CMDS[cmd].version > s->version)
        problem(s, s->cmd_off, "command %s is not defined in version %u", CMDS[cmd].name,
                s->version);
    if (len == 0)
        return end_command(s, events);
    s->state = S_BODY;
    return 0;
}

static int consume(Parser *s, const unsigned char *p, size_t n, PyObject *events)
{
    size_t i = 0;
    int r;

    while (i < n) {
        switch (s->state) {
        case S_MAGIC:
            while (i < n && s->hdr_have < STREAM_HEADER_SIZE) {
                unsigned char b = p[i++];
                s->pos++;
                if (s->hdr_have < sizeof(MAGIC) && b != MAGIC[s->hdr_have])
                    return fail(s, 0, "not a btrfs send stream (bad magic)");
                s->hdr[s->hdr_have++] = b;
            }
            if (s->hdr_have == STREAM_HEADER_SIZE) {
                uint32_t v = le32(s->hdr + sizeof(MAGIC));
                if (v < 1 || v > MAX_VERSION)
                    return fail(s, sizeof(MAGIC), "unsupported send stream version %u", v);
                s->version = v;
                s->state = S_CMDHDR;
                s->hdr_have = 0;
            }
            break;
        case S_CMDHDR: {
            if (s->hdr_have == 0)
                s->cmd_off = s->pos;
            size_t k = CMD_HEADER_SIZE - s->hdr_have;
            if (k > n - i)
                k = n - i;
            memcpy(s->hdr + s->hdr_have, p + i, k);
            s->hdr_have += (uint32_t)k;
            i += k;
            s->pos += k;
            if (s->hdr_have == CMD_HEADER_SIZE && (r = begin_command(s, events)) < 0)
                return r;
            break;
        }
        case S_BODY: {
            size_t m = n - i < s->body_left ? n - i : s->body_left;
            if (m >= RELEASE_GIL_AT) {
                uint32_t crc = s->crc;
                Py_BEGIN_ALLOW_THREADS
                crc = crc32c(crc, p + i, m);
                Py_END_ALLOW_THREADS
                s->crc = crc;
            } else {
                s->crc = crc32c(s->crc, p + i, m);
            }
            if (s->tstate != T_SKIP && (r = walk_attrs(s, p + i, m, s->pos, s->body_left)) < 0)
                return r;
            i += m;
            s->pos += m;
            s->body_left -= (uint32_t)m;
            if (s->body_left == 0 && (r = end_command(s, events)) < 0)
                return r;
            break;
        }
        case S_END:
            return fail(s, s->pos, "data after the end command");
        }
    }
    return 0;
}

static PyObject *raise_failure(Parser *s, PyObject *events)
{
    PyObject *exc = events ? PyObject_CallFunction(StreamError, "sKO", s->fail_msg,
                                                   (unsigned long long)s->fail_off, events)
                           : PyObject_CallFunction(StreamError, "sK", s->fail_msg,
                                                   (unsigned long long)s->fail_off);
    if (exc) {
        PyErr_SetObject(StreamError, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *Parser_feed(Parser *s, PyObject *arg)
{
    Py_buffer view;
    PyObject *events;
    int r;

    if (s->failed)
        return raise_failure(s, NULL);
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "StreamParser.feed called while another feed runs");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    events = PyList_New(0);
    if (!events) {
        PyBuffer_Release(&view);
        return NULL;
    }
    s->busy = 1;
    r = consume(s, (const unsigned char *)view.buf, (size_t)view.len, events);
    s->busy = 0;
    PyBuffer_Release(&view);
    if (r == STREAM_FAIL) {
        raise_failure(s, events);
        Py_DECREF(events);
        return NULL;
    }
    if (r == PY_FAIL) {
        if (!s->failed)
            fail(s, s->pos, "parser aborted by a Python error");
        Py_DECREF(events);
        return NULL;
    }
    return events;
}

static PyObject *Parser_finish(Parser *s, PyObject *Py_UNUSED(ignored))
{
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "StreamParser.finish called while a feed runs");
        return NULL;
    }
    if (s->failed)
        return raise_failure(s, NULL);
    switch (s->state) {
    case S_MAGIC:
        if (s->pos == 0)
            fail(s, 0, "empty stream");
        else
            fail(s, s->pos, "stream ends inside the stream header");
        break;
    case S_CMDHDR:
        if (s->hdr_have)
            fail(s, s->pos, "stream ends inside a command header");
        else
            fail(s, s->pos, "stream ends without an end command");
        break;
    case S_BODY:
        fail(s, s->pos, "stream ends inside a command (%u of %u bytes)",
             CMD_HEADER_SIZE + s->cmd_len - s->body_left, CMD_HEADER_SIZE + s->cmd_len);
        break;
    case S_END:
        Py_RETURN_NONE;
    }
    return raise_failure(s, NULL);
}

static int Parser_init(Parser *s, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":StreamParser", kwlist))
        return -1;
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "StreamParser re-initialised while a feed runs");
        return -1;
    }
    free(s->abuf);
    memset((char *)s + sizeof(PyObject), 0, sizeof(Parser) - sizeof(PyObject));
    return 0;
}

static void Parser_dealloc(Parser *s)
{
    free(s->abuf);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *Parser_get_version(Parser *s, void *c) { return PyLong_FromUnsignedLong(s->version); }
static PyObject *Parser_get_commands(Parser *s, void *c) { return PyLong_FromUnsignedLongLong(s->commands); }
static PyObject *Parser_get_bytes(Parser *s, void *c) { return PyLong_FromUnsignedLongLong(s->pos); }
static PyObject *Parser_get_ended(Parser *s, void *c) { return PyBool_FromLong(s->state == S_END && !s->failed); }

static PyGetSetDef Parser_getset[] = {
    {"version", (getter)Parser_get_version, NULL, "stream version (0 until the header is read)", NULL},
    {"commands", (getter)Parser_get_commands, NULL, "commands checked and reported", NULL},
    {"bytes", (getter)Parser_get_bytes, NULL, "bytes consumed", NULL},
    {"ended", (getter)Parser_get_ended, NULL, "the END command was seen", NULL},
    {NULL},
};

static PyMethodDef Parser_methods[] = {
    {"feed", (PyCFunction)Parser_feed, METH_O,
     "feed(chunk) -> list of events completed by this chunk; raises StreamError."},
    {"finish", (PyCFunction)Parser_finish, METH_NOARGS,
     "finish(): raise StreamError unless the stream ended with END and nothing after it."},
    {NULL},
};

static PyTypeObject ParserType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "btrsync.sendstream._native.StreamParser",
    .tp_basicsize = sizeof(Parser),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "StreamParser(): incremental, validating btrfs send-stream parser (C).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Parser_init,
    .tp_dealloc = (destructor)Parser_dealloc,
    .tp_methods = Parser_methods,
    .tp_getset = Parser_getset,
};

/* ---------------------------------------------------------------------------------------------
 * Module functions
 */

static PyObject *crc_call(crc_fn fn, PyObject *args)
{
    Py_buffer view;
    unsigned int crc = 0;
    uint32_t r;

    if (!PyArg_ParseTuple(args, "y*|I", &view, &crc))
        return NULL;
    if (view.len >= RELEASE_GIL_AT) {
        Py_BEGIN_ALLOW_THREADS
        r = fn(crc, view.buf, (size_t)view.len);
        Py_END_ALLOW_THREADS
    } else {
        r = fn(crc, view.buf, (size_t)view.len);
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(r);
}

static PyObject *mod_crc32c(PyObject *m, PyObject *args) { return crc_call(crc32c, args); }
static PyObject *mod_crc32c_sw(PyObject *m, PyObject *args) { return crc_call(crc32c_sw, args); }

static PyObject *mod_crc32c_hw(PyObject *m, PyObject *args)
{
#ifdef HAVE_X86_CRC
    if (crc_hw_available)
        return crc_call(crc32c_hw, args);
#endif
    PyErr_SetString(PyExc_RuntimeError, "this CPU has no CRC32C instruction");
    return NULL;
}

static PyObject *mod_crc32c_impl(PyObject *m, PyObject *noargs)
{
    return PyUnicode_FromString(crc32c == crc32c_sw ? "slice-by-8" : "sse4.2");
}

static PyObject *mod_use_hardware_crc(PyObject *m, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    if (on && !crc_hw_available) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no CRC32C instruction");
        return NULL;
    }
#ifdef HAVE_X86_CRC
    crc32c = on ? crc32c_hw : crc32c_sw;
#endif
    Py_RETURN_NONE;
}

static PyObject *mod_tables(PyObject *m, PyObject *noargs)
{
    PyObject *cmds = PyDict_New(), *attrs = PyDict_New(), *req = PyDict_New();
    if (!cmds || !attrs || !req)
        goto error;
    for (int c = 1; c <= MAX_CMD; c++) {
        PyObject *r = PyTuple_New(0), *k = PyLong_FromLong(c), *v;
        for (int i = 0; r && CMDS[c].required[i]; i++) {
            PyObject *a = PyLong_FromLong(CMDS[c].required[i]);
            if (!a || _PyTuple_Resize(&r, i + 1) < 0) {
                Py_XDECREF(a);
                Py_CLEAR(r);
                break;
            }
            PyTuple_SET_ITEM(r, i, a);
        }
        v = Py_BuildValue("(si)", CMDS[c].name, CMDS[c].version);
        int bad = !r || !k || !v || PyDict_SetItem(cmds, k, v) < 0 || PyDict_SetItem(req, k, r) < 0;
        Py_XDECREF(r);
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad)
            goto error;
    }
    for (int a = 1; a <= MAX_ATTR; a++) {
        PyObject *k = PyLong_FromLong(a);
        PyObject *v = Py_BuildValue("(ssi)", ATTRS[a].name, KIND_NAME[ATTRS[a].kind], ATTRS[a].version);
        int bad = !k || !v || PyDict_SetItem(attrs, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad)
            goto error;
    }
    return Py_BuildValue("{sNsNsNsIsI}", "commands", cmds, "attributes", attrs, "required", req,
                         "max_cmd_v1", MAX_CMD_V1, "max_body_v2", MAX_BODY_V2);
error:
    Py_XDECREF(cmds);
    Py_XDECREF(attrs);
    Py_XDECREF(req);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"crc32c", mod_crc32c, METH_VARARGS,
     "crc32c(data, crc=0) -> raw CRC32C register update (no inversion), as send streams use."},
    {"crc32c_sw", mod_crc32c_sw, METH_VARARGS, "crc32c with the slice-by-8 tables."},
    {"crc32c_hw", mod_crc32c_hw, METH_VARARGS, "crc32c with the SSE4.2 instruction."},
    {"crc32c_implementation", mod_crc32c_impl, METH_NOARGS, "'sse4.2' or 'slice-by-8'."},
    {"use_hardware_crc", mod_use_hardware_crc, METH_O,
     "use_hardware_crc(bool): switch the CRC32C implementation (tests, benchmarks)."},
    {"tables", mod_tables, METH_NOARGS, "The command and attribute tables compiled in."},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "btrsync.sendstream._native",
    "C implementation of btrsync.sendstream's StreamParser and CRC32C.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = NULL, *fmt = NULL;

    crc_init_tables();
#ifdef HAVE_X86_CRC
    crc_zeros_tables(crc_long, LONG_BLOCK);
    crc_zeros_tables(crc_short, SHORT_BLOCK);
    crc_hw_available = cpu_has_sse42();
    if (crc_hw_available)
        crc32c = crc32c_hw;
#endif
    fmt = PyImport_ImportModule("btrsync.sendstream.format");
    if (!fmt)
        return NULL;
    StreamError = PyObject_GetAttrString(fmt, "StreamError");
    Py_DECREF(fmt);
    if (!StreamError)
        return NULL;
    for (int c = 1; c <= MAX_CMD; c++)
        if (!(cmd_names[c] = PyUnicode_InternFromString(CMDS[c].name)))
            return NULL;
    for (int a = 1; a <= MAX_ATTR; a++)
        if (!(attr_names[a] = PyUnicode_InternFromString(ATTRS[a].name)))
            return NULL;
    if (!(s_data_offset = PyUnicode_InternFromString("data_offset")) ||
        !(s_data_len = PyUnicode_InternFromString("data_len")))
        return NULL;
    if (!(EventType = PyStructSequence_NewType(&event_desc)))
        return NULL;
    if (PyType_Ready(&ParserType) < 0)
        return NULL;
    if (!(m = PyModule_Create(&moduledef)))
        return NULL;
    Py_INCREF(&ParserType);
    if (PyModule_AddObject(m, "StreamParser", (PyObject *)&ParserType) < 0)
        goto error;
    Py_INCREF(EventType);
    if (PyModule_AddObject(m, "Event", (PyObject *)EventType) < 0)
        goto error;
    Py_INCREF(StreamError);
    if (PyModule_AddObject(m, "StreamError", StreamError) < 0)
        goto error;
    if (PyModule_AddIntConstant(m, "crc32c_hardware_available", crc_hw_available) < 0)
        goto error;
    if (PyModule_AddStringConstant(m, "SOURCE_SHA256", BTRSYNC_SOURCE_SHA256) < 0)
        goto error;
    return m;
error:
    Py_DECREF(m);
    return NULL;
}
