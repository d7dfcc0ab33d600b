/* The relay's kernel data path: ChannelData <-> UDP for bound channels, in XDP.
 *
 * Compiled and loaded by BCC from firezone/relay/ebpf/loader.py.  It mirrors the
 * reference program (rust/relay/ebpf-turn-router, REFERENCE.md 3.4) for same-family
 * relaying (IPv4<->IPv4, IPv6<->IPv6); the userspace relay stays the authority:
 *
 *  - client -> LISTEN_PORT, ChannelData on a bound channel with length == UDP payload - 4:
 *    the 4-byte header is stripped and the payload leaves from the allocation port to the
 *    peer (XDP_TX);
 *  - peer -> allocation port (LOWEST..HIGHEST) of a bound (port, peer): a ChannelData
 *    header is prepended and the message leaves from LISTEN_PORT to the client (XDP_TX);
 *  - hairpin: a peer address equal to the relay's public address is another allocation
 *    here, so the message goes straight to that allocation's client;
 *  - everything else is XDP_PASS.  The reference drops ChannelData without a map entry and
 *    ChannelData whose length disagrees with the UDP length; here both go to userspace, which
 *    relays padded ChannelData and counts and drops the rest, so the kernel never decides
 *    differently from the userspace relay.
 *
 * Maps are keyed as the reference's: big-endian byte arrays, one pair per family.
 * Checksums are updated incrementally (RFC 1624 eqn. 3); a zero IPv4 UDP checksum stays
 * zero; IPv6 packets without a UDP checksum are passed.  TOS/traffic class, ID, fragment
 * flags, flow label and TTL/hop limit are preserved.  The Ethernet addresses are swapped:
 * the frame goes back to the neighbour it came from (the relay's gateway).
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#define CHANNEL_DATA_HEADER 4
#define MIN_CHANNEL 0x4000
#define MAX_CHANNEL 0x7FFF
#define DNS_PORT 53

/* Counter slots of COUNTERS (firezone/relay/ebpf/maps.py names them). */
#define TO_PEER_PACKETS 0
#define TO_PEER_BYTES 1
#define TO_CLIENT_PACKETS 2
#define TO_CLIENT_BYTES 3
#define NUM_COUNTERS 4

struct client_and_channel_v4 {
    __u8 ip[4];
    __u8 port[2];
    __u8 channel[2];
};

struct port_and_peer_v4 {
    __u8 ip[4];
    __u8 allocation_port[2];
    __u8 peer_port[2];
};

struct client_and_channel_v6 {
    __u8 ip[16];
    __u8 port[2];
    __u8 channel[2];
};

struct port_and_peer_v6 {
    __u8 ip[16];
    __u8 allocation_port[2];
    __u8 peer_port[2];
};

/* Written once by userspace before attaching; all zero means "relay nothing". */
struct relay_config {
    __u8 public_ip4[4];
    __u8 public_ip6[16];
    __u16 listen_port;   /* host byte order */
    __u16 lowest_port;
    __u16 highest_port;
    __u16 max_ip_len;    /* interface MTU: longer results go to userspace to be fragmented */
};

BPF_HASH(CHAN_TO_UDP_44, struct client_and_channel_v4, struct port_and_peer_v4, 65536);
BPF_HASH(UDP_TO_CHAN_44, struct port_and_peer_v4, struct client_and_channel_v4, 65536);
BPF_HASH(CHAN_TO_UDP_66, struct client_and_channel_v6, struct port_and_peer_v6, 65536);
BPF_HASH(UDP_TO_CHAN_66, struct port_and_peer_v6, struct client_and_channel_v6, 65536);
BPF_ARRAY(CONFIG, struct relay_config, 1);
BPF_PERCPU_ARRAY(COUNTERS, __u64, NUM_COUNTERS);

/* ---- checksums ------------------------------------------------------------------------- */

/* One's-complement sum of `bytes` (even, constant) bytes read as 16-bit words in memory
 * order.  Sums are byte-order independent, so packet words need no swapping. */
static __always_inline __u32 sum16(const void *p, int bytes)
{
    const __u16 *w = p;
    __u32 s = 0;
#pragma unroll
    for (int i = 0; i < bytes / 2; i++)
        s += w[i];
    return s;
}

static __always_inline __u16 fold(__u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)s;
}

/* RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), with m and m' the sums of the removed and the
 * added words. */
static __always_inline __u16 csum_update(__u16 check, __u32 removed, __u32 added)
{
    __u32 s = (__u16)~check;
    s += (__u16)~fold(removed);
    s += fold(added);
    return (__u16)~fold(s);
}

/* A computed UDP checksum of 0 is sent as 0xffff (RFC 768): 0 means "none". */
static __always_inline __u16 udp_csum_update(__u16 check, __u32 removed, __u32 added)
{
    __u16 c = csum_update(check, removed, added);
    return c ? c : 0xffff;
}

static __always_inline void count(int slot_packets, __u64 bytes)
{
    int slot = slot_packets;
    __u64 *v = COUNTERS.lookup(&slot);
    if (v)
        *v += 1;
    slot = slot_packets + 1;
    v = COUNTERS.lookup(&slot);
    if (v)
        *v += bytes;
}

static __always_inline __u16 be16(const __u8 b[2])
{
    return ((__u16)b[0] << 8) | b[1];
}

static __always_inline int same_bytes(const __u8 *a, const __u8 *b, int n)
{
    __u8 diff = 0;
#pragma unroll
    for (int i = 0; i < n; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

static __always_inline void swap_macs(struct ethhdr *eth)
{
    __u8 tmp[ETH_ALEN];
    __builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

/* Length of the frame as a scalar (root may subtract packet pointers). */
static __always_inline __u64 frame_len(struct xdp_md *ctx)
{
    return (__u64)((void *)(long)ctx->data_end - (void *)(long)ctx->data);
}

/* ---- IPv4 ------------------------------------------------------------------------------ */

struct headers_v4 {
    struct ethhdr eth;
    struct iphdr ip;
    struct udphdr udp;
} __attribute__((packed));

#define HDR4 sizeof(struct headers_v4)

/* Client -> peer: strip the ChannelData header.  `h` holds the packet's headers. */
static __always_inline int to_peer_v4(struct xdp_md *ctx, struct headers_v4 *h, __u16 cd_len,
                                      struct port_and_peer_v4 *route)
{
    __u16 old_ports[2] = {h->udp.source, h->udp.dest};
    __u16 old_len = h->udp.len;
    __u32 old_addrs = sum16(&h->ip.saddr, 8);
    __u32 removed_udp = old_addrs + old_len + old_len + sum16(old_ports, 4);
    __u32 removed_ip = old_addrs + h->ip.tot_len;
    __u8 *cd = (__u8 *)(long)ctx->data + HDR4;
    if ((void *)(cd + CHANNEL_DATA_HEADER) > (void *)(long)ctx->data_end)
        return XDP_PASS;
    removed_udp += sum16(cd, CHANNEL_DATA_HEADER);

    h->ip.saddr = h->ip.daddr;
    __builtin_memcpy(&h->ip.daddr, route->ip, 4);
    h->ip.tot_len = bpf_htons(bpf_ntohs(h->ip.tot_len) - CHANNEL_DATA_HEADER);
    __builtin_memcpy(&h->udp.source, route->allocation_port, 2);
    __builtin_memcpy(&h->udp.dest, route->peer_port, 2);
    h->udp.len = bpf_htons(bpf_ntohs(old_len) - CHANNEL_DATA_HEADER);
    __u16 new_ports[2] = {h->udp.source, h->udp.dest};
    __u32 new_addrs = sum16(&h->ip.saddr, 8);
    h->ip.check = csum_update(h->ip.check, removed_ip, new_addrs + h->ip.tot_len);
    if (h->udp.check)
        h->udp.check = udp_csum_update(h->udp.check, removed_udp,
                                       new_addrs + h->udp.len + h->udp.len + sum16(new_ports, 4));
    swap_macs(&h->eth);

    if (bpf_xdp_adjust_head(ctx, CHANNEL_DATA_HEADER))
        return XDP_PASS;
    void *data = (void *)(long)ctx->data;
    if (data + HDR4 > (void *)(long)ctx->data_end)
        return XDP_DROP; /* cannot happen: the frame only lost its first 4 bytes */
    __builtin_memcpy(data, h, HDR4);
    count(TO_PEER_PACKETS, cd_len);
    return XDP_TX;
}

/* Peer -> client: prepend a ChannelData header. */
static __always_inline int to_client_v4(struct xdp_md *ctx, struct headers_v4 *h,
                                        struct client_and_channel_v4 *route,
                                        struct relay_config *cfg)
{
    __u16 payload = bpf_ntohs(h->udp.len) - sizeof(struct udphdr);
    if (bpf_ntohs(h->ip.tot_len) + CHANNEL_DATA_HEADER > cfg->max_ip_len)
        return XDP_PASS;
    __u16 cd[2] = {bpf_htons(be16(route->channel)), bpf_htons(payload)};
    __u16 old_ports[2] = {h->udp.source, h->udp.dest};
    __u16 old_len = h->udp.len;
    __u32 old_addrs = sum16(&h->ip.saddr, 8);
    __u32 removed_udp = old_addrs + old_len + old_len + sum16(old_ports, 4);
    __u32 removed_ip = old_addrs + h->ip.tot_len;

    h->ip.saddr = h->ip.daddr;
    __builtin_memcpy(&h->ip.daddr, route->ip, 4);
    h->ip.tot_len = bpf_htons(bpf_ntohs(h->ip.tot_len) + CHANNEL_DATA_HEADER);
    h->udp.source = bpf_htons(cfg->listen_port);
    __builtin_memcpy(&h->udp.dest, route->port, 2);
    h->udp.len = bpf_htons(bpf_ntohs(old_len) + CHANNEL_DATA_HEADER);
    __u16 new_ports[2] = {h->udp.source, h->udp.dest};
    __u32 new_addrs = sum16(&h->ip.saddr, 8);
    h->ip.check = csum_update(h->ip.check, removed_ip, new_addrs + h->ip.tot_len);
    if (h->udp.check)
        h->udp.check = udp_csum_update(
            h->udp.check, removed_udp,
            new_addrs + h->udp.len + h->udp.len + sum16(new_ports, 4) + sum16(cd, 4));
    swap_macs(&h->eth);

    if (bpf_xdp_adjust_head(ctx, -CHANNEL_DATA_HEADER))
        return XDP_PASS;
    void *data = (void *)(long)ctx->data;
    if (data + HDR4 + CHANNEL_DATA_HEADER > (void *)(long)ctx->data_end)
        return XDP_DROP; /* cannot happen: the frame only grew */
    __builtin_memcpy(data, h, HDR4);
    __builtin_memcpy(data + HDR4, cd, CHANNEL_DATA_HEADER);
    count(TO_CLIENT_PACKETS, payload);
    return XDP_TX;
}

/* Client -> client on this relay: swap the channel number, readdress, keep the length. */
static __always_inline int hairpin_v4(struct xdp_md *ctx, struct headers_v4 *h, __u16 cd_len,
                                      struct client_and_channel_v4 *route)
{
    void *data = (void *)(long)ctx->data;
    __u8 *cdp = data + HDR4;
    if ((void *)(cdp + CHANNEL_DATA_HEADER) > (void *)(long)ctx->data_end)
        return XDP_PASS;
    __u16 old_ports[2] = {h->udp.source, h->udp.dest};
    __u16 old_channel = *(__u16 *)cdp;
    __u32 old_addrs = sum16(&h->ip.saddr, 8);

    h->ip.saddr = h->ip.daddr;
    __builtin_memcpy(&h->ip.daddr, route->ip, 4);
    h->udp.source = h->udp.dest; /* LISTEN_PORT, which the packet was sent to */
    __builtin_memcpy(&h->udp.dest, route->port, 2);
    __u16 new_ports[2] = {h->udp.source, h->udp.dest};
    __u16 new_channel;
    __builtin_memcpy(&new_channel, route->channel, 2);
    __u32 new_addrs = sum16(&h->ip.saddr, 8);
    h->ip.check = csum_update(h->ip.check, old_addrs, new_addrs);
    if (h->udp.check)
        h->udp.check = udp_csum_update(h->udp.check,
                                       old_addrs + sum16(old_ports, 4) + old_channel,
                                       new_addrs + sum16(new_ports, 4) + new_channel);
    swap_macs(&h->eth);
    __builtin_memcpy(data, h, HDR4);
    *(__u16 *)cdp = new_channel;
    count(TO_PEER_PACKETS, cd_len);
    count(TO_CLIENT_PACKETS, cd_len);
    return XDP_TX;
}

static __always_inline int handle_v4(struct xdp_md *ctx, struct relay_config *cfg)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    if (data + HDR4 > data_end)
        return XDP_PASS;
    struct headers_v4 h;
    __builtin_memcpy(&h, data, HDR4);
    if (h.ip.version != 4 || h.ip.ihl != 5 || h.ip.protocol != IPPROTO_UDP)
        return XDP_PASS;
    if (h.ip.frag_off & bpf_htons(0x3fff)) /* a fragment: userspace gets the reassembly */
        return XDP_PASS;
    __u16 udp_len = bpf_ntohs(h.udp.len);
    if (udp_len < sizeof(struct udphdr) || bpf_ntohs(h.ip.tot_len) != sizeof(struct iphdr) + udp_len)
        return XDP_PASS;
    if (frame_len(ctx) < sizeof(struct ethhdr) + sizeof(struct iphdr) + udp_len)
        return XDP_PASS; /* truncated */
    __u16 sport = bpf_ntohs(h.udp.source);
    __u16 dport = bpf_ntohs(h.udp.dest);
    if (sport == DNS_PORT)
        return XDP_PASS;

    if (dport == cfg->listen_port) {
        __u8 *cd = data + HDR4;
        if ((void *)(cd + CHANNEL_DATA_HEADER) > data_end)
            return XDP_PASS;
        __u16 channel = ((__u16)cd[0] << 8) | cd[1];
        __u16 cd_len = ((__u16)cd[2] << 8) | cd[3];
        if (channel < MIN_CHANNEL || channel > MAX_CHANNEL)
            return XDP_PASS; /* STUN */
        if (cd_len != udp_len - sizeof(struct udphdr) - CHANNEL_DATA_HEADER)
            return XDP_PASS; /* padded or malformed: userspace decides */
        struct client_and_channel_v4 key;
        __builtin_memcpy(key.ip, &h.ip.saddr, 4);
        __builtin_memcpy(key.port, &h.udp.source, 2);
        key.channel[0] = cd[0];
        key.channel[1] = cd[1];
        struct port_and_peer_v4 *route = CHAN_TO_UDP_44.lookup(&key);
        if (!route)
            return XDP_PASS;
        if (same_bytes(route->ip, cfg->public_ip4, 4)) {
            /* The peer is an allocation on this relay: look it up from its side. */
            struct port_and_peer_v4 other;
            __builtin_memcpy(other.ip, route->ip, 4);
            __builtin_memcpy(other.allocation_port, route->peer_port, 2);
            __builtin_memcpy(other.peer_port, route->allocation_port, 2);
            struct client_and_channel_v4 *dest = UDP_TO_CHAN_44.lookup(&other);
            if (!dest)
                return XDP_PASS;
            return hairpin_v4(ctx, &h, cd_len, dest);
        }
        return to_peer_v4(ctx, &h, cd_len, route);
    }
    if (dport >= cfg->lowest_port && dport <= cfg->highest_port) {
        struct port_and_peer_v4 key;
        __builtin_memcpy(key.ip, &h.ip.saddr, 4);
        __builtin_memcpy(key.allocation_port, &h.udp.dest, 2);
        __builtin_memcpy(key.peer_port, &h.udp.source, 2);
        struct client_and_channel_v4 *route = UDP_TO_CHAN_44.lookup(&key);
        if (!route)
            return XDP_PASS;
        return to_client_v4(ctx, &h, route, cfg);
    }
    return XDP_PASS;
}

/* ---- IPv6 ------------------------------------------------------------------------------ */

struct headers_v6 {
    struct ethhdr eth;
    struct ipv6hdr ip;
    struct udphdr udp;
} __attribute__((packed));

#define HDR6 sizeof(struct headers_v6)

static __always_inline int to_peer_v6(struct xdp_md *ctx, struct headers_v6 *h, __u16 cd_len,
                                      struct port_and_peer_v6 *route)
{
    __u16 old_ports[2] = {h->udp.source, h->udp.dest};
    __u16 old_len = h->udp.len;
    __u32 removed = sum16(&h->ip.saddr, 32) + old_len + old_len + sum16(old_ports, 4);
    __u8 *cd = (__u8 *)(long)ctx->data + HDR6;
    if ((void *)(cd + CHANNEL_DATA_HEADER) > (void *)(long)ctx->data_end)
        return XDP_PASS;
    removed += sum16(cd, CHANNEL_DATA_HEADER);

    h->ip.saddr = h->ip.daddr;
    __builtin_memcpy(&h->ip.daddr, route->ip, 16);
    h->ip.payload_len = bpf_htons(bpf_ntohs(h->ip.payload_len) - CHANNEL_DATA_HEADER);
    __builtin_memcpy(&h->udp.source, route->allocation_port, 2);
    __builtin_memcpy(&h->udp.dest, route->peer_port, 2);
    h->udp.len = bpf_htons(bpf_ntohs(old_len) - CHANNEL_DATA_HEADER);
    __u16 new_ports[2] = {h->udp.source, h->udp.dest};
    h->udp.check = udp_csum_update(h->udp.check, removed,
                                   sum16(&h->ip.saddr, 32) + h->udp.len + h->udp.len +
                                       sum16(new_ports, 4));
    swap_macs(&h->eth);

    if (bpf_xdp_adjust_head(ctx, CHANNEL_DATA_HEADER))
        return XDP_PASS;
    void *data = (void *)(long)ctx->data;
    if (data + HDR6 > (void *)(long)ctx->data_end)
        return XDP_DROP;
    __builtin_memcpy(data, h, HDR6);
    count(TO_PEER_PACKETS, cd_len);
    return XDP_TX;
}

static __always_inline int to_client_v6(struct xdp_md *ctx, struct headers_v6 *h,
                                        struct client_and_channel_v6 *route,
                                        struct relay_config *cfg)
{
    __u16 payload = bpf_ntohs(h->udp.len) - sizeof(struct udphdr);
    if (sizeof(struct ipv6hdr) + bpf_ntohs(h->ip.payload_len) + CHANNEL_DATA_HEADER >
        cfg->max_ip_len)
        return XDP_PASS;
    __u16 cd[2] = {bpf_htons(be16(route->channel)), bpf_htons(payload)};
    __u16 old_ports[2] = {h->udp.source, h->udp.dest};
    __u16 old_len = h->udp.len;
    __u32 removed = sum16(&h->ip.saddr, 32) + old_len + old_len + sum16(old_ports, 4);

    h->ip.saddr = h->ip.daddr;
    __builtin_memcpy(&h->ip.daddr, route->ip, 16);
    h->ip.payload_len = bpf_htons(bpf_ntohs(h->ip.payload_len) + CHANNEL_DATA_HEADER);
    h->udp.source = bpf_htons(cfg->listen_port);
    __builtin_memcpy(&h->udp.dest, route->port, 2);
    h->udp.len = bpf_htons(bpf_ntohs(old_len) + CHANNEL_DATA_HEADER);
    __u16 new_ports[2] = {h->udp.source, h->udp.dest};
    h->udp.check = udp_csum_update(h->udp.check, removed,
                                   sum16(&h->ip.saddr, 32) + h->udp.len + h->udp.len +
                                       sum16(new_ports, 4) + sum16(cd, 4));
    swap_macs(&h->eth);

    if (bpf_xdp_adjust_head(ctx, -CHANNEL_DATA_HEADER))
        return XDP_PASS;
    void *data = (void *)(long)ctx->data;
    if (data + HDR6 + CHANNEL_DATA_HEADER > (void *)(long)ctx->data_end)
        return XDP_DROP;
    __builtin_memcpy(data, h, HDR6);
    __builtin_memcpy(data + HDR6, cd, CHANNEL_DATA_HEADER);
    count(TO_CLIENT_PACKETS, payload);
    return XDP_TX;
}

static __always_inline int hairpin_v6(struct xdp_md *ctx, struct headers_v6 *h, __u16 cd_len,
                                      struct client_and_channel_v6 *route)
{
    void *data = (void *)(long)ctx->data;
    __u8 *cdp = data + HDR6;
    if ((void *)(cdp + CHANNEL_DATA_HEADER) > (void *)(long)ctx->data_end)
        return XDP_PASS;
    __u16 old_ports[2] = {h->udp.source, h->udp.dest};
    __u16 old_channel = *(__u16 *)cdp;
    __u32 removed = sum16(&h->ip.saddr, 32) + sum16(old_ports, 4) + old_channel;

    h->ip.saddr = h->ip.daddr;
    __builtin_memcpy(&h->ip.daddr, route->ip, 16);
    h->udp.source = h->udp.dest;
    __builtin_memcpy(&h->udp.dest, route->port, 2);
    __u16 new_ports[2] = {h->udp.source, h->udp.dest};
    __u16 new_channel;
    __builtin_memcpy(&new_channel, route->channel, 2);
    h->udp.check = udp_csum_update(h->udp.check, removed,
                                   sum16(&h->ip.saddr, 32) + sum16(new_ports, 4) + new_channel);
    swap_macs(&h->eth);
    __builtin_memcpy(data, h, HDR6);
    *(__u16 *)cdp = new_channel;
    count(TO_PEER_PACKETS, cd_len);
    count(TO_CLIENT_PACKETS, cd_len);
    return XDP_TX;
}

static __always_inline int handle_v6(struct xdp_md *ctx, struct relay_config *cfg)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    if (data + HDR6 > data_end)
        return XDP_PASS;
    struct headers_v6 h;
    __builtin_memcpy(&h, data, HDR6);
    if (h.ip.version != 6 || h.ip.nexthdr != IPPROTO_UDP) /* extension headers: userspace */
        return XDP_PASS;
    __u16 udp_len = bpf_ntohs(h.udp.len);
    if (udp_len < sizeof(struct udphdr) || bpf_ntohs(h.ip.payload_len) != udp_len)
        return XDP_PASS;
    if (frame_len(ctx) < sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + udp_len)
        return XDP_PASS;
    if (h.udp.check == 0) /* invalid in IPv6 (RFC 8200 8.1): not ours to repair */
        return XDP_PASS;
    __u16 sport = bpf_ntohs(h.udp.source);
    __u16 dport = bpf_ntohs(h.udp.dest);
    if (sport == DNS_PORT)
        return XDP_PASS;

    if (dport == cfg->listen_port) {
        __u8 *cd = data + HDR6;
        if ((void *)(cd + CHANNEL_DATA_HEADER) > data_end)
            return XDP_PASS;
        __u16 channel = ((__u16)cd[0] << 8) | cd[1];
        __u16 cd_len = ((__u16)cd[2] << 8) | cd[3];
        if (channel < MIN_CHANNEL || channel > MAX_CHANNEL)
            return XDP_PASS;
        if (cd_len != udp_len - sizeof(struct udphdr) - CHANNEL_DATA_HEADER)
            return XDP_PASS;
        struct client_and_channel_v6 key;
        __builtin_memcpy(key.ip, &h.ip.saddr, 16);
        __builtin_memcpy(key.port, &h.udp.source, 2);
        key.channel[0] = cd[0];
        key.channel[1] = cd[1];
        struct port_and_peer_v6 *route = CHAN_TO_UDP_66.lookup(&key);
        if (!route)
            return XDP_PASS;
        if (same_bytes(route->ip, cfg->public_ip6, 16)) {
            struct port_and_peer_v6 other;
            __builtin_memcpy(other.ip, route->ip, 16);
            __builtin_memcpy(other.allocation_port, route->peer_port, 2);
            __builtin_memcpy(other.peer_port, route->allocation_port, 2);
            struct client_and_channel_v6 *dest = UDP_TO_CHAN_66.lookup(&other);
            if (!dest)
                return XDP_PASS;
            return hairpin_v6(ctx, &h, cd_len, dest);
        }
        return to_peer_v6(ctx, &h, cd_len, route);
    }
    if (dport >= cfg->lowest_port && dport <= cfg->highest_port) {
        struct port_and_peer_v6 key;
        __builtin_memcpy(key.ip, &h.ip.saddr, 16);
        __builtin_memcpy(key.allocation_port, &h.udp.dest, 2);
        __builtin_memcpy(key.peer_port, &h.udp.source, 2);
        struct client_and_channel_v6 *route = UDP_TO_CHAN_66.lookup(&key);
        if (!route)
            return XDP_PASS;
        return to_client_v6(ctx, &h, route, cfg);
    }
    return XDP_PASS;
}

int relay_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    int zero = 0;
    struct relay_config *cfg = CONFIG.lookup(&zero);
    if (!cfg || cfg->listen_port == 0)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP))
        return handle_v4(ctx, cfg);
    if (eth->h_proto == bpf_htons(ETH_P_IPV6))
        return handle_v6(ctx, cfg);
    return XDP_PASS;
}
