//! The hostile-client catalogue (issue 7, docs/ROBUSTNESS.md): every case sends what a broken or
//! malicious client would, and asserts
//! - the exact bytes natsgate answers with (DESIGN §1) and that the connection is then closed,
//! - the exact `natsgate_connections_rejected_total{reason}` counts,
//! - that natsgate stays up (a fresh client completes CONNECT/PING/PONG afterwards),
//! - that a well-behaved async-nats client doing request/reply through the same proxy the whole
//!   time saw no error, no disconnect and no stall,
//! - and that every connection is gone afterwards (`natsgate_connections_active` 0 in both phases).
//!
//! Each test has its own nats-server and proxy, so they run in parallel.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use natsgate::metrics::Reject;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

// The client-visible refusals, byte for byte (DESIGN §1).
const ERR_AUTH_TIMEOUT: &[u8] = b"-ERR 'Authentication Timeout'\r\n";
const ERR_AUTH_VIOLATION: &[u8] = b"-ERR 'Authorization Violation'\r\n";
const ERR_MAX_CONTROL_LINE: &[u8] = b"-ERR 'maximum control line exceeded'\r\n";
const ERR_TLS_REQUIRED: &[u8] = b"-ERR 'Secure Connection - TLS Required'\r\n";
const ERR_MAX_CONNECTIONS: &[u8] = b"-ERR 'maximum connections exceeded'\r\n";

fn invalid_args(why: &str) -> Vec<u8> {
    format!("-ERR 'Invalid CONNECT Arguments: {why}'\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// The 5,000-client case measures latency, so it runs alone: it takes this lock for writing,
/// every other case (through [`Scene`]) for reading.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// nats-server with user/password auth and its own (longer) authorization timer, so that every
/// timeout a test sees is natsgate's window.
fn nats_with(extra: &str) -> NatsServer {
    NatsServer::start_with(&format!(
        "authorization {{ user: {USER}, password: {PASS}, timeout: 60 }}\nmax_payload: 2MB\n{extra}"
    ))
}

fn nats() -> NatsServer {
    nats_with("")
}

/// An async-nats client through natsgate that counts its disconnects.
async fn counted_client(url: &str, disconnects: Arc<AtomicUsize>) -> async_nats::Client {
    client_options()
        .event_callback(move |e| {
            let d = disconnects.clone();
            async move {
                if matches!(e, async_nats::Event::Disconnected) {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .connect(url)
        .await
        .expect("well-behaved client connects through natsgate")
}

/// Request/reply statistics of well-behaved clients.
#[derive(Debug, Default)]
struct Stats {
    /// (when it was sent, since the epoch; how long it took)
    ok: Vec<(Duration, Duration)>,
    errors: Vec<String>,
}

/// Requests on `subject` every `every` until `stop`, each answered within 2 s or an error.
fn requester(
    c: async_nats::Client,
    subject: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> tokio::task::JoinHandle<Stats> {
    tokio::spawn(async move {
        let mut stats = Stats::default();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let body = i.to_be_bytes().to_vec();
            let t = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                c.request(subject, body.clone().into()),
            );
            match r.await {
                Ok(Ok(m)) if m.payload.as_ref() == &body[..] => {
                    stats.ok.push((t - epoch, t.elapsed()))
                }
                other => stats.errors.push(format!("request {i}: {other:?}")),
            }
            tokio::time::sleep(every).await;
        }
        stats
    })
}

/// A well-behaved client next to the hostile one: a responder and a requester, both through
/// natsgate, doing request/reply every few milliseconds until stopped.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Stats>,
    echo: Echo,
    disconnects: Arc<AtomicUsize>,
    _clients: [async_nats::Client; 2],
}

impl Bystander {
    async fn start(proxy: &Proxy) -> Bystander {
        let disconnects = Arc::new(AtomicUsize::new(0));
        let responder = counted_client(&proxy.url(), disconnects.clone()).await;
        let requester = counted_client(&proxy.url(), disconnects.clone()).await;
        let echo = Echo::start(&responder, "bystander.echo").await;
        let stop = Arc::new(AtomicBool::new(false));
        let task = self::requester(
            requester.clone(),
            "bystander.echo",
            Duration::from_millis(10),
            stop.clone(),
            Instant::now(),
        );
        Bystander {
            stop,
            task,
            echo,
            disconnects,
            _clients: [responder, requester],
        }
    }

    async fn finish(self) -> (Stats, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let stats = self.task.await.expect("bystander task");
        self.echo.stop().await;
        (stats, self.disconnects.load(Ordering::Relaxed))
    }
}

/// One test's world: nats-server, natsgate, and the well-behaved client.
struct Scene {
    _shared: tokio::sync::RwLockReadGuard<'static, ()>,
    nats: NatsServer,
    proxy: Proxy,
    bystander: Bystander,
    started: Instant,
}

impl Scene {
    async fn start(window: f64) -> Scene {
        Self::with(nats(), |c| c.window(window)).await
    }

    async fn with(nats: NatsServer, config: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Scene {
        let shared = EXCLUSIVE.read().await;
        let proxy = config(nats.gate()).start().await;
        let bystander = Bystander::start(&proxy).await;
        // Let the bystander get going before the hostile client arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Scene {
            _shared: shared,
            nats,
            proxy,
            bystander,
            started: Instant::now(),
        }
    }

    /// The common ending: the bystander was unaffected, natsgate still serves, the refusals were
    /// counted exactly, and nothing is left open.
    async fn finish(self, rejected: &[(Reject, f64)]) {
        let (stats, disconnects) = self.bystander.finish().await;
        assert!(
            stats.errors.is_empty(),
            "the well-behaved client was hurt: {:?}",
            stats.errors
        );
        assert_eq!(disconnects, 0, "the well-behaved client was disconnected");
        let min = (self.started.elapsed().as_millis() / 100).clamp(3, 20) as usize;
        assert!(
            stats.ok.len() >= min,
            "the well-behaved client stalled: {} requests",
            stats.ok.len()
        );
        let p99 = p99(stats.ok.iter().map(|s| s.1));
        assert!(
            p99 < Duration::from_millis(250),
            "the well-behaved client slowed down: p99 {p99:?}"
        );
        drop(self.proxy.established().await);
        self.proxy.metrics().await.assert_rejected(rejected);
        self.proxy.assert_nothing_open().await;
    }
}

/// SO_LINGER 0, so that dropping the socket sends RST instead of FIN (it never blocks with 0).
#[allow(deprecated)]
fn reset(s: TcpStream) {
    s.set_linger(Some(Duration::ZERO)).unwrap();
}

/// Connects, reads INFO, sends `bytes` (write errors ignored: natsgate may have closed already)
/// and returns what came back before the close.
async fn send_after_info(proxy: &Proxy, bytes: &[u8]) -> Vec<u8> {
    let (mut s, info) = raw_connect(proxy.addr).await;
    info_json(&info);
    let (mut rx, mut tx) = tokio::io::split(&mut s);
    let write = async {
        let _ = tx.write_all(bytes).await;
    };
    let read = read_until_closed(&mut rx, Duration::from_secs(5));
    let ((), (out, closed)) = tokio::join!(write, read);
    assert!(closed, "natsgate did not close after {:?}", show(&out));
    out
}

/// The standard refused-first-line case.
async fn refused(
    config: impl FnOnce(ProxyConfig) -> ProxyConfig,
    bytes: impl AsRef<[u8]>,
    reply: impl AsRef<[u8]>,
) {
    let scene = Scene::with(nats(), config).await;
    let bytes = bytes.as_ref();
    let got = send_after_info(&scene.proxy, bytes).await;
    let sent = show(&bytes[..bytes.len().min(80)]);
    assert_eq!(show(&got), show(reply.as_ref()), "sent {sent:?}");
    scene.finish(&[(Reject::Protocol, 1.0)]).await;
}

/// One test per refused first line: `name: bytes => reply;` (reason `protocol`).
macro_rules! refusals {
    ($($(#[$doc:meta])* $name:ident: $bytes:expr => $reply:expr;)*) => {$(
        $(#[$doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            refused(|c| c, $bytes, $reply).await;
        }
    )*};
}

/// A first line that natsgate accepts: the client gets PONG from nats-server.
async fn accepted(
    config: impl FnOnce(ProxyConfig) -> ProxyConfig,
    chunks: &[&[u8]],
    pause: Duration,
) {
    let scene = Scene::with(nats(), config).await;
    let (mut s, _info) = raw_connect(scene.proxy.addr).await;
    for c in chunks {
        s.write_all(c).await.unwrap();
        tokio::time::sleep(pause).await;
    }
    s.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
    drop(s);
    scene.finish(&[]).await;
}

/// A real TLS 1.2/1.3 ClientHello, as rustls sends it.
fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a handshake record");
    out
}

fn garbage() -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x80)
        .collect()
}

fn padded(head: &[u8], fill: u8) -> Vec<u8> {
    let mut line = head.to_vec();
    line.resize(1024 * 1024, fill);
    line
}

// ---------------------------------------------------------------------------------------------
// Refused first lines: the reply, a close, reason=protocol.
// ---------------------------------------------------------------------------------------------

refusals! {
    // Wrong first op: `-ERR 'Authorization Violation'`.
    binary_garbage_is_an_authorization_violation: garbage() => ERR_AUTH_VIOLATION;
    http_request_is_an_authorization_violation:
        b"GET / HTTP/1.1\r\nHost: nats.example.com\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n"
        => ERR_AUTH_VIOLATION;
    tls_client_hello_on_a_plaintext_listener_is_an_authorization_violation:
        client_hello() => ERR_AUTH_VIOLATION;
    truncated_client_hello_on_a_plaintext_listener_is_an_authorization_violation:
        &client_hello()[..7] => ERR_AUTH_VIOLATION;
    nul_bytes_first_are_an_authorization_violation: [0u8; 64] => ERR_AUTH_VIOLATION;
    ping_before_connect_is_an_authorization_violation: b"PING\r\n" => ERR_AUTH_VIOLATION;
    pub_before_connect_is_an_authorization_violation:
        b"PUB secret 5\r\nhello\r\n" => ERR_AUTH_VIOLATION;
    connect_glued_to_another_word_is_an_authorization_violation:
        b"CONNECTX {}\r\n" => ERR_AUTH_VIOLATION;
    empty_line_first_is_an_authorization_violation: b"\r\nCONNECT {}\r\n" => ERR_AUTH_VIOLATION;

    // Bad CONNECT argument: `-ERR 'Invalid CONNECT Arguments: <why>'`.
    connect_with_invalid_json: b"CONNECT {not json}\r\n"
        => invalid_args("not valid JSON: key must be a string at line 1 column 2");
    connect_with_a_json_array: b"CONNECT [\"user\",\"pass\"]\r\n"
        => invalid_args("expected a JSON object, got an array");
    connect_with_a_json_string: b"CONNECT \"alice\"\r\n"
        => invalid_args("expected a JSON object, got a string");
    connect_with_json_null: b"CONNECT null\r\n"
        => invalid_args("expected a JSON object, got null");
    connect_with_a_json_number: b"CONNECT 42\r\n"
        => invalid_args("expected a JSON object, got a number");
    /// serde_json's recursion limit (128) answers before any stack is at risk.
    connect_with_deeply_nested_arrays: format!("CONNECT {}\r\n", "[".repeat(3000))
        => invalid_args("not valid JSON: recursion limit exceeded at line 1 column 128");
    /// 700 unclosed levels: the nesting is followed, not limited, so the end of the line is
    /// where it fails (values are checked without being built, as nats-server does).
    connect_with_deeply_nested_objects: format!("CONNECT {}\r\n", "{\"a\":".repeat(700))
        => invalid_args("not valid JSON: EOF while parsing a value at line 1 column 3500");
    connect_with_a_nul_byte_inside_a_string: b"CONNECT {\"name\":\"a\x00b\"}\r\n"
        => invalid_args("not valid JSON: control character (\\u0000-\\u001F) found while parsing a string at line 1 column 10");
    connect_with_a_nul_byte_between_tokens: b"CONNECT {\"a\":1\x00}\r\n"
        => invalid_args("not valid JSON: expected `,` or `}` at line 1 column 7");
    connect_with_invalid_utf8: b"CONNECT {\"name\":\"\xff\xfe\"}\r\n"
        => invalid_args("not valid JSON: invalid unicode code point at line 1 column 10");
    connect_with_trailing_garbage: b"CONNECT {} x\r\n"
        => invalid_args("not valid JSON: trailing characters at line 1 column 4");
    connect_with_a_trailing_comma: b"CONNECT {\"verbose\":false,}\r\n"
        => invalid_args("not valid JSON: trailing comma at line 1 column 18");
    connect_without_an_argument: b"CONNECT\r\n" => invalid_args("missing JSON object");
    connect_with_only_blanks: b"CONNECT \t  \r\n" => invalid_args("missing JSON object");
    /// A lone `\r` is part of the line, so the argument is `{}\rPING`: not JSON.
    cr_without_lf_inside_the_connect_line: b"CONNECT {}\rPING\r\n"
        => invalid_args("not valid JSON: trailing characters at line 1 column 4");

    // Long lines: `-ERR 'maximum control line exceeded'`.
    one_mib_connect_line_without_newline: padded(b"CONNECT {\"name\":\"", b'a')
        => ERR_MAX_CONTROL_LINE;
    one_mib_of_blanks_after_connect: padded(b"CONNECT ", b' ') => ERR_MAX_CONTROL_LINE;
}

/// A CONNECT line (with the test user) whose bytes before `\r\n` number exactly `len`.
fn connect_of_length(len: usize) -> String {
    let head =
        format!("CONNECT {{\"verbose\":false,\"user\":\"{USER}\",\"pass\":\"{PASS}\",\"name\":\"");
    let name = "n".repeat(len - head.len() - 2);
    format!("{head}{name}\"}}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_argument_one_byte_over_max_control_line() {
    // max_control_line = 256 limits the argument, as nats-server does: `CONNECT ` plus 257
    // argument bytes before `\r\n` is refused.
    let line = connect_of_length(257 + 8);
    assert_eq!(line.len(), 257 + 8 + 2);
    let config = |c: ProxyConfig| c.set("listener.max_control_line", 256);
    refused(config, line, ERR_MAX_CONTROL_LINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_argument_exactly_at_max_control_line_is_accepted() {
    // The boundary's other side: a 256-byte argument is fine (nats-server's rule), so the whole
    // line may be longer than max_control_line.
    let line = connect_of_length(256 + 8);
    let config = |c: ProxyConfig| c.set("listener.max_control_line", 256);
    accepted(config, &[line.as_bytes()], Duration::ZERO).await;
}

// ---------------------------------------------------------------------------------------------
// Odd but valid spellings and splits: accepted, PONG from nats-server.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_inside_the_word_connect_is_accepted() {
    let line = connect_line(USER, PASS);
    let (a, b) = line.as_bytes().split_at(4);
    accepted(|c| c.window(3.0), &[a, b], Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_one_byte_per_write_inside_the_window_is_accepted() {
    let line = connect_line(USER, PASS);
    let chunks: Vec<&[u8]> = line.as_bytes().chunks(1).collect();
    accepted(|c| c.window(3.0), &chunks, Duration::from_millis(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowercase_connect_with_bare_lf_is_accepted() {
    let line = format!("connect\t{{\"verbose\":false,\"user\":\"{USER}\",\"pass\":\"{PASS}\"}}\n");
    accepted(|c| c.window(3.0), &[line.as_bytes()], Duration::ZERO).await;
}

// ---------------------------------------------------------------------------------------------
// The window: `-ERR 'Authentication Timeout'` at the deadline, reason=auth_timeout.
// ---------------------------------------------------------------------------------------------

/// In a scene with a 1 s window: writes `bytes` one at a time every `every` from connect
/// (reading INFO first when `read_info_first`), then stays silent. Asserts INFO and then the
/// timeout error, with the close at the window.
async fn cut_at_the_window(bytes: &[u8], every: Duration, read_info_first: bool) {
    let scene = Scene::start(1.0).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(scene.proxy.addr).await.unwrap();
    let info = match read_info_first {
        true => read_line(&mut s).await,
        false => String::new(),
    };
    let (mut rx, mut tx) = s.into_split();
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        for b in bytes {
            if tx.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        // Then stay silent with the socket open.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let (out, closed) = read_until_closed(&mut rx, Duration::from_secs(10)).await;
    let after = started.elapsed();
    writer.abort();
    let got = format!("{info}{}", show(&out));
    assert!(closed, "natsgate never closed the trickler: {got:?}");
    let (info, rest) = got
        .split_once('\n')
        .unwrap_or_else(|| panic!("no INFO line: {got:?}"));
    info_json(&format!("{info}\n"));
    assert_eq!(rest, show(ERR_AUTH_TIMEOUT), "after INFO");
    assert!(
        after >= Duration::from_secs(1) && after < Duration::from_millis(1800),
        "closed after {after:?}, window 1 s"
    );
    scene.finish(&[(Reject::AuthTimeout, 1.0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_after_info_is_cut_at_the_window() {
    let line = connect_line(USER, PASS);
    cut_at_the_window(line.as_bytes(), Duration::from_millis(100), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_before_info_is_cut_at_the_window() {
    // The trickle starts at once, without waiting for INFO.
    let line = connect_line(USER, PASS);
    cut_at_the_window(line.as_bytes(), Duration::from_millis(100), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_cut_at_the_window() {
    cut_at_the_window(b"", Duration::ZERO, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cr_without_lf_then_silence_is_cut_at_the_window() {
    let line = connect_line(USER, PASS);
    cut_at_the_window(line.trim_end_matches('\n').as_bytes(), Duration::ZERO, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_connect_word_then_silence_is_cut_at_the_window() {
    cut_at_the_window(b"CONNECT ", Duration::ZERO, true).await;
}

// ---------------------------------------------------------------------------------------------
// Abrupt ends.
// ---------------------------------------------------------------------------------------------

/// Connects and resets at once (SO_LINGER 0): natsgate notices, closes its upstream
/// connection, and nats-server ends up with only the bystander's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_then_rst_leaves_nothing_behind() {
    let scene = Scene::start(2.0).await;
    for _ in 0..20 {
        reset(TcpStream::connect(scene.proxy.addr).await.unwrap());
    }
    // Each reset client is refused as soon as natsgate notices: INFO write or CONNECT read.
    assert_eventually!(
        scene.proxy.handle.open_connections() == 2,
        "reset clients still open: {}",
        scene.proxy.handle.open_connections()
    );
    scene.nats.assert_connections(2).await;
    let m = scene.proxy.metrics().await;
    assert_eq!(m.get("natsgate_connections_accepted_total", &[]), 22.0);
    scene.finish(&[(Reject::Protocol, 20.0)]).await;
}

/// After INFO, the client resets in the middle of its CONNECT line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_in_the_middle_of_connect() {
    let scene = Scene::start(2.0).await;
    let (mut s, _info) = raw_connect(scene.proxy.addr).await;
    s.write_all(&connect_line(USER, PASS).as_bytes()[..20])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    reset(s);
    assert_eventually!(scene.proxy.handle.open_connections() == 2);
    scene.nats.assert_connections(2).await;
    scene.finish(&[(Reject::Protocol, 1.0)]).await;
}

/// An established client resets: both sides of the relay end, nats-server drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_after_connect_closes_the_upstream_side() {
    let scene = Scene::start(2.0).await;
    let mut s = scene.proxy.established().await;
    s.write_all(b"SUB > 1\r\nPING\r\n").await.unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
    scene.nats.assert_connections(3).await;
    reset(s);
    assert_eventually!(scene.proxy.handle.open_connections() == 2);
    scene.nats.assert_connections(2).await;
    scene.finish(&[]).await;
}

/// Half-close after CONNECT: what was sent before the FIN is delivered, then the connection
/// ends on both sides (nats-server closes on EOF; natsgate passes that on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_after_connect_delivers_then_closes() {
    use futures::StreamExt;
    let scene = Scene::start(2.0).await;
    let watcher = scene.proxy.client().await;
    let mut sub = watcher.subscribe("halfclose").await.unwrap();
    watcher.flush().await.unwrap();

    let (mut s, _info) = raw_connect(scene.proxy.addr).await;
    let pubs = format!(
        "{}PUB halfclose 11\r\nhello world\r\n",
        connect_line(USER, PASS)
    );
    s.write_all(pubs.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert_eq!(m.unwrap().unwrap().payload.as_ref(), b"hello world");
    let started = Instant::now();
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(7)).await;
    assert!(closed, "natsgate kept a half-closed client open");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // Whatever nats-server said before closing (async INFO) may arrive; no natsgate -ERR.
    assert!(!show(&rest).contains("-ERR"), "{:?}", show(&rest));
    drop((sub, watcher));
    scene.finish(&[]).await;
}

/// Half-close before CONNECT: refused quietly (nothing to say to a client that stopped talking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_before_connect_is_closed_quietly() {
    let scene = Scene::start(2.0).await;
    let (mut s, _info) = raw_connect(scene.proxy.addr).await;
    s.write_all(b"CONN").await.unwrap();
    s.shutdown().await.unwrap();
    let started = Instant::now();
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    let after = started.elapsed();
    assert!(closed && after < Duration::from_millis(500), "{after:?}");
    assert_eq!(show(&rest), "");
    scene.finish(&[(Reject::Protocol, 1.0)]).await;
}

// ---------------------------------------------------------------------------------------------
// Limits and TLS.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_pending_per_ip_gets_info_then_maximum_connections_exceeded() {
    let scene = Scene::with(nats(), |c| {
        c.window(1.0).set("listener.max_pending_per_ip", 3)
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(raw_connect(scene.proxy.addr).await.0);
    }
    let mut s = TcpStream::connect(scene.proxy.addr).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(2)).await;
    assert!(closed);
    // nats-server's order at its own limit: INFO (no nonce: it would belong to no connection),
    // then the error, so client libraries report the limit instead of "INFO not received".
    let got = show(&got);
    let (info, err) = got.split_once("\r\n").expect("two lines");
    assert!(info.starts_with("INFO {") && info.ends_with("} "), "{got}");
    assert!(!info.contains("\"nonce\""), "{got}");
    assert_eq!(format!("{err}"), show(ERR_MAX_CONNECTIONS), "{got}");
    for mut s in silent {
        let (got, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        assert_eq!(show(&got), show(ERR_AUTH_TIMEOUT));
    }
    // nats-server never saw the refused one: bystander (2) only.
    scene.nats.assert_connections(2).await;
    let want = [(Reject::Limit, 1.0), (Reject::AuthTimeout, 3.0)];
    scene.finish(&want).await;
}

/// A TLS listener section (self-signed certificate written to `dir`); `required = false`
/// keeps the plaintext bystander working next to the TLS cases.
fn with_tls(c: ProxyConfig, dir: &std::path::Path, timeout: i64, required: bool) -> ProxyConfig {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let files = pki::Files {
        cert: write_file(dir, "cert.pem", &ck.cert.pem()),
        key: write_file(dir, "key.pem", &ck.signing_key.serialize_pem()),
    };
    c.tls(&files, false)
        .set("tls.timeout", timeout)
        .set("tls.required", required)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_client_hello_on_a_tls_listener_is_closed_silently_at_the_tls_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let scene = Scene::with(nats(), |c| with_tls(c.window(3.0), dir.path(), 1, false)).await;
    let (mut s, info) = raw_connect(scene.proxy.addr).await;
    assert_eq!(info_json(&info)["tls_available"], true);
    let started = Instant::now();
    s.write_all(&client_hello()[..20]).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(
        show(&got),
        "",
        "no bytes on a handshake that never finished"
    );
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(1800),
        "{after:?}"
    );
    scene.finish(&[(Reject::TlsHandshake, 1.0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_hello_on_a_tls_listener_is_closed_without_a_byte() {
    let dir = tempfile::tempdir().unwrap();
    let scene = Scene::with(nats(), |c| with_tls(c.window(3.0), dir.path(), 2, false)).await;
    let (mut s, _info) = raw_connect(scene.proxy.addr).await;
    // A handshake record whose body is not a ClientHello at all.
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    hello.extend_from_slice(&[0xee; 0x40]);
    let started = Instant::now();
    s.write_all(&hello).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    let after = started.elapsed();
    assert!(closed && after < Duration::from_millis(500), "{after:?}");
    // Nothing at all: no plaintext -ERR on a TLS attempt, and tokio-rustls' accept path sends
    // no alert either.
    assert_eq!(got, b"", "{:?}", show(&got));
    scene.finish(&[(Reject::TlsHandshake, 1.0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_where_tls_is_required_gets_tls_required() {
    let dir = tempfile::tempdir().unwrap();
    let nats = nats();
    // The bystander needs a plaintext path: a second proxy cannot share the scene, so this case
    // uses TLS for nothing but the hostile client and checks the bystander on its own proxy.
    let tls_proxy = with_tls(nats.gate(), dir.path(), 1, true).start().await;
    let scene = Scene::with(nats, |c| c).await;
    let (mut s, info) = raw_connect(tls_proxy.addr).await;
    assert_eq!(info_json(&info)["tls_required"], true);
    s.write_all(connect_line(USER, PASS).as_bytes())
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed);
    assert_eq!(show(&got), show(ERR_TLS_REQUIRED));
    let m = tls_proxy.metrics().await;
    m.assert_rejected(&[(Reject::TlsRequired, 1.0)]);
    tls_proxy.assert_nothing_open().await;
    // Upstream saw only the bystander's connections.
    scene.nats.assert_connections(2).await;
    scene.finish(&[]).await;
}

// ---------------------------------------------------------------------------------------------
// Backpressure: a client that never reads.
// ---------------------------------------------------------------------------------------------

/// A subscriber to `flood` that stops reading (4 KiB receive buffer), then 48 MiB published
/// through natsgate; returns the subscriber's socket and the publisher.
async fn flood_a_client_that_never_reads(scene: &Scene) -> (TcpStream, async_nats::Client) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(scene.proxy.addr).await.unwrap();
    assert!(read_line(&mut s).await.starts_with("INFO "));
    let sub = format!("{}SUB flood 1\r\nPING\r\n", connect_line(USER, PASS));
    s.write_all(sub.as_bytes()).await.unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
    // From here on the client reads nothing.
    let publisher = scene.proxy.client().await;
    let payload = bytes::Bytes::from(vec![b'x'; 1024]);
    for i in 0..48 * 1024 {
        publisher.publish("flood", payload.clone()).await.unwrap();
        if i % 1024 == 0 {
            publisher.flush().await.unwrap();
        }
    }
    publisher.flush().await.unwrap();
    (s, publisher)
}

/// A client subscribes to a busy subject and stops reading. natsgate must not buffer for it
/// (its memory for the connection stays bounded: it forwards only what the client's socket
/// takes), and it is nats-server, watching its own write deadline, that declares the slow
/// consumer; the publisher and the bystander are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_a_slow_consumer_upstream_and_natsgate_stays_bounded() {
    let scene = Scene::with(nats_with("write_deadline: \"2s\""), |c| c).await;
    let forwarded = |m: Metrics| {
        m.get(
            "natsgate_transferred_bytes_total",
            &[("direction", "upstream_to_client")],
        )
    };
    let before = forwarded(scene.proxy.metrics().await);
    let flood = flood_a_client_that_never_reads(&scene).await;
    let mut varz: serde_json::Value;
    assert_eventually!(
        within Duration::from_secs(20);
        {
            varz = scene.nats.monitor("/varz").await;
            varz["slow_consumers"].as_u64().unwrap_or(0) >= 1
        },
        "nats-server should declare the slow consumer: {varz}"
    );
    // natsgate forwarded only what the (kernel) socket buffers could take, far less than the
    // flood; the rest stayed in nats-server until it gave up on the consumer.
    let forwarded = forwarded(scene.proxy.metrics().await) - before;
    assert!(
        forwarded < (16 * 1024 * 1024) as f64,
        "natsgate pulled {forwarded} bytes for a client that reads nothing"
    );
    drop(flood);
    scene.finish(&[]).await;
}

/// After nats-server has closed a slow consumer, natsgate must close the client side too, even
/// though its relay is stuck writing to a client that never reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_closed_upstream_is_closed_by_natsgate_too() {
    let scene = Scene::with(nats_with("write_deadline: \"1s\""), |c| c).await;
    let flood = flood_a_client_that_never_reads(&scene).await;
    // nats-server gives up on the consumer (bystander 2 + publisher are left)...
    scene.nats.assert_connections(3).await;
    // ...and natsgate must let go of the client within a bounded time: its relay is stuck
    // writing to the client, so this is the write-stall limit (30 s, `relay::WRITE_STALL_LIMIT`).
    assert_eventually!(
        within Duration::from_secs(35); scene.proxy.handle.open_connections() == 3,
        "natsgate still holds the slow consumer's client connection after upstream closed it ({} open)",
        scene.proxy.handle.open_connections()
    );
    drop(flood);
    scene.finish(&[]).await;
}

// ---------------------------------------------------------------------------------------------
// Many clients at once.
// ---------------------------------------------------------------------------------------------

const SILENT: usize = 5000;
const ACTIVE: usize = 20;

/// Raises this process's soft descriptor limit towards `want` (up to the hard limit) and
/// returns the limit now in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Opens `SILENT` connections on a thread and runtime of their own (so that the crowd's
/// client side does not compete with natsgate and the active clients for the test runtime's
/// two workers), spread over 127.0.0.2.. with 100 per address, at most 256 connecting at a
/// time; each waits for natsgate's INFO and then stays silent. Returns the sockets (as std
/// sockets, still open) or the failures.
fn silent_crowd(
    addr: SocketAddr,
) -> std::thread::JoinHandle<Result<Vec<std::net::TcpStream>, Vec<String>>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(256));
            let conns: Vec<_> = (0..SILENT)
                .map(|k| {
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        let _permit = gate.acquire().await.unwrap();
                        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (k / 100) as u8));
                        let sock = TcpSocket::new_v4().unwrap();
                        sock.bind(SocketAddr::new(src, 0)).unwrap();
                        let limit = Duration::from_secs(15);
                        let s = match tokio::time::timeout(limit, sock.connect(addr)).await {
                            Ok(Ok(s)) => s,
                            other => return Err(format!("client {k} from {src}: {other:?}")),
                        };
                        match tokio::time::timeout(limit, s.peek(&mut [0u8; 1])).await {
                            Ok(Ok(1)) => Ok(s.into_std().unwrap()),
                            other => Err(format!("client {k} from {src}: no INFO: {other:?}")),
                        }
                    })
                })
                .collect();
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            for c in conns {
                match c.await.unwrap() {
                    Ok(s) => ok.push(s),
                    Err(e) => failed.push(e),
                }
            }
            if failed.is_empty() {
                Ok(ok)
            } else {
                Err(failed)
            }
        })
    })
}

/// 5,000 silent clients arrive at once (spread over 127.0.0.2..127.0.0.51, 100 each) while 20
/// active clients do request/reply through the same natsgate: the actives' p99 stays under
/// 50 ms while the crowd is held, and no request stalls (p99 < 1 s) while it arrives (the
/// arrival burst shares two cores with nats-server, natsgate, the crowd's own client side and
/// whatever else the machine runs; docs/robustness-findings.md #3); when the crowd goes,
/// nothing is left behind. Runs alone (EXCLUSIVE), since it measures latency.
///
/// It needs about 17,000 descriptors and raises its own soft limit up to the hard one. If that
/// is still too low it fails, unless `NATSGATE_SKIP_5000_CLIENTS=1` says to skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_silent_clients_do_not_slow_twenty_active_ones() {
    // Per silent client: its socket here, natsgate's accepted socket and natsgate's upstream
    // socket (nats-server is another process). Plus the other tests in this binary.
    let need = (SILENT * 3 + 2000) as u64;
    let have = raise_nofile(need);
    if have < need {
        let msg = format!(
            "five_thousand_silent_clients_do_not_slow_twenty_active_ones needs {need} open \
             files; RLIMIT_NOFILE is {have} (hard limit included). Run `ulimit -n 65536` \
             first (scripts/test.sh does), or set NATSGATE_SKIP_5000_CLIENTS=1 to skip it."
        );
        if std::env::var("NATSGATE_SKIP_5000_CLIENTS").as_deref() == Ok("1") {
            eprintln!("\n\n!!!!! SKIPPED (NATSGATE_SKIP_5000_CLIENTS=1): {msg} !!!!!\n\n");
            return;
        }
        panic!("{msg}");
    }
    let _alone = EXCLUSIVE.write().await;
    let nats = nats();
    let proxy = nats
        .gate()
        .window(30.0)
        .set("listener.max_pending", 6000)
        .set("listener.max_pending_per_ip", 100)
        .start()
        .await;

    // The active clients and their responder.
    let disconnects = Arc::new(AtomicUsize::new(0));
    let responder = counted_client(&proxy.url(), disconnects.clone()).await;
    let echo = Echo::start(&responder, "active").await;
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let mut actives = Vec::new();
    for _ in 0..ACTIVE {
        let c = counted_client(&proxy.url(), disconnects.clone()).await;
        let every = Duration::from_millis(20);
        actives.push(requester(c, "active", every, stop.clone(), epoch));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let storm_start = epoch.elapsed();
    let crowd = silent_crowd(proxy.addr);
    assert_eventually!(within Duration::from_secs(120); crowd.is_finished());
    let storm_end = epoch.elapsed();
    let silent = crowd.join().unwrap().unwrap_or_else(|failed| {
        let e = &failed[..failed.len().min(3)];
        panic!("{} silent clients got no INFO, e.g. {e:?}", failed.len())
    });
    let m = proxy.metrics().await;
    assert_eq!(
        m.active("pending"),
        SILENT as f64,
        "every silent client is pending"
    );
    // Hold the crowd for a while with the actives still going.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let hold_end = epoch.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut before, mut storm, mut hold, mut errors) = (vec![], vec![], vec![], vec![]);
    for a in actives {
        let stats = a.await.unwrap();
        errors.extend(stats.errors);
        for (at, took) in stats.ok {
            match at {
                at if at < storm_start => before.push(took),
                at if at < storm_end => storm.push(took),
                at if at + took < hold_end => hold.push(took),
                _ => {}
            }
        }
    }
    let total = before.len() + storm.len() + hold.len();
    let overall = p99(before.iter().chain(&storm).chain(&hold).copied());
    let (p_before, p_storm, p_hold) = (p99(before.clone()), p99(storm.clone()), p99(hold.clone()));
    eprintln!(
        "5000 silent clients: arrival {:?}; active request/reply p99 overall {overall:?} ({total}): before {p_before:?} ({}), during arrival {p_storm:?} ({}), while held {p_hold:?} ({})",
        storm_end - storm_start,
        before.len(),
        storm.len(),
        hold.len(),
    );
    assert!(
        errors.is_empty(),
        "active clients failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_eq!(disconnects.load(Ordering::Relaxed), 0);
    assert!(
        hold.len() >= ACTIVE * 50,
        "active clients stalled: {total} requests, {} while held",
        hold.len()
    );
    assert!(
        p_hold < Duration::from_millis(50),
        "active p99 while 5000 are held: {p_hold:?}"
    );
    assert!(
        p_storm < Duration::from_secs(1),
        "active p99 while 5000 arrive: {p_storm:?}"
    );

    drop(silent);
    echo.stop().await;
    drop(responder);
    proxy.assert_nothing_open().await;
    let m = proxy.metrics().await;
    assert_eq!(m.rejected(Reject::Limit), 0.0);
    assert_eq!(m.rejected(Reject::Protocol), SILENT as f64);
}

// ---------------------------------------------------------------------------------------------
// Resource faults: out of descriptors.
// ---------------------------------------------------------------------------------------------

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// natsgate (the real binary) under `ulimit -n 64`: 100 clients would exhaust its descriptors,
/// but the descriptor budget refuses those beyond it (INFO, then `maximum connections
/// exceeded`) before the table is full, without spinning a core; when the clients go, service
/// comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_refuses_within_budget_and_recovers() {
    let _shared = EXCLUSIVE.read().await;
    let nats = nats();
    let gate = nats
        .gate()
        .window(30.0)
        .set("listener.max_pending_per_ip", 1000)
        .nofile(64)
        .binary();
    let (pid, addr) = (gate.pid(), gate.addr);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut hogs = Vec::new();
    for _ in 0..100 {
        let c = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr));
        if let Ok(Ok(s)) = c.await {
            hogs.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    assert!(
        fds < 64,
        "the descriptor table never runs full ({fds} open)"
    );
    let mut refused = 0;
    for s in hogs.iter_mut().rev().take(10) {
        let (got, _) = read_until_closed(s, Duration::from_secs(2)).await;
        refused += show(&got).ends_with(&show(ERR_MAX_CONNECTIONS)) as usize;
    }
    assert_eq!(refused, 10, "the last clients are refused as at a limit");
    let t0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - t0;
    // A spinning accept loop would burn ~200 ticks (100 Hz) in 2 s.
    assert!(
        used < 40,
        "natsgate used {used} ticks in 2 s while at its descriptor budget"
    );

    drop(hogs);
    // Service comes back: a client gets INFO, then completes CONNECT/PING/PONG. (A refused
    // client gets an INFO too, then the -ERR, so only a PONG proves recovery; natsgate notices
    // the departed clients' closes as it reads them.)
    let served = || async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let line = tokio::time::timeout(Duration::from_secs(3), read_line(&mut s))
            .await
            .ok()?;
        if !line.starts_with("INFO ") {
            return None;
        }
        s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
            .await
            .ok()?;
        let op = tokio::time::timeout(Duration::from_secs(3), read_op(&mut s))
            .await
            .ok()?;
        (op == "PONG\r\n").then_some(())
    };
    assert_eventually!(
        within Duration::from_secs(15);
        served().await.is_some(),
        "service recovered"
    );
}
