//! natsgate's own lame duck mode, as nats-server's: when natsgate stops (SIGTERM), every
//! established client gets an asynchronous INFO with `"ldm": true` at once (clients then
//! prefer other servers, and reconnect elsewhere before they are cut), and the connections are
//! closed one by one, spread evenly over `shutdown.drain_timeout`, not all at its end: no
//! reconnect herd at the edge.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, Info, Rewrite};

/// Shared by every relay of one proxy.
pub(crate) struct LameDuck {
    /// Fired when shutdown starts (the same token that closes pending connections).
    pub(crate) signal: CancellationToken,
    schedule: OnceLock<Schedule>,
    /// Close slots handed out so far.
    next: AtomicUsize,
}

struct Schedule {
    start: Instant,
    drain: Duration,
    /// Established connections when shutdown started: the slots the drain is divided into.
    connections: usize,
    /// The INFO the lame-duck announcement is built from (no nonce, no client id).
    info: Info,
}

impl LameDuck {
    pub(crate) fn new(signal: CancellationToken) -> LameDuck {
        LameDuck {
            signal,
            schedule: OnceLock::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Starts lame duck mode: `connections` established connections are to be closed over
    /// `drain`; `latest` is the most recent upstream INFO. Then fires the signal.
    pub(crate) fn begin(&self, drain: Duration, connections: usize, latest: Option<&Info>) {
        let mut info = latest.cloned().unwrap_or_default();
        info.remove("client_id");
        let _ = self.schedule.set(Schedule {
            start: Instant::now(),
            drain,
            connections,
            info,
        });
        self.signal.cancel();
    }

    /// The announcement for one client: its INFO rewritten as all its INFOs are, with
    /// `"ldm": true`.
    pub(crate) fn announcement(&self, rewrite: &Rewrite) -> Vec<u8> {
        let empty = Info::default();
        let info = self.schedule.get().map_or(&empty, |s| &s.info);
        protocol::ldm_info(info, rewrite)
    }

    /// When this connection is closed: connections take the next slot as they learn of the
    /// shutdown, and slot `k` of `n` closes at `k / n` of the drain, so the last one goes just
    /// before the drain ends. Connections that leave earlier by themselves are not waited for.
    pub(crate) fn close_at(&self) -> Instant {
        let Some(s) = self.schedule.get() else {
            return Instant::now();
        };
        let slot = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let slots = s.connections.max(slot);
        s.start + s.drain.mul_f64(slot as f64 / (slots as f64 + 1.0))
    }
}
