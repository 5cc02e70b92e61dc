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
    /// `max_pending`.
    #[serde(default = "value::int::<64>", deserialize_with = "value::non_zero")]
    pub max_pending_per_ip: usize,
    /// Longest CONNECT line accepted, in bytes (nats-server's `max_control_line` default);
    /// below 64 no CONNECT fits.
    #[serde(
        default = "value::int::<4_096>",
        deserialize_with = "value::at_least::<64, _>"
    )]
    pub max_control_line: usize,
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4222))
}
