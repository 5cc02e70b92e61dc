//! TLS at natsgate: classic NATS upgrade, TLS-first, auto-detection, optional TLS, mTLS,
//! upstream TLS and certificate reloading, against a real nats-server.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::*;
use natsgate::metrics::Reject;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

async fn exercise(client: &async_nats::Client) {
    let _echo = Echo::start(client, "t.echo").await;
    for i in 0..50u32 {
        let body = format!("m{i}");
        let r = client.request("t.echo", body.clone().into()).await.unwrap();
        assert_eq!(r.payload.as_ref(), body.as_bytes());
    }
}

fn opts(ca: &Ca) -> async_nats::ConnectOptions {
    client_options().tls_client_config(ca.client_config(None))
}

/// A TLS handshake with natsgate at `addr` (client trusting `config`).
async fn handshake(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_tls_first_and_auto_with_async_nats() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("natsgate test CA");
    let server = ca.issue(&["127.0.0.1", "localhost"], dir.path(), "server");
    let nats = NatsServer::start("");

    // Classic: a plain nats:// URL; the client upgrades because INFO says tls_required.
    let proxy = nats.gate().tls(&server, false).start().await;
    assert_eq!(
        info_json(&raw_connect(proxy.addr).await.1)["tls_required"],
        true
    );
    let c = opts(&ca).connect(proxy.url()).await.expect("classic TLS");
    exercise(&c).await;

    // TLS-first.
    let proxy = nats.gate().tls(&server, true).start().await;
    let c = opts(&ca).tls_first().connect(proxy.url()).await;
    exercise(&c.expect("TLS-first client")).await;

    // Auto: both kinds on one port. A detection delay of 500 ms rather than `auto`'s 50 ms: a
    // TLS-first client whose ClientHello comes later than the delay gets the classic INFO (as
    // with nats-server), and a loaded CI machine can be that slow.
    let proxy = nats.gate().tls(&server, "500ms").start().await;
    let classic = opts(&ca).connect(proxy.url()).await;
    let first = opts(&ca).tls_first().connect(proxy.url()).await;
    exercise(&classic.expect("classic client on auto")).await;
    exercise(&first.expect("TLS-first client on auto")).await;
    let m = proxy.metrics().await;
    assert!(m.get("natsgate_tls_handshake_seconds_count", &[]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_tls_serves_plaintext_and_tls_clients_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let server = ca.issue(&["127.0.0.1"], dir.path(), "server");
    let nats = NatsServer::start("");
    let proxy = nats
        .gate()
        .tls(&server, false)
        .set("tls.required", false)
        .start()
        .await;
    let info = info_json(&raw_connect(proxy.addr).await.1);
    assert_eq!(info["tls_available"], true);
    assert!(info.get("tls_required").is_none());

    exercise(&proxy.client().await).await;
    let tls = opts(&ca).require_tls(true).connect(proxy.url()).await;
    exercise(&tls.expect("TLS client")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_connect_where_tls_is_required_never_reaches_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let server = ca.issue(&["127.0.0.1"], dir.path(), "server");
    let nats = NatsServer::start("trace: true\ndebug: true");
    let proxy = nats.gate().tls(&server, false).start().await;
    let (mut s, _info) = raw_connect(proxy.addr).await;
    s.write_all(
        b"CONNECT {\"user\":\"alice\",\"pass\":\"wonderland\",\"name\":\"marker-plain\"}\r\nPING\r\n",
    )
    .await
    .unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert_eq!(show(&got), "-ERR 'Secure Connection - TLS Required'\r\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = nats.log();
    assert!(log.contains("Client connection created"), "{log}");
    assert!(!log.contains("CONNECT"), "upstream saw a CONNECT:\n{log}");
    assert!(!log.contains("marker-plain"), "{log}");
    let m = proxy.metrics().await;
    assert_eq!(m.rejected(Reject::TlsRequired), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_only_certificates_from_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let other = Ca::new("other ca");
    let server = ca.issue(&["127.0.0.1"], dir.path(), "server");
    let good = ca.issue(&["client"], dir.path(), "client");
    let stranger = other.issue(&["client"], dir.path(), "stranger");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let nats = NatsServer::start("");
    let proxy = nats
        .gate()
        .tls(&server, true)
        .set("tls.ca_file", ca_file.display().to_string())
        .start()
        .await;

    let ok = client_options()
        .tls_client_config(ca.client_config(Some(&good)))
        .tls_first()
        .connect(proxy.url())
        .await
        .expect("client with a certificate from ca_file");
    exercise(&ok).await;

    for client in [None, Some(&stranger)] {
        // TLS 1.3 reports a client-certificate rejection on the first read.
        let refused = match handshake(proxy.addr, ca.client_config(client)).await {
            Err(_) => true,
            Ok(mut s) => !matches!(s.read(&mut [0u8; 64]).await, Ok(n) if n > 0),
        };
        let cert = client.map(|c| &c.cert);
        assert!(refused, "client {cert:?} must be refused");
    }
    let m = proxy.metrics().await;
    assert_eq!(m.rejected(Reject::TlsHandshake), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_defaults_to_tls_timeout_plus_one_and_covers_a_stalled_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let server = ca.issue(&["127.0.0.1"], dir.path(), "server");
    let nats = NatsServer::start("authorization { user: x, password: y, timeout: 10 }");
    let proxy = nats
        .gate()
        .window(0.0)
        .tls(&server, false)
        .set("tls.timeout", 1)
        .start()
        .await;

    // A silent client: INFO, then the timeout error at 2 s (tls.timeout 1 + 1).
    let started = Instant::now();
    let (mut s, _info) = raw_connect(proxy.addr).await;
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    let at = started.elapsed();
    assert_eq!(show(&got), "-ERR 'Authentication Timeout'\r\n");
    assert!(
        at >= Duration::from_millis(2000) && at < Duration::from_millis(2700),
        "{at:?}"
    );

    // A TLS record header, then nothing: dropped without a reply, no later than the window.
    let started = Instant::now();
    let (mut s, _info) = raw_connect(proxy.addr).await;
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    let at = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        at >= Duration::from_millis(900) && at < Duration::from_millis(2700),
        "{at:?}"
    );
}

/// nats-server with its own TLS, in both upgrade styles, behind natsgate's `[upstream.tls]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_classic_and_handshake_first_and_a_wrong_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream ca");
    let up = ca.issue(&["nats.internal"], dir.path(), "upstream");
    let gate_client = ca.issue(&["natsgate"], dir.path(), "gate-client");
    let ca_file = ca.write(dir.path(), "ca.pem");
    for (first, verify) in [(false, false), (true, false), (false, true)] {
        let nats = NatsServer::start(&format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: {verify}, handshake_first: {first}, timeout: 2 }}",
            up.cert.display(),
            up.key.display(),
            ca_file.display()
        ));
        let gate = |name: &str| {
            let mut c = nats
                .gate()
                .set("upstream.tls.ca_file", ca_file.display().to_string())
                .set("upstream.tls.server_name", name)
                .set("upstream.tls.handshake_first", first);
            if verify {
                c = c
                    .set(
                        "upstream.tls.cert_file",
                        gate_client.cert.display().to_string(),
                    )
                    .set(
                        "upstream.tls.key_file",
                        gate_client.key.display().to_string(),
                    );
            }
            c.start()
        };
        let proxy = gate("nats.internal").await;
        // The client side is plaintext: INFO must not claim TLS.
        let (_s, line) = raw_connect(proxy.addr).await;
        assert!(info_json(&line).get("tls_required").is_none(), "{line}");
        let c = client_options().connect(proxy.url()).await;
        exercise(&c.unwrap_or_else(|e| panic!("first={first} verify={verify}: {e}"))).await;

        // The same upstream checked against the wrong name is refused.
        let proxy = gate("someone.else").await;
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let got = read_to_close(&mut s, Duration::from_secs(4)).await;
        assert!(
            got.is_empty(),
            "no INFO from an unverified upstream: {got:?}"
        );
        let m = proxy.metrics().await;
        assert!(m.get("natsgate_upstream_errors_total", &[("server", &nats.url())]) >= 1.0);
    }
}

/// Kubernetes-style Secret volume: files are symlinks through `..data`, which is swapped.
/// `mismatched` pairs the certificate with the key of another one.
fn secret_dir_write(root: &Path, version: &str, ca: &Ca, names: &[&str], mismatched: bool) {
    let v = root.join(version);
    std::fs::create_dir_all(&v).unwrap();
    let f = ca.issue(names, &v, "tmp");
    let key = match mismatched {
        true => ca.issue(&["other.example"], &v, "other").key,
        false => f.key,
    };
    std::fs::rename(&f.cert, v.join("tls.crt")).unwrap();
    std::fs::rename(&key, v.join("tls.key")).unwrap();
    let tmp = root.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, root.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = root.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

async fn served_cert_cn(addr: std::net::SocketAddr, ca: &Ca) -> String {
    let s = handshake(addr, ca.client_config(None))
        .await
        .expect("handshake");
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let cn = cert.subject().iter_common_name().next();
    cn.and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_after_a_secret_symlink_swap_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let ca = Ca::new("ca");
    // CN is the first name; IP SAN for verification.
    secret_dir_write(&secret, "..v1", &ca, &["first.example", "127.0.0.1"], false);
    let nats = NatsServer::start("");
    let proxy = nats
        .gate()
        .set("tls.cert_file", format!("{}/tls.crt", secret.display()))
        .set("tls.key_file", format!("{}/tls.key", secret.display()))
        .set("tls.handshake_first", true)
        .start()
        .await;
    assert_eq!(served_cert_cn(proxy.addr, &ca).await, "first.example");
    let before = opts(&ca).tls_first().connect(proxy.url()).await.unwrap();
    exercise(&before).await;

    secret_dir_write(
        &secret,
        "..v2",
        &ca,
        &["second.example", "127.0.0.1"],
        false,
    );
    assert_eventually!(
        within Duration::from_secs(15);
        served_cert_cn(proxy.addr, &ca).await == "second.example",
        "new certificate served"
    );
    exercise(&before).await;

    // A mismatched pair (key from another certificate) must not replace the good one.
    secret_dir_write(&secret, "..v3", &ca, &["third.example", "127.0.0.1"], true);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(served_cert_cn(proxy.addr, &ca).await, "second.example");
    exercise(&before).await;
}

#[test]
fn certificate_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let a = ca.issue(&["a.example"], dir.path(), "a");
    let b = ca.issue(&["b.example"], dir.path(), "b");
    let not_pem = write_file(dir.path(), "notes.txt", "hello\n");
    let missing = dir.path().join("missing.pem");
    let old = ca.issue_with(&["old.example"], dir.path(), "old", true);
    let cases = [
        (&missing, &a.key, "missing.pem: cannot read"),
        (&not_pem, &a.key, "notes.txt: no CERTIFICATE block found"),
        (&a.cert, &not_pem, "notes.txt: no usable private key"),
        (
            &a.cert,
            &b.key,
            "b-key.pem: does not match the certificate in",
        ),
        (&old.cert, &old.key, "old.pem: the certificate has expired"),
    ];
    for (cert, key, expect) in cases {
        let toml = ProxyConfig::new(&["nats://127.0.0.1:4222"])
            .set("tls.cert_file", cert.display().to_string())
            .set("tls.key_file", key.display().to_string())
            .to_toml();
        let config = natsgate::config::Config::parse(&toml, &dir.path().join("p.toml")).unwrap();
        let err = natsgate::Gateway::new(config).err().expect("must fail");
        let err = err.to_string();
        assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    }
}
