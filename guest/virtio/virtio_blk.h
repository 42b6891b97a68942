/*
 * A polling virtio-blk driver over virtio-mmio (modern, split ring), for the
 * guest/ images' exact disk tests. Requests are queued into a batch (at most
 * VBLK_BATCH), then vblk_run() notifies once and polls the used ring until every
 * one is back. Buffers are the caller's (guest-physical == virtual) and must
 * stay put until vblk_run() returns. One device, single-threaded (vCPU 0 only).
 */
#ifndef US_VIRTIO_BLK_H
#define US_VIRTIO_BLK_H
#include <stddef.h>
#include <stdint.h>

#define VBLK_BATCH 32u
#define VBLK_SECTOR 512u

struct guest_boot;
/* Brings up the first virtio-blk device of the command line. 0, or -1 after
 * saying why. */
int vblk_init(const struct guest_boot *boot);
uint64_t vblk_capacity(void); /* in 512-byte sectors */
int vblk_readonly(void);

/* Queues a read (VIRTIO_BLK_T_IN), write (OUT) or flush; `bytes` a multiple of
 * 512 (0 for a flush). 0, or -1 when the batch is full. */
int vblk_queue(uint32_t type, uint64_t sector, void *buf, uint32_t bytes);
/* Runs the batch: returns how many requests came back with a status other than
 * OK, or -1 if the device broke or answered out of order; the statuses of the
 * batch are then in vblk_status(0 .. n-1). */
int vblk_run(void);
uint8_t vblk_status(unsigned i);

#endif
