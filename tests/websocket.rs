//! NATS over WebSocket (issue 16): `[websocket]` in front of a nats-server that has no
//! `websocket {}` block. Raw sockets for the byte-exact cases (the window, the upgrade
//! statuses, frames that split or batch ops), tungstenite as the client's framing, and the
//! real `@nats-io/nats-core` `wsconnect` client under Node for pub/sub and request/reply.
//!
//! Every log event of this binary is captured at TRACE (the `log` records of tungstenite
//! included), so the secrets test sees what any operator filter could print.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::logs::Logs;
use common::*;
use futures::{SinkExt, StreamExt};
use natsgate::metrics::Reject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Whether something listens on `port` (from `/proc/net/tcp`, so no connection is made that
/// natsgate would count): `Gateway::run` binds the WebSocket port once it runs.
fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X} ");
    table.lines().any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|a| format!("{a} ").ends_with(&local))
            && l.split_whitespace().nth(3) == Some("0A")
    })
}

/// Starts `config` and waits for its WebSocket port.
async fn start(config: ProxyConfig, ws: SocketAddr) -> Proxy {
    let proxy = config.start().await;
    assert_eventually!(listening(ws.port()), "natsgate listens on {ws}");
    proxy
}

/// natsgate with a `[websocket]` listener on a port of its own, in front of `nats`.
fn gate(nats: &NatsServer) -> (ProxyConfig, SocketAddr) {
    let ws = SocketAddr::from(([127, 0, 0, 1], free_port()));
    (nats.gate().set("websocket.bind", ws.to_string()), ws)
}

fn upgrade_request(extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads an HTTP response head byte by byte; returns its status and the head.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> (u16, String) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(patient(Duration::from_secs(10)), s.read(&mut b))
            .await
            .expect("response within 10s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = show(&head);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head)
}

/// The status a raw request gets.
async fn status_of(addr: SocketAddr, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut s).await.0
}

/// Completes the upgrade on `s` and wraps it as a WebSocket client.
async fn upgrade_on<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> WebSocketStream<S> {
    s.write_all(upgrade_request("").as_bytes()).await.unwrap();
    let (status, head) = read_response(&mut s).await;
    assert_eq!(status, 101, "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    WebSocketStream::from_raw_socket(s, Role::Client, None).await
}

async fn ws_connect(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    upgrade_on(TcpStream::connect(addr).await.unwrap()).await
}

/// The next message, within 10 s; `None` when the stream ended.
async fn next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Option<Message> {
    tokio::time::timeout(patient(Duration::from_secs(10)), ws.next())
        .await
        .expect("a message within 10s")
        .map(|m| m.expect("a valid frame"))
}

/// Reads data frames until their bytes, concatenated, hold `want` lines (async INFOs skipped).
async fn read_lines<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    want: usize,
) -> Vec<String> {
    let mut bytes = Vec::new();
    loop {
        let lines: Vec<String> = show(&bytes)
            .split_inclusive("\r\n")
            .filter(|l| l.ends_with("\r\n") && !l.starts_with("INFO "))
            .map(str::to_string)
            .collect();
        if lines.len() >= want {
            return lines;
        }
        match next(ws).await {
            Some(Message::Binary(b)) => bytes.extend_from_slice(&b),
            Some(Message::Close(_)) | None => return lines,
            Some(_) => {}
        }
    }
}

async fn send(ws: &mut WebSocketStream<TcpStream>, bytes: impl AsRef<[u8]>) {
    ws.send(Message::binary(bytes.as_ref().to_vec()))
        .await
        .unwrap();
}

fn rejected(m: &Metrics, reason: Reject) -> f64 {
    m.get(
        "natsgate_connections_rejected_total",
        &[("listener", "websocket"), ("reason", reason.as_str())],
    )
}

// ---------------------------------------------------------------------------------------------
// The window.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_silent_upgraded_client_gets_info_then_the_timeout_error_then_a_close_at_the_window() {
    Logs::capture();
    let nats = NatsServer::start("");
    let (config, ws_addr) = gate(&nats);
    let proxy = start(config.window(1.0), ws_addr).await;
    let started = Instant::now();
    let mut ws = ws_connect(ws_addr).await;
    let Some(Message::Binary(info)) = next(&mut ws).await else {
        panic!("INFO in a binary frame")
    };
    let info = info_json(&show(&info));
    assert_ne!(
        info["tls_required"], true,
        "no NATS-level TLS inside WebSocket: {info}"
    );
    assert!(info.get("connect_urls").is_none(), "{info}");
    let Some(Message::Binary(err)) = next(&mut ws).await else {
        panic!("the -ERR in a binary frame")
    };
    let at = started.elapsed();
    assert_eq!(show(&err), "-ERR 'Authentication Timeout'\r\n");
    assert!(
        at >= Duration::from_millis(900) && at < patient(Duration::from_millis(1800)),
        "at the window (1 s from accept): {at:?}"
    );
    assert!(
        matches!(next(&mut ws).await, Some(Message::Close(_))),
        "then a close frame"
    );
    let m = proxy.metrics().await;
    assert_eq!(rejected(&m, Reject::AuthTimeout), 1.0, "{m}");
    assert_eq!(
        m.get(
            "natsgate_connections_accepted_total",
            &[("listener", "websocket")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "natsgate_connections_accepted_total",
            &[("listener", "tcp")]
        ),
        0.0
    );
    proxy.assert_nothing_open().await;
}

#[tokio::test]
async fn half_an_upgrade_request_is_closed_at_the_window() {
    Logs::capture();
    let nats = NatsServer::start("");
    let (config, ws_addr) = gate(&nats);
    let proxy = start(config.window(1.0), ws_addr).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(ws_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: web")
        .await
        .unwrap();
    let (bytes, closed) = read_until_closed(&mut s, patient(Duration::from_secs(5))).await;
    let at = started.elapsed();
    assert!(
        closed && bytes.is_empty(),
        "closed without a word: {}",
        show(&bytes)
    );
    assert!(
        at >= Duration::from_millis(900) && at < patient(Duration::from_millis(1800)),
        "at the window: {at:?}"
    );
    assert_eq!(rejected(&proxy.metrics().await, Reject::AuthTimeout), 1.0);
    proxy.assert_nothing_open().await;
}

/// The window starts at accept: time spent on the upgrade is not given back afterwards.
#[tokio::test]
async fn the_window_covers_the_upgrade_and_the_connect_together() {
    Logs::capture();
    let nats = NatsServer::start("");
    let (config, ws_addr) = gate(&nats);
    let proxy = start(config.window(1.5), ws_addr).await;
    let started = Instant::now();
    let s = TcpStream::connect(ws_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut ws = upgrade_on(s).await;
    let Some(Message::Binary(_info)) = next(&mut ws).await else {
        panic!("INFO")
    };
    let Some(Message::Binary(err)) = next(&mut ws).await else {
        panic!("-ERR")
    };
    let at = started.elapsed();
    assert_eq!(show(&err), "-ERR 'Authentication Timeout'\r\n");
    assert!(
        at < patient(Duration::from_millis(2200)),
        "1.5 s from accept, not from the upgrade: {at:?}"
    );
    assert_eq!(rejected(&proxy.metrics().await, Reject::AuthTimeout), 1.0);
}

// ---------------------------------------------------------------------------------------------
// The upgrade, as nats-server answers it.
// ---------------------------------------------------------------------------------------------

/// natsgate and nats-server's own websocket port give the same statuses for the same bad
/// requests (nats-server 2.15, `allowed_origins` set on both).
#[tokio::test]
async fn bad_upgrades_get_the_status_nats_server_gives() {
    Logs::capture();
    let origin = "https://app.example.com";
    let nats_ws = free_port();
    let nats = NatsServer::start(&format!(
        "websocket {{ port: {nats_ws}, no_tls: true, allowed_origins: [\"{origin}\"] }}"
    ));
    let (config, ws_addr) = gate(&nats);
    let proxy = start(
        config.set("websocket.allowed_origins", vec![origin]),
        ws_addr,
    )
    .await;
    let nats_ws = SocketAddr::from(([127, 0, 0, 1], nats_ws));
    let no_key = upgrade_request("").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    let cases = [
        (
            "disallowed Origin",
            upgrade_request("Origin: https://evil.example.com\r\n"),
            403,
        ),
        (
            "Origin on another port",
            upgrade_request("Origin: https://app.example.com:8443\r\n"),
            403,
        ),
        ("POST", upgrade_request("").replacen("GET", "POST", 1), 405),
        ("no key", no_key, 400),
        (
            "no Upgrade",
            upgrade_request("").replace("Upgrade: websocket\r\n", ""),
            400,
        ),
        (
            "version 8",
            upgrade_request("").replace("Version: 13", "Version: 8"),
            400,
        ),
        (
            "allowed Origin",
            upgrade_request(&format!("Origin: {origin}\r\n")),
            101,
        ),
        ("no Origin", upgrade_request(""), 101),
    ];
    for (what, request, want) in cases {
        assert_eq!(
            status_of(nats_ws, &request).await,
            want,
            "nats-server: {what}"
        );
        assert_eq!(status_of(ws_addr, &request).await, want, "natsgate: {what}");
    }
    // Six refused upgrades, and the two upgraded sockets closed before any CONNECT.
    let m = proxy.metrics().await;
    assert_eq!(rejected(&m, Reject::Protocol), 8.0, "{m}");
}

// ---------------------------------------------------------------------------------------------
// Frames and ops.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_connect_split_across_three_frames_is_served() {
    Logs::capture();
    let nats = NatsServer::start("");
    let (config, ws_addr) = gate(&nats);
    let proxy = start(config, ws_addr).await;
    let mut ws = ws_connect(ws_addr).await;
    assert!(
        matches!(next(&mut ws).await, Some(Message::Binary(_))),
        "INFO"
    );
    let connect = format!("{}PING\r\n", connect_line(USER, PASS));
    let (a, rest) = connect.split_at(4);
    let (b, c) = rest.split_at(rest.len() / 2);
    for part in [a, b, c] {
        send(&mut ws, part).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(read_lines(&mut ws, 1).await, ["PONG\r\n"]);
    let m = proxy.metrics().await;
    assert_eq!(
        m.get("natsgate_upstream_auth_total", &[("result", "accepted")]),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn connect_ping_sub_pub_in_one_frame_are_served_in_order() {
    Logs::capture();
    let nats = NatsServer::start("");
    let (config, ws_addr) = gate(&nats);
    let _proxy = start(config, ws_addr).await;
    let mut ws = ws_connect(ws_addr).await;
    assert!(
        matches!(next(&mut ws).await, Some(Message::Binary(_))),
        "INFO"
    );
    send(
        &mut ws,
        format!(
            "{}PING\r\nSUB ws.a 1\r\nPUB ws.a 5\r\nhello\r\nPUB ws.a 5\r\nworld\r\nPING\r\n",
            connect_line(USER, PASS)
        ),
    )
    .await;
    assert_eq!(
        read_lines(&mut ws, 6).await,
        [
            "PONG\r\n",
            "MSG ws.a 1 5\r\n",
            "hello\r\n",
            "MSG ws.a 1 5\r\n",
            "world\r\n",
            "PONG\r\n"
        ]
    );
}

#[tokio::test]
async fn a_wrong_password_gets_authorization_violation() {
    Logs::capture();
    let nats = NatsServer::start("");
    let (config, ws_addr) = gate(&nats);
    let proxy = start(config, ws_addr).await;
    let mut ws = ws_connect(ws_addr).await;
    assert!(
        matches!(next(&mut ws).await, Some(Message::Binary(_))),
        "INFO"
    );
    send(&mut ws, format!("{}PING\r\n", connect_line(USER, "wrong"))).await;
    assert_eq!(
        read_lines(&mut ws, 1).await,
        ["-ERR 'Authorization Violation'\r\n"]
    );
    // nats-server closes; the client gets a close frame after the last bytes.
    let mut rest = Vec::new();
    loop {
        match next(&mut ws).await {
            Some(Message::Close(_)) => break,
            Some(Message::Binary(b)) => rest.extend_from_slice(&b),
            None => panic!("a close frame before the end: {}", show(&rest)),
            Some(_) => {}
        }
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.get("natsgate_upstream_auth_total", &[("result", "rejected")]),
        1.0
    );
}

/// When upstream goes away, the client gets what upstream sent last, then a close frame; a
/// ping is answered with a pong on an established connection.
#[tokio::test]
async fn pings_are_answered_and_an_upstream_close_becomes_a_close_frame() {
    Logs::capture();
    let mut nats = NatsServer::start("");
    let (config, ws_addr) = gate(&nats);
    let proxy = start(config, ws_addr).await;
    let mut ws = ws_connect(ws_addr).await;
    assert!(
        matches!(next(&mut ws).await, Some(Message::Binary(_))),
        "INFO"
    );
    send(&mut ws, format!("{}PING\r\n", connect_line(USER, PASS))).await;
    assert_eq!(read_lines(&mut ws, 1).await, ["PONG\r\n"]);
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    loop {
        match next(&mut ws).await {
            Some(Message::Pong(p)) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Some(Message::Binary(_)) => {}
            other => panic!("a pong: {other:?}"),
        }
    }
    nats.stop();
    let mut closed = false;
    while let Some(m) = next(&mut ws).await {
        if let Message::Close(_) = m {
            closed = true;
            break;
        }
    }
    assert!(closed, "a close frame when upstream closed");
    proxy.assert_nothing_open().await;
}

/// A client close frame ends the connection both ways: the upstream connection goes too.
#[tokio::test]
async fn a_client_close_frame_closes_upstream() {
    Logs::capture();
    let nats = NatsServer::start("");
    let (config, ws_addr) = gate(&nats);
    let proxy = start(config, ws_addr).await;
    let mut ws = ws_connect(ws_addr).await;
    assert!(
        matches!(next(&mut ws).await, Some(Message::Binary(_))),
        "INFO"
    );
    send(&mut ws, format!("{}PING\r\n", connect_line(USER, PASS))).await;
    assert_eq!(read_lines(&mut ws, 1).await, ["PONG\r\n"]);
    nats.assert_connections(1).await;
    ws.close(None).await.unwrap();
    // natsgate answers the close frame, then the stream ends.
    while next(&mut ws).await.is_some() {}
    nats.assert_connections(0).await;
    proxy.assert_nothing_open().await;
}

// ---------------------------------------------------------------------------------------------
// wss://
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wss_with_natsgates_certificate() {
    Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("ws-ca");
    let server = ca.issue(&["localhost"], dir.path(), "ws");
    let nats = NatsServer::start("");
    let (config, ws_addr) = gate(&nats);
    let config = config
        .set("websocket.cert_file", server.cert.display().to_string())
        .set("websocket.key_file", server.key.display().to_string());
    let proxy = start(config, ws_addr).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client_config(None)));
    let tcp = TcpStream::connect(ws_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS with natsgate's certificate");
    let mut ws = upgrade_on(tls).await;
    let Some(Message::Binary(info)) = next(&mut ws).await else {
        panic!("INFO")
    };
    let info = info_json(&show(&info));
    assert_ne!(info["tls_required"], true, "TLS is the WebSocket's: {info}");
    ws.send(Message::binary(
        format!("{}PING\r\n", connect_line(USER, PASS)).into_bytes(),
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    while !show(&got).contains("PONG\r\n") {
        match next(&mut ws).await {
            Some(Message::Binary(b)) => got.extend_from_slice(&b),
            other => panic!("PONG: {other:?}"),
        }
    }
    let m = proxy.metrics().await;
    assert_eq!(rejected(&m, Reject::TlsHandshake), 0.0);
    // Plaintext to the wss:// port is a failed handshake (a TLS alert at most), not HTTP.
    let mut s = TcpStream::connect(ws_addr).await.unwrap();
    s.write_all(upgrade_request("").as_bytes()).await.unwrap();
    let (bytes, closed) = read_until_closed(&mut s, patient(Duration::from_secs(5))).await;
    assert!(closed && !show(&bytes).contains("HTTP"), "{}", show(&bytes));
    assert_eventually!(rejected(&proxy.metrics().await, Reject::TlsHandshake) == 1.0);
}

// ---------------------------------------------------------------------------------------------
// Secrets.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_credential_sent_over_websocket_reaches_a_log_line() {
    let logs = Logs::capture();
    let pass = "ws-pass-Vb61qLx0Ke";
    let token = "ws-token-Rt83mNc2Pz";
    let nats = NatsServer::start_with(&format!(
        "authorization {{ user: {USER}, password: \"{pass}\" }}"
    ));
    let (config, ws_addr) = gate(&nats);
    let _proxy = start(config.set("log.level", "trace"), ws_addr).await;
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"user\":\"{USER}\",\"pass\":\"{pass}\",\
         \"auth_token\":\"{token}\",\"name\":\"ws-secrets\",\"protocol\":1}}\r\nPING\r\n"
    );
    // Accepted, and refused with a wrong password: both paths log.
    for connect in [connect.clone(), connect.replace(pass, &format!("{pass}x"))] {
        let mut ws = ws_connect(ws_addr).await;
        assert!(matches!(next(&mut ws).await, Some(Message::Binary(_))));
        // Split, so the secret is in more than one frame, as a client may send it.
        let (a, b) = connect.split_at(connect.find(pass).unwrap() + 4);
        send(&mut ws, a).await;
        send(&mut ws, b).await;
        let line = read_lines(&mut ws, 1).await;
        assert!(
            line == ["PONG\r\n"] || line == ["-ERR 'Authorization Violation'\r\n"],
            "{line:?}"
        );
        ws.close(None).await.unwrap();
        while next(&mut ws).await.is_some() {}
    }
    assert_eventually!(
        logs.text().matches("listener=\"websocket\"").count() >= 2
            || logs.text().matches("listener=websocket").count() >= 2,
        "the close lines are in the capture:\n{}",
        logs.text()
    );
    let text = logs.text();
    for secret in [pass, token] {
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        for spelling in [secret.to_string(), hex.clone(), hex.to_uppercase()] {
            assert!(
                !text.contains(&spelling),
                "{secret} appears in the logs as {spelling}"
            );
        }
    }
    // Part of the secret, as a frame split it: hex of its first bytes.
    let head: String = pass.as_bytes()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!text.contains(&head), "a frame's payload is logged in hex");
}

// ---------------------------------------------------------------------------------------------
// The real client: @nats-io/nats-core wsconnect under Node.
// ---------------------------------------------------------------------------------------------

/// Installs the Node packages of `tests/ws-node` once (npm ci/install into that directory).
fn node_client_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ws-node");
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: node is not installed; the wsconnect end-to-end test did not run");
        return None;
    }
    if !dir.join("node_modules/@nats-io/nats-core").is_dir() {
        let status = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .expect("npm");
        assert!(status.success(), "npm install in {}", dir.display());
    }
    Some(dir)
}

async fn run_node(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("node")
        .arg(dir.join("client.mjs"))
        .args(args)
        .output()
        .await
        .expect("node");
    let text = format!("{}{}", show(&out.stdout), show(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_core_wsconnect_end_to_end() {
    Logs::capture();
    let Some(dir) = node_client_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("ws-ca");
    let server = ca.issue(&["localhost"], tmp.path(), "ws");
    let ca_file = ca.write(tmp.path(), "ca.pem");
    let nats = NatsServer::start("");
    let ws_plain = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (config, ws_tls) = gate(&nats);
    let config = config
        .set("websocket.cert_file", server.cert.display().to_string())
        .set("websocket.key_file", server.key.display().to_string());
    let proxy = start(config, ws_tls).await;
    let (plain_config, _) = gate(&nats);
    let plain = start(
        plain_config.set("websocket.bind", ws_plain.to_string()),
        ws_plain,
    )
    .await;

    let url = format!("ws://{ws_plain}");
    let (ok, out) = run_node(&dir, &["work", &url, USER, PASS]).await;
    assert!(ok, "ws:// pub/sub 512 KiB and 1,000 requests:\n{out}");
    assert!(
        out.contains("payload 524288 ok") && out.contains("requests 1000 ok"),
        "{out}"
    );

    let (ok, out) = run_node(&dir, &["auth", &url, USER, "wrong"]).await;
    assert!(ok, "wrong password:\n{out}");
    assert!(out.contains("Authorization Violation"), "{out}");

    let wss = format!("wss://localhost:{}", ws_tls.port());
    let ca_arg = ca_file.display().to_string();
    let (ok, out) = run_node(&dir, &["work", &wss, USER, PASS, &ca_arg]).await;
    assert!(ok, "wss:// with natsgate's certificate:\n{out}");
    assert!(out.contains("requests 1000 ok"), "{out}");

    for p in [&proxy, &plain] {
        let m = p.metrics().await;
        assert!(
            m.get("natsgate_upstream_auth_total", &[("result", "accepted")]) >= 1.0,
            "{m}"
        );
    }
}
