/* Console sinks: the console hypercall, or COM1 when not under Understudy. */
#include "format.h"
#include "us/guest.h"

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THR_EMPTY 0x20

static volatile int serial_lock;

static void serial_putc(char c)
{
    while (!(us_inb(COM1_LSR) & LSR_THR_EMPTY))
        us_pause();
    us_outb(COM1, (uint8_t)c);
}

static void serial_write(const char *s, size_t len)
{
    while (__atomic_exchange_n(&serial_lock, 1, __ATOMIC_ACQUIRE))
        us_pause();
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\n')
            serial_putc('\r');
        serial_putc(s[i]);
    }
    __atomic_store_n(&serial_lock, 0, __ATOMIC_RELEASE);
}

void us_console_write(const char *s, size_t len)
{
    if (!us_under_understudy()) {
        serial_write(s, len);
        return;
    }
    while (len) {
        size_t n = len < US_CONSOLE_MAX ? len : US_CONSOLE_MAX;
        us_hc_console(s, n);
        s += n;
        len -= n;
    }
}

void us_puts(const char *s) { us_console_write(s, strlen(s)); }

/* us_printf buffers one call's output and sends it in as few writes as possible. */
struct line {
    char buf[512];
    size_t len;
};

static void line_put(void *ctx, char c)
{
    struct line *l = ctx;
    if (l->len == sizeof(l->buf)) {
        us_console_write(l->buf, l->len);
        l->len = 0;
    }
    l->buf[l->len++] = c;
}

int us_printf(const char *fmt, ...)
{
    struct line l;
    l.len = 0;
    va_list ap;
    va_start(ap, fmt);
    int n = us_vformat(line_put, &l, fmt, ap);
    va_end(ap);
    if (l.len)
        us_console_write(l.buf, l.len);
    return n;
}

struct bounded {
    char *buf;
    size_t size, len;
};

static void bounded_put(void *ctx, char c)
{
    struct bounded *b = ctx;
    if (b->len + 1 < b->size)
        b->buf[b->len++] = c;
}

int us_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct bounded b = {buf, size, 0};
    int n = us_vformat(bounded_put, &b, fmt, ap);
    if (size)
        buf[b.len] = '\0';
    return n;
}

int us_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = us_vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
