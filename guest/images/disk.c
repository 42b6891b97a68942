/*
 * disk: stamped writes and verified reads through the virtio-blk driver, for the
 * disk suite (tests/test_disk.cpp). On the first disk of the command line, over
 * sectors [0, disk.sectors) (default: the whole disk, at most 65536), pass p = 1,
 * 2, ... (disk.passes of them, 0: forever):
 *   - writes every sector with stamp p, in order, 8 sectors a request and
 *     VBLK_BATCH requests a batch, then flushes;
 *   - reads the region back and checks every word (a mismatch panics with the
 *     sector, the word and both values);
 *   - reports US_REPORT_PROGRESS = p, and with disk.log=1 also prints "disk: pass p
 *     verified" (the CLI suites follow a guest's progress on its console).
 * Word w of sector s at pass p is (p << 48) | (s << 16) | w: the disk suite
 * computes the same, and pass 0 is what it writes before the guest starts.
 * Exits 0 after the last pass; 3 without a usable disk.
 */
#include "us/guest.h"
#include "../virtio/virtio_blk.h"
#include "../virtio/virtio_mmio.h"

#define SECTORS_PER_REQ 8u
#define WORDS (VBLK_SECTOR / 8u)
#define REQ_BYTES (SECTORS_PER_REQ * VBLK_SECTOR)

static uint64_t wbuf[VBLK_BATCH][SECTORS_PER_REQ * WORDS] __attribute__((aligned(4096)));
static uint64_t rbuf[VBLK_BATCH][SECTORS_PER_REQ * WORDS] __attribute__((aligned(4096)));

static uint64_t stamp(uint64_t pass, uint64_t sector, uint64_t word) { return pass << 48 | sector << 16 | word; }

static void run_batch(const char *what, uint64_t pass, uint64_t first)
{
    int bad = vblk_run();
    if (bad != 0)
        us_panic("disk: pass %lu, %s from sector %lu: %d requests failed (first status %u)\n", pass, what, first, bad,
                 vblk_status(0));
}

void guest_main(const struct guest_boot *boot)
{
    if (boot->vcpu != 0)
        us_halt_forever();
    if (vblk_init(boot) != 0)
        us_exit(3);
    uint64_t sectors = us_cmdline_u64("disk.sectors", 0);
    if (sectors == 0)
        sectors = vblk_capacity() < 65536 ? vblk_capacity() : 65536;
    if (sectors % (SECTORS_PER_REQ * VBLK_BATCH) || sectors > vblk_capacity())
        us_panic("disk: disk.sectors=%lu must be a multiple of %u within the disk's %lu\n", sectors,
                 SECTORS_PER_REQ * VBLK_BATCH, vblk_capacity());
    const uint64_t passes = us_cmdline_u64("disk.passes", 0);
    const int log = us_cmdline_u64("disk.log", 0) != 0;
    us_report(US_REPORT_READY, 0);
    for (uint64_t pass = 1; passes == 0 || pass <= passes; pass++) {
        for (uint64_t first = 0; first < sectors; first += SECTORS_PER_REQ * VBLK_BATCH) {
            for (unsigned r = 0; r < VBLK_BATCH; r++) {
                const uint64_t s0 = first + r * SECTORS_PER_REQ;
                for (unsigned i = 0; i < SECTORS_PER_REQ * WORDS; i++)
                    wbuf[r][i] = stamp(pass, s0 + i / WORDS, i % WORDS);
                vblk_queue(VIRTIO_BLK_T_OUT, s0, wbuf[r], REQ_BYTES);
            }
            run_batch("write", pass, first);
        }
        vblk_queue(VIRTIO_BLK_T_FLUSH, 0, 0, 0);
        run_batch("flush", pass, 0);
        for (uint64_t first = 0; first < sectors; first += SECTORS_PER_REQ * VBLK_BATCH) {
            for (unsigned r = 0; r < VBLK_BATCH; r++)
                vblk_queue(VIRTIO_BLK_T_IN, first + r * SECTORS_PER_REQ, rbuf[r], REQ_BYTES);
            run_batch("read", pass, first);
            for (unsigned r = 0; r < VBLK_BATCH; r++)
                for (unsigned i = 0; i < SECTORS_PER_REQ * WORDS; i++) {
                    const uint64_t s = first + r * SECTORS_PER_REQ + i / WORDS;
                    if (rbuf[r][i] != stamp(pass, s, i % WORDS))
                        us_panic("disk: pass %lu: sector %lu word %u reads %#lx, wrote %#lx\n", pass, s, i % WORDS,
                                 rbuf[r][i], stamp(pass, s, i % WORDS));
                }
        }
        us_report(US_REPORT_PROGRESS, pass);
        if (log)
            us_printf("disk: pass %lu verified\n", pass);
    }
}
