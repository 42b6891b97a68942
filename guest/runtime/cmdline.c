/* key=value parsing of the command line the loader passed in the start info. */
#include "us/guest.h"

static const char *cmdline = "";

void us_cmdline_set(const char *s) { cmdline = s ? s : ""; }

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

uint64_t us_strtou64(const char *s, const char **end)
{
    uint64_t v = 0;
    unsigned base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    for (;; s++) {
        unsigned d;
        if (*s >= '0' && *s <= '9')
            d = (unsigned)(*s - '0');
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = (unsigned)(*s - 'a' + 10);
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = (unsigned)(*s - 'A' + 10);
        else
            break;
        v = v * base + d;
    }
    switch (*s) {
    case 'K': v <<= 10; s++; break;
    case 'M': v <<= 20; s++; break;
    case 'G': v <<= 30; s++; break;
    }
    if (end)
        *end = s;
    return v;
}

/* Start of the value of the last key= word, or NULL. */
static const char *find(const char *key)
{
    size_t klen = strlen(key);
    const char *found = NULL;
    for (const char *p = cmdline; *p;) {
        while (is_space(*p))
            p++;
        if (strncmp(p, key, klen) == 0 && p[klen] == '=')
            found = p + klen + 1;
        while (*p && !is_space(*p))
            p++;
    }
    return found;
}

const char *us_cmdline_next(const char *key, const char **pos, size_t *len)
{
    size_t klen = strlen(key);
    for (const char *p = *pos ? *pos : cmdline; *p;) {
        while (is_space(*p))
            p++;
        const char *word = p;
        while (*p && !is_space(*p))
            p++;
        if ((size_t)(p - word) > klen && strncmp(word, key, klen) == 0 && word[klen] == '=') {
            *pos = p;
            *len = (size_t)(p - word) - klen - 1;
            return word + klen + 1;
        }
    }
    *pos = "";
    return NULL;
}

uint64_t us_cmdline_u64(const char *key, uint64_t def)
{
    const char *v = find(key);
    if (!v)
        return def;
    const char *end;
    uint64_t n = us_strtou64(v, &end);
    if (end == v || (*end && !is_space(*end)))
        us_panic("cmdline: %s= wants a number\n", key);
    return n;
}

int us_cmdline_str(const char *key, char *buf, size_t size, const char *def)
{
    const char *v = find(key);
    const char *src = v ? v : def;
    size_t n = 0;
    while (src[n] && !is_space(src[n]) && n + 1 < size) {
        buf[n] = src[n];
        n++;
    }
    if (size)
        buf[n] = '\0';
    return v != NULL;
}
