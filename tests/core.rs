//! The core lifecycle through natsgate against a real nats-server: the authorization window,
//! INFO relay, CONNECT handling, pipelining, upstream failover and the relay.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use futures::StreamExt;
use natsgate::metrics::Reject;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_with_a_1mib_payload_and_headers_and_request_reply() {
    let nats = NatsServer::start("");
    let proxy = nats.gate().start().await;
    let a = proxy.client().await;
    let b = proxy.client().await;

    let mut sub = b.subscribe("big").await.unwrap();
    b.flush().await.unwrap();
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Trace", "abc-123");
    a.publish_with_headers("big", headers, payload.clone().into())
        .await
        .unwrap();
    a.flush().await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.payload.len(), payload.len());
    assert!(msg.payload == payload, "payload intact");
    let trace = msg.headers.unwrap().get("X-Trace").unwrap().to_string();
    assert_eq!(trace, "abc-123");

    let _echo = Echo::start(&b, "svc").await;
    for i in 0..1000u32 {
        let body = i.to_be_bytes().to_vec();
        let r = a.request("svc", body.clone().into()).await.unwrap();
        assert_eq!(r.payload.as_ref(), &body[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_the_servers_authorization_violation() {
    let nats = NatsServer::start("");
    let proxy = nats.gate().start().await;
    let err = async_nats::ConnectOptions::with_user_and_password(USER.into(), "wrong".into())
        .connect(proxy.url())
        .await
        .expect_err("a wrong password must not connect");
    // async-nats reports the server's -ERR as an authorization failure.
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    let (mut s, _info) = raw_connect(proxy.addr).await;
    s.write_all(format!("{}PING\r\n", connect_line(USER, "wrong")).as_bytes())
        .await
        .unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(show(&got), "-ERR 'Authorization Violation'\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_gets_info_then_authentication_timeout_at_the_window() {
    let nats = NatsServer::start("");
    // What nats-server itself says, for comparison.
    let direct = info_json(&raw_connect(nats.addr()).await.1);

    let proxy = nats.gate().window(0.5).start().await;
    let started = Instant::now();
    let (mut s, line) = raw_connect(proxy.addr).await;
    let info = info_json(&line);
    assert_eq!(info["server_id"], direct["server_id"]);
    assert!(info.get("connect_urls").is_none());
    // Password auth: nats-server sends no nonce, and natsgate makes none up.
    assert_eq!(info.get("nonce"), None);
    assert_eq!(direct.get("nonce"), None);
    let rest = read_to_close(&mut s, Duration::from_secs(3)).await;
    let closed_after = started.elapsed();
    assert_eq!(show(&rest), "-ERR 'Authentication Timeout'\r\n");
    assert!(
        closed_after >= Duration::from_millis(500) && closed_after <= Duration::from_millis(900),
        "closed after {closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_urls_of_a_cluster_are_stripped() {
    let cluster = NatsServer::cluster(2);
    let a = &cluster[0];
    // Wait for the route so that INFO carries connect_urls.
    let mut direct: serde_json::Value;
    assert_eventually!(
        {
            direct = info_json(&raw_connect(a.addr()).await.1);
            direct["connect_urls"]
                .as_array()
                .is_some_and(|u| u.len() >= 2)
        },
        "the cluster formed: {direct}"
    );

    let proxy = a.gate().start().await;
    let info = info_json(&raw_connect(proxy.addr).await.1);
    assert!(info.get("connect_urls").is_none(), "{info}");
    assert_eq!(info["server_id"], direct["server_id"]);
    assert_eq!(info["cluster"], direct["cluster"]);

    // nats-server sends another INFO right after a protocol-1 CONNECT (and whenever the
    // cluster changes); directly it carries connect_urls, through natsgate it must not.
    let after_connect = |addr| async move {
        let (mut s, _) = raw_connect(addr).await;
        s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
            .await
            .unwrap();
        let text = String::from_utf8(read_to_close(&mut s, Duration::from_millis(500)).await);
        let text = text.unwrap();
        assert!(text.contains("PONG\r\n"), "{text}");
        text.split_inclusive("\r\n")
            .filter(|l| l.starts_with("INFO "))
            .map(info_json)
            .collect::<Vec<_>>()
    };
    let direct_later = after_connect(a.addr()).await;
    // nats-server 2.10 and later; 2.9 sends no INFO after CONNECT, and then neither may natsgate.
    let sends_info_after_connect = !direct_later.is_empty();
    assert!(
        !sends_info_after_connect || direct_later.iter().any(|i| i.get("connect_urls").is_some()),
        "nats-server sends connect_urls after CONNECT: {direct_later:?}"
    );
    let proxied_later = after_connect(proxy.addr).await;
    assert_eq!(proxied_later.len(), direct_later.len());
    for info in &proxied_later {
        assert!(info.get("connect_urls").is_none(), "{info}");
        assert_eq!(info["server_id"], direct["server_id"]);
    }

    let proxy = a
        .gate()
        .set("upstream.strip_connect_urls", false)
        .start()
        .await;
    assert!(info_json(&raw_connect(proxy.addr).await.1)["connect_urls"].is_array());
}

/// A client that writes the CONNECT line one byte every `every`, then PING.
async fn trickle(proxy: &Proxy, every: Duration) -> tokio::net::TcpStream {
    let (mut s, _info) = raw_connect(proxy.addr).await;
    for b in connect_line(USER, PASS).as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
    }
    let _ = s.write_all(b"PING\r\n").await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_connect_is_held_to_the_window() {
    let nats = NatsServer::start("authorization { timeout: 30 }");
    let line_len = connect_line(USER, PASS).len() as u32;
    let every = Duration::from_millis(50);
    // Too slow: the CONNECT would end after the 1 s window.
    assert!(every * line_len > Duration::from_secs(2));
    let proxy = nats.gate().window(1.0).start().await;
    let mut s = trickle(&proxy, every).await;
    let got = show(&read_to_close(&mut s, Duration::from_millis(1500)).await);
    assert!(
        got.starts_with("-ERR 'Authentication Timeout'\r\n"),
        "{got:?}"
    );

    // The same bytes inside a longer window are accepted.
    let window = ((every * line_len).as_secs_f64() + 3.0).round();
    let proxy = nats.gate().window(window).start().await;
    let mut s = trickle(&proxy, every).await;
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_drops_the_trickler_on_time() {
    let nats = NatsServer::start("authorization { timeout: 30 }");
    let proxy = nats.gate().window(1.0).start().await;
    let started = Instant::now();
    let (mut s, _info) = raw_connect(proxy.addr).await;
    let mut closed_at = None;
    for b in connect_line(USER, PASS).as_bytes() {
        if s.write_all(&[*b]).await.is_err() || is_closed(&mut s, Duration::from_millis(50)).await {
            closed_at = Some(started.elapsed());
            break;
        }
    }
    let closed_at = closed_at.expect("the trickler was dropped");
    assert!(
        closed_at >= Duration::from_millis(1000) && closed_at < Duration::from_millis(1700),
        "dropped at {closed_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_connect_ping_sub_pub_ping_arrive_in_order() {
    let nats = NatsServer::start("");
    let proxy = nats.gate().start().await;
    let (mut s, _info) = raw_connect(proxy.addr).await;
    let mut all = connect_line(USER, PASS).into_bytes();
    all.extend_from_slice(b"PING\r\nSUB pipe 1\r\nPUB pipe 11\r\nhello world\r\nPING\r\n");
    s.write_all(&all).await.unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
    assert_eq!(read_op(&mut s).await, "MSG pipe 1 11\r\n");
    assert_eq!(read_line(&mut s).await, "hello world\r\n");
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
}

/// Each bad first line gets its error and a close; the upstream (tracing every protocol line)
/// never sees any of those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_first_lines_get_their_error_and_never_reach_upstream() {
    let nats = NatsServer::start("trace: true\ndebug: true");
    let proxy = nats
        .gate()
        .set("listener.max_control_line", 256)
        .start()
        .await;
    let long = format!(
        "CONNECT {{\"name\":\"marker-long-{}\"}}\r\n",
        "x".repeat(300)
    );
    let cases: [(&[u8], &str); 4] = [
        (b"PING\r\n", "-ERR 'Authorization Violation'\r\n"),
        (long.as_bytes(), "-ERR 'maximum control line exceeded'\r\n"),
        (
            b"CONNECT marker-not-json\r\n",
            "-ERR 'Invalid CONNECT Arguments: not valid JSON",
        ),
        (
            b"CONNECT [\"marker-array\"]\r\n",
            "-ERR 'Invalid CONNECT Arguments: expected a JSON object, got an array'\r\n",
        ),
    ];
    for (bytes, expect) in cases {
        let (mut s, _info) = raw_connect(proxy.addr).await;
        s.write_all(bytes).await.unwrap();
        let got = show(&read_to_close(&mut s, Duration::from_secs(3)).await);
        assert!(
            got.starts_with(expect),
            "sent {:?}: got {got:?}",
            show(bytes)
        );
        assert!(
            got.ends_with("'\r\n") && got.matches("\r\n").count() == 1,
            "{got:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = nats.log();
    assert!(
        log.contains("Client connection created"),
        "tracing works: {log}"
    );
    assert!(
        !log.contains("marker"),
        "upstream saw a refused client's bytes:\n{log}"
    );
    assert!(
        !log.contains("[PING]"),
        "upstream saw a refused client's PING:\n{log}"
    );
}

/// With an nkey user configured, nats-server puts a fresh nonce in every INFO. natsgate relays
/// it unchanged: a raw client signs the nonce it got through natsgate, and nats-server (which
/// checks the signature against the nonce it generated for that very connection) accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_authentication_signs_the_relayed_nonce() {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}",
        user.public_key()
    ));
    let proxy = nats.gate().start().await;
    let direct = info_json(&raw_connect(nats.addr()).await.1);
    let direct_nonce = direct["nonce"].as_str().expect("nats-server sends a nonce");

    let (mut s, line) = raw_connect(proxy.addr).await;
    let info = info_json(&line);
    let nonce = info["nonce"].as_str().expect("natsgate relays the nonce");
    assert_eq!(nonce.len(), direct_nonce.len(), "{line}");
    assert_ne!(nonce, direct_nonce, "a nonce is new for every connection");
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(user.sign(nonce.as_bytes()).unwrap());
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"nkey\":\"{}\",\"sig\":\"{sig}\",\"protocol\":1}}\r\nPING\r\n",
        user.public_key()
    );
    s.write_all(connect.as_bytes()).await.unwrap();
    assert_eq!(
        read_op(&mut s).await,
        "PONG\r\n",
        "nats-server accepts the signature of the nonce natsgate relayed"
    );

    // And with a client library.
    let c = async_nats::ConnectOptions::with_nkey(user.seed().unwrap())
        .connect(proxy.url())
        .await
        .expect("nkey client connects through natsgate");
    let mut sub = c.subscribe("nk").await.unwrap();
    c.publish("nk", "signed".into()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert_eq!(m.unwrap().unwrap().payload.as_ref(), b"signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_upstream_down_second_serves_every_client() {
    let nats = NatsServer::start("");
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let proxy = ProxyConfig::new(&[dead, nats.url()]).start().await;
    for _ in 0..6 {
        proxy.client().await.flush().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_down_closes_the_client_without_info() {
    let dead = || format!("nats://127.0.0.1:{}", free_port());
    let proxy = ProxyConfig::new(&[dead(), dead()])
        .window(5.0)
        .start()
        .await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "no INFO: {:?}", show(&got));
    // connect_timeout = 1
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    proxy
        .metrics()
        .await
        .assert_rejected(&[(Reject::UpstreamUnavailable, 1.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_a_thousand_round_trips_each_leave_nothing_behind() {
    let nats = NatsServer::start("");
    let proxy = nats
        .gate()
        .window(5.0)
        .set("listener.max_pending_per_ip", 256)
        .start()
        .await;
    let responder = proxy.client().await;
    let echo = Echo::start(&responder, "echo").await;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let url = proxy.url();
        tasks.push(tokio::spawn(async move {
            let c = client_options()
                .request_timeout(Some(Duration::from_secs(30)))
                .connect(url)
                .await
                .expect("connect");
            for j in 0..1000u32 {
                let body = format!("{i}-{j}");
                let r = c.request("echo", body.clone().into()).await;
                assert_eq!(r.expect("request").payload.as_ref(), body.as_bytes());
            }
            c.drain().await.ok();
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    echo.stop().await;
    responder.drain().await.ok();
    drop(responder);
    nats.assert_connections(0).await;
    assert_eventually!(proxy.handle.open_connections() == 0);
}
