/*
 * A polling virtio-net driver over virtio-mmio (modern, split rings). No
 * interrupts: the caller polls vnet_rx_poll() and kicks TX with vnet_kick()
 * once per batch, because every MMIO access is an exit to the VMM.
 * One device, single-threaded (vCPU 0 only).
 */
#ifndef US_NET_VIRTIO_NET_H
#define US_NET_VIRTIO_NET_H
#include <stddef.h>
#include <stdint.h>

#define VNET_FRAME_MAX 1514 /* Ethernet header + 1500, no FCS */

/* Probes every virtio_mmio.device= token of the command line and brings up
 * the first virtio-net device found. Returns 0, or -1 after saying why. */
struct guest_boot;
int vnet_init(const struct guest_boot *boot, uint8_t mac[6]);

/* Hands each received frame to deliver() (the bytes are valid only during
 * the call), then gives the buffers back to the device. Returns the count. */
typedef void (*vnet_deliver_fn)(const uint8_t *frame, size_t len, void *ctx);
unsigned vnet_rx_poll(vnet_deliver_fn deliver, void *ctx);

/* A free TX buffer with room for VNET_FRAME_MAX bytes, or NULL while every
 * descriptor is with the device. vnet_tx_post() queues it with len bytes;
 * the device sees it after the next vnet_kick(). */
uint8_t *vnet_tx_buffer(void);
void vnet_tx_post(uint8_t *buf, size_t len);
void vnet_kick(void);

/* Reads the status register (one exit): nonzero, after saying so once, when
 * the device wants a reset; the driver then stops using it. */
int vnet_check_broken(void);

#endif
