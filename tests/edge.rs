//! The edge: natsgate behind an L4 load balancer (inbound PROXY protocol) in front of a NATS
//! cluster, with the gateway's own URLs advertised, on a dual-stack bind, and parsing as
//! nats-server parses. Real nats-server; the "load balancer" is a raw socket writing the header.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use natsgate::metrics::Reject;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A load balancer's connection: from `from` (a loopback address), carrying a PROXY v2 header
/// that says the client is `client`.
async fn via_balancer(from: &str, proxy: SocketAddr, client: &str) -> TcpStream {
    let mut s = connect_from(from, proxy).await;
    let src: SocketAddr = format!("{client}:40000").parse().unwrap();
    s.write_all(&natsgate::protocol::proxy_header_v2(Some((src, proxy))))
        .await
        .unwrap();
    s
}

async fn total_connections(nats: &NatsServer) -> u64 {
    nats.monitor("/varz").await["total_connections"]
        .as_u64()
        .unwrap()
}

fn behind_a_balancer(nats: &NatsServer) -> ProxyConfig {
    nats.gate()
        .window(3.0)
        .set("upstream.proxy_protocol", "v2")
        .set(
            "listener.proxy_protocol.trusted",
            toml::Value::Array(vec!["127.0.0.1/32".into()]),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancers_client_address_is_the_clients_everywhere() {
    let nats = NatsServer::start("proxy_protocol: true");
    let proxy = behind_a_balancer(&nats)
        .set("listener.max_pending_per_ip", 3)
        .start()
        .await;

    // nats-server's /connz and the client's INFO name the client, not the balancer.
    let mut s = via_balancer("127.0.0.1", proxy.addr, "203.0.113.7").await;
    let info = info_json(&read_line(&mut s).await);
    assert_eq!(info["client_ip"], "203.0.113.7");
    s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
    let connz = nats.monitor("/connz").await;
    let ips: Vec<&str> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["ip"].as_str())
        .collect();
    assert!(ips.contains(&"203.0.113.7"), "{connz}");
    drop(s);

    // The per-address limit applies to the header's address: three silent clients from
    // 203.0.113.7 leave a fourth from it refused, while one from 203.0.113.8 is served.
    let mut silent = Vec::new();
    for _ in 0..3 {
        let mut s = via_balancer("127.0.0.1", proxy.addr, "203.0.113.7").await;
        assert!(read_line(&mut s).await.starts_with("INFO "));
        silent.push(s);
    }
    let mut fourth = via_balancer("127.0.0.1", proxy.addr, "203.0.113.7").await;
    let got = show(&read_to_close(&mut fourth, Duration::from_secs(2)).await);
    assert!(
        got.starts_with("INFO ") && got.ends_with("-ERR 'maximum connections exceeded'\r\n"),
        "{got}"
    );
    assert!(got.contains("\"client_ip\":\"203.0.113.7\""), "{got}");
    let mut other = via_balancer("127.0.0.1", proxy.addr, "203.0.113.8").await;
    assert!(read_line(&mut other).await.starts_with("INFO "));
    other
        .write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_op(&mut other).await, "PONG\r\n");
    assert!(proxy.metrics().await.rejected(Reject::Limit) >= 1.0);
}

/// A PROXY header from a source outside `trusted`, or a malformed one from a trusted source,
/// is refused and nothing of it reaches nats-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_or_malformed_headers_are_refused_before_upstream() {
    let nats = NatsServer::start("proxy_protocol: true");
    let proxy = behind_a_balancer(&nats).start().await;
    assert_eventually!(proxy.status("/readyz").await == 200, "probed");
    let before = total_connections(&nats).await;

    let mut untrusted = via_balancer("127.0.0.2", proxy.addr, "203.0.113.7").await;
    let got = show(&read_to_close(&mut untrusted, Duration::from_secs(4)).await);
    assert!(!got.contains("PONG"), "{got}");
    let mut malformed = connect_from("127.0.0.1", proxy.addr).await;
    malformed.write_all(b"PROXY TCP4 1.2.3\r\n").await.unwrap();
    let got = read_to_close(&mut malformed, Duration::from_secs(4)).await;
    assert_eq!(
        show(&got),
        "",
        "a malformed header is closed without a word"
    );

    // Nothing reached nats-server but natsgate's own probes (one every 5 s).
    let grew = total_connections(&nats).await - before;
    assert!(grew <= 2, "nats-server saw {grew} connections");
    assert!(proxy.metrics().await.rejected(Reject::Protocol) >= 2.0);
}

/// A dual-stack bind: an IPv4 client's socket address is `::ffff:127.0.0.1`; nats-server must
/// see it as the IPv4 address (a PROXY v1 `TCP6` header with a mapped address is rejected by
/// nats-server before 2.12.12/2.14.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_bind_sends_ipv4_clients_as_ipv4() {
    let nats = NatsServer::start("proxy_protocol: true");
    let toml = nats.gate().set("upstream.proxy_protocol", "v1").to_toml();
    let config = natsgate::config::Config::parse(&toml, std::path::Path::new("t.toml")).unwrap();
    let gateway = natsgate::Gateway::new(config).unwrap();
    // `[::]` takes IPv4 clients too (Linux's default bindv6only = 0), as `::ffff:a.b.c.d`.
    let listener = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(gateway.run(listener, None, std::future::pending()));
    let client = client(&format!("nats://127.0.0.1:{port}")).await;
    client.flush().await.unwrap();
    let connz = nats.monitor("/connz").await;
    let ips: Vec<&str> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["ip"].as_str())
        .collect();
    // The client, and natsgate's own probe (its `PROXY UNKNOWN` keeps natsgate's address).
    assert!(
        !ips.is_empty() && ips.iter().all(|ip| *ip == "127.0.0.1"),
        "{connz}"
    );
}

/// `listener.advertise`: the first INFO and every later INFO (here: after a cluster member
/// joins) carry exactly the gateway's URLs, never the servers behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_urls_replace_the_clusters_in_every_info() {
    let advertise = ["edge-a.example.com:4222", "edge-b.example.com:4222"];
    let mut members = NatsServer::cluster(2);
    let urls: Vec<String> = members.iter().map(|m| m.url()).collect();
    let proxy = ProxyConfig::new(&urls[..1])
        .set(
            "listener.advertise",
            toml::Value::Array(advertise.iter().map(|a| (*a).into()).collect()),
        )
        .start()
        .await;
    let (mut s, info) = raw_connect(proxy.addr).await;
    assert_eq!(
        info_json(&info)["connect_urls"],
        serde_json::json!(advertise)
    );
    s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");

    // A member leaves and comes back: nats-server sends an async INFO with new connect_urls.
    members[1].restart();
    let later = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = read_line(&mut s).await;
            if line.starts_with("INFO ") || line.is_empty() {
                return line;
            }
        }
    })
    .await
    .expect("an INFO after the cluster changed");
    assert_eq!(
        info_json(&later)["connect_urls"],
        serde_json::json!(advertise),
        "{later}"
    );

    let c = proxy.client().await;
    let seen = c.server_info().connect_urls;
    assert_eq!(seen, advertise, "async-nats learns the gateways");
}

/// nats-server with no auth accepts ops before CONNECT (telnet and `nc` checks do this); so
/// does natsgate, byte for byte as nats-server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_before_connect_are_served_when_upstream_needs_no_auth() {
    let nats = NatsServer::start_with("");
    let proxy = nats.gate().start().await;
    let (s, info) = raw_connect(proxy.addr).await;
    assert!(info_json(&info).get("auth_required").is_none(), "{info}");
    drop(s);
    // The same bytes through natsgate and straight to nats-server get the same answer.
    let ops = b"PING\r\nSUB a 1\r\nPUB a 2\r\nhi\r\nPING\r\n";
    let mut answers = Vec::new();
    for addr in [proxy.addr, nats.addr()] {
        let (mut s, _) = raw_connect(addr).await;
        s.write_all(ops).await.unwrap();
        let mut got = String::new();
        while !got.ends_with("hi\r\nPONG\r\n") && got.len() < 200 {
            got += &read_line(&mut s).await;
        }
        answers.push(got);
    }
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0].starts_with("PONG\r\n"), "{}", answers[0]);
    // Garbage first gets nats-server's own answer, not natsgate's Authorization Violation.
    let (mut s, _) = raw_connect(proxy.addr).await;
    s.write_all(b"HELLO\r\n").await.unwrap();
    let got = show(&read_to_close(&mut s, Duration::from_secs(3)).await);
    assert_eq!(got, "-ERR 'Unknown Protocol Operation'\r\n");
}
