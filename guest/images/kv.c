/*
 * kv: a key-value server speaking the Redis protocol (RESP2), for stock
 * redis-cli and redis-benchmark. lwIP raw TCP API on the polling virtio-net
 * driver, all on vCPU 0; other vCPUs halt.
 *
 * Commands: PING [msg], ECHO, SET key value (no options), GET, DEL key...,
 * EXISTS key..., INCR, DBSIZE, FLUSHALL [ASYNC|SYNC], QUIT, SELFCHECK (a check
 * of its own data structures, below), and what the
 * clients ask at start: CONFIG GET (save "" and appendonly "no", nothing
 * else) for redis-benchmark, COMMAND (an empty array) for redis-cli. Requests come as multibulk or inline (space-separated) commands,
 * pipelined or split across segments.
 *
 * Memory: keys and values live in a data arena (kv.mem=, 64 MiB), connection
 * buffers in a second one (kv.connmem=, 32 MiB), both carved from RAM above
 * the image. Blocks come in power-of-two sizes with per-size free lists, so
 * an entry can take up to twice its size; a full data arena answers
 * "-ERR out of memory". A bulk argument is at most 1 MiB, a command at most
 * 4096 arguments and 4 MiB; beyond that the reply is a protocol error and the
 * connection is closed, as Redis does.
 *
 * Flow control: replies are queued per connection and handed to lwIP as its
 * send buffer allows (resumed from the sent callback). While a connection has
 * more than OUT_HIGH bytes of replies queued, its input is not parsed and its
 * receive window is not reopened, so a pipelining client cannot make the
 * queue grow without bound.
 *
 * Keys: net.ip=, net.gw= (see net/net.h), kv.port= (6379), kv.mem=, kv.connmem=.
 */
#include "us/guest.h"
#include "net.h"
#include "lwip/ip4_addr.h"
#include "lwip/netif.h"
#include "lwip/tcp.h"

#define BULK_MAX (1u << 20)
#define ARGS_MAX 4096u
#define CMD_MAX (4u << 20)
#define INLINE_MAX (64u << 10)
#define OUT_HIGH (256u << 10)
#define BUF_MIN 4096u
#define BUF_KEEP (64u << 10) /* larger idle buffers are given back */
#define MAX_CONNS MEMP_NUM_TCP_PCB

/* ---- arenas: power-of-two blocks, one free list per size ---- */

#define CLASS_MIN 5  /* 32 bytes */
#define CLASS_MAX 24 /* 16 MiB */

struct arena {
    uint8_t *start, *bump, *end;
    void *free[CLASS_MAX + 1];
};

struct block {
    uint64_t class;
    uint8_t data[]; /* 8-byte aligned */
};

static void *arena_alloc(struct arena *a, size_t n, size_t *usable)
{
    unsigned k = CLASS_MIN;
    while (k <= CLASS_MAX && (1ull << k) - sizeof(struct block) < n)
        k++;
    if (k > CLASS_MAX)
        return NULL;
    struct block *b = a->free[k];
    if (b) {
        a->free[k] = *(void **)b->data;
    } else {
        if ((uint64_t)(a->end - a->bump) < (1ull << k))
            return NULL;
        b = (struct block *)a->bump;
        a->bump += 1ull << k;
    }
    b->class = k;
    if (usable)
        *usable = (1ull << k) - sizeof(struct block);
    return b->data;
}

static void arena_free(struct arena *a, void *p)
{
    if (!p)
        return;
    struct block *b = (struct block *)((uint8_t *)p - sizeof(struct block));
    *(void **)b->data = a->free[b->class];
    a->free[b->class] = b;
}

static void arena_init(struct arena *a, uint64_t base, uint64_t size)
{
    *a = (struct arena){.start = (uint8_t *)(uintptr_t)base, .bump = (uint8_t *)(uintptr_t)base,
                        .end = (uint8_t *)(uintptr_t)(base + size)};
}

/* ---- the table: chained hashing, fixed bucket count ---- */

struct entry {
    struct entry *next;
    uint64_t hash;
    uint32_t klen, vlen, vcap;
    char data[]; /* key, then value */
};

static struct arena data_arena, conn_arena;
static struct entry **buckets;
static uint64_t nbuckets, nkeys;

static uint64_t hash_key(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static struct entry **lookup(const char *k, size_t klen, uint64_t h)
{
    struct entry **pp = &buckets[h & (nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && (*pp)->klen == klen && memcmp((*pp)->data, k, klen) == 0)
            break;
    return pp;
}

/* Sets key to value, reusing the entry when the value fits. 0, or -1 when out of memory. */
static int table_set(const char *k, size_t klen, const char *v, size_t vlen)
{
    uint64_t h = hash_key(k, klen);
    struct entry **pp = lookup(k, klen, h), *e = *pp;
    if (e && e->vcap >= vlen) {
        memcpy(e->data + klen, v, vlen);
        e->vlen = (uint32_t)vlen;
        return 0;
    }
    size_t usable;
    struct entry *n = arena_alloc(&data_arena, sizeof *n + klen + vlen, &usable);
    if (!n)
        return -1;
    *n = (struct entry){.next = e ? e->next : NULL, .hash = h, .klen = (uint32_t)klen, .vlen = (uint32_t)vlen,
                        .vcap = (uint32_t)(usable - sizeof *n - klen)};
    memcpy(n->data, k, klen);
    memcpy(n->data + klen, v, vlen);
    if (e)
        arena_free(&data_arena, e);
    else
        nkeys++;
    *pp = n;
    return 0;
}

static int table_del(const char *k, size_t klen)
{
    struct entry **pp = lookup(k, klen, hash_key(k, klen)), *e = *pp;
    if (!e)
        return 0;
    *pp = e->next;
    arena_free(&data_arena, e);
    nkeys--;
    return 1;
}

static void table_flush(void)
{
    for (uint64_t i = 0; i < nbuckets; i++)
        while (buckets[i]) {
            struct entry *e = buckets[i];
            buckets[i] = e->next;
            arena_free(&data_arena, e);
        }
    nkeys = 0;
}

/* ---- connections ---- */

struct buf {
    char *p;
    size_t len, cap, off; /* off: bytes already consumed (in) or written to lwIP (out) */
};

struct conn {
    struct tcp_pcb *pcb;
    struct buf in, out;
    uint32_t owed;   /* received bytes not yet acknowledged with tcp_recved() */
    int peer_closed; /* FIN seen: finish the queued replies, then close */
    int closing;     /* close once the replies are out */
    int dead;        /* out of connection memory: abort */
    struct conn *next_free;
};

static struct conn conns[MAX_CONNS], *free_conns;

/* Room for n more bytes at the end of b, moving or growing it; NULL if the arena is full. */
static char *buf_room(struct buf *b, size_t n)
{
    if (b->len + n <= b->cap)
        return b->p + b->len;
    size_t live = b->len - b->off;
    if (b->off && live + n <= b->cap) {
        memmove(b->p, b->p + b->off, live);
    } else {
        /* Doubling; usable sizes are a power of two less the block header. */
        size_t want = b->cap ? 2 * b->cap : BUF_MIN - sizeof(struct block), cap;
        if (want < live + n)
            want = live + n;
        char *p = arena_alloc(&conn_arena, want, &cap);
        if (!p)
            return NULL;
        if (live)
            memcpy(p, b->p + b->off, live);
        arena_free(&conn_arena, b->p);
        b->p = p;
        b->cap = cap;
    }
    b->len = live;
    b->off = 0;
    return b->p + b->len;
}

/* Empties b, giving back a large buffer. */
static void buf_reset(struct buf *b)
{
    b->len = b->off = 0;
    if (b->cap > BUF_KEEP) {
        arena_free(&conn_arena, b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

static void out_write(struct conn *c, const void *p, size_t n)
{
    char *dst = c->dead ? NULL : buf_room(&c->out, n);
    if (!dst) {
        c->dead = 1;
        return;
    }
    memcpy(dst, p, n);
    c->out.len += n;
}

static void out_str(struct conn *c, const char *s) { out_write(c, s, strlen(s)); }

static size_t fmt_i64(char *dst, int64_t v)
{
    char tmp[24];
    size_t n = 0;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do
        tmp[n++] = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        tmp[n++] = '-';
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

static void out_prefixed(struct conn *c, char type, int64_t v)
{
    char line[32];
    line[0] = type;
    size_t n = 1 + fmt_i64(line + 1, v);
    line[n++] = '\r';
    line[n++] = '\n';
    out_write(c, line, n);
}

static void out_int(struct conn *c, int64_t v) { out_prefixed(c, ':', v); }

static void out_bulk(struct conn *c, const char *p, size_t n)
{
    out_prefixed(c, '$', (int64_t)n);
    out_write(c, p, n);
    out_write(c, "\r\n", 2);
}

/* 'arg' in an error line, at most 128 bytes; CR/LF would end the line early. */
static void out_quoted(struct conn *c, const char *p, size_t n)
{
    char tmp[130];
    size_t m = n < 128 ? n : 128;
    tmp[0] = '\'';
    for (size_t i = 0; i < m; i++)
        tmp[1 + i] = p[i] == '\r' || p[i] == '\n' ? ' ' : p[i];
    tmp[1 + m] = '\'';
    out_write(c, tmp, m + 2);
}

/* ---- commands ---- */

struct arg {
    const char *p;
    size_t len;
};

static struct arg argv[ARGS_MAX];

static int arg_is(const struct arg *a, const char *name)
{
    size_t n = strlen(name);
    if (a->len != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = a->p[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch - 'A' + 'a');
        if (ch != name[i])
            return 0;
    }
    return 1;
}

/* Redis's rule for integers stored as strings: optional '-', no leading zeros or '+'. */
static int parse_i64(const char *p, size_t n, int64_t *out)
{
    if (n == 0 || n > 20)
        return 0;
    int neg = p[0] == '-';
    size_t i = (size_t)neg;
    if (i == n || p[i] < '0' || p[i] > '9' || (p[i] == '0' && n > i + 1) || (neg && p[i] == '0'))
        return 0;
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, v = 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (limit - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

static struct entry *find(const struct arg *key) { return *lookup(key->p, key->len, hash_key(key->p, key->len)); }

static void cmd_get(struct conn *c, size_t argc, const struct arg *a)
{
    (void)argc;
    struct entry *e = find(&a[1]);
    if (e)
        out_bulk(c, e->data + e->klen, e->vlen);
    else
        out_str(c, "$-1\r\n");
}

static void cmd_set(struct conn *c, size_t argc, const struct arg *a)
{
    if (argc > 3)
        out_str(c, "-ERR syntax error (SET options are not supported)\r\n");
    else if (table_set(a[1].p, a[1].len, a[2].p, a[2].len))
        out_str(c, "-ERR out of memory\r\n");
    else
        out_str(c, "+OK\r\n");
}

static void cmd_incr(struct conn *c, size_t argc, const struct arg *a)
{
    (void)argc;
    struct entry *e = find(&a[1]);
    int64_t v = 0;
    char digits[24];
    if (e && !parse_i64(e->data + e->klen, e->vlen, &v))
        out_str(c, "-ERR value is not an integer or out of range\r\n");
    else if (v == INT64_MAX)
        out_str(c, "-ERR increment or decrement would overflow\r\n");
    else if (table_set(a[1].p, a[1].len, digits, fmt_i64(digits, v + 1)))
        out_str(c, "-ERR out of memory\r\n");
    else
        out_int(c, v + 1);
}

static void cmd_del(struct conn *c, size_t argc, const struct arg *a)
{
    int64_t n = 0;
    for (size_t i = 1; i < argc; i++)
        n += table_del(a[i].p, a[i].len);
    out_int(c, n);
}

static void cmd_exists(struct conn *c, size_t argc, const struct arg *a)
{
    int64_t n = 0;
    for (size_t i = 1; i < argc; i++)
        n += find(&a[i]) != NULL;
    out_int(c, n);
}

static void cmd_ping(struct conn *c, size_t argc, const struct arg *a)
{
    if (argc == 2)
        out_bulk(c, a[1].p, a[1].len);
    else
        out_str(c, "+PONG\r\n");
}

static void cmd_echo(struct conn *c, size_t argc, const struct arg *a)
{
    (void)argc;
    out_bulk(c, a[1].p, a[1].len);
}

static void cmd_dbsize(struct conn *c, size_t argc, const struct arg *a)
{
    (void)argc;
    (void)a;
    out_int(c, (int64_t)nkeys);
}

static void cmd_flushall(struct conn *c, size_t argc, const struct arg *a)
{
    if (argc == 2 && !arg_is(&a[1], "async") && !arg_is(&a[1], "sync")) {
        out_str(c, "-ERR syntax error\r\n");
        return;
    }
    table_flush();
    out_str(c, "+OK\r\n");
}

/*
 * SELFCHECK: walks the table and the data arena's free lists and checks what a
 * stray write into guest memory would break: every block inside the arena with
 * a valid size class, every entry in the bucket its key hashes to and within
 * its block, as many entries as DBSIZE says, and no cycles. Answers
 * "+OK keys=N free=F" or "-ERR selfcheck: what (where)". Drills ask it last.
 */
static const char *check_block(const struct arena *a, const struct block *b)
{
    if ((const uint8_t *)b < a->start || (const uint8_t *)b >= a->bump || ((uintptr_t)b & 7))
        return "a block outside the data arena";
    if (b->class < CLASS_MIN || b->class > CLASS_MAX || (uint64_t)(a->bump - (const uint8_t *)b) < (1ull << b->class))
        return "a block with a bad size class";
    return NULL;
}

static void cmd_selfcheck(struct conn *c, size_t argc, const struct arg *a)
{
    (void)argc;
    (void)a;
    const uint64_t most = (uint64_t)(data_arena.bump - data_arena.start) >> CLASS_MIN; /* more: a cycle */
    const char *why = NULL;
    uint64_t where = 0, entries = 0, free_blocks = 0;
    for (uint64_t i = 0; i < nbuckets && !why; i++)
        for (const struct entry *e = buckets[i]; e && !why; e = e->next) {
            const struct block *b = (const struct block *)((const uint8_t *)e - sizeof(struct block));
            where = i;
            if ((why = check_block(&data_arena, b)))
                break;
            if (++entries > most)
                why = "a cycle in a bucket's chain";
            else if (sizeof *e + e->klen + e->vcap > (1ull << b->class) - sizeof *b || e->vlen > e->vcap)
                why = "an entry larger than its block";
            else if (e->hash != hash_key(e->data, e->klen))
                why = "an entry whose hash is not its key's";
            else if ((e->hash & (nbuckets - 1)) != i)
                why = "an entry in another key's bucket";
        }
    if (!why && entries != nkeys) {
        why = "fewer or more entries than DBSIZE";
        where = entries;
    }
    for (unsigned k = CLASS_MIN; k <= CLASS_MAX && !why; k++)
        for (const struct block *b = data_arena.free[k]; b && !why; b = *(void *const *)b->data) {
            where = k;
            if ((why = check_block(&data_arena, b)))
                break;
            if (b->class != k)
                why = "a free block on another size's list";
            else if (++free_blocks > most)
                why = "a cycle in a free list";
        }
    char line[160];
    if (why)
        us_snprintf(line, sizeof line, "-ERR selfcheck: %s (%lu)\r\n", why, where);
    else
        us_snprintf(line, sizeof line, "+OK keys=%lu free=%lu\r\n", entries, free_blocks);
    out_str(c, line);
}

/* redis-benchmark asks CONFIG GET save and appendonly: nothing is persisted. */
static void cmd_config(struct conn *c, size_t argc, const struct arg *a)
{
    if (!arg_is(&a[1], "get") || argc != 3)
        out_str(c, "-ERR only CONFIG GET <parameter> is supported\r\n");
    else if (arg_is(&a[2], "save"))
        out_str(c, "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
    else if (arg_is(&a[2], "appendonly"))
        out_str(c, "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n");
    else
        out_str(c, "*0\r\n");
}

/* redis-cli asks COMMAND DOCS: no command table, so it shows no hints. */
static void cmd_command(struct conn *c, size_t argc, const struct arg *a)
{
    (void)argc;
    (void)a;
    out_str(c, "*0\r\n");
}

static void cmd_quit(struct conn *c, size_t argc, const struct arg *a)
{
    (void)argc;
    (void)a;
    out_str(c, "+OK\r\n");
    c->closing = 1;
}

static const struct command {
    const char *name;
    size_t min, max; /* argument counts, the command's name included */
    void (*run)(struct conn *c, size_t argc, const struct arg *a);
} commands[] = {
    {"get", 2, 2, cmd_get},       {"set", 3, ARGS_MAX, cmd_set},       {"incr", 2, 2, cmd_incr},
    {"del", 2, ARGS_MAX, cmd_del}, {"exists", 2, ARGS_MAX, cmd_exists}, {"ping", 1, 2, cmd_ping},
    {"echo", 2, 2, cmd_echo},     {"dbsize", 1, 1, cmd_dbsize},        {"flushall", 1, 2, cmd_flushall},
    {"config", 2, ARGS_MAX, cmd_config}, {"command", 1, ARGS_MAX, cmd_command}, {"quit", 1, 1, cmd_quit},
    {"selfcheck", 1, 1, cmd_selfcheck},
};

static void execute(struct conn *c, size_t argc)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct command *cmd = &commands[i];
        if (!arg_is(&argv[0], cmd->name))
            continue;
        if (argc < cmd->min || argc > cmd->max) {
            out_str(c, "-ERR wrong number of arguments for '");
            out_str(c, cmd->name);
            out_str(c, "' command\r\n");
        } else {
            cmd->run(c, argc, argv);
        }
        return;
    }
    out_str(c, "-ERR unknown command ");
    out_quoted(c, argv[0].p, argv[0].len);
    out_str(c, ", with args beginning with: ");
    for (size_t i = 1; i < argc && i < 8; i++) {
        out_quoted(c, argv[i].p, argv[i].len);
        out_str(c, " ");
    }
    out_str(c, "\r\n");
}

/* ---- the protocol ---- */

enum parse { PARSE_MORE, PARSE_OK, PARSE_ERR };
static const char *parse_error;

/* A CRLF-terminated line at p (at most max bytes before it): its length, or -1 if incomplete. */
static long line_len(const char *p, size_t avail, size_t max)
{
    const char *nl = NULL;
    size_t lim = avail < max + 2 ? avail : max + 2;
    for (size_t i = 0; i < lim; i++)
        if (p[i] == '\n') {
            nl = p + i;
            break;
        }
    if (!nl)
        return avail >= max + 2 ? -2 : -1;
    return nl - p;
}

/* "<prefix><decimal>\r\n" with the value in [lo, hi]; returns bytes used, 0 if incomplete, -1 if bad. */
static long header(const char *p, size_t avail, char prefix, int64_t lo, int64_t hi, int64_t *v)
{
    long n = line_len(p, avail, 32);
    if (n == -1)
        return 0;
    if (n < 3 || p[0] != prefix || p[n - 1] != '\r' || !parse_i64(p + 1, (size_t)n - 2, v) || *v < lo || *v > hi)
        return -1;
    return n + 1;
}

static enum parse parse_multibulk(const char *p, size_t avail, size_t *used, size_t *argc)
{
    int64_t n;
    long h = header(p, avail, '*', INT32_MIN, INT32_MAX, &n);
    if (h == 0)
        return PARSE_MORE;
    if (h < 0 || n > (int64_t)ARGS_MAX) {
        parse_error = "-ERR Protocol error: invalid multibulk length\r\n";
        return PARSE_ERR;
    }
    size_t off = (size_t)h;
    *argc = n > 0 ? (size_t)n : 0;
    for (size_t i = 0; i < *argc; i++) {
        int64_t len;
        h = header(p + off, avail - off, '$', 0, BULK_MAX, &len);
        if (h == 0)
            return PARSE_MORE;
        if (h < 0) {
            parse_error = "-ERR Protocol error: invalid bulk length\r\n";
            return PARSE_ERR;
        }
        off += (size_t)h;
        if (off + (size_t)len + 2 > CMD_MAX) {
            parse_error = "-ERR Protocol error: command too large\r\n";
            return PARSE_ERR;
        }
        if (avail - off < (size_t)len + 2)
            return PARSE_MORE;
        if (p[off + len] != '\r' || p[off + len + 1] != '\n') {
            parse_error = "-ERR Protocol error: bulk not followed by CRLF\r\n";
            return PARSE_ERR;
        }
        argv[i] = (struct arg){p + off, (size_t)len};
        off += (size_t)len + 2;
    }
    *used = off;
    return PARSE_OK;
}

static enum parse parse_inline(const char *p, size_t avail, size_t *used, size_t *argc)
{
    long n = line_len(p, avail, INLINE_MAX);
    if (n == -1)
        return PARSE_MORE;
    if (n == -2) {
        parse_error = "-ERR Protocol error: too big inline request\r\n";
        return PARSE_ERR;
    }
    *used = (size_t)n + 1;
    size_t end = n > 0 && p[n - 1] == '\r' ? (size_t)n - 1 : (size_t)n;
    *argc = 0;
    for (size_t i = 0; i < end;) {
        while (i < end && (p[i] == ' ' || p[i] == '\t'))
            i++;
        size_t start = i;
        while (i < end && p[i] != ' ' && p[i] != '\t')
            i++;
        if (i > start) {
            if (*argc == ARGS_MAX) {
                parse_error = "-ERR Protocol error: too many arguments\r\n";
                return PARSE_ERR;
            }
            argv[(*argc)++] = (struct arg){p + start, i - start};
        }
    }
    return PARSE_OK;
}

static void conn_free(struct conn *c)
{
    arena_free(&conn_arena, c->in.p);
    arena_free(&conn_arena, c->out.p);
    *c = (struct conn){.next_free = free_conns};
    free_conns = c;
}

/* Hands queued replies to lwIP as far as its send buffer allows. */
static void flush(struct conn *c)
{
    struct buf *o = &c->out;
    while (o->off < o->len) {
        size_t n = o->len - o->off, room = tcp_sndbuf(c->pcb);
        if (n > room)
            n = room;
        if (n == 0 || tcp_write(c->pcb, o->p + o->off, (u16_t)n, TCP_WRITE_FLAG_COPY) != ERR_OK)
            break; /* full: the sent callback resumes */
        o->off += n;
    }
    if (o->off == o->len)
        buf_reset(o);
    tcp_output(c->pcb);
}

/* Parses and runs every complete command, flushes, reopens the window, closes
 * when done. Returns ERR_ABRT if the connection had to be aborted. */
static err_t service(struct conn *c)
{
    struct buf *in = &c->in;
    int starved = 0; /* every complete command has run */
    while (!c->closing && !c->dead && c->out.len - c->out.off < OUT_HIGH) {
        size_t avail = in->len - in->off, used = 0, argc = 0;
        enum parse r = PARSE_MORE;
        if (avail) {
            const char *p = in->p + in->off;
            r = p[0] == '*' ? parse_multibulk(p, avail, &used, &argc) : parse_inline(p, avail, &used, &argc);
        }
        if (r == PARSE_MORE) {
            starved = 1;
            break;
        }
        if (r == PARSE_ERR) {
            out_str(c, parse_error);
            c->closing = 1;
            break;
        }
        if (argc)
            execute(c, argc);
        in->off += used;
    }
    if (in->off == in->len)
        buf_reset(in);
    if (c->dead) {
        us_printf("kv: connection memory exhausted (kv.connmem=); aborting a connection\n");
        tcp_arg(c->pcb, NULL);
        tcp_abort(c->pcb);
        conn_free(c);
        return ERR_ABRT;
    }
    flush(c);
    if (c->out.len - c->out.off < OUT_HIGH)
        while (c->owed) {
            u16_t n = c->owed > 0xffff ? 0xffff : (u16_t)c->owed;
            tcp_recved(c->pcb, n);
            c->owed -= n;
        }
    /* After the peer's FIN, an incomplete command can never complete. */
    if ((c->closing || (c->peer_closed && starved)) && c->out.off == c->out.len) {
        tcp_arg(c->pcb, NULL);
        tcp_recv(c->pcb, NULL);
        tcp_sent(c->pcb, NULL);
        tcp_err(c->pcb, NULL);
        tcp_poll(c->pcb, NULL, 0);
        if (tcp_close(c->pcb) != ERR_OK) { /* no memory for the FIN: reset instead */
            tcp_abort(c->pcb);
            conn_free(c);
            return ERR_ABRT;
        }
        conn_free(c);
    }
    return ERR_OK;
}

static err_t on_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err)
{
    struct conn *c = arg;
    (void)pcb;
    (void)err;
    if (!p) {
        c->peer_closed = 1;
        return service(c);
    }
    char *dst = buf_room(&c->in, p->tot_len);
    if (!dst)
        return ERR_MEM; /* lwIP keeps the data and offers it again later */
    pbuf_copy_partial(p, dst, p->tot_len, 0);
    c->in.len += p->tot_len;
    c->owed += p->tot_len;
    pbuf_free(p);
    return service(c);
}

static err_t on_sent(void *arg, struct tcp_pcb *pcb, u16_t len)
{
    (void)pcb;
    (void)len;
    return service(arg);
}

/* Every second: retries what may have failed for lack of memory. */
static err_t on_poll(void *arg, struct tcp_pcb *pcb)
{
    (void)pcb;
    return service(arg);
}

static void on_err(void *arg, err_t err)
{
    (void)err;
    if (arg) /* lwIP has already freed the pcb */
        conn_free(arg);
}

static err_t on_accept(void *arg, struct tcp_pcb *pcb, err_t err)
{
    (void)arg;
    if (err != ERR_OK || !pcb)
        return ERR_VAL;
    struct conn *c = free_conns;
    if (!c) {
        tcp_abort(pcb);
        return ERR_ABRT;
    }
    free_conns = c->next_free;
    *c = (struct conn){.pcb = pcb};
    tcp_nagle_disable(pcb); /* replies are small and must not wait for ACKs */
    tcp_arg(pcb, c);
    tcp_recv(pcb, on_recv);
    tcp_sent(pcb, on_sent);
    tcp_err(pcb, on_err);
    tcp_poll(pcb, on_poll, 2);
    return ERR_OK;
}

/* ---- start ---- */

static uint64_t place(const struct guest_boot *boot, uint64_t *next, uint64_t size, const char *key)
{
    uint64_t base = *next;
    if (size < (1u << 20) || !us_ram_find(boot, base, size))
        us_panic("kv: %s=%lu MiB does not fit in RAM above the image (0x%lx); give the VM more memory\n", key,
                 size >> 20, base);
    *next = base + size;
    return base;
}

void guest_main(const struct guest_boot *boot)
{
    if (boot->vcpu != 0)
        us_halt_forever();
    uint64_t port = us_cmdline_u64("kv.port", 6379);
    if (port == 0 || port > 65535)
        us_panic("kv: kv.port=%lu is not a TCP port\n", port);
    uint64_t next = boot->free_start;
    uint64_t mem = us_cmdline_u64("kv.mem", 64ull << 20), connmem = us_cmdline_u64("kv.connmem", 32ull << 20);
    uint64_t data = place(boot, &next, mem, "kv.mem");
    arena_init(&conn_arena, place(boot, &next, connmem, "kv.connmem"), connmem);
    nbuckets = 1;
    while (nbuckets * 2 <= mem / 256) /* one bucket per 256 bytes of data: 1/32 of kv.mem */
        nbuckets *= 2;
    buckets = (struct entry **)(uintptr_t)data;
    memset(buckets, 0, nbuckets * sizeof *buckets);
    arena_init(&data_arena, data + nbuckets * sizeof *buckets, mem - nbuckets * sizeof *buckets);
    for (unsigned i = MAX_CONNS; i-- > 0;) {
        conns[i].next_free = free_conns;
        free_conns = &conns[i];
    }

    struct netif *nif = net_init(boot);
    struct tcp_pcb *l = tcp_new();
    if (!l || tcp_bind(l, IP4_ADDR_ANY, (u16_t)port) != ERR_OK || !(l = tcp_listen(l)))
        us_panic("kv: cannot listen on port %lu\n", port);
    tcp_accept(l, on_accept);

    char ip[16];
    const uint8_t *m = nif->hwaddr;
    us_printf("kv: listening on %s:%lu mac %02x:%02x:%02x:%02x:%02x:%02x, %lu MiB for data, %lu buckets\n",
              ip4addr_ntoa_r(netif_ip4_addr(nif), ip, sizeof ip), port, m[0], m[1], m[2], m[3], m[4], m[5],
              mem >> 20, nbuckets);
    net_run();
}
