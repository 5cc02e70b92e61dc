//! The descriptor budget: how many clients and admin connections the process's
//! `RLIMIT_NOFILE` can hold, decided once at start-up.
//!
//! Container runtimes and systemd commonly start a process with a soft limit of 1,024 and a
//! much higher hard limit. Go programs (nats-server among them) raise the soft limit to the
//! hard one at start-up; [`raise_nofile`] does the same. The limit is then split:
//!
//! - [`FIXED_RESERVE`] descriptors for the process itself: standard streams, the listeners,
//!   the runtime's poller and wakers, signal handling, the upstream probe, certificate
//!   watching and re-reading, logging, and the socket of a client being refused;
//! - the admin server's connection cap ([`Budget::admin_connections`]), so an admin flood can
//!   never take a descriptor a client needs;
//! - two descriptors per client (its socket and its upstream socket) for the rest.
//!
//! The number of clients that fit is installed once with [`install`]; the accept path
//! ([`crate::listener`]) refuses clients beyond it with `maximum connections exceeded`, as it
//! does for `max_connections`, instead of running the table full and failing accepts with
//! `EMFILE`. Without [`install`] (the library embedded in tests) nothing is capped.

use std::sync::OnceLock;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors one client costs: its own socket and its upstream connection.
pub const PER_CLIENT: u64 = 2;
/// Descriptors the process needs besides clients and admin connections. Measured at about a
/// dozen on an idle natsgate (stdio, two listeners, epoll, eventfd, signal pipe, inotify);
/// the rest is headroom for the upstream probe and a hedged dial, certificate re-reads and a
/// client socket that is being refused.
pub const FIXED_RESERVE: u64 = 32;
/// Bounds of the admin connection cap, which is an eighth of the limit between them.
pub const ADMIN_CONNECTIONS_MIN: u64 = 16;
pub const ADMIN_CONNECTIONS_MAX: u64 = 512;

/// What raising the soft limit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raise {
    /// The soft limit the process was started with (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now in force.
    pub after: Option<u64>,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
    /// Why the soft limit could not be raised, if it could not.
    pub error: Option<String>,
}

impl Raise {
    /// One line for the start-up log and `--check-config`.
    pub fn describe(&self) -> String {
        let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |n| n.to_string());
        let mut s = format!("descriptor limit (RLIMIT_NOFILE) {}", show(self.after));
        if self.before != self.after {
            s += &format!(", raised from {}", show(self.before));
        }
        s += &format!(" (hard limit {})", show(self.hard));
        if let Some(e) = &self.error {
            s += &format!("; could not raise it: {e}");
        }
        s
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go's runtime does at start-up.
pub fn raise_nofile() -> Raise {
    let now = getrlimit(Resource::Nofile);
    let mut raise = Raise {
        before: now.current,
        after: now.current,
        hard: now.maximum,
        error: None,
    };
    if now.current == now.maximum {
        return raise;
    }
    // An unlimited hard limit cannot be the soft one on Linux (it is capped by fs.nr_open):
    // keep what we have then.
    let Some(hard) = now.maximum else {
        raise.error = Some("the hard limit is unlimited; set a finite one".into());
        return raise;
    };
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: now.maximum,
        },
    ) {
        Ok(()) => raise.after = getrlimit(Resource::Nofile).current,
        Err(e) => raise.error = Some(e.to_string()),
    }
    raise
}

/// How a descriptor limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft limit this budget was made for.
    pub limit: u64,
    /// The admin server's cap on concurrent connections.
    pub admin_connections: usize,
    /// Descriptors kept back from clients: [`FIXED_RESERVE`] plus the admin cap.
    pub reserve: u64,
    /// Concurrent clients the limit holds.
    pub clients: usize,
}

impl Budget {
    /// The budget for a soft limit (`None`: unlimited).
    pub fn for_limit(limit: Option<u64>) -> Budget {
        let limit = limit.unwrap_or(u64::MAX);
        let admin = (limit / 8).clamp(ADMIN_CONNECTIONS_MIN, ADMIN_CONNECTIONS_MAX);
        let reserve = FIXED_RESERVE + admin;
        let clients = limit.saturating_sub(reserve) / PER_CLIENT;
        Budget {
            limit,
            admin_connections: admin as usize,
            reserve,
            clients: usize::try_from(clients).unwrap_or(usize::MAX),
        }
    }

    /// The smallest soft limit whose budget holds `clients`.
    pub fn limit_for(clients: usize) -> u64 {
        let need = (clients as u64)
            .saturating_mul(PER_CLIENT)
            .saturating_add(FIXED_RESERVE);
        // The admin cap grows with the limit, but never past its maximum: search between.
        let (mut lo, mut hi) = (need, need.saturating_add(ADMIN_CONNECTIONS_MAX));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if Budget::for_limit(Some(mid)).clients >= clients {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// A warning when this budget cannot hold `max_connections`, naming what it holds and
    /// the limit that would.
    pub fn check(&self, max_connections: usize) -> Option<String> {
        if self.clients >= max_connections {
            return None;
        }
        Some(format!(
            "the descriptor limit {limit} holds {clients} clients, not listener.max_connections = \
             {max_connections}: each client needs {PER_CLIENT} descriptors (its socket and its \
             upstream) and {reserve} are reserved ({admin} admin connections, listeners, upstream \
             probes, certificate watching, logging); clients beyond {clients} are refused with \
             'maximum connections exceeded'. Raise the limit to at least {need} (systemd \
             LimitNOFILE=, ulimit -n, or the container's nofile ulimit) or lower max_connections",
            limit = self.limit,
            clients = self.clients,
            reserve = self.reserve,
            admin = self.admin_connections,
            need = Budget::limit_for(max_connections),
        ))
    }
}

static INSTALLED: OnceLock<Budget> = OnceLock::new();

/// Makes `budget` the process's budget (once; later calls change nothing). The binary calls
/// this at start-up; without it nothing is capped by descriptors.
pub fn install(budget: Budget) {
    let _ = INSTALLED.set(budget);
}

/// The number of clients the descriptor budget holds (unlimited when none is installed).
/// The accept path caps `max_connections` by it.
pub fn client_cap() -> usize {
    INSTALLED.get().map_or(usize::MAX, |b| b.clients)
}

/// The admin server's cap on concurrent connections.
pub fn admin_cap() -> usize {
    INSTALLED
        .get()
        .map_or(ADMIN_CONNECTIONS_MAX as usize, |b| b.admin_connections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_for_common_limits() {
        let b = Budget::for_limit(Some(256));
        assert_eq!((b.admin_connections, b.reserve, b.clients), (32, 64, 96));
        let b = Budget::for_limit(Some(1024));
        assert_eq!((b.admin_connections, b.reserve, b.clients), (128, 160, 432));
        let b = Budget::for_limit(Some(1 << 20));
        assert_eq!(b.admin_connections, 512);
        assert_eq!(b.clients, ((1 << 20) - 544) / 2);
        let b = Budget::for_limit(Some(10));
        assert_eq!((b.admin_connections, b.clients), (16, 0));
        assert!(Budget::for_limit(None).clients > 1 << 40);
    }

    #[test]
    fn limit_for_is_the_smallest_that_holds() {
        for clients in [0, 1, 96, 97, 300, 432, 433, 1000, 65_536] {
            let n = Budget::limit_for(clients);
            assert!(
                Budget::for_limit(Some(n)).clients >= clients,
                "{clients}: {n}"
            );
            if clients > 0 {
                assert!(
                    Budget::for_limit(Some(n - 1)).clients < clients,
                    "{clients}: {n}"
                );
            }
        }
        assert_eq!(Budget::limit_for(65_536), 65_536 * 2 + 32 + 512);
    }

    #[test]
    fn check_names_what_the_limit_holds_and_what_would_hold_the_config() {
        let b = Budget::for_limit(Some(256));
        assert_eq!(b.check(96), None);
        let w = b.check(65_536).expect("a warning");
        assert!(w.contains("holds 96 clients"), "{w}");
        assert!(w.contains("at least 131616"), "{w}");
    }
}
