//! Every way a pending connection ends without being established, classified in one place: the
//! metric label ([`Refusal::reason`]) and the bytes the client gets ([`Refusal::reply`]).

use std::fmt;

use crate::metrics::Reject;
use crate::protocol::{self, ConnectError};

/// The step of the pending phase (DESIGN §1) that was under way when a refusal happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    ProxyHeader,
    TlsHandshake,
    WriteInfo,
    ClassicTls,
    ReadConnect,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ProxyHeader => "while reading the PROXY header",
            Step::TlsHandshake => "during the TLS handshake",
            Step::WriteInfo => "while writing INFO",
            Step::ClassicTls => "while waiting for the TLS upgrade",
            Step::ReadConnect => "while waiting for CONNECT",
        })
    }
}

/// Why a pending connection ended. The client socket is never inside: it stays with the
/// [`super::Pending`] that owns it, which sends [`Refusal::reply`] on it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// The authorization window closed.
    #[error("window closed {0}")]
    Window(Step),
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    /// `tls.timeout` ran out before the window did.
    #[error("TLS handshake timed out")]
    TlsHandshakeTimeout,
    #[error("plaintext where TLS is required")]
    TlsRequired,
    /// The first line was not an acceptable CONNECT.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("client closed before CONNECT")]
    ClientClosed,
    /// A read or write on the client socket failed.
    #[error("{0}: {1}")]
    Io(Step, std::io::Error),
    /// No upstream answered, or the one that did failed before taking the CONNECT.
    #[error("{0}")]
    Upstream(String),
    /// natsgate served its own INFO (no nonce), and the upstream now wants a signed nonce.
    #[error("upstream INFO requires a signed nonce, which a client served with upstream.dial = after_connect never saw; use auto or on_accept")]
    NonceRequired,
    #[error("natsgate is shutting down")]
    Shutdown,
    /// An inbound PROXY header from a trusted source was malformed.
    #[error("PROXY header refused: {0}")]
    ProxyHeader(protocol::ProxyHeaderError),
    /// The address an inbound PROXY header named is at its per-address limit; the reply is
    /// the limit refusal (INFO, then the `-ERR`).
    #[error("the client address from the PROXY header is at its limit")]
    Limit(Vec<u8>),
}

impl Refusal {
    /// The `reason` label of `natsgate_connections_rejected_total`.
    pub(crate) fn reason(&self) -> Reject {
        match self {
            Refusal::Window(_) => Reject::AuthTimeout,
            Refusal::TlsHandshake(_) | Refusal::TlsHandshakeTimeout => Reject::TlsHandshake,
            Refusal::TlsRequired => Reject::TlsRequired,
            Refusal::Connect(_) | Refusal::ClientClosed | Refusal::Io(..) => Reject::Protocol,
            Refusal::Upstream(_) => Reject::UpstreamUnavailable,
            Refusal::NonceRequired => Reject::Protocol,
            Refusal::Shutdown => Reject::Shutdown,
            Refusal::ProxyHeader(_) => Reject::Protocol,
            Refusal::Limit(_) => Reject::Limit,
        }
    }

    /// The bytes the client receives before the close, as nats-server would send them; `None`
    /// closes silently (mid-handshake there is no channel to send them on).
    pub(crate) fn reply(&self) -> Option<Vec<u8>> {
        match self {
            Refusal::Window(Step::ClassicTls | Step::ReadConnect) => {
                Some(protocol::ERR_AUTH_TIMEOUT.to_vec())
            }
            Refusal::TlsRequired => Some(protocol::ERR_TLS_REQUIRED.to_vec()),
            Refusal::NonceRequired => Some(protocol::ERR_NONCE_REQUIRED.to_vec()),
            Refusal::Limit(reply) => Some(reply.clone()),
            Refusal::Connect(e) => Some(e.client_error()),
            _ => None,
        }
    }
}
