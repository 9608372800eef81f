//! Transport settings shared by [`crate::Server`] and [`crate::Dialer`].

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Timeouts and limits of the transport. Every bound has its reason beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetConfig {
    /// Client side: the whole request (connect if needed, send, wait, read
    /// the response). Server side: reading a request, handling it and writing
    /// the answer; a stream still open after this is reset. Bounds the time a
    /// slow or stalled peer can hold a stream and its buffers.
    pub request_timeout: Duration,
    /// Dialing: the QUIC + TLS handshake. A dead address fails after this.
    pub connect_timeout: Duration,
    /// A connection with no traffic (keep-alives included) for this long is
    /// dead. Keep it a few keep-alive intervals long.
    pub idle_timeout: Duration,
    /// Keep-alive pings on idle connections, so a dead peer is noticed within
    /// `idle_timeout` and NAT/firewall state stays open.
    pub keep_alive_interval: Duration,
    /// First wait before redialing a peer after a failed dial; doubles per
    /// consecutive failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest wait between redials, so a restarted peer is found again soon.
    pub backoff_max: Duration,
    /// Server: most simultaneous connections; more are refused. A cluster has
    /// a handful of nodes plus its clients; this bounds memory per endpoint.
    pub max_connections: usize,
    /// Server: most simultaneous connections from one IP address, so one
    /// host cannot take every slot. Counted once QUIC has validated the
    /// address (a spoofed source address takes none).
    pub max_connections_per_address: usize,
    /// Server: most handshakes in progress from one IP address (counted,
    /// like connections, once QUIC has validated the address): clients of
    /// one host that stall their handshakes (each may take
    /// `connect_timeout`) hold this many slots at most, never the host's
    /// whole share of the connections.
    pub max_handshakes_per_address: usize,
    /// Server: most requests one client (by its certificate's name, across
    /// all its connections) may have in flight; more are refused at once
    /// ("retry in a moment"). Nodes are not limited here: their traffic is
    /// the cluster's own.
    pub max_requests_per_client: usize,
    /// Server: of `max_connections`, this many are kept for the cluster's
    /// nodes; clients together hold at most the rest once their handshake
    /// names them, so clients cannot keep a redialing node out.
    pub node_reserved_connections: usize,
    /// Most simultaneous request streams per connection (QUIC flow control
    /// enforces it on the peer). Bounds the work one peer can queue.
    pub max_concurrent_streams: u32,
    /// Server: total bytes of request bodies being read or handled at once,
    /// across all connections: half for the cluster's nodes, half for
    /// clients, counted as the bytes arrive. Bounds the memory peers can make
    /// the server hold, and clients cannot hold back Raft traffic.
    pub max_inflight_request_bytes: usize,
    /// Server: in-flight requests get this long to finish on shutdown before
    /// connections are closed.
    pub shutdown_grace: Duration,
    /// Dialer: local address of the client endpoint. `0.0.0.0:0` reaches IPv4
    /// peers; use `[::]:0` to reach IPv6 peers.
    pub client_bind_addr: SocketAddr,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_connections: 1024,
            max_connections_per_address: 256,
            max_handshakes_per_address: 16,
            max_requests_per_client: 256,
            node_reserved_connections: 64,
            max_concurrent_streams: 64,
            max_inflight_request_bytes: 256 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(5),
            client_bind_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        }
    }
}

impl NetConfig {
    /// The delay before redial number `failures` (1 = after the first
    /// failure): `backoff_initial * 2^(failures-1)`, capped at `backoff_max`.
    pub fn backoff_delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max)
    }
}

/// Socket buffer size asked for each QUIC endpoint. The kernel default
/// (about 208 KiB) overflows under bursts of many small requests, and every
/// dropped datagram costs a QUIC loss-recovery timeout; the kernel caps the
/// request at `net.core.rmem_max` / `wmem_max`.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Binds a UDP socket for a QUIC endpoint with enlarged buffers.
pub fn bind_udp(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    // Best effort: a smaller buffer still works, only with more drops.
    let _ = sock.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(UDP_BUFFER_BYTES);
    Ok(socket)
}
