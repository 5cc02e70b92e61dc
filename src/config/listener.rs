//! `[listener]`: where clients connect and how many may be admitted.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::value;

/// `[listener]`: the client-facing socket and the admission limits, checked at accept before
/// any upstream dial so that a flood never reaches nats-server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Where clients connect (nats-server's usual client port by default).
    #[serde(default = "default_bind", deserialize_with = "value::socket_addr")]
    pub bind: SocketAddr,
    /// Connections open at once, pending and established; more get
    /// `-ERR 'maximum connections exceeded'`.
    #[serde(default = "value::int::<65_536>", deserialize_with = "value::non_zero")]
    pub max_connections: usize,
    /// Connections still inside the authorization window: the ones that cost memory without
    /// having proven anything.
    #[serde(default = "value::int::<4_096>", deserialize_with = "value::non_zero")]
    pub max_pending: usize,
    /// Pending connections per client IP address, so one host cannot take all of
    /// `max_pending`. When set, a hard cap. When unset, an address may hold up to half of
    /// `max_pending` ([`ListenerConfig::pending_per_ip_cap`]): a NAT gateway's or a node's
    /// reconnect storm after a nats-server restart gets through, while one address can never
    /// take the pending slots other addresses need.
    #[serde(
        default,
        deserialize_with = "value::optional_non_zero",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_pending_per_ip: Option<usize>,
    /// Longest CONNECT line accepted, in bytes (nats-server's `max_control_line` default);
    /// below 64 no CONNECT fits.
    #[serde(
        default = "value::int::<4_096>",
        deserialize_with = "value::at_least::<64, _>"
    )]
    pub max_control_line: usize,
    /// `host:port` URLs of natsgate's own replicas. When set, every INFO a client receives
    /// carries exactly these as `connect_urls` (clients learn the gateways, never the servers
    /// behind them); unset, `connect_urls` follow `upstream.strip_connect_urls`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advertise: Vec<String>,
    /// `[listener.proxy_protocol]`: accept a PROXY v1/v2 header from a load balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<InboundProxyConfig>,
    /// Threads serving clients, each with its own event loop and its own listening socket
    /// (`SO_REUSEPORT`: the kernel spreads new connections over them); a connection stays on
    /// the thread that accepted it, so no connection's work wakes another thread. 0: one per
    /// CPU the process may use (its cgroup quota included). Takes effect at start.
    #[serde(default)]
    pub workers: usize,
}

/// `[listener.proxy_protocol]`: behind an L4 load balancer, the client's real address comes in
/// a PROXY header; it is believed only from these source networks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundProxyConfig {
    /// Source networks (CIDR) whose PROXY header is believed; a header from any other source,
    /// or a malformed one, is refused before any upstream dial.
    #[serde(deserialize_with = "value::non_empty")]
    pub trusted: Vec<ipnet::IpNet>,
    /// `true`: a trusted source must send a header. `false`: the header is optional.
    #[serde(default = "value::yes")]
    pub required: bool,
}

impl InboundProxyConfig {
    /// Whether a connection from `ip` may carry a PROXY header.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4222))
}

impl ListenerConfig {
    /// The number of client-serving threads: `workers`, or one per usable CPU when 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The pending connections one address may hold: `max_pending_per_ip` when set, else half
    /// of `max_pending` (at least 1).
    pub fn pending_per_ip_cap(&self) -> usize {
        self.max_pending_per_ip
            .unwrap_or((self.max_pending / 2).max(1))
    }
}
