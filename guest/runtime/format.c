/* A small printf: enough for logs and test output, no floating point. */
#include <stdint.h>
#include "format.h"

struct out {
    us_sink_fn put;
    void *ctx;
    int n;
};

static void emit(struct out *o, char c)
{
    o->put(o->ctx, c);
    o->n++;
}

static void pad(struct out *o, char c, int count)
{
    while (count-- > 0)
        emit(o, c);
}

/* Prints digits of v (base 10 or 16) with sign/prefix, honoring width and flags. */
static void number(struct out *o, uint64_t v, int neg, unsigned base, int upper, const char *prefix, int width,
                   int zero, int left)
{
    char digits[24];
    const char *set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    int nd = 0;
    do {
        digits[nd++] = set[v % base];
        v /= base;
    } while (v);
    int plen = 0;
    while (prefix[plen])
        plen++;
    int len = nd + plen + (neg ? 1 : 0);
    if (!left && !zero)
        pad(o, ' ', width - len);
    if (neg)
        emit(o, '-');
    for (int i = 0; i < plen; i++)
        emit(o, prefix[i]);
    if (!left && zero)
        pad(o, '0', width - len);
    while (nd)
        emit(o, digits[--nd]);
    if (left)
        pad(o, ' ', width - len);
}

int us_vformat(us_sink_fn put, void *ctx, const char *fmt, va_list ap)
{
    struct out o = {put, ctx, 0};
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(&o, *fmt);
            continue;
        }
        int zero = 0, left = 0, alt = 0, width = 0, lng = 0;
        for (;; fmt++) {
            if (fmt[1] == '0')
                zero = 1;
            else if (fmt[1] == '-')
                left = 1;
            else if (fmt[1] == '#')
                alt = 1;
            else
                break;
        }
        fmt++;
        if (*fmt == '*') {
            width = va_arg(ap, int);
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            lng++;
            fmt++;
        }
        switch (*fmt) {
        case 'd':
        case 'i': {
            int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
            number(&o, v < 0 ? 0 - (uint64_t)v : (uint64_t)v, v < 0, 10, 0, "", width, zero, left);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
            unsigned base = *fmt == 'u' ? 10 : 16;
            number(&o, v, 0, base, *fmt == 'X', alt && base == 16 ? "0x" : "", width, zero, left);
            break;
        }
        case 'p':
            number(&o, (uintptr_t)va_arg(ap, void *), 0, 16, 0, "0x", width, zero, left);
            break;
        case 'c':
            pad(&o, ' ', left ? 0 : width - 1);
            emit(&o, (char)va_arg(ap, int));
            pad(&o, ' ', left ? width - 1 : 0);
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int len = 0;
            while (s[len])
                len++;
            pad(&o, ' ', left ? 0 : width - len);
            for (int i = 0; i < len; i++)
                emit(&o, s[i]);
            pad(&o, ' ', left ? width - len : 0);
            break;
        }
        case '%':
            emit(&o, '%');
            break;
        case '\0':
            return o.n;
        default: /* unknown: print it verbatim so the mistake is visible */
            emit(&o, '%');
            emit(&o, *fmt);
            break;
        }
    }
    return o.n;
}
