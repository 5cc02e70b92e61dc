//! The state every connection of one running proxy shares. It lives in its own module so that
//! the accept loop, the sessions and the admin server depend on it without depending on
//! [`crate::gateway`], which starts them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HandshakeFirst};
use crate::lameduck::LameDuck;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::protocol::{self, Info, OwnInfoLine, Rewrite, TlsAdvert};
use crate::upstream::Upstreams;

/// Client-side TLS as configured in `[tls]`.
pub(crate) struct ClientTls {
    /// Accepts handshakes with the TLS material currently loaded (see [`crate::tls`]).
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// TLS first, classic (after INFO), or detected per connection.
    pub(crate) mode: HandshakeFirst,
    /// Plaintext clients are refused (`false`: INFO advertises `tls_available`).
    pub(crate) required: bool,
    /// Client certificates are required and verified (`ca_file`), as INFO's `tls_verify` says.
    pub(crate) verify: bool,
    /// `tls.timeout`: the handshake's own limit, inside the window.
    pub(crate) timeout: Duration,
}

/// State shared by every connection of one running proxy.
pub(crate) struct Shared {
    /// The current configuration; each connection takes a snapshot at accept, so a reload
    /// applies to new connections only.
    pub(crate) config: ArcSwap<Config>,
    /// Metric handles, resolved once.
    pub(crate) metrics: Arc<Metrics>,
    /// The upstream cluster and its health.
    pub(crate) upstreams: Upstreams,
    /// `None`: the client side is plaintext.
    pub(crate) client_tls: Option<ClientTls>,
    /// ADR-55: the trusted-proxy key that signs each upstream nonce.
    pub(crate) signer: Option<nkeys::KeyPair>,
    /// Open and pending connection counts the limits are checked against.
    pub(crate) limits: Arc<Limits>,
    /// Fired when shutdown starts: stop accepting, close pending connections, fail `/readyz`.
    pub(crate) stop_pending: CancellationToken,
    /// Fired when the drain period is over: close everything.
    pub(crate) stop_all: CancellationToken,
    /// Lame duck mode on natsgate's own shutdown; its signal is `stop_pending`.
    pub(crate) lame_duck: LameDuck,
    /// natsgate's own INFO lines (`upstream.dial = after_connect`), rendered once each.
    pub(crate) own_info: OwnInfoCache,
}

impl Shared {
    /// Starts a graceful shutdown: lame duck mode for established connections (announce, then
    /// close spread over `shutdown.drain_timeout`), pending connections closed, `/readyz` 503.
    pub(crate) fn begin_shutdown(&self) {
        if self.stop_pending.is_cancelled() {
            return;
        }
        let drain = self.config.load().shutdown.drain_timeout;
        let latest = self.upstreams.latest_info();
        let established = self.limits.established();
        self.lame_duck.begin(drain, established, latest.as_deref());
    }

    /// What INFO tells clients of the TCP listener about TLS: natsgate's own listener, not the
    /// upstream's.
    pub(crate) fn advert(&self) -> TlsAdvert {
        ClientTls::advert(self.client_tls.as_ref())
    }

    /// What a client refused at a limit receives: an INFO, then `-ERR 'maximum connections
    /// exceeded'`, the order nats-server uses (clients that see no INFO report "INFO not
    /// received" instead of the limit). The INFO is the latest upstream INFO without its nonce
    /// (it belongs to another connection), with the client's address and no client id, or a
    /// minimal valid INFO when no upstream has answered yet.
    pub(crate) fn limit_refusal(&self, client_ip: IpAddr, strip_connect_urls: bool) -> Vec<u8> {
        let mut info = match self.upstreams.latest_info() {
            Some(latest) => protocol::own_info(&latest, 0, client_ip),
            None => {
                let minimal = protocol::parse_info(MINIMAL_INFO).unwrap_or_default();
                protocol::own_info(&minimal, 0, client_ip)
            }
        };
        info.remove("client_id");
        let mut reply = protocol::rewrite_info(info, self.advert(), strip_connect_urls);
        reply.extend_from_slice(protocol::ERR_MAX_CONNECTIONS);
        reply
    }
}

/// natsgate's own INFO lines, each rendered once per latest upstream INFO and rewrite (see
/// [`OwnInfoLine`]): the clients of one proxy get a few kinds of INFO (one per listener and
/// TLS mode), each with its own `client_id` and `client_ip` filled in. A new latest INFO (the
/// upstream's configuration changed) replaces them all.
#[derive(Default)]
pub(crate) struct OwnInfoCache {
    /// `None`: this INFO cannot be rendered once (see [`OwnInfoLine::new`]).
    lines: std::sync::Mutex<Vec<OwnInfoEntry>>,
}

/// More kinds than listeners and TLS modes make: some are from before a reload.
const OWN_INFO_KINDS: usize = 16;

type OwnInfoEntry = (Arc<Info>, Rewrite, Option<Arc<OwnInfoLine>>);

impl OwnInfoCache {
    /// The INFO line [`protocol::own_info`] and `rewrite` make of `latest` for one client.
    pub(crate) fn render(
        &self,
        latest: &Arc<Info>,
        rewrite: &Rewrite,
        client_id: u64,
        client_ip: IpAddr,
    ) -> Vec<u8> {
        let found = {
            let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            lines.retain(|(l, ..)| Arc::ptr_eq(l, latest));
            match lines.iter().find(|(_, r, _)| r.same_kind(rewrite)) {
                Some((_, _, line)) => line.clone(),
                None => {
                    if lines.len() >= OWN_INFO_KINDS {
                        // Rewrites of configurations reloaded away: start over.
                        lines.clear();
                    }
                    let line = OwnInfoLine::new(latest, rewrite).map(Arc::new);
                    lines.push((latest.clone(), rewrite.clone(), line.clone()));
                    line
                }
            }
        };
        match found {
            Some(line) => line.render(client_id, client_ip),
            None => protocol::rewrite_info_with(
                protocol::own_info(latest, client_id, client_ip),
                rewrite,
            ),
        }
    }
}

/// What a refused client is told about the server before any upstream INFO is known.
const MINIMAL_INFO: &[u8] =
    b"INFO {\"server_id\":\"natsgate\",\"server_name\":\"natsgate\",\"proto\":1,\"max_payload\":1048576}";

impl ClientTls {
    /// What INFO tells a client about NATS-level TLS on a listener with `tls`.
    pub(crate) fn advert(tls: Option<&ClientTls>) -> TlsAdvert {
        match tls {
            None => TlsAdvert::None,
            Some(t) if t.required => TlsAdvert::Required { verify: t.verify },
            Some(t) => TlsAdvert::Available { verify: t.verify },
        }
    }
}
