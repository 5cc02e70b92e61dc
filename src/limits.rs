//! The connection limits checked at accept, and each connection's place in them.
//!
//! Counts are taken at accept, before any upstream dial, so a flood never reaches nats-server.
//! An [`Admission`] gives its place back when dropped, on whatever path the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::ListenerConfig;
use crate::metrics::{Metrics, Phase};

/// Connection counts the limits are checked against.
#[derive(Default)]
pub(crate) struct Limits {
    open: AtomicUsize,
    pending: AtomicUsize,
    /// Pending connections per client address; entries are removed when they reach zero, so
    /// the map holds only addresses that have a connection inside the window right now.
    pending_per_ip: Mutex<HashMap<IpAddr, usize>>,
    next_id: AtomicU64,
}

impl Limits {
    /// Admits a connection or says which limit it hit. Counts are taken here, before any
    /// upstream dial, so a flood never reaches nats-server.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        cfg: &ListenerConfig,
        metrics: &Arc<Metrics>,
    ) -> Option<Admission> {
        let mut per_ip = self
            .pending_per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let ip_count = per_ip.get(&ip).copied().unwrap_or(0);
        // The descriptor budget caps max_connections so the table never runs full.
        let max_connections = cfg.max_connections.min(crate::fdlimit::client_cap());
        if self.open.load(Ordering::Relaxed) >= max_connections
            || self.pending.load(Ordering::Relaxed) >= cfg.max_pending
            || ip_count >= cfg.pending_per_ip_cap()
        {
            return None;
        }
        per_ip.insert(ip, ip_count + 1);
        drop(per_ip);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.pending.fetch_add(1, Ordering::Relaxed);
        metrics.active(Phase::Pending).increment(1.0);
        Some(Admission {
            limits: self.clone(),
            metrics: metrics.clone(),
            ip,
            phase: Phase::Pending,
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    fn release_pending(&self, ip: IpAddr) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self
            .pending_per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        forget_one(&mut per_ip, ip);
    }

    /// Moves one pending connection's per-address count from `from` to `to`, unless `to` is
    /// already at its cap (then nothing changes and `false` is returned).
    fn move_pending(&self, from: IpAddr, to: IpAddr, cfg: &ListenerConfig) -> bool {
        let mut per_ip = self
            .pending_per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = per_ip.get(&to).copied().unwrap_or(0);
        if count >= cfg.pending_per_ip_cap() {
            return false;
        }
        per_ip.insert(to, count + 1);
        forget_one(&mut per_ip, from);
        true
    }

    /// Established connections now.
    pub(crate) fn established(&self) -> usize {
        self.open
            .load(Ordering::Relaxed)
            .saturating_sub(self.pending.load(Ordering::Relaxed))
    }

    /// Connections open now (pending and established).
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A connection's place in the limits and the active gauge. Dropping it, on whatever path the
/// connection ends, gives the place back, so the counts and `natsgate_connections_active`
/// always return to zero.
pub(crate) struct Admission {
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    ip: IpAddr,
    phase: Phase,
    id: u64,
}

impl Admission {
    /// The connection id used in log lines.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The connection turned out to come from `ip` (an inbound PROXY header): its per-address
    /// count moves there. `false` if `ip` is already at its cap: refuse it as a limit.
    pub(crate) fn rehome(&mut self, ip: IpAddr, cfg: &ListenerConfig) -> bool {
        if ip == self.ip || self.phase != Phase::Pending {
            return true;
        }
        let moved = self.limits.move_pending(self.ip, ip, cfg);
        if moved {
            self.ip = ip;
        }
        moved
    }

    /// The CONNECT went through: leave the pending counts.
    pub(crate) fn established(&mut self) {
        if self.phase == Phase::Pending {
            self.limits.release_pending(self.ip);
            self.metrics.active(Phase::Pending).decrement(1.0);
            self.metrics.active(Phase::Established).increment(1.0);
            self.phase = Phase::Established;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.phase == Phase::Pending {
            self.limits.release_pending(self.ip);
        }
        self.metrics.active(self.phase).decrement(1.0);
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn forget_one(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            per_ip.remove(&ip);
        }
    }
}
