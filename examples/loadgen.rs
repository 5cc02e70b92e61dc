//! natsgate's load generator: one scenario per run, one JSON line of results on stdout.
//!
//! Driven by `bench/harness.py` (through `bench/run.sh`), which starts the targets and runs
//! this against each of them; it can also be run by hand:
//!
//! ```text
//! cargo build --release --example loadgen
//! target/release/examples/loadgen pub --addr 127.0.0.1:4222 --size 16384 --count 20000
//! target/release/examples/loadgen req --addr 127.0.0.1:4222 --count 5000
//! target/release/examples/loadgen rawconn --addr 127.0.0.1:4222 --secs 3 --tls first --ca ca.pem
//! target/release/examples/loadgen flood --addr 127.0.0.1:4222 --clients 5000 --window 3 --pid 1234
//! ```
//!
//! Scenarios:
//! - `pub`: one publisher and one subscriber (separate connections); the publisher keeps at
//!   most `--window-bytes` unacknowledged by the subscriber in flight, so no slow-consumer drop
//!   can happen and every message is counted at the subscriber.
//! - `req`: sequential request/reply through the target (responder on its own connection);
//!   latency percentiles in µs.
//! - `rawconn`: connection setup by hand (TCP, INFO, TLS if asked, CONNECT+PING, PONG) with
//!   `--conc` workers for `--secs`; conn/s and latency percentiles. async-nats' own connect is
//!   avoided because it adds about a millisecond that hides the proxy's cost.
//! - `flood`: `--clients` silent connections at once; the target's RSS per pending connection
//!   (from `/proc/<pid>/status`) and, per client, when it was dropped relative to its own
//!   connect plus `--window`.
//! - `idle`: `--clients` established connections (CONNECT+PING, PONG; at most 64 setting up at
//!   once), then the target's RSS; then each client publishes one `--burst`-byte message and
//!   reads a PONG (64 at a time) and all go idle again; RSS again. Per-connection bytes are
//!   (RSS − RSS before the first connection) / clients.
//! - `wspub`, `wsreq`: `pub` and `req` over NATS-over-WebSocket (`ws://`, `--addr` is the
//!   WebSocket port): the raw NATS protocol in binary frames (tokio-tungstenite), one op per
//!   frame, the same flow control and warm-up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Pub,
    Req,
    Rawconn,
    Flood,
    Idle,
    Wspub,
    Wsreq,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum TlsMode {
    None,
    Classic,
    First,
}

#[derive(Parser, Debug, Clone)]
struct Args {
    scenario: Scenario,
    /// host:port of the target.
    #[arg(long, default_value = "127.0.0.1:4222")]
    addr: String,
    #[arg(long, default_value = "bench")]
    user: String,
    #[arg(long, default_value = "bench-pass")]
    pass: String,
    #[arg(long, value_enum, default_value = "none")]
    tls: TlsMode,
    /// CA certificate (PEM) that signed the target's certificate.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Payload size in bytes (pub, req).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Messages (pub) or requests (req).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// pub: bytes the publisher may be ahead of the subscriber.
    #[arg(long, default_value_t = 8 << 20)]
    window_bytes: usize,
    /// rawconn: how long to run.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// rawconn: concurrent connection workers.
    #[arg(long, default_value_t = 2)]
    conc: usize,
    /// flood: silent clients.
    #[arg(long, default_value_t = 5000)]
    clients: usize,
    /// flood: the target's authorization window, seconds.
    #[arg(long, default_value_t = 3.0)]
    window: f64,
    /// flood, idle: the process whose RSS is measured.
    #[arg(long)]
    pid: Option<u32>,
    /// rawconn: a setup not done (PONG read) within this many seconds counts as a timeout,
    /// recorded at this latency (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    conn_timeout: f64,
    /// idle: bytes each client publishes in its one burst.
    #[arg(long, default_value_t = 8192)]
    burst: usize,
}

fn main() {
    let args = Args::parse();
    // async-nats sees both ring and aws-lc-rs enabled in this build: pick one explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(async {
        match args.scenario {
            Scenario::Pub => run_pub(&args).await,
            Scenario::Req => run_req(&args).await,
            Scenario::Rawconn => run_rawconn(&args).await,
            Scenario::Flood => run_flood(&args).await,
            Scenario::Idle => run_idle(&args).await,
            Scenario::Wspub => run_wspub(&args).await,
            Scenario::Wsreq => run_wsreq(&args).await,
        }
    });
    println!("{out}");
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr)
}

async fn nats_client(args: &Args, name: &str) -> async_nats::Client {
    let mut opts = async_nats::ConnectOptions::new()
        .user_and_password(args.user.clone(), args.pass.clone())
        .name(name)
        .subscription_capacity(1 << 18)
        .client_capacity(1 << 14)
        .read_buffer_capacity(u16::MAX)
        .max_reconnects(0)
        .ignore_discovered_servers();
    let url = match args.tls {
        TlsMode::None => format!("nats://{}", args.addr),
        TlsMode::Classic => format!("tls://{}", args.addr),
        TlsMode::First => format!("tls://{}", args.addr),
    };
    if args.tls != TlsMode::None {
        opts = opts.require_tls(true);
        if let Some(ca) = &args.ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if args.tls == TlsMode::First {
            opts = opts.tls_first();
        }
    }
    opts.connect(url).await.expect("connect")
}

async fn run_pub(args: &Args) -> serde_json::Value {
    let n = args.count;
    let size = args.size;
    let window = (args.window_bytes / size.max(1)).max(64) as u64;
    let sub_client = nats_client(args, "bench-sub").await;
    let pub_client = nats_client(args, "bench-pub").await;
    let mut sub = sub_client.subscribe("bench.pub").await.expect("subscribe");
    // A connection's ops are processed in order: once "bench.sync" answers, the server has
    // the "bench.pub" subscription too, and no message can be published before it exists.
    let mut sync = sub_client.subscribe("bench.sync").await.expect("subscribe");
    {
        let c = sub_client.clone();
        tokio::spawn(async move {
            while let Some(m) = sync.next().await {
                if let Some(reply) = m.reply {
                    let _ = c.publish(reply, bytes::Bytes::new()).await;
                }
            }
        });
    }
    until_answered(&pub_client, "bench.sync").await;

    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let bad = Arc::new(AtomicU64::new(0));
    let counter = {
        let received = received.clone();
        let progress = progress.clone();
        let bad = bad.clone();
        tokio::spawn(async move {
            let step = (window / 4).max(1);
            let mut count = 0u64;
            while let Some(m) = sub.next().await {
                if m.payload.len() != size {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                count += 1;
                if count % step == 0 || count == n {
                    received.store(count, Ordering::Release);
                    progress.notify_one();
                }
                if count == n {
                    break;
                }
            }
            (count, Instant::now())
        })
    };

    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    for i in 0..n {
        while i.saturating_sub(received.load(Ordering::Acquire)) >= window {
            let wait = progress.notified();
            if i.saturating_sub(received.load(Ordering::Acquire)) < window {
                break;
            }
            wait.await;
        }
        pub_client
            .publish("bench.pub", payload.clone())
            .await
            .expect("publish");
    }
    pub_client.flush().await.expect("flush");
    let (count, done) = match tokio::time::timeout(Duration::from_secs(120), counter).await {
        Ok(r) => r.expect("subscriber task"),
        Err(_) => {
            let got = received.load(Ordering::Acquire);
            panic!("subscriber got about {got} of {n} messages in 120 s: lost messages");
        }
    };
    let secs = done.duration_since(started).as_secs_f64();
    json!({
        "scenario": "pub",
        "size": size,
        "count": count,
        "expected": n,
        "bad": bad.load(Ordering::Relaxed),
        "secs": secs,
        "msgs_per_s": count as f64 / secs,
        "mb_per_s": (count as f64 * size as f64) / secs / 1e6,
    })
}

async fn run_req(args: &Args) -> serde_json::Value {
    let responder = nats_client(args, "bench-responder").await;
    let requester = nats_client(args, "bench-requester").await;
    let mut sub = responder.subscribe("bench.req").await.expect("subscribe");
    responder.flush().await.expect("flush");
    let r2 = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = r2.publish(reply, m.payload).await;
            }
        }
    });
    let payload = bytes::Bytes::from(vec![b'r'; args.size]);
    until_answered(&requester, "bench.req").await;
    // Warm-up: the first requests set up the requester's reply subscription.
    for _ in 0..200 {
        requester
            .request("bench.req", payload.clone())
            .await
            .expect("request");
    }
    let mut lat = Vec::with_capacity(args.count as usize);
    let started = Instant::now();
    for _ in 0..args.count {
        let t = Instant::now();
        requester
            .request("bench.req", payload.clone())
            .await
            .expect("request");
        lat.push(t.elapsed().as_nanos() as u64 / 1000);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    json!({
        "scenario": "req",
        "count": lat.len(),
        "secs": secs,
        "p50_us": pct(&lat, 50.0),
        "p90_us": pct(&lat, 90.0),
        "p99_us": pct(&lat, 99.0),
    })
}

/// Requests `subject` until a responder answers: `flush` only writes the SUB out, it does not
/// wait for the server to have processed it, and the responder is on another connection.
async fn until_answered(client: &async_nats::Client, subject: &'static str) {
    for _ in 0..500 {
        match client.request(subject, bytes::Bytes::new()).await {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    panic!("no responder on {subject}");
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn tls_connector(args: &Args) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca = args.ca.as_ref().expect("--ca is needed with --tls");
    for c in CertificateDer::pem_file_iter(ca).expect("read --ca") {
        roots.add(c.expect("CA PEM")).expect("CA cert");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Reads until `needle` has been seen; returns false on EOF first.
async fn read_until(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>, needle: &[u8]) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if memchr::memmem::find(buf, needle).is_some() {
            return true;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One hand-made connection setup; the latency from before TCP connect to PONG.
async fn one_conn(
    args: &Args,
    connector: Option<&tokio_rustls::TlsConnector>,
    connect_line: &[u8],
) -> Result<Duration, String> {
    let t = Instant::now();
    if args.conn_timeout > 0.0 {
        let limit = Duration::from_secs_f64(args.conn_timeout);
        match tokio::time::timeout(limit, setup(args, connector, connect_line)).await {
            Ok(r) => r?,
            Err(_) => return Err(TIMED_OUT.into()),
        };
    } else {
        setup(args, connector, connect_line).await?;
    }
    Ok(t.elapsed())
}

const TIMED_OUT: &str = "timed out";

/// Connects, reads INFO (upgrading to TLS as asked), sends `connect_line` (CONNECT+PING) and
/// reads PONG; returns the established connection.
async fn setup(
    args: &Args,
    connector: Option<&tokio_rustls::TlsConnector>,
    connect_line: &[u8],
) -> Result<Box<dyn Io>, String> {
    let tcp = TcpStream::connect(&args.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host_of(&args.addr).to_string()).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let mut s: Box<dyn Io> = match (args.tls, connector) {
        (TlsMode::First, Some(c)) => {
            let mut s = c
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            if !read_until(&mut s, &mut buf, b"\n").await {
                return Err("no INFO".into());
            }
            Box::new(s)
        }
        (TlsMode::Classic, Some(c)) => {
            // INFO is read byte-exact (nothing follows it before the upgrade).
            let mut tcp = tcp;
            let mut b = [0u8; 1];
            loop {
                match tcp.read(&mut b).await {
                    Ok(1) => {
                        buf.push(b[0]);
                        if b[0] == b'\n' {
                            break;
                        }
                    }
                    _ => return Err("no INFO".into()),
                }
            }
            Box::new(
                c.connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?,
            )
        }
        _ => {
            let mut tcp = tcp;
            if !read_until(&mut tcp, &mut buf, b"\n").await {
                return Err("no INFO".into());
            }
            Box::new(tcp)
        }
    };
    if !buf.starts_with(b"INFO ") {
        return Err(format!("not INFO: {}", String::from_utf8_lossy(&buf)));
    }
    s.write_all(connect_line)
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.flush().await.map_err(|e| e.to_string())?;
    buf.clear();
    if !read_until(&mut s, &mut buf, b"PONG\r\n").await {
        return Err(format!("no PONG: {}", String::from_utf8_lossy(&buf)));
    }
    Ok(s)
}

const WARMUP: u64 = 20;

fn connect_line(args: &Args) -> Vec<u8> {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"user\":\"{}\",\"pass\":\"{}\",\"name\":\"rawconn\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\"headers\":true,\"no_responders\":true}}\r\nPING\r\n",
        args.user, args.pass
    )
    .into_bytes()
}

async fn run_rawconn(args: &Args) -> serde_json::Value {
    let args = Arc::new(args.clone());
    let connector = (args.tls != TlsMode::None).then(|| tls_connector(&args));
    let connect_line = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"user\":\"{}\",\"pass\":\"{}\",\"name\":\"rawconn\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\"headers\":true,\"no_responders\":true}}\r\nPING\r\n",
        args.user, args.pass
    )
    .into_bytes();
    // Warm-up (and a check that the target works at all).
    // With a hung member behind the target a warm-up setup may time out: that is measured.
    for _ in 0..WARMUP {
        match one_conn(&args, connector.as_ref(), &connect_line).await {
            Err(e) if e != TIMED_OUT => return json!({"scenario": "rawconn", "error": e}),
            _ => {}
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.conc {
        let args = args.clone();
        let connector = connector.clone();
        let line = connect_line.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut timeouts = 0u64;
            let mut last_err = String::new();
            while Instant::now() < deadline {
                match one_conn(&args, connector.as_ref(), &line).await {
                    Ok(d) => lat.push(d.as_nanos() as u64 / 1000),
                    Err(e) if e == TIMED_OUT => {
                        timeouts += 1;
                        lat.push((args.conn_timeout * 1e6) as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        last_err = e;
                    }
                }
            }
            (lat, errors, timeouts, last_err)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut timeouts = 0;
    let mut last_err = String::new();
    for w in workers {
        let (l, e, to, le) = w.await.expect("worker");
        lat.extend(l);
        errors += e;
        timeouts += to;
        if !le.is_empty() {
            last_err = le;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    json!({
        "scenario": "rawconn",
        "tls": format!("{:?}", args.tls),
        "conns": lat.len(),
        "warmup_conns": WARMUP,
        "errors": errors,
        "timeouts": timeouts,
        "last_error": last_err,
        "secs": secs,
        "conn_per_s": lat.len() as f64 / secs,
        "p50_us": pct(&lat, 50.0),
        "p99_us": pct(&lat, 99.0),
    })
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn run_flood(args: &Args) -> serde_json::Value {
    let k = args.clients;
    let window = Duration::from_secs_f64(args.window);
    let before = args.pid.and_then(rss_kb);
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let connected = Arc::new(AtomicU64::new(0));
    let all_connected = Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(k);
    for _ in 0..k {
        let gate = gate.clone();
        let addr = args.addr.clone();
        let connected = connected.clone();
        let all_connected = all_connected.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore");
            let tcp = TcpStream::connect(&addr).await;
            let at = Instant::now();
            let mut tcp = match tcp {
                Ok(t) => t,
                Err(e) => {
                    drop(permit);
                    if connected.fetch_add(1, Ordering::AcqRel) + 1 == k as u64 {
                        all_connected.notify_one();
                    }
                    return Err(e.to_string());
                }
            };
            // Silent: never write. Dropped when -ERR arrives or the socket closes. The connect
            // permit is held until the first bytes (INFO) arrive, so at most 256 connections
            // wait in the target's accept queue and none overflows it.
            let mut buf = Vec::with_capacity(512);
            let mut chunk = [0u8; 512];
            let mut permit = Some(permit);
            let limit = at + window + Duration::from_secs(15);
            loop {
                if memchr::memmem::find(&buf, b"-ERR").is_some() {
                    break;
                }
                match tokio::time::timeout_at(limit.into(), tcp.read(&mut chunk)).await {
                    Err(_) => return Err("not dropped".into()),
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
                if permit.take().is_some()
                    && connected.fetch_add(1, Ordering::AcqRel) + 1 == k as u64
                {
                    all_connected.notify_one();
                }
            }
            if permit.is_some() && connected.fetch_add(1, Ordering::AcqRel) + 1 == k as u64 {
                all_connected.notify_one();
            }
            Ok::<_, String>((at, Instant::now()))
        }));
    }
    all_connected.notified().await;
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the target accept and settle every connection before sampling its memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = args.pid.and_then(rss_kb);
    let mut delays_ms: Vec<i64> = Vec::with_capacity(k);
    let mut errors = 0u64;
    for t in tasks {
        match tokio::time::timeout(window + Duration::from_secs(20), t).await {
            Ok(Ok(Ok((at, dropped)))) => {
                let d = dropped.duration_since(at).as_micros() as i64 - window.as_micros() as i64;
                delays_ms.push(d);
            }
            _ => errors += 1,
        }
    }
    delays_ms.sort_unstable();
    let p = |q: f64| -> f64 {
        if delays_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((q / 100.0) * (delays_ms.len() - 1) as f64).round() as usize;
        delays_ms[i] as f64 / 1000.0
    };
    let per_conn = match (before, after) {
        (Some(b), Some(a)) => Some((a as f64 - b as f64) * 1024.0 / k as f64),
        _ => None,
    };
    json!({
        "scenario": "flood",
        "clients": k,
        "errors": errors,
        "connect_secs": connect_secs,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_per_conn_bytes": per_conn,
        "drop_min_ms": p(0.0),
        "drop_p50_ms": p(50.0),
        "drop_p99_ms": p(99.0),
        "drop_max_ms": p(100.0),
    })
}

async fn run_idle(args: &Args) -> serde_json::Value {
    let k = args.clients;
    let args = Arc::new(args.clone());
    let connector = (args.tls != TlsMode::None).then(|| tls_connector(&args));
    let line = Arc::new(connect_line(&args));
    let before = args.pid.and_then(rss_kb);
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(k);
    for _ in 0..k {
        let (args, connector, line, gate) =
            (args.clone(), connector.clone(), line.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            setup(&args, connector.as_ref(), &line).await
        }));
    }
    let mut conns = Vec::with_capacity(k);
    let mut last_err = String::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(c) => conns.push(c),
            Err(e) => last_err = e,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    if conns.len() < k {
        return json!({"scenario": "idle", "error": format!("{} of {k} connected: {last_err}", conns.len())});
    }
    // Let the target settle every connection before sampling its memory.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let idle = args.pid.and_then(rss_kb);
    // One burst per connection: a PUB of --burst bytes, then PING; the PONG says it went through.
    let mut msg = format!("PUB idle.burst {}\r\n", args.burst).into_bytes();
    msg.resize(msg.len() + args.burst, b'x');
    msg.extend_from_slice(b"\r\nPING\r\n");
    let msg = Arc::new(msg);
    let mut tasks = Vec::with_capacity(k);
    for mut c in conns {
        let (gate, msg) = (gate.clone(), msg.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore");
            c.write_all(&msg).await.map_err(|e| e.to_string())?;
            c.flush().await.map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            if !read_until(&mut c, &mut buf, b"PONG\r\n").await {
                return Err("no PONG after the burst".to_string());
            }
            drop(permit);
            Ok::<_, String>(c)
        }));
    }
    let mut conns = Vec::with_capacity(k);
    for t in tasks {
        match t.await.expect("task") {
            Ok(c) => conns.push(c),
            Err(e) => last_err = e,
        }
    }
    if conns.len() < k {
        return json!({"scenario": "idle", "error": format!("{} of {k} survived the burst: {last_err}", conns.len())});
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = args.pid.and_then(rss_kb);
    let per = |x: Option<u64>| match (before, x) {
        (Some(b), Some(a)) => Some((a as f64 - b as f64) * 1024.0 / k as f64),
        _ => None,
    };
    let out = json!({
        "scenario": "idle",
        "clients": k,
        "connect_secs": connect_secs,
        "rss_before_kb": before,
        "rss_idle_kb": idle,
        "rss_after_burst_kb": after,
        "idle_bytes_per_conn": per(idle),
        "after_burst_bytes_per_conn": per(after),
    });
    drop(conns);
    out
}

// ---- NATS over WebSocket (ws://): raw protocol in binary frames, tokio-tungstenite framing.

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;
type WsTx = futures::stream::SplitSink<Ws, tokio_tungstenite::tungstenite::Message>;
type WsRx = futures::stream::SplitStream<Ws>;

/// The unwrapped byte stream of a WebSocket NATS connection, parsed op by op.
struct WsReader {
    rx: WsRx,
    buf: bytes::BytesMut,
}

enum Op {
    Msg {
        reply: Option<String>,
        payload: bytes::Bytes,
    },
    Ping,
    Pong,
    Other(String),
}

impl WsReader {
    async fn fill(&mut self) -> Result<(), String> {
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match self.rx.next().await {
                Some(Ok(Message::Binary(b))) => {
                    self.buf.extend_from_slice(&b);
                    return Ok(());
                }
                Some(Ok(Message::Text(t))) => {
                    self.buf.extend_from_slice(t.as_bytes());
                    return Ok(());
                }
                Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
                Some(Ok(_)) => continue, // ping/pong frames: tungstenite answers pings
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("eof".into()),
            }
        }
    }

    async fn next_op(&mut self) -> Result<Op, String> {
        use bytes::Buf;
        loop {
            if let Some(eol) = memchr::memmem::find(&self.buf, b"\r\n") {
                let line = std::str::from_utf8(&self.buf[..eol])
                    .map_err(|e| e.to_string())?
                    .to_string();
                if let Some(rest) = line.strip_prefix("MSG ") {
                    let parts: Vec<&str> = rest.split_whitespace().collect();
                    let len: usize = parts.last().and_then(|l| l.parse().ok()).ok_or("bad MSG")?;
                    let need = eol + 2 + len + 2;
                    while self.buf.len() < need {
                        self.fill().await?;
                    }
                    let reply = (parts.len() == 4).then(|| parts[2].to_string());
                    self.buf.advance(eol + 2);
                    let payload = self.buf.split_to(len).freeze();
                    self.buf.advance(2);
                    return Ok(Op::Msg { reply, payload });
                }
                self.buf.advance(eol + 2);
                return Ok(match line.as_str() {
                    "PING" => Op::Ping,
                    "PONG" => Op::Pong,
                    _ => Op::Other(line),
                });
            }
            self.fill().await?;
        }
    }
}

async fn ws_send(tx: &mut WsTx, bytes: Vec<u8>) -> Result<(), String> {
    use futures::SinkExt;
    tx.send(tokio_tungstenite::tungstenite::Message::Binary(
        bytes.into(),
    ))
    .await
    .map_err(|e| e.to_string())
}

/// Upgrade, INFO, CONNECT+PING (one frame), PONG.
async fn ws_connect(args: &Args) -> Result<(WsTx, WsReader), String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = TcpStream::connect(&args.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let req = format!("ws://{}/", args.addr)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let (mut tx, rx) = ws.split();
    let mut r = WsReader {
        rx,
        buf: bytes::BytesMut::with_capacity(1 << 16),
    };
    match r.next_op().await? {
        Op::Other(l) if l.starts_with("INFO ") => {}
        _ => return Err("no INFO".into()),
    }
    ws_send(&mut tx, connect_line(args)).await?;
    loop {
        match r.next_op().await? {
            Op::Pong => break,
            Op::Other(l) if l.starts_with("-ERR") => return Err(l),
            _ => {}
        }
    }
    Ok((tx, r))
}

async fn ws_sync(tx: &mut WsTx, r: &mut WsReader) -> Result<(), String> {
    ws_send(tx, b"PING\r\n".to_vec()).await?;
    loop {
        match r.next_op().await? {
            Op::Pong => return Ok(()),
            Op::Other(l) if l.starts_with("-ERR") => return Err(l),
            _ => {}
        }
    }
}

/// `wspub`: as `pub`, over WebSocket; one PUB per binary frame.
async fn run_wspub(args: &Args) -> serde_json::Value {
    use futures::SinkExt;
    let n = args.count;
    let size = args.size;
    let window = (args.window_bytes / size.max(1)).max(64) as u64;
    let (mut stx, mut srx) = ws_connect(args).await.expect("ws sub connect");
    ws_send(&mut stx, b"SUB bench.ws 1\r\n".to_vec())
        .await
        .expect("sub");
    ws_sync(&mut stx, &mut srx).await.expect("sub sync");
    let (mut ptx, mut prx) = ws_connect(args).await.expect("ws pub connect");
    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let (rc, pg) = (received.clone(), progress.clone());
    let sub = tokio::spawn(async move {
        let mut got = 0u64;
        while got < n {
            match srx.next_op().await {
                Ok(Op::Msg { payload, .. }) => {
                    assert_eq!(payload.len(), size);
                    got += 1;
                    rc.store(got, Ordering::Release);
                    pg.notify_one();
                }
                Ok(Op::Ping) => ws_send(&mut stx, b"PONG\r\n".to_vec()).await.expect("pong"),
                Ok(Op::Other(l)) if l.starts_with("-ERR") => panic!("subscriber: {l}"),
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
        Instant::now()
    });
    // The publisher's own reads (PINGs from the server) are answered in the background.
    tokio::spawn(async move { while prx.next_op().await.is_ok() {} });
    let mut msg = format!("PUB bench.ws {size}\r\n").into_bytes();
    msg.extend(std::iter::repeat_n(b'x', size));
    msg.extend_from_slice(b"\r\n");
    let started = Instant::now();
    for sent in 0..n {
        while sent - received.load(Ordering::Acquire) >= window {
            ptx.flush().await.expect("flush");
            progress.notified().await;
        }
        ptx.feed(tokio_tungstenite::tungstenite::Message::Binary(
            msg.clone().into(),
        ))
        .await
        .expect("publish");
    }
    ptx.flush().await.expect("flush");
    let done = sub.await.expect("subscriber");
    let secs = done.duration_since(started).as_secs_f64();
    json!({
        "scenario": "wspub",
        "count": n,
        "size": size,
        "secs": secs,
        "msgs_per_s": n as f64 / secs,
        "mb_per_s": (n as f64 * size as f64) / secs / 1e6,
    })
}

/// `wsreq`: as `req`, over WebSocket (responder and requester each on their own connection).
async fn run_wsreq(args: &Args) -> serde_json::Value {
    let (mut rtx, mut rrx) = ws_connect(args).await.expect("ws responder connect");
    ws_send(&mut rtx, b"SUB bench.req 1\r\n".to_vec())
        .await
        .expect("sub");
    ws_sync(&mut rtx, &mut rrx).await.expect("responder sync");
    tokio::spawn(async move {
        loop {
            match rrx.next_op().await {
                Ok(Op::Msg {
                    reply: Some(reply),
                    payload,
                }) => {
                    let mut out = format!("PUB {reply} {}\r\n", payload.len()).into_bytes();
                    out.extend_from_slice(&payload);
                    out.extend_from_slice(b"\r\n");
                    if ws_send(&mut rtx, out).await.is_err() {
                        return;
                    }
                }
                Ok(Op::Ping) => {
                    let _ = ws_send(&mut rtx, b"PONG\r\n".to_vec()).await;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let (mut tx, mut rx) = ws_connect(args).await.expect("ws requester connect");
    ws_send(&mut tx, b"SUB _INBOX.wsbench 1\r\n".to_vec())
        .await
        .expect("sub inbox");
    ws_sync(&mut tx, &mut rx).await.expect("requester sync");
    let mut req = format!("PUB bench.req _INBOX.wsbench {}\r\n", args.size).into_bytes();
    req.extend(std::iter::repeat_n(b'r', args.size));
    req.extend_from_slice(b"\r\n");
    let mut lat = Vec::with_capacity(args.count as usize);
    let total = args.count + 200; // the first 200 are warm-up
    let started = Instant::now();
    let mut measured_from = started;
    for i in 0..total {
        if i == 200 {
            measured_from = Instant::now();
        }
        let t = Instant::now();
        ws_send(&mut tx, req.clone()).await.expect("request");
        loop {
            match rx.next_op().await.expect("reply") {
                Op::Msg { .. } => break,
                Op::Ping => ws_send(&mut tx, b"PONG\r\n".to_vec()).await.expect("pong"),
                Op::Other(l) if l.starts_with("-ERR") => panic!("requester: {l}"),
                _ => {}
            }
        }
        if i >= 200 {
            lat.push(t.elapsed().as_nanos() as u64 / 1000);
        }
    }
    let secs = measured_from.elapsed().as_secs_f64();
    lat.sort_unstable();
    json!({
        "scenario": "wsreq",
        "count": lat.len(),
        "secs": secs,
        "p50_us": pct(&lat, 50.0),
        "p90_us": pct(&lat, 90.0),
        "p99_us": pct(&lat, 99.0),
    })
}
