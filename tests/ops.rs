//! Operating natsgate: metrics scraped over HTTP and parsed, health endpoints, limits, PROXY
//! protocol, ADR-55 trusted proxy, and the real binary's signals.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

async fn client(
    url: &str,
    user: &str,
    pass: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
        .connect(url)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_counter_moves_for_its_cause_only() {
    let nats = NatsServer::start("");
    let proxy = Proxy::start(&config_for(&[nats.url()], "0.3", "")).await;
    let m0 = proxy.metrics().await;
    assert_eq!(active(&m0, "established"), 0.0);

    // Three silent clients: exactly +3 auth_timeout, nothing else.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(raw_connect(proxy.addr).await.0);
    }
    for s in &mut silent {
        let got = read_to_close(s, Duration::from_secs(3)).await;
        assert_eq!(got, b"-ERR 'Authentication Timeout'\r\n");
    }
    let m1 = proxy.metrics().await;
    assert_eq!(
        rejected(&m1, "auth_timeout") - rejected(&m0, "auth_timeout"),
        3.0
    );
    for r in [
        "protocol",
        "limit",
        "upstream_unavailable",
        "tls_handshake",
        "tls_required",
        "shutdown",
    ] {
        assert_eq!(rejected(&m1, r), rejected(&m0, r), "{r}");
    }
    assert_eq!(metric(&m1, "natsgate_connections_accepted_total", &[]), 3.0);

    // A bad first op: +1 protocol.
    let (mut s, _) = raw_connect(proxy.addr).await;
    s.write_all(b"SUB x 1\r\n").await.unwrap();
    assert_eq!(
        read_to_close(&mut s, Duration::from_secs(3)).await,
        b"-ERR 'Authorization Violation'\r\n"
    );
    let m2 = proxy.metrics().await;
    assert_eq!(rejected(&m2, "protocol") - rejected(&m1, "protocol"), 1.0);
    assert_eq!(rejected(&m2, "auth_timeout"), rejected(&m1, "auth_timeout"));

    // A wrong password: upstream_auth rejected +1, accepted unchanged.
    assert!(client(&proxy.url(), USER, "nope").await.is_err());
    let m3 = proxy.metrics().await;
    let auth = |m: &str, r: &str| metric(m, "natsgate_upstream_auth_total", &[("result", r)]);
    assert_eq!(auth(&m3, "rejected") - auth(&m2, "rejected"), 1.0);
    assert_eq!(auth(&m3, "accepted"), auth(&m2, "accepted"));

    // Refused clients leave the pending gauge once their sockets close.
    drop(silent);
    drop(s);
    let mut pending = -1.0;
    for _ in 0..50 {
        pending = metric(
            &proxy.metrics().await,
            "natsgate_connections_active",
            &[("phase", "pending")],
        );
        if pending == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending, 0.0);

    // One client: established 1 while connected; a 200 kB message moves both byte counters.
    let c = client(&proxy.url(), USER, PASS).await.unwrap();
    c.flush().await.unwrap();
    let m4 = proxy.metrics().await;
    assert_eq!(active(&m4, "established"), 1.0);
    assert_eq!(active(&m4, "pending"), 0.0);
    assert_eq!(auth(&m4, "accepted") - auth(&m3, "accepted"), 1.0);
    let bytes =
        |m: &str, d: &str| metric(m, "natsgate_transferred_bytes_total", &[("direction", d)]);
    let mut sub = c.subscribe("big").await.unwrap();
    c.flush().await.unwrap();
    c.publish("big", vec![7u8; 200_000].into()).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.payload.len(), 200_000);
    let m5 = proxy.metrics().await;
    assert!(bytes(&m5, "client_to_upstream") - bytes(&m4, "client_to_upstream") >= 200_000.0);
    assert!(bytes(&m5, "upstream_to_client") - bytes(&m4, "upstream_to_client") >= 200_000.0);
    drop(sub);
    drop(c);
    let mut established = 1.0;
    for _ in 0..50 {
        established = metric(
            &proxy.metrics().await,
            "natsgate_connections_active",
            &[("phase", "established")],
        );
        if established == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(established, 0.0, "{}", proxy.metrics().await);
    let m6 = proxy.metrics().await;
    assert!(metric(&m6, "natsgate_connect_wait_seconds_count", &[]) >= 2.0);
    assert_eq!(
        metric(
            &m6,
            "natsgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_upstream_liveness_does_not() {
    let mut nats = NatsServer::start("");
    let proxy = Proxy::start(&config_for(&[nats.url()], "1", "")).await;
    let mut ready = 0;
    for _ in 0..50 {
        ready = http_get(&proxy.admin, "/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200, "ready with the upstream up");
    assert_eq!(http_get(&proxy.admin, "/livez").await.0, 200);
    assert_eq!(http_get(&proxy.admin, "/healthz").await.0, 200);

    nats.stop();
    let stopped = Instant::now();
    let mut status = 200;
    while stopped.elapsed() < Duration::from_secs(15) {
        status = http_get(&proxy.admin, "/readyz").await.0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        status, 503,
        "not ready 15 s after the only upstream stopped"
    );
    assert_eq!(http_get(&proxy.admin, "/livez").await.0, 200);

    nats.restart();
    let mut status = 503;
    for _ in 0..60 {
        status = http_get(&proxy.admin, "/readyz").await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, 200, "ready again once the upstream is back");
}

async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_per_ip_limit_refuses_the_fourth_only_from_that_address() {
    let nats = NatsServer::start("");
    let toml = with_listener(
        &config_for(&[nats.url()], "3", ""),
        "max_pending_per_ip = 3",
    );
    let proxy = Proxy::start(&toml).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", proxy.addr).await;
        let info = read_line(&mut s).await;
        assert!(info.starts_with("INFO "));
        held.push(s);
    }
    let started = Instant::now();
    let mut fourth = connect_from("127.0.0.1", proxy.addr).await;
    let got = read_to_close(&mut fourth, Duration::from_secs(2)).await;
    assert_eq!(got, b"-ERR 'maximum connections exceeded'\r\n");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "at once: {:?}",
        started.elapsed()
    );

    // Another source address is still served, all the way to PONG.
    let mut other = connect_from("127.0.0.2", proxy.addr).await;
    assert!(read_line(&mut other).await.starts_with("INFO "));
    other
        .write_all(connect_line(USER, PASS).as_bytes())
        .await
        .unwrap();
    other.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(read_op(&mut other).await, "PONG\r\n");
    let m = proxy.metrics().await;
    assert_eq!(rejected(&m, "limit"), 1.0);
    assert_eq!(active(&m, "pending"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_show_the_client_address_in_connz() {
    let nats = NatsServer::start("proxy_protocol: true");
    for version in ["v1", "v2"] {
        let proxy = Proxy::start(&config_for(
            &[nats.url()],
            "2",
            &format!("proxy_protocol = \"{version}\"\n"),
        ))
        .await;
        let mut s = connect_from("127.0.0.9", proxy.addr).await;
        let local_port = s.local_addr().unwrap().port();
        assert!(read_line(&mut s).await.starts_with("INFO "));
        s.write_all(
            format!(
                "CONNECT {{\"verbose\":false,\"user\":\"{USER}\",\"pass\":\"{PASS}\",\"name\":\"pp-{version}\"}}\r\nPING\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(read_op(&mut s).await, "PONG\r\n");
        let connz = nats.monitor("/connz").await;
        let conns = connz["connections"].as_array().unwrap();
        let mine = conns
            .iter()
            .find(|c| c["name"] == format!("pp-{version}"))
            .unwrap_or_else(|| panic!("{version}: not in connz: {connz}"));
        assert_eq!(mine["ip"], "127.0.0.9", "{version}: {mine}");
        assert_eq!(mine["port"], local_port, "{version}: {mine}");
        // natsgate's own readiness probe (LOCAL / UNKNOWN header) is accepted too.
        let mut ready = 0;
        for _ in 0..60 {
            ready = http_get(&proxy.admin, "/readyz").await.0;
            if ready == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(ready, 200, "{version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_signature_lets_proxy_required_users_in_only_through_natsgate() {
    let dir = tempfile::tempdir().unwrap();
    let gate_key = nkeys::KeyPair::new_operator();
    let impostor = nkeys::KeyPair::new_account();
    let seed = write_file(
        dir.path(),
        "gate.seed",
        &format!("{}\n", gate_key.seed().unwrap()),
    );
    let wrong_seed = write_file(dir.path(), "impostor.seed", &impostor.seed().unwrap());
    let nats = NatsServer::start_with(&format!(
        "proxies {{ trusted: [ {{ key: \"{}\" }} ] }}\n\
         authorization {{ users: [ {{ user: app, password: pw, proxy_required: true }}, {{ user: ops, password: pw }} ] }}",
        gate_key.public_key()
    ));
    let direct = format!("nats://127.0.0.1:{}", nats.port);
    let err = client(&direct, "app", "pw")
        .await
        .expect_err("direct connection must be refused");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );

    let signed = Proxy::start(&config_for(
        &[nats.url()],
        "2",
        &format!("trusted_proxy_seed_file = \"{}\"\n", seed.display()),
    ))
    .await;
    let c = client(&signed.url(), "app", "pw")
        .await
        .expect("through natsgate");
    let mut sub = c.subscribe("adr55").await.unwrap();
    c.publish("adr55", "ok".into()).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .payload
            .as_ref(),
        b"ok"
    );
    // A user without proxy_required is unaffected by the signature.
    client(&signed.url(), "ops", "pw")
        .await
        .expect("ops through natsgate");

    let other = Proxy::start(&config_for(
        &[nats.url()],
        "2",
        &format!("trusted_proxy_seed_file = \"{}\"\n", wrong_seed.display()),
    ))
    .await;
    let err = client(&other.url(), "app", "pw")
        .await
        .expect_err("untrusted proxy key must be refused");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
}

/// The real binary, with its own ports, for signal tests.
struct Binary {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Binary {
    fn start(nats: &NatsServer, body: &str) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("proxy.toml");
        std::fs::write(&config, Self::toml(nats, addr, admin, body)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_natsgate"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(admin).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "natsgate did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Binary {
            child,
            addr,
            admin,
            config,
            _dir: dir,
        }
    }

    fn toml(nats: &NatsServer, addr: SocketAddr, admin: SocketAddr, body: &str) -> String {
        format!(
            "[listener]\nbind = \"{addr}\"\n[upstream]\nservers = [\"{}\"]\n[admin]\nbind = \"{admin}\"\n{body}",
            nats.url()
        )
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_drains_established_then_exits_zero() {
    let nats = NatsServer::start("");
    let mut gate = Binary::start(&nats, "[shutdown]\ndrain_timeout = 4\n");
    // The responder talks to nats-server directly; the requester goes through natsgate.
    let responder = client(&nats.url(), USER, PASS).await.unwrap();
    let echo = spawn_echo(&responder, "drain.echo").await;
    let requester = client(&format!("nats://{}", gate.addr), USER, PASS)
        .await
        .unwrap();
    wait_for_responder(&requester, "drain.echo").await;

    gate.signal("TERM");
    let signalled = Instant::now();
    // New connections are refused within 1 s.
    let mut refused = false;
    while signalled.elapsed() < Duration::from_secs(1) {
        if TcpStream::connect(gate.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "new connections still accepted 1 s after SIGTERM");
    assert_eq!(http_get(&gate.admin, "/readyz").await.0, 503, "draining");

    // The established client keeps working during the drain.
    let mut answered = 0;
    while signalled.elapsed() < Duration::from_millis(3000) {
        requester
            .request("drain.echo", "during".into())
            .await
            .expect("request during drain");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered >= 10, "{answered}");

    let status = tokio::task::spawn_blocking(move || {
        let status = gate.child.wait().unwrap();
        (status, gate)
    })
    .await
    .unwrap()
    .0;
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        exited >= Duration::from_millis(3500) && exited < Duration::from_secs(7),
        "exited after {exited:?}"
    );
    echo.abort();
}

async fn silent_drop_after(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let (mut s, _) = raw_connect(addr).await;
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(got, b"-ERR 'Authentication Timeout'\r\n");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_window_and_survives_a_broken_file() {
    let nats = NatsServer::start("authorization { user: x, password: y, timeout: 10 }");
    let gate = Binary::start(&nats, "[authorization]\ntimeout = 0.5\n");
    let first = silent_drop_after(gate.addr).await;
    assert!(first < Duration::from_millis(900), "{first:?}");

    std::fs::write(
        &gate.config,
        Binary::toml(
            &nats,
            gate.addr,
            gate.admin,
            "[authorization]\ntimeout = 1.5\n",
        ),
    )
    .unwrap();
    gate.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = silent_drop_after(gate.addr).await;
    assert!(
        second >= Duration::from_millis(1500) && second < Duration::from_millis(2000),
        "{second:?}"
    );

    std::fs::write(&gate.config, "[authorization\ntimeout = ").unwrap();
    gate.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = silent_drop_after(gate.addr).await;
    assert!(
        third >= Duration::from_millis(1500) && third < Duration::from_millis(2000),
        "{third:?}"
    );
    let (_, m) = http_get(&gate.admin, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "natsgate_config_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "natsgate_config_reloads_total",
            &[("result", "failure")]
        ),
        1.0
    );
}
