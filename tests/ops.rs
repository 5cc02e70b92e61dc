//! Operating natsgate: metrics scraped over HTTP and parsed, health endpoints, limits, PROXY
//! protocol, ADR-55 trusted proxy, and the real binary's signals.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use natsgate::metrics::Reject;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn connect(url: &str, user: &str, pass: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
        .connect(url)
        .await
        .map_err(|e| {
            assert_eq!(
                e.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation,
                "{e}"
            );
            e.to_string()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_counter_moves_for_its_cause_only() {
    let nats = NatsServer::start("");
    let proxy = nats.gate().window(0.3).start().await;
    let m0 = proxy.metrics().await;
    assert_eq!(m0.active("established"), 0.0);

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
    m1.assert_rejected_since(Some(&m0), &[(Reject::AuthTimeout, 3.0)]);
    assert_eq!(m1.get("natsgate_connections_accepted_total", &[]), 3.0);

    // A bad first op: +1 protocol.
    let (mut s, _) = raw_connect(proxy.addr).await;
    s.write_all(b"SUB x 1\r\n").await.unwrap();
    assert_eq!(
        read_to_close(&mut s, Duration::from_secs(3)).await,
        b"-ERR 'Authorization Violation'\r\n"
    );
    let m2 = proxy.metrics().await;
    m2.assert_rejected_since(Some(&m1), &[(Reject::Protocol, 1.0)]);

    // A wrong password: upstream_auth rejected +1, accepted unchanged.
    assert!(connect(&proxy.url(), USER, "nope").await.is_err());
    let m3 = proxy.metrics().await;
    let auth = |m: &Metrics, r: &str| m.get("natsgate_upstream_auth_total", &[("result", r)]);
    assert_eq!(auth(&m3, "rejected") - auth(&m2, "rejected"), 1.0);
    assert_eq!(auth(&m3, "accepted"), auth(&m2, "accepted"));

    // Refused clients leave the pending gauge once their sockets close.
    drop((silent, s));
    assert_eventually!(proxy.metrics().await.active("pending") == 0.0);

    // One client: established 1 while connected; a 200 kB message moves both byte counters.
    let c = proxy.client().await;
    c.flush().await.unwrap();
    let m4 = proxy.metrics().await;
    assert_eq!(m4.active("established"), 1.0);
    assert_eq!(m4.active("pending"), 0.0);
    assert_eq!(auth(&m4, "accepted") - auth(&m3, "accepted"), 1.0);
    let bytes =
        |m: &Metrics, d: &str| m.get("natsgate_transferred_bytes_total", &[("direction", d)]);
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
    drop((sub, c));
    assert_eventually!(proxy.metrics().await.active("established") == 0.0);
    let m6 = proxy.metrics().await;
    assert!(m6.get("natsgate_connect_wait_seconds_count", &[]) >= 2.0);
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(m6.get("natsgate_build_info", &version), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_upstream_liveness_does_not() {
    let mut nats = NatsServer::start("");
    let proxy = nats.gate().window(1.0).start().await;
    assert_eventually!(
        within Duration::from_secs(5); proxy.status("/readyz").await == 200,
        "ready with the upstream up"
    );
    assert_eq!(proxy.status("/livez").await, 200);
    assert_eq!(proxy.status("/healthz").await, 200);

    nats.stop();
    assert_eventually!(
        within Duration::from_secs(15); proxy.status("/readyz").await == 503,
        "not ready 15 s after the only upstream stopped"
    );
    assert_eq!(proxy.status("/livez").await, 200);

    nats.restart();
    assert_eventually!(
        within Duration::from_secs(15); proxy.status("/readyz").await == 200,
        "ready again once the upstream is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_per_ip_limit_refuses_the_fourth_only_from_that_address() {
    let nats = NatsServer::start("");
    let proxy = nats
        .gate()
        .window(3.0)
        .set("listener.max_pending_per_ip", 3)
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", proxy.addr).await;
        assert!(read_line(&mut s).await.starts_with("INFO "));
        held.push(s);
    }
    let started = Instant::now();
    let mut fourth = connect_from("127.0.0.1", proxy.addr).await;
    let got = show(&read_to_close(&mut fourth, Duration::from_secs(2)).await);
    let (info, err) = got.split_once("\r\n").expect("INFO, then the error");
    assert!(
        info.starts_with("INFO {") && !info.contains("\"nonce\""),
        "{got}"
    );
    assert!(info.contains("\"client_ip\":\"127.0.0.1\""), "{got}");
    assert_eq!(err, "-ERR 'maximum connections exceeded'\r\n");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "at once: {:?}",
        started.elapsed()
    );

    // Another source address is still served, all the way to PONG.
    let mut other = connect_from("127.0.0.2", proxy.addr).await;
    assert!(read_line(&mut other).await.starts_with("INFO "));
    other
        .write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_op(&mut other).await, "PONG\r\n");
    let m = proxy.metrics().await;
    assert_eq!(m.rejected(Reject::Limit), 1.0);
    assert_eq!(m.active("pending"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_show_the_client_address_in_connz() {
    let nats = NatsServer::start("proxy_protocol: true");
    for version in ["v1", "v2"] {
        let proxy = nats
            .gate()
            .set("upstream.proxy_protocol", version)
            .start()
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
        let mine = connz["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == format!("pp-{version}"))
            .unwrap_or_else(|| panic!("{version}: not in connz: {connz}"));
        assert_eq!(mine["ip"], "127.0.0.9", "{version}: {mine}");
        assert_eq!(mine["port"], local_port, "{version}: {mine}");
        // natsgate's own readiness probe (LOCAL / UNKNOWN header) is accepted too.
        assert_eventually!(proxy.status("/readyz").await == 200, "{version}");
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
    connect(&nats.url(), "app", "pw")
        .await
        .expect_err("direct connection must be refused");

    let signed = nats
        .gate()
        .set(
            "upstream.trusted_proxy_seed_file",
            seed.display().to_string(),
        )
        .start()
        .await;
    let c = connect(&signed.url(), "app", "pw")
        .await
        .expect("through natsgate");
    let mut sub = c.subscribe("adr55").await.unwrap();
    c.publish("adr55", "ok".into()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert_eq!(m.unwrap().unwrap().payload.as_ref(), b"ok");
    // A user without proxy_required is unaffected by the signature.
    connect(&signed.url(), "ops", "pw")
        .await
        .expect("ops through natsgate");

    let other = nats
        .gate()
        .set(
            "upstream.trusted_proxy_seed_file",
            wrong_seed.display().to_string(),
        )
        .start()
        .await;
    connect(&other.url(), "app", "pw")
        .await
        .expect_err("untrusted proxy key must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_drains_established_then_exits_zero() {
    let nats = NatsServer::start("");
    let gate = nats.gate().set("shutdown.drain_timeout", 4).binary();
    // The responder talks to nats-server directly; the requester goes through natsgate.
    let responder = client(&nats.url()).await;
    let _echo = Echo::start(&responder, "drain.echo").await;
    let requester = client(&gate.url()).await;
    requester
        .request("drain.echo", "before".into())
        .await
        .unwrap();

    gate.signal("TERM");
    let signalled = Instant::now();
    assert_eventually!(
        within Duration::from_secs(1); TcpStream::connect(gate.addr).await.is_err(),
        "new connections still accepted 1 s after SIGTERM"
    );
    assert_eq!(gate.status("/readyz").await, 503, "draining");

    // Lame duck mode: the established client is told at once and keeps working until its slot
    // of the drain (one client: half of the 4 s), then is closed; natsgate exits when the last
    // connection has gone, not at the end of the drain.
    let mut answered = 0;
    while signalled.elapsed() < Duration::from_millis(1500) {
        requester
            .request("drain.echo", "during".into())
            .await
            .expect("request during drain");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered >= 5, "{answered}");

    let status = gate.wait().await;
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        exited >= Duration::from_millis(1900) && exited < Duration::from_millis(4500),
        "exited after {exited:?}"
    );
}

async fn silent_drop_after(gate: &Binary) -> Duration {
    let started = Instant::now();
    let (mut s, _) = raw_connect(gate.addr).await;
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(got, b"-ERR 'Authentication Timeout'\r\n");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_window_and_survives_a_broken_file() {
    let nats = NatsServer::start("authorization { user: x, password: y, timeout: 10 }");
    let gate = nats.gate().window(0.5).binary();
    let first = silent_drop_after(&gate).await;
    assert!(first < Duration::from_millis(900), "{first:?}");

    gate.rewrite(nats.gate().window(1.5));
    gate.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = silent_drop_after(&gate).await;
    assert!(
        second >= Duration::from_millis(1500) && second < Duration::from_millis(2000),
        "{second:?}"
    );

    std::fs::write(&gate.config, "[authorization\ntimeout = ").unwrap();
    gate.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = silent_drop_after(&gate).await;
    assert!(
        third >= Duration::from_millis(1500) && third < Duration::from_millis(2000),
        "{third:?}"
    );
    let m = gate.metrics().await;
    let reloads = |r: &str| m.get("natsgate_config_reloads_total", &[("result", r)]);
    assert_eq!(reloads("success"), 1.0);
    assert_eq!(reloads("failure"), 1.0);
}
