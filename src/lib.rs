//! # natsgate
//!
//! A proxy in front of nats-server that terminates TLS (classic NATS upgrade, TLS-first, or
//! both on one port) and holds every client to the **authorization window**: TLS handshake
//! plus a well-formed `CONNECT` within `authorization.timeout` of accept, or
//! `-ERR 'Authentication Timeout'` and close. After CONNECT the byte stream is spliced to an
//! upstream nats-server untouched.
//!
//! # Layout
//!
//! One module, one job (see `DESIGN.md` §4 in the steering repository):
//!
//! | module       | job |
//! |--------------|-----|
//! | [`config`]   | `proxy.toml` schema, defaults, validation, the NATS timeout rules |
//! | [`protocol`] | NATS framing: INFO rewrite, CONNECT scan, verdict, PROXY header (pure, fuzzed) |
//! | [`tls`]      | rustls configs from PEM, certificate reloading |
//! | [`stream`]   | one socket, plaintext or TLS |
//! | [`upstream`] | dialing the cluster, PROXY header, upstream TLS, reading INFO |
//! | [`session`]  | one connection: window, handshake, CONNECT, hand-off |
//! | [`relay`]    | the spliced byte stream, byte counts, half-close |
//! | [`listener`] | accept loop, limits, graceful shutdown |
//! | [`metrics`]  | metric names, the Prometheus recorder |
//! | [`admin`]    | `/metrics` `/livez` `/healthz` `/readyz`, bounded against floods |
//! | [`fdlimit`]  | `RLIMIT_NOFILE`: raised at start-up, shared out between clients and reserve |
//!
//! `main.rs` is only the command line. Tests start the proxy in-process with [`Gateway::new`]
//! and [`Gateway::run`] on listeners they bound to port 0.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod fdlimit;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod relay;
pub mod session;
pub mod stream;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HandshakeFirst};
use crate::metrics::Metrics;
use crate::tls::CertStore;
use crate::upstream::{UpstreamTls, Upstreams};

/// How often the certificate files are re-read even without a file-system event.
pub const CERT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{path}: upstream.trusted_proxy_seed_file: {what}")]
    Seed { path: String, what: String },
}

/// Client-side TLS as configured in `[tls]`.
pub struct ClientTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub mode: HandshakeFirst,
    pub required: bool,
    /// Client certificates are required and verified (`ca_file`).
    pub verify: bool,
    pub timeout: Duration,
    pub certs: Arc<CertStore>,
}

/// State shared by every connection of one running proxy.
pub struct Shared {
    /// The current configuration; each connection takes a snapshot at accept, so a reload
    /// applies to new connections only.
    pub config: ArcSwap<Config>,
    pub metrics: Arc<Metrics>,
    pub upstreams: Upstreams,
    pub client_tls: Option<ClientTls>,
    /// ADR-55: the trusted-proxy key that signs each upstream nonce.
    pub signer: Option<nkeys::KeyPair>,
    pub limits: Arc<listener::Limits>,
    /// Fired when shutdown starts: stop accepting, close pending connections, fail `/readyz`.
    pub stop_pending: CancellationToken,
    /// Fired when the drain period is over: close everything.
    pub stop_all: CancellationToken,
}

/// A configured proxy, ready to run.
pub struct Gateway {
    shared: Arc<Shared>,
}

/// A handle to a running (or about to run) proxy: metrics, reload, shutdown.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Builds everything that can fail (certificates, keys, seed) before any socket is served.
    pub fn new(config: Config) -> Result<Gateway, StartError> {
        let servers: Vec<String> = config
            .upstream
            .servers
            .iter()
            .map(|s| s.url.clone())
            .collect();
        let metrics = Arc::new(Metrics::new(&servers));
        let client_tls = match &config.tls {
            None => None,
            Some(t) => {
                let certs = CertStore::load(&t.cert_file, &t.key_file, &metrics)?;
                let server_config = tls::server_config(t, certs.clone())?;
                Some(ClientTls {
                    acceptor: tokio_rustls::TlsAcceptor::from(server_config),
                    mode: t.handshake_first,
                    required: t.required,
                    verify: t.ca_file.is_some(),
                    timeout: t.timeout,
                    certs,
                })
            }
        };
        let upstream_tls = match &config.upstream.tls {
            None => None,
            Some(t) => Some(UpstreamTls {
                connector: tokio_rustls::TlsConnector::from(tls::upstream_client_config(t)?),
                server_name: t.server_name.clone(),
                handshake_first: t.handshake_first,
                configured: true,
            }),
        };
        let signer = match &config.upstream.trusted_proxy_seed_file {
            None => None,
            Some(path) => Some(load_seed(path)?),
        };
        let upstreams = Upstreams::new(&config.upstream, upstream_tls, metrics.clone());
        Ok(Gateway {
            shared: Arc::new(Shared {
                config: ArcSwap::from_pointee(config),
                metrics,
                upstreams,
                client_tls,
                signer,
                limits: Arc::default(),
                stop_pending: CancellationToken::new(),
                stop_all: CancellationToken::new(),
            }),
        })
    }

    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Serves clients on `listener` (and the admin endpoints on `admin`, if given) until
    /// `shutdown` completes; then drains as configured and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) {
        let shared = self.shared;
        let mut background = tokio::task::JoinSet::new();
        if let Some(admin) = admin {
            background.spawn(admin::serve(shared.clone(), admin));
            background.spawn(admin::probe_upstream(shared.clone()));
        }
        {
            let m = shared.metrics.clone();
            background.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    m.run_upkeep();
                }
            });
        }
        if let Some(t) = &shared.client_tls {
            background.spawn(tls::watch(
                t.certs.clone(),
                shared.metrics.clone(),
                CERT_POLL_INTERVAL,
            ));
        }
        let stop = shared.stop_pending.clone();
        let accept = listener::serve(shared.clone(), listener);
        tokio::pin!(accept);
        tokio::select! {
            _ = &mut accept => {}
            _ = shutdown => {
                tracing::info!("shutdown requested: no new connections; draining");
                stop.cancel();
                accept.await;
            }
        }
        shared.stop_all.cancel();
        background.shutdown().await;
    }
}

impl Handle {
    /// The Prometheus exposition, as `/metrics` serves it.
    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render()
    }

    /// Starts a graceful shutdown, as SIGTERM does.
    pub fn shutdown(&self) {
        self.shared.stop_pending.cancel();
    }

    /// Re-reads the configuration file (SIGHUP). Timeouts and limits apply to new connections;
    /// keys that need a restart are reported. A file that fails validation changes nothing.
    pub fn reload(&self) -> Result<Vec<String>, config::ConfigError> {
        let current = self.shared.config.load_full();
        let result = Config::load(&current.source);
        self.shared.metrics.config_reload(result.is_ok());
        if let Some(t) = &self.shared.client_tls {
            t.certs.reload_if_changed(&self.shared.metrics);
        }
        let new = result?;
        let mut notes = new.warnings.clone();
        let restart = |key: &str, same: bool, notes: &mut Vec<String>| {
            if !same {
                notes.push(format!("{key} changed: takes effect after a restart"));
            }
        };
        restart(
            "listener.bind",
            new.listener.bind == current.listener.bind,
            &mut notes,
        );
        restart(
            "admin.bind",
            new.admin_bind == current.admin_bind,
            &mut notes,
        );
        restart(
            "upstream.servers",
            new.upstream.servers == current.upstream.servers,
            &mut notes,
        );
        restart(
            "tls",
            new.tls.is_some() == current.tls.is_some(),
            &mut notes,
        );
        self.shared.config.store(Arc::new(new));
        Ok(notes)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.limits.open()
    }
}

fn load_seed(path: &std::path::Path) -> Result<nkeys::KeyPair, StartError> {
    let err = |what: String| StartError::Seed {
        path: path.display().to_string(),
        what,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    // Accept a bare seed or a creds-style file: the first line that looks like a seed.
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('S') && l.len() > 50)
        .ok_or_else(|| err("no nkey seed (a line starting with 'S') found".into()))?;
    nkeys::KeyPair::from_seed(seed).map_err(|_| err("not a valid nkey seed".into()))
}
