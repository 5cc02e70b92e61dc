//! The state every connection of one running proxy shares. It lives in its own module so that
//! the accept loop, the sessions and the admin server depend on it without depending on
//! [`crate::gateway`], which starts them.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HandshakeFirst};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::protocol::TlsAdvert;
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
}

impl Shared {
    /// What INFO tells clients about TLS: natsgate's own listener, not the upstream's.
    pub(crate) fn advert(&self) -> TlsAdvert {
        match &self.client_tls {
            None => TlsAdvert::None,
            Some(t) if t.required => TlsAdvert::Required { verify: t.verify },
            Some(t) => TlsAdvert::Available { verify: t.verify },
        }
    }
}
