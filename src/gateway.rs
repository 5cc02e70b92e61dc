//! A configured proxy and the handle to it: builds everything that can fail before a socket is
//! served, runs the accept loop and the background tasks, reloads on request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, DialMode};
use crate::lameduck::LameDuck;
use crate::metrics::Metrics;
use crate::shared::{ClientTls, Shared};
use crate::tls::{self, TlsFiles};
use crate::upstream::{UpstreamTls, Upstreams};
use crate::websocket::{self, WsListener};
use crate::{admin, listener};

/// How often the certificate files are re-read even without a file-system event.
pub(crate) const CERT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate, key or CA file could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The ADR-55 trusted-proxy seed could not be loaded.
    #[error("{path}: upstream.trusted_proxy_seed_file: {what}")]
    Seed { path: String, what: String },
}

/// A configured proxy, ready to run.
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
    /// The TLS material reloaded from files (watched while running, re-read on SIGHUP).
    tls: Arc<TlsFiles>,
    notes: Vec<String>,
    /// `[websocket]`: its certificate and series, and its socket once bound.
    websocket: Option<(Arc<WsListener>, Option<TcpListener>)>,
}

/// A handle to a running (or about to run) proxy: metrics, reload, shutdown.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    tls: Arc<TlsFiles>,
    websocket: Option<Arc<WsListener>>,
}

impl Gateway {
    /// Builds everything that can fail (certificates, keys, seed) before any socket is served.
    pub fn new(config: Config) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        let mut files = TlsFiles::default();
        let mut notes = Vec::new();
        let client_tls = match &config.tls {
            None => None,
            Some(t) => {
                let server_config = tls::server_config(t, &metrics, &mut files)?;
                Some(ClientTls {
                    acceptor: tokio_rustls::TlsAcceptor::from(server_config),
                    mode: t.handshake_first,
                    required: t.required,
                    verify: t.ca_file.is_some(),
                    timeout: t.timeout,
                })
            }
        };
        let upstream_tls = match &config.upstream.tls {
            None => {
                notes.push(
                    "upstream TLS: off (no [upstream.tls]); a server whose INFO requires TLS is \
                     refused: add [upstream.tls] (without ca_file it trusts the platform store)"
                        .to_string(),
                );
                None
            }
            Some(t) => {
                let (config, note) = tls::upstream_client_config(t, &metrics, &mut files)?;
                notes.push(note);
                Some(UpstreamTls {
                    connector: tokio_rustls::TlsConnector::from(config),
                    server_name: t.server_name.clone(),
                    handshake_first: t.handshake_first,
                })
            }
        };
        let signer = match &config.upstream.trusted_proxy_seed_file {
            None => None,
            Some(path) => Some(load_seed(path)?),
        };
        let upstreams = Upstreams::new(&config.upstream, upstream_tls, metrics.clone());
        let websocket = match &config.websocket {
            None => None,
            Some(w) => Some((
                Arc::new(WsListener::new(w, config.tls.is_some(), &metrics)?),
                None,
            )),
        };
        let stop_pending = CancellationToken::new();
        Ok(Gateway {
            websocket,
            shared: Arc::new(Shared {
                config: ArcSwap::from_pointee(config),
                metrics,
                upstreams,
                client_tls,
                signer,
                limits: Arc::default(),
                lame_duck: LameDuck::new(stop_pending.clone()),
                stop_pending,
                stop_all: CancellationToken::new(),
                own_info: Default::default(),
            }),
            tls: Arc::new(files),
            notes,
        })
    }

    /// What was decided at start that an operator should know (where upstream trust comes
    /// from); `--check-config` prints these and the binary logs them.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// A handle for metrics, reload and shutdown; valid before and while [`Gateway::run`] runs.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
            tls: self.tls.clone(),
            websocket: self.websocket.as_ref().map(|(w, _)| w.clone()),
        }
    }

    /// Binds `[websocket].bind`, if configured, and returns its address; [`Gateway::run`] does
    /// it otherwise, but then a port in use only shows as an error in the log.
    pub async fn bind_websocket(&mut self) -> std::io::Result<Option<std::net::SocketAddr>> {
        let Some((_, socket)) = &mut self.websocket else {
            return Ok(None);
        };
        if socket.is_none() {
            let Some(w) = &self.shared.config.load().websocket else {
                return Ok(None);
            };
            *socket = Some(TcpListener::bind(w.bind).await?);
        }
        socket.as_ref().map(|s| s.local_addr()).transpose()
    }

    /// Serves clients on `listener` (and the admin endpoints on `admin`, if given) until
    /// `shutdown` completes; then drains as configured and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) {
        self.run_with(listener, admin, shutdown, async {}).await
    }

    /// [`Gateway::run`], with `others`: the other listeners' serving ([`Handle::serve_clients`]
    /// on worker threads), which ends when they have drained. The admin endpoints and the
    /// background tasks stay up until then.
    pub async fn run_with(
        mut self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
        others: impl Future<Output = ()>,
    ) {
        if let Err(e) = self.bind_websocket().await {
            let bind = self.shared.config.load().websocket.as_ref().map(|w| w.bind);
            tracing::error!(bind = ?bind, error = %e, "cannot listen for WebSocket clients");
            return;
        }
        let websocket = self.websocket.take().and_then(|(w, s)| Some((w, s?)));
        let shared = self.shared.clone();
        let dial = match shared.config.load().upstream.dial {
            DialMode::Auto => "auto: after CONNECT while the upstream INFO has no nonce, at accept while it has one",
            DialMode::OnAccept => "on_accept: at accept (nats-server's own authorization timer runs inside the window)",
            DialMode::AfterConnect => "after_connect: once a well-formed CONNECT has arrived",
        };
        tracing::info!(dial, "upstream.dial");
        let mut background = tokio::task::JoinSet::new();
        {
            let shared = shared.clone();
            background.spawn(async move { shared.upstreams.probe_forever().await });
        }
        if let Some(admin) = admin {
            background.spawn(admin::serve(shared.clone(), admin));
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
        background.spawn(crate::logsummary::flush_forever());
        if !self.tls.is_empty() {
            background.spawn(tls::watch(
                self.tls.clone(),
                shared.metrics.clone(),
                CERT_POLL_INTERVAL,
            ));
        }
        if let Some((certs, expiry)) = websocket.as_ref().and_then(|(w, _)| w.certs()) {
            background.spawn(tls::watch(certs, expiry, CERT_POLL_INTERVAL));
        }
        let (tcp_shared, ws_shared) = (shared.clone(), shared.clone());
        let accept = async move {
            let ws = async move {
                if let Some((ws, socket)) = websocket {
                    let addr = socket.local_addr().ok();
                    tracing::info!(bind = ?addr, tls = ws.certs().is_some(), "listening for WebSocket clients");
                    websocket::serve(ws_shared, ws, socket).await;
                }
            };
            tokio::join!(listener::serve(tcp_shared, listener), ws, others);
        };
        tokio::pin!(accept);
        tokio::select! {
            _ = &mut accept => {}
            _ = shutdown => {
                tracing::info!("shutdown requested: no new connections; lame duck mode, draining");
                shared.begin_shutdown();
                accept.await;
            }
        }
        shared.stop_all.cancel();
        background.shutdown().await;
        crate::logsummary::flush(true);
    }
}

impl Handle {
    /// The Prometheus exposition, as `/metrics` serves it.
    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render()
    }

    /// Starts a graceful shutdown, as SIGTERM does.
    pub fn shutdown(&self) {
        self.shared.begin_shutdown();
    }

    /// Re-reads the configuration file and the TLS material (SIGHUP). Timeouts and limits
    /// apply to new connections, and so does changed TLS material; keys that need a restart
    /// are reported. A file that fails validation changes nothing; a broken certificate, key
    /// or CA file keeps the previous one in service. One reload, one count in
    /// `natsgate_config_reloads_total`: `failure` if anything it read was rejected.
    pub fn reload(&self) -> Result<Vec<String>, config::ConfigError> {
        let current = self.shared.config.load_full();
        let result = Config::load(&current.source);
        let tls_ok = self.tls.reload_changed(&self.shared.metrics) != Some(false);
        let ws_ok = match self.websocket.as_ref().and_then(|w| w.certs()) {
            Some((files, expiry)) => files.reload_changed(&expiry) != Some(false),
            None => true,
        };
        self.shared
            .metrics
            .config_reload(result.is_ok() && tls_ok && ws_ok);
        let new = result?;
        let mut notes = new.warnings.clone();
        if !(tls_ok && ws_ok) {
            notes.push(
                "changed TLS material was rejected (logged above); the previous one stays in service"
                    .to_string(),
            );
        }
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
            "listener.workers",
            new.listener.workers == current.listener.workers,
            &mut notes,
        );
        restart(
            "admin.bind",
            new.admin.bind == current.admin.bind,
            &mut notes,
        );
        // TLS configs are built once: their files are re-read, their keys are not.
        restart("tls", same(&new.tls, &current.tls), &mut notes);
        restart(
            "upstream.tls",
            same(&new.upstream.tls, &current.upstream.tls),
            &mut notes,
        );
        let ws_socket = |c: &Config| c.websocket.as_ref().map(|w| (w.bind, w.is_tls()));
        restart(
            "websocket (bind, certificate files)",
            ws_socket(&new) == ws_socket(&current),
            &mut notes,
        );
        // Added members get traffic once probed; removed ones get no new clients; established
        // connections stay where they are.
        self.shared.upstreams.set_servers(&new.upstream.servers);
        self.shared.config.store(Arc::new(new));
        Ok(notes)
    }

    /// Serves clients on one more listening socket (in the binary: a worker thread's own
    /// runtime and `SO_REUSEPORT` socket) until shutdown starts, then drains as
    /// [`Gateway::run`] does; connections accepted here stay on the runtime that polls this.
    pub async fn serve_clients(&self, listener: TcpListener) {
        listener::serve(self.shared.clone(), listener).await;
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.limits.open()
    }
}

/// Whether two configuration sections are equal, compared as the data they serialise to.
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
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
