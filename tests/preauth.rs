//! Pre-auth isolation (`upstream.dial`): with the default `auto` and an upstream without nkey or
//! JWT users, a client that has not sent CONNECT never costs nats-server a connection. Real
//! nats-server, real clients; nats-server's own `/varz` counts its connections.

mod common;

use std::time::{Duration, Instant};

use common::*;
use natsgate::metrics::Reject;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// nats-server's count of client connections ever accepted.
async fn total_connections(nats: &NatsServer) -> u64 {
    nats.monitor("/varz").await["total_connections"]
        .as_u64()
        .expect("varz total_connections")
}

/// Waits until natsgate's background probe has seen the upstream INFO, so `auto` can decide.
async fn probed(proxy: &Proxy) {
    assert_eventually!(
        proxy.metrics().await.get("natsgate_upstream_up", &[]) >= 1.0,
        "the background probe reached nats-server"
    );
}

/// How many connections natsgate's own probes may have made in `elapsed`: one per member every
/// 5 s, plus one in flight.
fn probe_allowance(elapsed: Duration) -> u64 {
    elapsed.as_secs() / 5 + 2
}

fn dial_modes(m: &Metrics) -> (f64, f64) {
    (
        m.get(
            "natsgate_upstream_dial_mode_total",
            &[("mode", "on_accept")],
        ),
        m.get(
            "natsgate_upstream_dial_mode_total",
            &[("mode", "after_connect")],
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_clients_cost_nats_server_nothing() {
    // 2,000 clients plus natsgate's side of them in this one process.
    natsgate::fdlimit::raise_nofile();
    let nats = NatsServer::start("");
    let proxy = nats.gate().window(2.0).start().await;
    probed(&proxy).await;
    let before = total_connections(&nats).await;
    let started = Instant::now();

    let mut silent = Vec::new();
    for _ in 0..2000 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // Every silent client gets natsgate's INFO (no nonce), then the timeout at its window.
    let results = futures::future::join_all(silent.into_iter().map(|mut s| async move {
        let t0 = Instant::now();
        let got = read_to_close(&mut s, Duration::from_secs(10)).await;
        (show(&got), t0.elapsed())
    }))
    .await;
    for (got, _) in &results {
        let (info, err) = got.split_once("\r\n").unwrap_or((got, ""));
        assert!(
            info.starts_with("INFO {") && !info.contains("nonce"),
            "{got}"
        );
        assert_eq!(err, "-ERR 'Authentication Timeout'\r\n", "{got}");
    }
    let latest = results.iter().map(|r| r.1).max().unwrap();
    assert!(
        latest < Duration::from_secs(6),
        "dropped at the window: {latest:?}"
    );

    let grew = total_connections(&nats).await - before;
    assert!(
        grew <= probe_allowance(started.elapsed()),
        "nats-server saw {grew} connections during the flood"
    );
    let m = proxy.metrics().await;
    m.assert_rejected(&[(Reject::AuthTimeout, 2000.0)]);
    assert_eq!(dial_modes(&m), (0.0, 2000.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_checks_never_reach_nats_server() {
    let nats = NatsServer::start("");
    let proxy = nats.gate().start().await;
    probed(&proxy).await;
    let before = total_connections(&nats).await;
    let started = Instant::now();
    for _ in 0..100 {
        let s = TcpStream::connect(proxy.addr).await.unwrap();
        drop(s);
    }
    assert_eventually!(
        proxy.metrics().await.rejected(Reject::Protocol) >= 100.0,
        "every health check counted"
    );
    let grew = total_connections(&nats).await - before;
    assert!(
        grew <= probe_allowance(started.elapsed()),
        "nats-server saw {grew}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_work_as_before_and_a_wrong_password_gets_nats_servers_answer() {
    let nats = NatsServer::start("");
    let proxy = nats.gate().start().await;
    probed(&proxy).await;

    // async-nats: request/reply through natsgate.
    let client = proxy.client().await;
    let echo = Echo::start(&client, "preauth.echo").await;
    let reply = client
        .request("preauth.echo", "hello".into())
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"hello");
    echo.stop().await;

    // Raw socket, everything pipelined in one write: byte order kept.
    let (mut s, info) = raw_connect(proxy.addr).await;
    assert!(!info.contains("nonce"), "{info}");
    let wire = format!(
        "{}PING\r\nSUB p.1 7\r\nPUB p.1 5\r\nhello\r\nPING\r\n",
        connect_line(USER, PASS)
    );
    s.write_all(wire.as_bytes()).await.unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
    assert_eq!(read_op(&mut s).await, "MSG p.1 7 5\r\n");
    assert_eq!(read_line(&mut s).await, "hello\r\n");
    assert_eq!(read_op(&mut s).await, "PONG\r\n");

    // A wrong password: nats-server's own verdict, relayed.
    let (mut s, _) = raw_connect(proxy.addr).await;
    s.write_all(format!("{}PING\r\n", connect_line(USER, "wrong")).as_bytes())
        .await
        .unwrap();
    let got = show(&read_to_close(&mut s, Duration::from_secs(5)).await);
    assert_eq!(got, "-ERR 'Authorization Violation'\r\n");
    let (on_accept, after_connect) = dial_modes(&proxy.metrics().await);
    assert_eq!(on_accept, 0.0);
    assert!(after_connect >= 3.0);
}

/// The two authorization timers are independent: natsgate's window 4 s, nats-server's 1 s, a
/// CONNECT at 2.5 s is served (with `on_accept`, nats-server would have dropped it at 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natsgate_window_longer_than_nats_servers_timer() {
    let nats = NatsServer::start_with(&format!(
        "authorization {{ user: {USER}, password: {PASS}, timeout: 1 }}"
    ));
    let proxy = nats.gate().window(4.0).start().await;
    probed(&proxy).await;
    let (mut s, _) = raw_connect(proxy.addr).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
}

/// nkey users upstream (INFO carries a nonce): `auto` dials on accept and nkey clients sign
/// nats-server's own nonce. After nats-server is restarted with password users only, new
/// connections switch to `after_connect` without restarting natsgate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_follows_the_upstream_from_nkey_to_password() {
    let seed = nkeys::KeyPair::new_user();
    let nkey_conf = format!(
        "authorization {{ users: [ {{ nkey: {} }}, {{ user: {USER}, password: {PASS} }} ] }}",
        seed.public_key()
    );
    let mut nats = NatsServer::start_with(&nkey_conf);
    let proxy = nats.gate().start().await;
    probed(&proxy).await;

    let nkey_client = async_nats::ConnectOptions::with_nkey(seed.seed().unwrap())
        .connect(proxy.url())
        .await
        .expect("an nkey client signs the relayed nonce");
    nkey_client.flush().await.unwrap();
    drop(nkey_client);
    let (on_accept, after_connect) = dial_modes(&proxy.metrics().await);
    assert!(on_accept >= 1.0 && after_connect == 0.0);

    // Password only now: the next probe sees INFO without a nonce.
    nats.restart_with(&format!(
        "authorization {{ user: {USER}, password: {PASS} }}"
    ));
    assert_eventually!(
        {
            let (_, info) = raw_connect(proxy.addr).await;
            info.starts_with("INFO {") && !info.contains("\"nonce\"")
        },
        "natsgate answers with its own INFO again"
    );
    let client = proxy.client().await;
    client.flush().await.unwrap();
    let (_, after_connect) = dial_modes(&proxy.metrics().await);
    assert!(after_connect >= 1.0);
}
