//! TLS material: rustls configurations from PEM files, and the served certificate's reloading.
//!
//! rustls runs on the aws-lc-rs provider, selected explicitly with `builder_with_provider`, so a
//! dependency that also enables ring can never make the process-default provider ambiguous.
//! Only TLS 1.2 and 1.3 are offered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{TlsConfig, UpstreamTlsConfig};
use crate::metrics::Metrics;

/// A certificate or key problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {what}", path.display())]
    File { path: PathBuf, what: String },
    #[error("{0}")]
    Rustls(String),
}

fn file_err(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The crypto provider every config uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads every certificate in a PEM file (a chain: leaf first).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Reads a private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        file_err(
            path,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Loads a certificate/key pair and checks it: the key must match the leaf, and the leaf must
/// be within its validity period. Returns the pair and the leaf's notAfter.
pub(crate) fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
    let chain = load_certs(cert)?;
    let not_after = leaf_not_after(cert, &chain[0])?;
    if not_after < SystemTime::now() {
        return Err(file_err(cert, "the certificate has expired"));
    }
    let key_der = load_key(key)?;
    let ck = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        file_err(
            key,
            format!("does not match the certificate in {}: {e}", cert.display()),
        )
    })?;
    Ok((Arc::new(ck), not_after))
}

fn leaf_not_after(path: &Path, leaf: &CertificateDer<'_>) -> Result<SystemTime, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| file_err(path, format!("first certificate does not parse: {e}")))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// The served certificate, swappable while handshakes run. Established connections keep the
/// key they negotiated with; new handshakes pick up whatever is current.
#[derive(Debug)]
pub(crate) struct CertStore {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The file contents last seen (good or bad), so each change is acted on and logged once.
    seen: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertStore {
    /// Loads the pair; fails (naming the file) if it is unusable.
    pub(crate) fn load(
        cert_file: &Path,
        key_file: &Path,
        metrics: &Metrics,
    ) -> Result<Arc<CertStore>, TlsError> {
        let seen = (
            std::fs::read(cert_file).unwrap_or_default(),
            std::fs::read(key_file).unwrap_or_default(),
        );
        let (ck, not_after) = load_pair(cert_file, key_file)?;
        metrics.set_cert_expiry(not_after);
        Ok(Arc::new(CertStore {
            current: ArcSwap::new(ck),
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            seen: std::sync::Mutex::new(seen),
        }))
    }

    /// Re-reads the files if they changed. A broken new pair keeps the old one in service and
    /// is logged as an error. Returns whether a new pair was installed.
    pub(crate) fn reload_if_changed(&self, metrics: &Metrics) -> bool {
        let now = (
            std::fs::read(&self.cert_file).unwrap_or_default(),
            std::fs::read(&self.key_file).unwrap_or_default(),
        );
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match load_pair(&self.cert_file, &self.key_file) {
            Ok((ck, not_after)) => {
                self.current.store(ck);
                metrics.set_cert_expiry(not_after);
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "new TLS certificate rejected; the previous one stays in service");
                false
            }
        }
    }

    /// The directories to watch (Kubernetes swaps a `..data` symlink inside them).
    pub(crate) fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [&self.cert_file, &self.key_file]
            .iter()
            .map(|p| {
                p.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."))
            })
            .collect();
        dirs.dedup();
        dirs
    }
}

/// The client-side server config: the reloadable certificate, and client-certificate
/// verification when `ca_file` is set.
pub(crate) fn server_config(
    cfg: &TlsConfig,
    certs: Arc<CertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &cfg.ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider)
                .build()
                .map_err(|e| file_err(ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    // NATS has no ALPN; leave it empty. Session tickets help reconnect storms.
    config.send_tls13_tickets = 2;
    Ok(Arc::new(config))
}

/// The upstream client config from `[upstream.tls]`.
pub(crate) fn upstream_client_config(
    cfg: &UpstreamTlsConfig,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let Some(ca) = &cfg.ca_file else {
        return Err(TlsError::Rustls(
            "upstream.tls.ca_file: required, natsgate verifies the upstream certificate".into(),
        ));
    };
    let builder = builder.with_root_certificates(load_roots(ca)?);
    let config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => {
            let chain = load_certs(c)?;
            let key = load_key(k)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| file_err(k, format!("does not match {}: {e}", c.display())))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Keeps the certificate current: inotify on the certificate directories, a poll as fallback.
/// Runs until the task is dropped.
pub(crate) async fn watch(certs: Arc<CertStore>, metrics: Arc<Metrics>, poll: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    // The watcher lives as long as this future; events only nudge a re-check.
    let _watcher = {
        use notify::Watcher;
        let tx = tx.clone();
        let w = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
            let _ = tx.try_send(());
        });
        match w {
            Ok(mut w) => {
                for dir in certs.watch_dirs() {
                    if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the certificate directory; polling only");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no file watcher; polling the certificate only");
                None
            }
        }
    };
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = rx.recv() => {
                // Let a burst of events (a symlink swap is several) settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
            }
        }
        certs.reload_if_changed(&metrics);
    }
}
