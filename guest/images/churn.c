/*
 * churn: dirties a per-vCPU working set at a controlled rate, stamping every
 * page so the host can check a checkpoint without parsing the console.
 *
 * Layout (struct us_churn_header in understudy_abi.h): the header page sits at
 * boot->free_start (reported with US_REPORT_LAYOUT); vCPU i's working set is the
 * `pages` pages starting at header + 4 KiB + i * pages * 4 KiB.
 *
 * Host-checkable invariant, at any instruction boundary of this vCPU: with
 * (iteration, cursor) from its slot, pages [0, cursor) carry `iteration`, pages
 * [cursor+1, ws_pages) carry `iteration - 1` (0 = never written), and page
 * `cursor` may carry either or be mid-write (torn). The pass-end update of
 * {iteration, cursor} is one 16-byte store, so it is never seen half done.
 *
 * Keys: pages=N (4096) rate=R pages/s per vCPU, 0 = unlimited (0)
 *       seconds=S then exit(0), 0 = forever (0)  content=stamp|pattern|random (stamp)
 */
#include "us/guest.h"

#define PAGE 4096ull

enum content { STAMP, PATTERN, RANDOM };

static struct us_churn_header *header;
static volatile int header_ready;

typedef uint64_t u64x2 __attribute__((vector_size(16)));

/* {iteration, cursor} in one instruction: a paused vCPU never shows half of it. */
static void store_iteration_cursor(struct us_churn_vcpu *slot, uint64_t iteration, uint64_t cursor)
{
    u64x2 v = {iteration, cursor};
    __asm__ volatile("movdqa %1, %0" : "=m"(*(u64x2 *)&slot->iteration) : "x"(v));
}

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void fill_page(uint64_t *page, enum content content, uint64_t iteration, uint64_t *rng)
{
    const unsigned first = sizeof(struct us_churn_stamp) / 8;
    if (content == PATTERN) {
        uint64_t v = iteration * 0x9e3779b97f4a7c15ull;
        for (unsigned i = first; i < PAGE / 8; i++)
            page[i] = v;
    } else if (content == RANDOM) {
        for (unsigned i = first; i < PAGE / 8; i++)
            page[i] = xorshift64(rng);
    }
}

static void stamp_page(uint64_t gpa, uint64_t iteration, uint32_t vcpu)
{
    volatile struct us_churn_stamp *st = (volatile struct us_churn_stamp *)(uintptr_t)gpa;
    st->gpa = gpa;
    st->vcpu = vcpu;
    st->check = iteration ^ gpa ^ US_CHURN_MAGIC;
    st->iteration = iteration;
}

/* Waits until *next (TSC), then schedules the following page. Long waits halt. */
static void pace(uint64_t *next, uint64_t interval, uint64_t hz)
{
    uint64_t now = us_rdtsc();
    if ((int64_t)(now - *next) > (int64_t)hz) /* over a second behind: drop the debt, don't burst */
        *next = now;
    while ((int64_t)(*next - now) > 0) {
        uint64_t wait = *next - now;
        if (us_under_understudy() && wait > hz / 1000)
            us_sleep_ns(us_tsc_to_ns(wait));
        else
            us_pause();
        now = us_rdtsc();
    }
    *next += interval;
}

static enum content parse_content(void)
{
    char name[16];
    us_cmdline_str("content", name, sizeof(name), "stamp");
    if (strcmp(name, "stamp") == 0)
        return STAMP;
    if (strcmp(name, "pattern") == 0)
        return PATTERN;
    if (strcmp(name, "random") == 0)
        return RANDOM;
    us_panic("churn: content=%s: want stamp, pattern or random\n", name);
}

static void setup_header(const struct guest_boot *boot, uint64_t rate)
{
    uint64_t gpa = boot->free_start;
    if (boot->vcpu == 0) {
        if (!us_ram_find(boot, gpa, PAGE))
            us_panic("churn: no RAM for the header page at %#lx\n", gpa);
        header = (struct us_churn_header *)(uintptr_t)gpa;
        memset(header, 0, PAGE);
        header->magic = US_CHURN_MAGIC;
        header->rate = rate;
        us_report(US_REPORT_LAYOUT, gpa);
        __atomic_store_n(&header_ready, 1, __ATOMIC_RELEASE);
    }
    while (!__atomic_load_n(&header_ready, __ATOMIC_ACQUIRE))
        us_pause();
}

void guest_main(const struct guest_boot *boot)
{
    const uint64_t pages = us_cmdline_u64("pages", 4096);
    const uint64_t rate = us_cmdline_u64("rate", 0);
    const uint64_t seconds = us_cmdline_u64("seconds", 0);
    const enum content content = parse_content();
    const uint32_t vcpu = boot->vcpu;
    static const char *const content_names[] = {"stamp", "pattern", "random"};

    if (pages == 0 || pages > (1ull << 32))
        us_panic("churn: pages=%lu is out of range\n", pages);
    setup_header(boot, rate);

    uint64_t ws = boot->free_start + PAGE + vcpu * pages * PAGE;
    uint64_t ws_bytes = pages * PAGE;
    if (!us_ram_find(boot, ws, ws_bytes) || ws + ws_bytes > boot->map_end)
        us_panic("churn: vcpu %u: working set of %lu pages at %#lx..%#lx does not fit in RAM "
                 "(ask for fewer pages= or more guest memory)\n",
                 vcpu, pages, ws, ws + ws_bytes);

    for (uint64_t i = 0; i < pages; i++) /* iteration 0 = never written, even after a reboot */
        memset((void *)(uintptr_t)(ws + i * PAGE), 0, sizeof(struct us_churn_stamp));

    struct us_churn_vcpu *slot = &header->vcpu[vcpu];
    slot->ws_gpa = ws;
    slot->ws_pages = pages;
    store_iteration_cursor(slot, 1, 0);
    __atomic_fetch_add(&header->nr_vcpus, 1, __ATOMIC_RELEASE);
    us_report(US_REPORT_READY, vcpu);
    us_printf("churn: vcpu %u (apic %u) ws=%lu pages at %#lx rate=%lu content=%s seconds=%lu\n", vcpu,
              boot->apic_id, pages, ws, rate, content_names[content], seconds);

    const uint64_t hz = us_tsc_hz();
    const uint64_t interval = rate ? hz / rate : 0;
    const uint64_t start = us_rdtsc();
    const uint64_t end = seconds ? start + seconds * hz : UINT64_MAX;
    uint64_t next = start, report_at = start + hz, written = 0, rng = 0x2545f4914f6cdd1dull + vcpu;
    volatile uint64_t *cursor = &slot->cursor;

    for (uint64_t iteration = 1;; iteration++) {
        for (uint64_t c = 0; c < pages; c++) {
            if (interval)
                pace(&next, interval, hz);
            uint64_t gpa = ws + c * PAGE;
            fill_page((uint64_t *)(uintptr_t)gpa, content, iteration, &rng);
            stamp_page(gpa, iteration, vcpu);
            us_barrier(); /* the page is written before the cursor passes it */
            *cursor = c + 1;
            written++;
            if (!interval && (c & 63) != 63)
                continue;
            uint64_t now = us_rdtsc();
            if (now >= report_at) {
                us_report(US_REPORT_PROGRESS, iteration - 1);
                us_printf("churn: vcpu %u iteration %lu (%lu pages/s)\n", vcpu, iteration,
                          written * hz / (now - report_at + hz));
                report_at = now + hz;
                written = 0;
            }
            if (now >= end) {
                us_printf("churn: vcpu %u done after %lu s, %lu passes complete\n", vcpu, seconds, iteration - 1);
                if (vcpu == 0)
                    us_exit(0);
                us_halt_forever();
            }
        }
        store_iteration_cursor(slot, iteration + 1, 0);
    }
}
