//! Upstream faults (issue 7): nats-server killed mid-stream and restarted, one member of a
//! three-node cluster down (refusing, or hung), and upstreams that misbehave before or while
//! sending INFO (never, malformed, oversized). Each test has its own servers and proxy.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use natsgate::metrics::Reject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// TCP sockets in this network namespace (IPv4), from /proc/net/tcp: (local port, remote
/// port, state). State 0x0A is LISTEN, 0x06 TIME_WAIT, 0x08 CLOSE_WAIT.
fn tcp_sockets() -> Vec<(u16, u16, u8)> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |a: &str| {
        a.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            Some((port(f.get(1)?)?, port(f.get(2)?)?, state))
        })
        .collect()
}

/// natsgate holds no socket for `proxy_port` (other than its listener) and none towards
/// `upstream_port` (other than TIME_WAIT, which the kernel owns): no descriptor leaked.
async fn assert_no_sockets(proxy_port: u16, upstream_port: u16) {
    let mut left: Vec<(u16, u16, u8)>;
    assert_eventually!(
        {
            left = tcp_sockets()
                .into_iter()
                .filter(|&(l, r, st)| {
                    (l == proxy_port && st != 0x0A && st != 0x06)
                        || (r == upstream_port && st == 0x08)
                })
                .collect();
            left.is_empty()
        },
        "sockets left open (local, remote, state): {left:?}"
    );
}

/// A fake upstream: accepts connections and hands each to `serve`. Counts connections and
/// records, for each, how long it lived until natsgate closed it (or `serve` returned).
struct Fake {
    url: String,
    accepted: Arc<AtomicUsize>,
    lifetimes: Arc<Mutex<Vec<Duration>>>,
}

impl Fake {
    async fn start<F, Fut>(serve: F) -> Fake
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        Fake::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), serve)
    }

    fn on<F, Fut>(l: TcpListener, serve: F) -> Fake
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let fake = Fake {
            url: format!("nats://{}", l.local_addr().unwrap()),
            accepted: Arc::default(),
            lifetimes: Arc::default(),
        };
        let (a, lt) = (fake.accepted.clone(), fake.lifetimes.clone());
        let serve = Arc::new(serve);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                let (serve, lt) = (serve.clone(), lt.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    serve(s).await;
                    lt.lock().unwrap().push(t.elapsed());
                });
            }
        });
        fake
    }

    fn closed(&self) -> usize {
        self.lifetimes.lock().unwrap().len()
    }

    /// Every connection the fake accepted (clients' and probes') has been closed by natsgate.
    fn all_closed(&self) -> bool {
        let closed = self.closed();
        closed >= 1 && closed == self.accepted.load(Ordering::Relaxed)
    }

    /// natsgate without the admin endpoints in front of `servers`. (Its background probe still
    /// dials the fake: counts of the fake's connections include the probe's.)
    async fn proxy(servers: &[&String], window: f64, connect_timeout: f64) -> Proxy {
        ProxyConfig::new(servers)
            .window(window)
            .set("upstream.connect_timeout", secs(connect_timeout))
            .without_admin()
            .start()
            .await
    }
}

/// Holds the connection and reads (discarding) until natsgate closes it.
async fn hold(mut s: TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// A raw client with no INFO expected: returns what came back, whether it closed, and when.
async fn closed_without_info(proxy: &Proxy, limit: Duration) -> (Vec<u8>, bool, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, limit).await;
    (got, closed, started.elapsed())
}

// ---------------------------------------------------------------------------------------------
// nats-server killed, restarted.
// ---------------------------------------------------------------------------------------------

/// nats-server dies while established clients are exchanging messages: every client is closed
/// within a second, the active gauge returns to 0, no socket (hence no descriptor) is left in
/// natsgate, and the runtime's task count is back where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_stream_closes_every_client_promptly_and_leaks_nothing() {
    let mut nats = NatsServer::start("");
    let proxy = nats.gate().start().await;
    // The proxy's own background tasks are up once it has served a scrape.
    proxy.metrics().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alive_tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let tasks_before = alive_tasks();

    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut s = proxy.established().await;
        s.write_all(b"SUB stream 1\r\nPING\r\n").await.unwrap();
        assert_eq!(read_op(&mut s).await, "PONG\r\n");
        clients.push(s);
    }
    // Traffic in flight: one publisher streams to all subscribers until the server dies.
    let mut publisher = proxy.established().await;
    let pump = tokio::spawn(async move {
        let msg = b"PUB stream 16\r\n0123456789abcdef\r\n".repeat(64);
        while publisher.write_all(&msg).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.metrics().await.active("established"), 9.0);

    let killed = Instant::now();
    nats.stop();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
                (closed, killed.elapsed())
            })
        })
        .collect();
    for r in readers {
        let (closed, after) = r.await.unwrap();
        assert!(closed, "a client was left open after nats-server died");
        assert!(
            after < Duration::from_secs(1),
            "closed only {after:?} after the kill"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;

    proxy.assert_nothing_open().await;
    assert_no_sockets(proxy.addr.port(), nats.port).await;
    assert_eventually!(
        alive_tasks() <= tasks_before,
        "tasks: {tasks_before} before, {} after",
        alive_tasks()
    );
}

/// nats-server restarts on the same port: async-nats clients reconnect through natsgate, their
/// subscriptions come back, and request/reply works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_clients_reconnect_through_natsgate() {
    let mut nats = NatsServer::start("");
    let proxy = nats.gate().start().await;
    let connects = Arc::new(AtomicUsize::new(0));
    let connect = || {
        let counter = connects.clone();
        client_options()
            .event_callback(move |e| {
                let c = counter.clone();
                async move {
                    if matches!(e, async_nats::Event::Connected) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .connect(proxy.url())
    };
    let responder = connect().await.unwrap();
    let requester = connect().await.unwrap();
    let echo = Echo::start(&responder, "svc").await;
    let answered = |n: u32| {
        let requester = requester.clone();
        async move {
            let r = tokio::time::timeout(
                Duration::from_secs(1),
                requester.request("svc", n.to_string().into()),
            );
            matches!(r.await, Ok(Ok(m)) if m.payload.as_ref() == n.to_string().as_bytes())
        }
    };
    assert_eventually!(answered(1).await, "request/reply before the restart");
    let before = connects.load(Ordering::Relaxed);

    nats.restart();
    assert_eventually!(
        within Duration::from_secs(20); connects.load(Ordering::Relaxed) >= before + 2,
        "both clients reconnected through natsgate ({} connects)",
        connects.load(Ordering::Relaxed)
    );
    assert_eventually!(
        within Duration::from_secs(20); answered(2).await,
        "request/reply after the restart (the subscription came back)"
    );
    let m = proxy.metrics().await;
    assert_eq!(m.active("established"), 2.0, "{m}");
    assert_eq!(m.active("pending"), 0.0);
    // The reconnected clients really are on the new server process.
    let connz = nats.monitor("/connz").await;
    assert_eq!(connz["num_connections"], 2, "{connz}");

    echo.stop().await;
    drop((requester, responder));
    proxy.assert_nothing_open().await;
}

// ---------------------------------------------------------------------------------------------
// One of three cluster members down.
// ---------------------------------------------------------------------------------------------

/// Opens `n` clients one after the other; returns how long each took to get PONG.
async fn timed_clients(proxy: &Proxy, n: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        drop(proxy.established().await);
        times.push(t.elapsed());
    }
    times
}

/// A member is killed (its port refuses): every new client is served by the other two at
/// once, and the dead one is tried at most once in the down period, not on every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_members_refusing_costs_nothing() {
    let mut members = NatsServer::cluster(3);
    let urls: Vec<String> = members.iter().map(|m| m.url()).collect();
    let proxy = ProxyConfig::new(&urls).start().await;
    timed_clients(&proxy, 3).await;
    members[1].stop();
    let times = timed_clients(&proxy, 12).await;
    for (i, t) in times.iter().enumerate() {
        assert!(
            *t < Duration::from_millis(300),
            "client {i} took {t:?}: {times:?}"
        );
    }
    let m = proxy.metrics().await;
    let errors = m.get("natsgate_upstream_errors_total", &[("server", &urls[1])]);
    assert!(
        (1.0..=2.0).contains(&errors),
        "the dead member was tried {errors} times for 12 clients"
    );
    assert_eq!(m.rejected(Reject::UpstreamUnavailable), 0.0);
    proxy.assert_nothing_open().await;
}

/// A member hangs (accepts TCP, never sends INFO): hedged dialing means no client waits for
/// it longer than the hedge delay (250 ms) plus a dial, never its `connect_timeout`; the member
/// is ejected, shown as down, and counted; no client is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_members_hung_costs_clients_at_most_the_hedge_delay() {
    let mut members = NatsServer::cluster(3);
    let urls: Vec<String> = members.iter().map(|m| m.url()).collect();
    let proxy = ProxyConfig::new(&urls).window(3.0).start().await;
    timed_clients(&proxy, 3).await;
    let port = members[2].port;
    members[2].stop();
    // Something that accepts on the dead member's port and never speaks: a hung host.
    let _hung = Fake::on(TcpListener::bind(("127.0.0.1", port)).await.unwrap(), hold);

    let times = timed_clients(&proxy, 12).await;
    let slow = times
        .iter()
        .filter(|t| **t >= Duration::from_millis(200))
        .count();
    assert!(
        slow <= 1,
        "more than one client met the hung member: {times:?}"
    );
    let worst = *times.iter().max().unwrap();
    assert!(
        worst < Duration::from_millis(900),
        "connect_timeout is 1 s: {times:?}"
    );
    let m = proxy.metrics().await;
    assert!(m.get("natsgate_upstream_errors_total", &[("server", &urls[2])]) >= 1.0);
    assert_eq!(m.get("natsgate_upstream_up", &[("server", &urls[2])]), 0.0);
    assert!(m.get("natsgate_upstream_ejections_total", &[("server", &urls[2])]) >= 1.0);
    assert_eq!(m.rejected(Reject::UpstreamUnavailable), 0.0);
    proxy.assert_nothing_open().await;
}

// ---------------------------------------------------------------------------------------------
// Upstreams that misbehave around INFO.
// ---------------------------------------------------------------------------------------------

/// Accepts but never sends INFO, and the window is shorter than `connect_timeout`: the window
/// still holds, but the failure is upstream's, not the client's: the client is closed at its
/// deadline without a byte (it never saw a server), counted as `upstream_unavailable` and
/// against the member, and natsgate closes the hung upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_without_info_within_the_window_is_upstream_unavailable() {
    let fake = Fake::start(hold).await;
    let proxy = Fake::proxy(&[&fake.url], 0.5, 2.0).await;
    let (got, closed, after) = closed_without_info(&proxy, Duration::from_secs(3)).await;
    assert!(closed);
    assert_eq!(show(&got), "");
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_millis(1000),
        "{after:?}"
    );
    assert_eventually!(
        fake.all_closed(),
        "natsgate closed the hung upstream connection"
    );
    let m = proxy.metrics().await;
    m.assert_rejected(&[(Reject::UpstreamUnavailable, 1.0)]);
    let errors = m.get("natsgate_upstream_errors_total", &[("server", &fake.url)]);
    assert!(
        errors >= 1.0,
        "the clipped attempt counts against the member"
    );
    assert_eq!(m.get("natsgate_upstream_up", &[("server", &fake.url)]), 0.0);
    proxy.assert_nothing_open().await;
}

/// Accepts but never sends INFO, and `connect_timeout` ends first: the server counts as failed
/// (`upstream_unavailable`, `natsgate_upstream_errors_total`) and the client is closed without
/// a byte (there is no INFO to give it), well inside its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_without_info_fails_at_connect_timeout() {
    let fake = Fake::start(hold).await;
    let proxy = Fake::proxy(&[&fake.url], 3.0, 0.5).await;
    let (got, closed, after) = closed_without_info(&proxy, Duration::from_secs(3)).await;
    assert!(closed);
    assert_eq!(show(&got), "");
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_millis(1000),
        "{after:?}"
    );
    let m = proxy.metrics().await;
    m.assert_rejected(&[(Reject::UpstreamUnavailable, 1.0)]);
    // The client's attempt, and perhaps the background probe's.
    let errors = m.get("natsgate_upstream_errors_total", &[("server", &fake.url)]);
    assert!(errors >= 1.0, "{errors}");
    proxy.assert_nothing_open().await;
}

/// Malformed first lines from upstream: each is refused as an upstream error, none of its bytes
/// reach the client, and the next server (a real nats-server) serves the client instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_info_is_an_upstream_error_and_the_next_server_serves() {
    let nats = NatsServer::start("");
    let real_id = info_json(&raw_connect(nats.addr()).await.1)["server_id"].clone();
    let bad_lines: [&[u8]; 6] = [
        b"INFO {\"server_id\":\"FAKE\",\r\n",
        b"INFO [\"FAKE\"] \r\n",
        b"INFO \r\n",
        b"-ERR 'FAKE maximum connections exceeded'\r\n",
        b"HTTP/1.1 400 Bad Request FAKE\r\n\r\n",
        b"\x00\x01\x02FAKE\xff\xfe\n",
    ];
    for bad in bad_lines {
        let fake = Fake::start(move |mut s| async move {
            let _ = s.write_all(bad).await;
            hold(s).await;
        })
        .await;
        let proxy = Fake::proxy(&[&fake.url, &nats.url()], 2.0, 1.0).await;
        let (mut s, info) = raw_connect(proxy.addr).await;
        assert!(
            !info.contains("FAKE"),
            "the malformed INFO reached the client: {info:?}"
        );
        assert_eq!(
            info_json(&info)["server_id"],
            real_id,
            "served by the real server"
        );
        s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_op(&mut s).await, "PONG\r\n");
        drop(s);
        let m = proxy.metrics().await;
        // The probe's attempt may count too.
        let errors = m.get("natsgate_upstream_errors_total", &[("server", &fake.url)]);
        assert!(errors >= 1.0, "{:?}", show(bad));
        assert_eq!(m.rejected(Reject::UpstreamUnavailable), 0.0);
        assert_eventually!(fake.all_closed(), "natsgate closed the malformed upstream");
        proxy.assert_nothing_open().await;
    }
}

/// With only a malformed upstream, the client is closed without a byte and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_info_from_the_only_upstream_closes_the_client() {
    let fake = Fake::start(|mut s| async move {
        let _ = s.write_all(b"INFO {\"nonce\":\"x\" \r\n").await;
        hold(s).await;
    })
    .await;
    let proxy = Fake::proxy(&[&fake.url], 2.0, 1.0).await;
    let (got, closed, after) = closed_without_info(&proxy, Duration::from_secs(3)).await;
    assert!(closed && after < Duration::from_millis(500), "{after:?}");
    assert_eq!(show(&got), "");
    let m = proxy.metrics().await;
    m.assert_rejected(&[(Reject::UpstreamUnavailable, 1.0)]);
    proxy.assert_nothing_open().await;
}

/// An upstream that streams an endless INFO line (no newline): natsgate stops reading at
/// 256 KiB (`upstream::MAX_INFO_LINE`), long before `connect_timeout`, closes that upstream and
/// the client, and nothing reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_info_is_cut_at_256_kib() {
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let fake = Fake::start(move |mut s| {
        let w = w.clone();
        async move {
            let mut line = b"INFO {\"server_id\":\"FAKE\",\"connect_urls\":[".to_vec();
            line.resize(64 * 1024, b'x');
            // At most 64 MiB; natsgate must close long before.
            for _ in 0..1024 {
                if s.write_all(&line).await.is_err() {
                    return;
                }
                w.fetch_add(line.len(), Ordering::Relaxed);
                line.fill(b'x');
            }
        }
    })
    .await;
    let proxy = Fake::proxy(&[&fake.url], 8.0, 5.0).await;
    let (got, closed, after) = closed_without_info(&proxy, Duration::from_secs(7)).await;
    assert!(closed);
    assert_eq!(got.len(), 0, "bytes reached the client");
    assert!(
        after < Duration::from_secs(2),
        "natsgate read for {after:?} (connect_timeout is 5 s)"
    );
    assert_eventually!(
        within Duration::from_secs(3); fake.all_closed(),
        "the oversized upstream was closed"
    );
    let lived = fake.lifetimes.lock().unwrap()[0];
    assert!(lived < Duration::from_secs(3), "{lived:?}");
    // What the fake managed to write: natsgate's 256 KiB plus what the kernel buffers held.
    let total = written.load(Ordering::Relaxed);
    assert!(
        total < 32 * 1024 * 1024,
        "natsgate kept reading: {total} bytes"
    );
    let m = proxy.metrics().await;
    m.assert_rejected(&[(Reject::UpstreamUnavailable, 1.0)]);
    // The client's attempt, and perhaps the background probe's.
    let errors = m.get("natsgate_upstream_errors_total", &[("server", &fake.url)]);
    assert!(errors >= 1.0, "{errors}");
    proxy.assert_nothing_open().await;
}

/// The other side of the limit: a 200 KiB INFO (a big cluster's `connect_urls`) is relayed
/// whole, nonce intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_info_under_the_limit_is_relayed_whole() {
    let urls: Vec<String> = (0..12_000)
        .map(|i| format!("10.{}.{}.{}:4222", i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let info = serde_json::json!({
        "server_id": "BIG", "nonce": "n0nce-big_INFO", "headers": true, "max_payload": 1048576,
        "proto": 1, "connect_urls": urls,
    });
    let line: Arc<str> = format!("INFO {info} \r\n").into();
    assert!(
        line.len() > 200 * 1024 && line.len() < 256 * 1024,
        "{}",
        line.len()
    );
    let l2 = line.clone();
    let fake = Fake::start(move |mut s| {
        let l = l2.clone();
        async move {
            let _ = s.write_all(l.as_bytes()).await;
            hold(s).await;
        }
    })
    .await;
    let proxy = ProxyConfig::new(&[&fake.url])
        .set("upstream.strip_connect_urls", false)
        .without_admin()
        .start()
        .await;
    let got = info_json(&raw_connect(proxy.addr).await.1);
    assert_eq!(got["nonce"], "n0nce-big_INFO");
    let relayed_urls = got["connect_urls"].as_array().map(|a| a.len());
    assert_eq!(relayed_urls, Some(12_000));
    // Every field as sent, plus the client's own address (nats-server's INFO always has one).
    let mut want = info.clone();
    want["client_ip"] = "127.0.0.1".into();
    assert_eq!(got, want);
}
