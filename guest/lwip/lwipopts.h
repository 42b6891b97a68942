/*
 * lwIP configuration for Understudy guests: NO_SYS (one polling thread, no
 * OS), raw API only, IPv4 + ARP + ICMP + TCP. Sized for a server with a
 * hundred-odd concurrent connections; guest RAM is plentiful, so pools are
 * generous rather than tight (about 14 MiB of static pools in all).
 */
#ifndef US_LWIPOPTS_H
#define US_LWIPOPTS_H

#define NO_SYS 1
#define SYS_LIGHTWEIGHT_PROT 0 /* single-threaded, no interrupts */
#define LWIP_TIMERS 1
#define LWIP_SOCKET 0
#define LWIP_NETCONN 0
#define LWIP_NETIF_API 0

#define LWIP_IPV4 1
#define LWIP_IPV6 0
#define LWIP_ARP 1
#define LWIP_ETHERNET 1
#define LWIP_ICMP 1
#define LWIP_TCP 1
#define LWIP_UDP 0
#define LWIP_RAW 0
#define LWIP_DHCP 0
#define LWIP_AUTOIP 0
#define LWIP_IGMP 0
#define LWIP_DNS 0
#define IP_REASSEMBLY 0 /* TCP peers respect our MSS; nothing else arrives */
#define IP_FRAG 0
#define LWIP_HAVE_LOOPIF 0
#define LWIP_NETIF_LOOPBACK 0
#define LWIP_STATS 0

/* Heap for PBUF_RAM (tcp_write copies, ARP queue) and the pools. */
#define MEM_ALIGNMENT 8
#define MEM_SIZE (8 * 1024 * 1024)
#define PBUF_POOL_SIZE 1024 /* received frames are copied into these */
#define MEMP_NUM_PBUF 256
#define MEMP_NUM_TCP_PCB 160
#define MEMP_NUM_TCP_PCB_LISTEN 4
#define MEMP_NUM_TCP_SEG 8192 /* >= connections * TCP_SND_QUEUELEN in the worst case */
#define MEMP_NUM_ARP_QUEUE 64

#define ETHARP_TABLE_SIZE 64
#define ARP_QUEUEING 1

#define TCP_MSS 1460
#define TCP_WND (16 * TCP_MSS)
#define TCP_SND_BUF (16 * TCP_MSS)
#define TCP_SND_QUEUELEN (4 * TCP_SND_BUF / TCP_MSS)
#define TCP_LISTEN_BACKLOG 0
#define LWIP_TCP_KEEPALIVE 0
#define LWIP_TCP_TIMESTAMPS 0

/* Software checksums in both directions: no offloads are negotiated. */

#endif
