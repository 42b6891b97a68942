/* strtol and atoi (<stdlib.h>), for lwIP. */
#include <stdlib.h>

static int digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'Z')
        return c - 'A' + 10;
    return 99;
}

long strtol(const char *s, char **end, int base)
{
    const char *p = s;
    while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
        p++;
    int neg = *p == '-';
    if (*p == '-' || *p == '+')
        p++;
    if ((base == 0 || base == 16) && p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && digit(p[2]) < 16) {
        p += 2;
        base = 16;
    } else if (base == 0) {
        base = p[0] == '0' ? 8 : 10;
    }
    const unsigned long limit = neg ? (unsigned long)__LONG_MAX__ + 1 : (unsigned long)__LONG_MAX__;
    unsigned long v = 0;
    int any = 0, over = 0;
    for (int d; base >= 2 && base <= 36 && (d = digit(*p)) < base; p++) {
        any = 1;
        if (v > (limit - (unsigned long)d) / (unsigned long)base)
            over = 1;
        else
            v = v * (unsigned long)base + (unsigned long)d;
    }
    if (end)
        *end = (char *)(any ? p : s);
    if (over)
        v = limit;
    return neg ? (long)(0 - v) : (long)v;
}

int atoi(const char *s) { return (int)strtol(s, NULL, 10); }
