//! TLS material: rustls configurations from PEM files, and their reloading.
//!
//! rustls runs on the aws-lc-rs provider, selected explicitly with `builder_with_provider`, so a
//! dependency that also enables ring can never make the process-default provider ambiguous.
//! Only TLS 1.2 and 1.3 are offered.
//!
//! Every piece of material read from files — the served pair, the client CA, the upstream CA
//! and the upstream client pair — is a [`Material`]: the configs built at start hold it behind
//! rustls's resolver and verifier traits, so a reload swaps what the next handshake uses
//! without rebuilding (or re-distributing) a config. A swap of a CA or of the upstream client
//! pair also forgets the resumable sessions made with the old material, since a resumed
//! session skips certificate verification.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Resumption,
    Tls12ClientSessionValue, Tls13ClientSessionValue, WebPkiServerVerifier,
};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, NamedGroup, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{TlsConfig, UpstreamTlsConfig};
use crate::metrics::{Cert, Metrics};

/// A certificate or key problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {what}", path.display())]
    File { path: PathBuf, what: String },
    #[error("{0}")]
    Rustls(String),
    /// `[upstream.tls]` without `ca_file`, and the platform trust store is unusable.
    #[error("upstream.tls: no ca_file, so the platform trust store is used, but {0}")]
    Platform(String),
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

/// Resumable sessions kept per config (rustls's default size).
const SESSION_CACHE: usize = 256;

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

/// A CA bundle as a root store, and the earliest notAfter among its certificates (the day the
/// bundle starts to lose a root).
fn load_roots(path: &Path) -> Result<(Arc<RootCertStore>, SystemTime), TlsError> {
    let mut roots = RootCertStore::empty();
    let mut earliest: Option<SystemTime> = None;
    for cert in load_certs(path)? {
        let not_after = not_after(path, &cert)?;
        earliest = Some(earliest.map_or(not_after, |e| e.min(not_after)));
        roots
            .add(cert)
            .map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
    }
    let earliest = earliest.ok_or_else(|| file_err(path, "no CERTIFICATE block found"))?;
    Ok((Arc::new(roots), earliest))
}

/// Loads a certificate/key pair and checks it: the key must match the leaf, and the leaf must
/// be within its validity period. Returns the pair and the leaf's notAfter.
pub(crate) fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
    let chain = load_certs(cert)?;
    let not_after = not_after(cert, &chain[0])?;
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

fn not_after(path: &Path, cert: &CertificateDer<'_>) -> Result<SystemTime, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| file_err(path, format!("a certificate does not parse: {e}")))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

// ---------------------------------------------------------------------------------------------
// Reloadable material.
// ---------------------------------------------------------------------------------------------

/// Builds a piece of material from its files; also returns the notAfter to export.
type Loader<T> = fn(&[PathBuf]) -> Result<(Arc<T>, SystemTime), TlsError>;

/// TLS material read from files, swappable while handshakes run. Established connections keep
/// what they negotiated with; new handshakes use whatever is current.
pub(crate) struct Material<T> {
    cert: Cert,
    files: Vec<PathBuf>,
    current: ArcSwap<T>,
    loader: Loader<T>,
    /// Resumable sessions to forget when this material changes.
    sessions: Option<Arc<dyn Forget>>,
    /// The file contents last seen (good or bad), so each change is acted on and logged once.
    seen: Mutex<Vec<Vec<u8>>>,
}

impl<T> fmt::Debug for Material<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("cert", &self.cert.as_str())
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read_all(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_default())
        .collect()
}

impl<T: Send + Sync + 'static> Material<T> {
    /// Loads the material; fails (naming the file) if it is unusable.
    fn load(
        cert: Cert,
        files: Vec<PathBuf>,
        loader: Loader<T>,
        sessions: Option<Arc<dyn Forget>>,
        metrics: &Metrics,
    ) -> Result<Arc<Material<T>>, TlsError> {
        let seen = read_all(&files);
        let (current, not_after) = loader(&files)?;
        metrics.set_cert_expiry(cert, not_after);
        Ok(Arc::new(Material {
            cert,
            files,
            current: ArcSwap::new(current),
            loader,
            sessions,
            seen: Mutex::new(seen),
        }))
    }

    fn current(&self) -> Arc<T> {
        self.current.load_full()
    }
}

/// One piece of material as the watcher sees it.
pub(crate) trait Reload: Send + Sync {
    /// Re-reads the files if they changed: `None` when they did not, else whether the new
    /// material was installed. A broken change keeps the old material in service and is
    /// logged as an error.
    fn reload_if_changed(&self, metrics: &Metrics) -> Option<bool>;
    /// The files it is read from.
    fn files(&self) -> &[PathBuf];
}

impl<T: Send + Sync + 'static> Reload for Material<T> {
    fn reload_if_changed(&self, metrics: &Metrics) -> Option<bool> {
        let now = read_all(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        let files = self
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match (self.loader)(&self.files) {
            Ok((new, not_after)) => {
                self.current.store(new);
                if let Some(s) = &self.sessions {
                    s.forget();
                }
                metrics.set_cert_expiry(self.cert, not_after);
                tracing::info!(cert = self.cert.as_str(), files = %files, "TLS material reloaded");
                Some(true)
            }
            Err(e) => {
                tracing::error!(cert = self.cert.as_str(), error = %e, "new TLS material rejected; the previous one stays in service");
                Some(false)
            }
        }
    }

    fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// Every piece of material that is reloaded from files, watched together.
#[derive(Default)]
pub(crate) struct TlsFiles {
    items: Vec<Arc<dyn Reload>>,
}

impl TlsFiles {
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Loads one piece of TLS material and keeps it for reloading: every piece natsgate
    /// serves with goes through here, so none is left out of the watcher.
    fn load<T: Send + Sync + 'static>(
        &mut self,
        cert: Cert,
        files: Vec<PathBuf>,
        loader: Loader<T>,
        sessions: Option<Arc<dyn Forget>>,
        metrics: &Metrics,
    ) -> Result<Arc<Material<T>>, TlsError> {
        let material = Material::load(cert, files, loader, sessions, metrics)?;
        self.items.push(material.clone());
        Ok(material)
    }

    /// Checks every piece: `None` when no file changed, else whether every changed piece was
    /// installed (one reload, one result, however many pieces changed together).
    pub(crate) fn reload_changed(&self, metrics: &Metrics) -> Option<bool> {
        self.items
            .iter()
            .filter_map(|m| m.reload_if_changed(metrics))
            .reduce(|a, b| a && b)
    }

    /// The directories to watch (Kubernetes swaps a `..data` symlink inside them).
    fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .items
            .iter()
            .flat_map(|m| m.files().iter())
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

// The configs hold the material through these traits.

impl ResolvesServerCert for Material<CertifiedKey> {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Material<CertifiedKey> {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client CA's verifier (rustls builds it as a trait object).
#[derive(Debug)]
pub(crate) struct ClientVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Material<ClientVerifier> {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA names in the CertificateRequest: the list would have to outlive a swap. TLS allows
    /// an empty list (the client sends the certificate it has), and a client holding a
    /// certificate from a CA being rotated in is not steered away from it.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .0
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().0.supported_verify_schemes()
    }
}

impl ServerCertVerifier for Material<WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

fn pair_loader(files: &[PathBuf]) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
    load_pair(&files[0], &files[1])
}

fn client_ca_loader(files: &[PathBuf]) -> Result<(Arc<ClientVerifier>, SystemTime), TlsError> {
    let ca = &files[0];
    let (roots, not_after) = load_roots(ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| file_err(ca, format!("cannot verify clients with it: {e}")))?;
    Ok((Arc::new(ClientVerifier(verifier)), not_after))
}

fn server_verifier(
    roots: Arc<RootCertStore>,
    what: impl FnOnce(String) -> TlsError,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| what(format!("cannot verify servers with it: {e}")))
}

fn upstream_ca_loader(
    files: &[PathBuf],
) -> Result<(Arc<WebPkiServerVerifier>, SystemTime), TlsError> {
    let ca = &files[0];
    let (roots, not_after) = load_roots(ca)?;
    Ok((server_verifier(roots, |w| file_err(ca, w))?, not_after))
}

// ---------------------------------------------------------------------------------------------
// Session caches that can be emptied.
// ---------------------------------------------------------------------------------------------

/// A session cache that a change of trust or identity empties.
trait Forget: Send + Sync {
    fn forget(&self);
}

/// The client side's resumable sessions (TLS 1.3 tickets are stateful here: natsgate sets no
/// ticketer, so `send_tls13_tickets` stores the sessions in this cache).
#[derive(Debug)]
struct ServerSessions(ArcSwap<ServerSessionMemoryCache>);

impl ServerSessions {
    fn new() -> Arc<ServerSessions> {
        Arc::new(ServerSessions(ArcSwap::new(ServerSessionMemoryCache::new(
            SESSION_CACHE,
        ))))
    }
}

impl Forget for ServerSessions {
    fn forget(&self) {
        self.0.store(ServerSessionMemoryCache::new(SESSION_CACHE));
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The upstream side's resumable sessions.
#[derive(Debug)]
struct ClientSessions(ArcSwap<ClientSessionMemoryCache>);

impl ClientSessions {
    fn new() -> Arc<ClientSessions> {
        Arc::new(ClientSessions(ArcSwap::from_pointee(
            ClientSessionMemoryCache::new(SESSION_CACHE),
        )))
    }
}

impl Forget for ClientSessions {
    fn forget(&self) {
        self.0
            .store(Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE)));
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.load().set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.load().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.load().set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.load().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.load().remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.0.load().insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.0.load().take_tls13_ticket(server_name)
    }
}

// ---------------------------------------------------------------------------------------------
// The configs.
// ---------------------------------------------------------------------------------------------

/// The client-side server config: the reloadable certificate, and client-certificate
/// verification (reloadable too) when `ca_file` is set. The material goes into `files`.
pub(crate) fn server_config(
    cfg: &TlsConfig,
    metrics: &Metrics,
    files: &mut TlsFiles,
) -> Result<Arc<ServerConfig>, TlsError> {
    let sessions = ServerSessions::new();
    let certs = files.load(
        Cert::Served,
        vec![cfg.cert_file.clone(), cfg.key_file.clone()],
        pair_loader,
        None,
        metrics,
    )?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &cfg.ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let forget: Arc<dyn Forget> = sessions.clone();
            let verifier = files.load(
                Cert::ClientCa,
                vec![ca.clone()],
                client_ca_loader,
                Some(forget),
                metrics,
            )?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    // NATS has no ALPN; leave it empty. Session tickets help reconnect storms.
    config.send_tls13_tickets = 2;
    config.session_storage = sessions;
    Ok(Arc::new(config))
}

/// The upstream client config from `[upstream.tls]`, and a note saying where its trust comes
/// from. A `ca_file` and a client pair are reloadable (they go into `files`); without
/// `ca_file` the platform trust store is loaded once, at start.
pub(crate) fn upstream_client_config(
    cfg: &UpstreamTlsConfig,
    metrics: &Metrics,
    files: &mut TlsFiles,
) -> Result<(Arc<ClientConfig>, String), TlsError> {
    let sessions = ClientSessions::new();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let (builder, note) = match &cfg.ca_file {
        Some(ca) => {
            let forget: Arc<dyn Forget> = sessions.clone();
            let verifier = files.load(
                Cert::UpstreamCa,
                vec![ca.clone()],
                upstream_ca_loader,
                Some(forget),
                metrics,
            )?;
            let note = format!(
                "upstream TLS: server certificates verified against {} (reloaded when it changes)",
                ca.display()
            );
            // Not a weaker verifier: webpki's own, behind a swap.
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier),
                note,
            )
        }
        None => {
            let (roots, note) = platform_roots()?;
            let verifier = server_verifier(roots, TlsError::Platform)?;
            (builder.with_webpki_verifier(verifier), note)
        }
    };
    let mut config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => {
            let forget: Arc<dyn Forget> = sessions.clone();
            let pair = files.load(
                Cert::UpstreamClient,
                vec![c.clone(), k.clone()],
                pair_loader,
                Some(forget),
                metrics,
            )?;
            builder.with_client_cert_resolver(pair)
        }
        _ => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::store(sessions);
    Ok((Arc::new(config), note))
}

/// The platform's trust store, as a platform verifier finds it: `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set, else the system bundle (`ca-certificates`). Loaded once.
fn platform_roots() -> Result<(Arc<RootCertStore>, String), TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let source = match (
        std::env::var_os("SSL_CERT_FILE"),
        std::env::var_os("SSL_CERT_DIR"),
    ) {
        (None, None) => "the system store".to_string(),
        (file, dir) => [("SSL_CERT_FILE", file), ("SSL_CERT_DIR", dir)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", PathBuf::from(v).display())))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let errors = found
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = if errors.is_empty() {
            String::new()
        } else {
            format!(" ({errors})")
        };
        return Err(TlsError::Platform(format!(
            "{source} holds no usable CA certificate{why}: set upstream.tls.ca_file, or install \
             ca-certificates"
        )));
    }
    let mut note = format!(
        "upstream TLS: no ca_file; server certificates verified against the platform trust \
         store ({source}): {added} CA certificates, loaded at start"
    );
    if ignored > 0 {
        note.push_str(&format!(", {ignored} unusable ones skipped"));
    }
    if !errors.is_empty() {
        note.push_str(&format!("; errors: {errors}"));
    }
    Ok((Arc::new(roots), note))
}

// ---------------------------------------------------------------------------------------------
// Watching.
// ---------------------------------------------------------------------------------------------

/// Keeps the material current: inotify on the directories of its files, a poll as fallback.
/// Each pass in which a file changed is one reload, counted in
/// `natsgate_config_reloads_total{result}`. Runs until the task is dropped.
pub(crate) async fn watch(files: Arc<TlsFiles>, metrics: Arc<Metrics>, poll: Duration) {
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
                for dir in files.watch_dirs() {
                    if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the certificate directory; polling only");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no file watcher; polling the certificates only");
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
        if let Some(ok) = files.reload_changed(&metrics) {
            metrics.config_reload(ok);
        }
    }
}
