//! The core lifecycle through natsgate against a real nats-server: the authorization window,
//! INFO relay, CONNECT handling, pipelining, upstream failover and the relay.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

async fn client(proxy: &Proxy) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(USER.into(), PASS.into())
        .connect(proxy.url())
        .await
        .expect("connect through natsgate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_with_a_1mib_payload_and_headers_and_request_reply() {
    let nats = NatsServer::start("");
    let proxy = Proxy::start(&config_for(&[nats.url()], "2", "")).await;
    let a = client(&proxy).await;
    let b = client(&proxy).await;

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
    assert_eq!(
        msg.headers.unwrap().get("X-Trace").unwrap().as_str(),
        "abc-123"
    );

    let _echo = spawn_echo(&b, "svc").await;
    wait_for_responder(&a, "svc").await;
    for i in 0..1000u32 {
        let body = i.to_be_bytes().to_vec();
        let r = a.request("svc", body.clone().into()).await.unwrap();
        assert_eq!(r.payload.as_ref(), &body[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_the_servers_authorization_violation() {
    let nats = NatsServer::start("");
    let proxy = Proxy::start(&config_for(&[nats.url()], "2", "")).await;
    let err = async_nats::ConnectOptions::with_user_and_password(USER.into(), "wrong".into())
        .connect(proxy.url())
        .await;
    // async-nats reports the server's -ERR as an authorization failure.
    let (mut s, _info) = raw_connect(proxy.addr).await;
    s.write_all(connect_line(USER, "wrong").as_bytes())
        .await
        .unwrap();
    s.write_all(b"PING\r\n").await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR 'Authorization Violation'\r\n"
    );
    match err {
        Err(e) => assert_eq!(
            e.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{e}"
        ),
        Ok(_) => panic!("a wrong password must not connect"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_gets_info_then_authentication_timeout_at_the_window() {
    let nats = NatsServer::start("");
    // What nats-server itself says, for comparison.
    let (_direct, direct_info) =
        raw_connect(format!("127.0.0.1:{}", nats.port).parse().unwrap()).await;
    let direct = info_json(&direct_info);

    let proxy = Proxy::start(&config_for(&[nats.url()], "0.5", "")).await;
    let started = Instant::now();
    let (mut s, line) = raw_connect(proxy.addr).await;
    let info = info_json(&line);
    assert_eq!(info["server_id"], direct["server_id"]);
    assert!(info.get("connect_urls").is_none());
    assert!(info["nonce"].is_string() || direct.get("nonce").is_none());
    let rest = read_to_close(&mut s, Duration::from_secs(3)).await;
    let closed_after = started.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "-ERR 'Authentication Timeout'\r\n"
    );
    assert!(
        closed_after >= Duration::from_millis(500) && closed_after <= Duration::from_millis(750),
        "closed after {closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_urls_of_a_cluster_are_stripped_and_the_nonce_kept() {
    let a_cluster = free_port();
    let b_cluster = free_port();
    let route = |me: u16, other: u16| {
        format!("cluster {{ name: c1, listen: 127.0.0.1:{me}, routes: [\"nats-route://127.0.0.1:{other}\"] }}")
    };
    let a = NatsServer::start(&route(a_cluster, b_cluster));
    let _b = NatsServer::start(&route(b_cluster, a_cluster));
    let direct_addr = format!("127.0.0.1:{}", a.port).parse().unwrap();
    // Wait for the route so that INFO carries connect_urls.
    let mut direct = serde_json::Value::Null;
    for _ in 0..100 {
        let (_s, line) = raw_connect(direct_addr).await;
        direct = info_json(&line);
        if direct
            .get("connect_urls")
            .and_then(|u| u.as_array())
            .is_some_and(|u| u.len() >= 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        direct.get("connect_urls").is_some(),
        "the cluster formed: {direct}"
    );

    let proxy = Proxy::start(&config_for(&[a.url()], "2", "")).await;
    let (_s, line) = raw_connect(proxy.addr).await;
    let info = info_json(&line);
    assert!(info.get("connect_urls").is_none(), "{info}");
    assert_eq!(info["server_id"], direct["server_id"]);
    assert_eq!(info["cluster"], direct["cluster"]);

    // nats-server sends another INFO right after a protocol-1 CONNECT (and whenever the
    // cluster changes); directly it carries connect_urls, through natsgate it must not.
    let after_connect = |mut s: tokio::net::TcpStream| async move {
        s.write_all(connect_line(USER, PASS).as_bytes())
            .await
            .unwrap();
        s.write_all(b"PING\r\n").await.unwrap();
        let got = read_to_close(&mut s, Duration::from_millis(500)).await;
        let text = String::from_utf8(got).unwrap();
        assert!(text.contains("PONG\r\n"), "{text}");
        text.split_inclusive("\r\n")
            .filter(|l| l.starts_with("INFO "))
            .map(info_json)
            .collect::<Vec<_>>()
    };
    let (direct_sock, _) = raw_connect(direct_addr).await;
    let direct_later = after_connect(direct_sock).await;
    assert!(
        direct_later.iter().any(|i| i.get("connect_urls").is_some()),
        "nats-server sends connect_urls after CONNECT: {direct_later:?}"
    );
    let (proxied_sock, _) = raw_connect(proxy.addr).await;
    let proxied_later = after_connect(proxied_sock).await;
    assert_eq!(proxied_later.len(), direct_later.len());
    for info in &proxied_later {
        assert!(info.get("connect_urls").is_none(), "{info}");
        assert_eq!(info["server_id"], direct["server_id"]);
    }

    let proxy = Proxy::start(&config_for(&[a.url()], "2", "strip_connect_urls = false\n")).await;
    let (_s, line) = raw_connect(proxy.addr).await;
    assert!(info_json(&line).get("connect_urls").is_some());
}

async fn trickle(proxy: &Proxy, every: Duration) -> (String, Duration) {
    let started = Instant::now();
    let (mut s, _info) = raw_connect(proxy.addr).await;
    let line = connect_line(USER, PASS);
    for b in line.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
    }
    let _ = s.write_all(b"PING\r\n").await;
    let got = read_to_close(&mut s, Duration::from_millis(1500)).await;
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_connect_is_held_to_the_window() {
    let nats = NatsServer::start("authorization { timeout: 30 }");
    let line_len = connect_line(USER, PASS).len() as u32;
    let every = Duration::from_millis(50);
    // Too slow: the CONNECT would end after the 1 s window.
    assert!(every * line_len > Duration::from_secs(2));
    let proxy = Proxy::start(&config_for(&[nats.url()], "1", "")).await;
    let started = Instant::now();
    let (got, _) = trickle(&proxy, every).await;
    assert!(
        got.starts_with("-ERR 'Authentication Timeout'\r\n"),
        "{got:?}"
    );
    let _ = started;

    // The same bytes inside a longer window are accepted.
    let window = (every * line_len).as_secs_f64() + 3.0;
    let proxy = Proxy::start(&config_for(&[nats.url()], &format!("{window:.1}"), "")).await;
    let (mut s, _info) = raw_connect(proxy.addr).await;
    for b in connect_line(USER, PASS).as_bytes() {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(every).await;
    }
    s.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_drops_the_trickler_on_time() {
    let nats = NatsServer::start("authorization { timeout: 30 }");
    let proxy = Proxy::start(&config_for(&[nats.url()], "1", "")).await;
    let started = Instant::now();
    let (mut s, _info) = raw_connect(proxy.addr).await;
    let line = connect_line(USER, PASS);
    let mut closed_at = None;
    for b in line.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        if is_closed(&mut s, Duration::from_millis(50)).await {
            closed_at = Some(started.elapsed());
            break;
        }
    }
    let closed_at = closed_at.expect("the trickler was dropped");
    assert!(
        closed_at >= Duration::from_millis(1000) && closed_at < Duration::from_millis(1500),
        "dropped at {closed_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_connect_ping_sub_pub_ping_arrive_in_order() {
    let nats = NatsServer::start("");
    let proxy = Proxy::start(&config_for(&[nats.url()], "2", "")).await;
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
    let toml = with_listener(
        &config_for(&[nats.url()], "2", ""),
        "max_control_line = 256",
    );
    let proxy = Proxy::start(&toml).await;
    let long = format!(
        "CONNECT {{\"name\":\"marker-long-{}\"}}\r\n",
        "x".repeat(300)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"PING\r\n".to_vec(), "-ERR 'Authorization Violation'\r\n"),
        (
            long.into_bytes(),
            "-ERR 'maximum control line exceeded'\r\n",
        ),
        (
            b"CONNECT marker-not-json\r\n".to_vec(),
            "-ERR 'Invalid CONNECT Arguments: not valid JSON",
        ),
        (
            b"CONNECT [\"marker-array\"]\r\n".to_vec(),
            "-ERR 'Invalid CONNECT Arguments: expected a JSON object, got an array'\r\n",
        ),
    ];
    for (bytes, expect) in cases {
        let (mut s, _info) = raw_connect(proxy.addr).await;
        s.write_all(&bytes).await.unwrap();
        let got = String::from_utf8_lossy(&read_to_close(&mut s, Duration::from_secs(3)).await)
            .into_owned();
        assert!(
            got.starts_with(expect),
            "sent {:?}: got {got:?}",
            String::from_utf8_lossy(&bytes)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_authentication_signs_the_relayed_nonce() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let nats = NatsServer::start_with(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}",
        user.public_key()
    ));
    let proxy = Proxy::start(&config_for(&[nats.url()], "2", "")).await;
    let c = async_nats::ConnectOptions::with_nkey(seed)
        .connect(proxy.url())
        .await
        .expect("nkey client connects through natsgate");
    let mut sub = c.subscribe("nk").await.unwrap();
    c.publish("nk", "signed".into()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload.as_ref(), b"signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_upstream_down_second_serves_every_client() {
    let nats = NatsServer::start("");
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let proxy = Proxy::start(&config_for(&[dead, nats.url()], "2", "")).await;
    for _ in 0..6 {
        let c = client(&proxy).await;
        c.flush().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_down_closes_the_client_without_info() {
    let dead1 = format!("nats://127.0.0.1:{}", free_port());
    let dead2 = format!("nats://127.0.0.1:{}", free_port());
    let proxy = Proxy::start(&config_for(&[dead1, dead2], "5", "")).await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        got.is_empty(),
        "no INFO: {:?}",
        String::from_utf8_lossy(&got)
    );
    // connect_timeout = 1
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let m = proxy.metrics().await;
    assert_eq!(rejected(&m, "upstream_unavailable"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_a_thousand_round_trips_each_leave_nothing_behind() {
    let nats = NatsServer::start("");
    let proxy = Proxy::start(&with_listener(
        &config_for(&[nats.url()], "5", ""),
        "max_pending_per_ip = 256",
    ))
    .await;
    let responder = client(&proxy).await;
    let echo = spawn_echo(&responder, "echo").await;
    wait_for_responder(&responder, "echo").await;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let url = proxy.url();
        tasks.push(tokio::spawn(async move {
            let c = async_nats::ConnectOptions::with_user_and_password(USER.into(), PASS.into())
                .request_timeout(Some(Duration::from_secs(30)))
                .connect(url)
                .await
                .expect("connect");
            for j in 0..1000u32 {
                let body = format!("{i}-{j}");
                let r = c
                    .request("echo", body.clone().into())
                    .await
                    .expect("request");
                assert_eq!(r.payload.as_ref(), body.as_bytes());
            }
            c.drain().await.ok();
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    echo.abort();
    let _ = echo.await;
    responder.drain().await.ok();
    drop(responder);
    let mut connz = serde_json::Value::Null;
    for _ in 0..100 {
        connz = nats.monitor("/connz").await;
        if connz["num_connections"].as_u64() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        connz["num_connections"], 0,
        "nats-server still has connections from natsgate: {connz}"
    );
    assert!(
        eventually(Duration::from_secs(5), || proxy.handle.open_connections()
            == 0)
        .await
    );
}
