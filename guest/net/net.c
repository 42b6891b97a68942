/*
 * lwIP glue for the polling virtio-net driver. Received frames are copied
 * into PBUF_POOL pbufs (the RX buffer goes straight back to the device);
 * frames to send are copied into a TX descriptor's buffer, or, while every
 * descriptor is with the device (a stalled or slow TX queue), into a backlog
 * that is drained as descriptors come back, so TCP does not lose segments
 * to a momentary stall.
 */
#include "net.h"
#include "virtio_net.h"
#include "us/guest.h"
#include "lwip/etharp.h"
#include "lwip/init.h"
#include "lwip/ip4_addr.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/priv/tcp_priv.h"
#include "lwip/timeouts.h"

#define BACKLOG 1024
#define HALT_MAX_MS 50
#define STATUS_CHECK_NS 1000000000ull

static struct netif nif;
static uint8_t backlog[BACKLOG][VNET_FRAME_MAX];
static uint16_t backlog_len[BACKLOG];
static unsigned backlog_head, backlog_count;
static uint64_t tx_dropped, rx_dropped;

static err_t linkoutput(struct netif *netif, struct pbuf *p)
{
    (void)netif;
    if (p->tot_len > VNET_FRAME_MAX)
        return ERR_BUF;
    uint8_t *buf = backlog_count == 0 ? vnet_tx_buffer() : NULL;
    if (buf) {
        pbuf_copy_partial(p, buf, p->tot_len, 0);
        vnet_tx_post(buf, p->tot_len);
        return ERR_OK;
    }
    if (backlog_count == BACKLOG) {
        if (tx_dropped++ % 1000 == 0)
            us_printf("net: TX backlog full, %lu frames dropped so far\n", tx_dropped);
        return ERR_MEM;
    }
    unsigned slot = (backlog_head + backlog_count++) % BACKLOG;
    pbuf_copy_partial(p, backlog[slot], p->tot_len, 0);
    backlog_len[slot] = p->tot_len;
    return ERR_OK;
}

static unsigned drain_backlog(void)
{
    unsigned n = 0;
    uint8_t *buf;
    while (backlog_count && (buf = vnet_tx_buffer())) {
        memcpy(buf, backlog[backlog_head], backlog_len[backlog_head]);
        vnet_tx_post(buf, backlog_len[backlog_head]);
        backlog_head = (backlog_head + 1) % BACKLOG;
        backlog_count--;
        n++;
    }
    return n;
}

static void deliver(const uint8_t *frame, size_t len, void *ctx)
{
    struct netif *netif = ctx;
    struct pbuf *p = pbuf_alloc(PBUF_RAW, (u16_t)len, PBUF_POOL);
    if (!p) {
        if (rx_dropped++ % 1000 == 0)
            us_printf("net: out of pbufs, %lu received frames dropped so far\n", rx_dropped);
        return;
    }
    pbuf_take(p, frame, (u16_t)len);
    if (netif->input(p, netif) != ERR_OK)
        pbuf_free(p);
}

static err_t nif_init(struct netif *netif)
{
    netif->name[0] = 'v';
    netif->name[1] = 'n';
    netif->mtu = 1500;
    netif->hwaddr_len = ETH_HWADDR_LEN;
    netif->flags = NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET;
    netif->output = etharp_output;
    netif->linkoutput = linkoutput;
    return ERR_OK;
}

/* "A.B.C.D/len" -> address and mask; 0 on success. */
static int parse_cidr(char *s, ip4_addr_t *ip, ip4_addr_t *mask)
{
    char *slash = strchr(s, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    const char *end;
    uint64_t len = us_strtou64(slash + 1, &end);
    if (end == slash + 1 || *end || len > 32 || !ip4addr_aton(s, ip))
        return -1;
    ip4_addr_set_u32(mask, lwip_htonl(len ? 0xffffffffu << (32 - len) : 0));
    return 0;
}

struct netif *net_init(const struct guest_boot *boot)
{
    char ipbuf[48], gwbuf[24], a[16], m[16], g[16];
    ip4_addr_t ip, mask, gw;
    if (!us_cmdline_str("net.ip", ipbuf, sizeof ipbuf, "") || parse_cidr(ipbuf, &ip, &mask))
        us_panic("net: net.ip=A.B.C.D/len is required (e.g. net.ip=10.77.0.2/24)\n");
    ip4_addr_set_zero(&gw);
    if (us_cmdline_str("net.gw", gwbuf, sizeof gwbuf, "") && !ip4addr_aton(gwbuf, &gw))
        us_panic("net: net.gw=%s is not an IPv4 address\n", gwbuf);

    uint8_t mac[6];
    if (vnet_init(boot, mac))
        us_panic("net: no virtio-net device\n");

    lwip_init();
    memcpy(nif.hwaddr, mac, sizeof mac);
    if (!netif_add(&nif, &ip, &mask, &gw, NULL, nif_init, netif_input))
        us_panic("net: netif_add failed\n");
    netif_set_default(&nif);
    netif_set_link_up(&nif);
    netif_set_up(&nif);
    us_printf("net: %s mask %s gw %s mac %02x:%02x:%02x:%02x:%02x:%02x\n", ip4addr_ntoa_r(&ip, a, sizeof a),
              ip4addr_ntoa_r(&mask, m, sizeof m), ip4addr_ntoa_r(&gw, g, sizeof g), mac[0], mac[1], mac[2],
              mac[3], mac[4], mac[5]);
    return &nif;
}

int net_poll(void)
{
    unsigned n = vnet_rx_poll(deliver, &nif);
    sys_check_timeouts();
    n += drain_backlog();
    vnet_kick();
    return n != 0;
}

/* US_HALT_MOVED: this VM took over from a failed host. Whatever that host sent after the
 * last checkpoint was never released, and what peers sent since then reached nobody.
 * Rather than wait for timers (a client's TCP retransmission waits at least 200 ms),
 * announce our address, resend our own unacknowledged data at once, and send each peer
 * three duplicate ACKs, which make a peer with several segments in flight fast-retransmit
 * (a peer with one request in flight still waits for its own timer). */
static void net_moved(void)
{
    etharp_gratuitous(&nif);
    for (struct tcp_pcb *pcb = tcp_active_pcbs; pcb != NULL; pcb = pcb->next) {
        if (pcb->state != ESTABLISHED && pcb->state != CLOSE_WAIT)
            continue;
        if (pcb->unacked != NULL)
            tcp_rexmit_rto(pcb);
        for (int i = 0; i < 3; i++)
            tcp_send_empty_ack(pcb);
    }
}

void net_run(void)
{
    const uint64_t spin = us_ns_to_tsc(us_cmdline_u64("net.spin_us", 200) * 1000);
    const int can_halt = us_under_understudy();
    uint64_t last_busy = us_rdtsc(), last_check = 0;
    for (;;) {
        if (net_poll()) {
            last_busy = us_rdtsc();
            continue;
        }
        if (!can_halt || us_rdtsc() - last_busy < spin) {
            us_pause();
            continue;
        }
        /* Idle: sleep until the next lwIP timer; a received frame wakes us earlier.
         * With a backlog, TX completions (which do not wake us) are awaited in 1 ms steps. */
        uint32_t ms = backlog_count ? 1 : sys_timeouts_sleeptime();
        if (ms > HALT_MAX_MS)
            ms = HALT_MAX_MS;
        uint64_t now = us_now_ns();
        if (now - last_check >= STATUS_CHECK_NS) {
            last_check = now;
            vnet_check_broken();
        }
        if (us_halt_until(now + ms * 1000000ull) == US_HALT_MOVED)
            net_moved();
    }
}
