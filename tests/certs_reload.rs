//! Where TLS trust comes from and how TLS material is replaced in service: the platform trust
//! store for `[upstream.tls]` without `ca_file` (the real binary, pointed at a test CA with
//! `SSL_CERT_FILE`), and the client CA, the upstream CA and the upstream client certificate
//! rotated on disk the way a Kubernetes Secret volume does it (a `..data` symlink swap), with
//! a broken file keeping the old material and counting a failed reload.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use std::sync::Arc;

use common::pki::{self, Ca};
use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// CONNECT and PING on an open stream; `Some(true)` once PONG arrives.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Option<bool> {
    s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
        .await
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return Some(false);
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(6).any(|w| w == b"PONG\r\n") {
            return Some(true);
        }
    }
}

/// Within 5 s, or `false`.
async fn within_5s(work: impl std::future::Future<Output = Option<bool>>) -> bool {
    tokio::time::timeout(patient(Duration::from_secs(5)), work)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A plaintext client through natsgate completes CONNECT/PING/PONG.
async fn pong(addr: SocketAddr) -> bool {
    within_5s(async { ping(TcpStream::connect(addr).await.ok()?).await }).await
}

/// A TLS-first client with a client certificate completes CONNECT/PING/PONG.
async fn mtls_pong(addr: SocketAddr, trust: &Ca, client: &pki::Files) -> bool {
    let connector = TlsConnector::from(Arc::new(trust.client_config(Some(client))));
    mtls_pong_with(addr, &connector).await
}

/// Like [`mtls_pong`] with a connector kept across connections, so it resumes sessions.
async fn mtls_pong_with(addr: SocketAddr, connector: &TlsConnector) -> bool {
    within_5s(async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        ping(connector.connect(name, tcp).await.ok()?).await
    })
    .await
}

/// A Kubernetes Secret volume: `root/<file>` → `..data/<file>` → `<version>/<file>`. Writing
/// a version and swapping `..data` to it is one atomic change, as the kubelet makes it.
struct SecretDir {
    root: PathBuf,
    version: u32,
}

impl SecretDir {
    fn new(root: PathBuf) -> SecretDir {
        std::fs::create_dir_all(&root).unwrap();
        SecretDir { root, version: 0 }
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    /// Publishes a new version holding exactly `files` (name, contents).
    fn publish(&mut self, files: &[(&str, String)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let dir = self.root.join(&version);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

async fn reloads(proxy: &Proxy, result: &str) -> f64 {
    proxy
        .metrics()
        .await
        .get("natsgate_config_reloads_total", &[("result", result)])
}

// ---------------------------------------------------------------------------------------------
// The platform trust store.
// ---------------------------------------------------------------------------------------------

/// The real binary (environment variables are process-wide) with `SSL_CERT_FILE` set, and no
/// trust-store variable inherited from the test's own environment.
fn gate_trusting(config: &ProxyConfig, ca: &Path) -> Binary {
    config
        .clone()
        .env_remove("SSL_CERT_DIR")
        .env("SSL_CERT_FILE", ca)
        .binary()
}

/// `natsgate --check-config` with `env`: (exit code, stdout + stderr).
fn check_config(config: &ProxyConfig, env: &[(&str, &Path)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "proxy.toml", &config.to_toml());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natsgate"));
    cmd.arg("--check-config")
        .arg("--config")
        .arg(&path)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_without_ca_file_trusts_the_platform_store() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("platform test CA");
    let stranger = Ca::new("some other CA");
    let up = ca.issue(&["nats.internal"], dir.path(), "upstream");
    let ca_file = ca.write(dir.path(), "platform.pem");
    let other_file = stranger.write(dir.path(), "other.pem");
    let nats = NatsServer::start(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", timeout: 2 }}",
        up.cert.display(),
        up.key.display(),
    ));
    let config = nats.gate().set("upstream.tls.server_name", "nats.internal");

    // The platform store is the test CA: verified, relayed.
    let gate = gate_trusting(&config, &ca_file);
    assert!(
        pong(gate.addr).await,
        "PONG through natsgate: {}",
        gate.log()
    );
    let log = gate.log();
    assert!(
        log.contains("platform trust store (SSL_CERT_FILE="),
        "the log says where trust comes from: {log}"
    );
    drop(gate);

    // The platform store does not hold the upstream's CA: refused.
    let gate = gate_trusting(&config, &other_file);
    assert!(
        !pong(gate.addr).await,
        "an unverified upstream is never relayed"
    );
    drop(gate);

    // --check-config tells the truth about it.
    let (code, out) = check_config(&config, &[("SSL_CERT_FILE", &ca_file)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "# upstream TLS: no ca_file; server certificates verified against the platform trust store (SSL_CERT_FILE={}): 1 CA certificates",
            ca_file.display()
        )),
        "{out}"
    );
    let (code, out) = check_config(&nats.gate(), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "# upstream TLS: off (no [upstream.tls]); a server whose INFO requires TLS is refused"
        ),
        "{out}"
    );
    // An empty platform store is a start-up error naming the way out.
    let empty = write_file(dir.path(), "empty.pem", "");
    let (code, out) = check_config(&config, &[("SSL_CERT_FILE", &empty)]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("upstream.tls: no ca_file, so the platform trust store is used, but"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rotation.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_rotation_applies_to_new_connections_and_a_broken_file_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let served = server_ca.issue(&["127.0.0.1"], dir.path(), "server");
    let (ca_a, ca_b) = (Ca::new("client CA a"), Ca::new("client CA b"));
    let client_a = ca_a.issue(&["client-a"], dir.path(), "client-a");
    let client_b = ca_b.issue(&["client-b"], dir.path(), "client-b");
    let mut secret = SecretDir::new(dir.path().join("client-ca"));
    secret.publish(&[("ca.crt", ca_a.pem())]);
    let nats = NatsServer::start("");
    let proxy = nats
        .gate()
        .tls(&served, true)
        .set("tls.ca_file", secret.path("ca.crt"))
        .start()
        .await;
    assert!(mtls_pong(proxy.addr, &server_ca, &client_a).await);
    assert!(!mtls_pong(proxy.addr, &server_ca, &client_b).await);
    // A client that keeps its TLS sessions (and would resume, skipping verification).
    let resuming = TlsConnector::from(Arc::new(server_ca.client_config(Some(&client_a))));
    assert!(mtls_pong_with(proxy.addr, &resuming).await);
    assert!(mtls_pong_with(proxy.addr, &resuming).await);
    let m = proxy.metrics().await;
    assert!(
        m.get(
            "natsgate_tls_cert_expiry_timestamp_seconds",
            &[("cert", "client_ca")]
        ) > 0.0
    );
    assert!(
        m.get(
            "natsgate_tls_cert_expiry_timestamp_seconds",
            &[("cert", "served")]
        ) > 0.0
    );

    secret.publish(&[("ca.crt", ca_b.pem())]);
    assert_eventually!(
        within Duration::from_secs(15);
        mtls_pong(proxy.addr, &server_ca, &client_b).await,
        "a client of the new CA is accepted"
    );
    assert!(
        !mtls_pong(proxy.addr, &server_ca, &client_a).await,
        "the old CA is no longer trusted"
    );
    assert!(
        !mtls_pong_with(proxy.addr, &resuming).await,
        "nor can a session made under it be resumed"
    );
    assert_eq!(reloads(&proxy, "success").await, 1.0);
    assert_eq!(reloads(&proxy, "failure").await, 0.0);

    secret.publish(&[(
        "ca.crt",
        "-----BEGIN CERTIFICATE-----\nbroken\n".to_string(),
    )]);
    assert_eventually!(
        within Duration::from_secs(15);
        reloads(&proxy, "failure").await == 1.0,
        "a broken CA file counts a failed reload"
    );
    assert!(
        mtls_pong(proxy.addr, &server_ca, &client_b).await,
        "the previous CA stays"
    );
    assert!(!mtls_pong(proxy.addr, &server_ca, &client_a).await);
    assert_eq!(reloads(&proxy, "success").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_ca_and_client_certificate_rotation_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca_1, server_ca_2) = (Ca::new("upstream CA 1"), Ca::new("upstream CA 2"));
    let (client_ca_1, client_ca_2) = (Ca::new("gate client CA 1"), Ca::new("gate client CA 2"));
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let issue = |ca: &Ca, name: &str, stem: &str| {
        let f = ca.issue(&[name], &scratch, stem);
        (read(&f.cert), read(&f.key))
    };

    // nats-server's own files, rewritten in place before each restart.
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let (srv_cert, srv_key, srv_clients) = (
        srv.join("cert.pem"),
        srv.join("key.pem"),
        srv.join("clients.pem"),
    );
    let serve = |server_ca: &Ca, client_ca: &Ca| {
        let (c, k) = issue(server_ca, "nats.internal", "srv");
        std::fs::write(&srv_cert, c).unwrap();
        std::fs::write(&srv_key, k).unwrap();
        std::fs::write(&srv_clients, client_ca.pem()).unwrap();
    };
    serve(&server_ca_1, &client_ca_1);
    let mut nats = NatsServer::start(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 2 }}",
        srv_cert.display(),
        srv_key.display(),
        srv_clients.display()
    ));

    // natsgate's Secret: the upstream CA and its client pair, as cert-manager writes them.
    let mut secret = SecretDir::new(dir.path().join("upstream-tls"));
    let pair_1 = issue(&client_ca_1, "natsgate", "gate-1");
    let publish = |secret: &mut SecretDir, ca: String, pair: &(String, String)| {
        secret.publish(&[
            ("ca.crt", ca),
            ("tls.crt", pair.0.clone()),
            ("tls.key", pair.1.clone()),
        ])
    };
    publish(&mut secret, server_ca_1.pem(), &pair_1);
    let proxy = nats
        .gate()
        .set("upstream.tls.ca_file", secret.path("ca.crt"))
        .set("upstream.tls.cert_file", secret.path("tls.crt"))
        .set("upstream.tls.key_file", secret.path("tls.key"))
        .set("upstream.tls.server_name", "nats.internal")
        .start()
        .await;
    assert!(pong(proxy.addr).await, "relayed over verified mutual TLS");
    let m = proxy.metrics().await;
    for cert in ["upstream_ca", "upstream_client"] {
        let at = m.get(
            "natsgate_tls_cert_expiry_timestamp_seconds",
            &[("cert", cert)],
        );
        assert!(at > 1.7e9, "{cert}: {at}");
    }
    assert!(
        !m.to_string().contains("cert=\"served\""),
        "no served certificate: {m}"
    );

    // The upstream moves to a certificate from CA 2: natsgate trusting CA 1 refuses it ...
    serve(&server_ca_2, &client_ca_1);
    nats.restart();
    assert!(
        !pong(proxy.addr).await,
        "an upstream from an untrusted CA is refused"
    );
    // ... until natsgate's CA file says CA 2, without a restart.
    publish(&mut secret, server_ca_2.pem(), &pair_1);
    assert_eventually!(within Duration::from_secs(15); pong(proxy.addr).await, "the new upstream CA is used");
    assert_eq!(reloads(&proxy, "success").await, 1.0);

    // The upstream now wants client certificates from client CA 2: natsgate's old one is
    // refused by nats-server ...
    serve(&server_ca_2, &client_ca_2);
    nats.restart();
    assert!(
        !pong(proxy.addr).await,
        "nats-server refuses the old client certificate"
    );
    // ... until the Secret holds a pair from client CA 2.
    let pair_2 = issue(&client_ca_2, "natsgate", "gate-2");
    publish(&mut secret, server_ca_2.pem(), &pair_2);
    assert_eventually!(within Duration::from_secs(15); pong(proxy.addr).await, "the new client certificate is used");
    assert_eq!(reloads(&proxy, "success").await, 2.0);

    // A broken update (the key of another certificate; then a CA that is not PEM) keeps what
    // works and counts each failure.
    let other = issue(&client_ca_2, "someone", "other");
    publish(&mut secret, server_ca_2.pem(), &(pair_2.0.clone(), other.1));
    assert_eventually!(within Duration::from_secs(15); reloads(&proxy, "failure").await == 1.0);
    assert!(
        pong(proxy.addr).await,
        "the previous client pair stays in service"
    );
    publish(&mut secret, "not a certificate".to_string(), &pair_2);
    assert_eventually!(within Duration::from_secs(15); reloads(&proxy, "failure").await == 2.0);
    assert!(
        pong(proxy.addr).await,
        "the previous upstream CA stays in service"
    );
    assert_eq!(reloads(&proxy, "success").await, 2.0);
}
