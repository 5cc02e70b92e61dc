//! What an attacker can reach besides the client port: the admin server under slowloris and
//! connection floods, and the descriptor budget under `prlimit`. Every test runs the real
//! binary (so the start-up code in `main.rs` is what is tested) in front of a real nats-server.
//!
//! Self-contained on purpose: it needs a natsgate process it can `prlimit` and whose RSS and
//! descriptors it can read from `/proc`, which the in-process fixtures cannot give.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use natsgate::fdlimit::{self, Budget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The test process itself opens over a thousand sockets; it must be allowed to.
fn need_descriptors(n: u64) {
    let raise = fdlimit::raise_nofile();
    let have = raise.after.unwrap_or(u64::MAX);
    assert!(
        have >= n,
        "this test needs {n} descriptors but the test process can have only {have} \
         ({}): run it where `ulimit -Hn` is at least {n}",
        raise.describe()
    );
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
}

fn wait_for_port(addr: SocketAddr, what: &str, log: impl Fn() -> String) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what} did not start:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A nats-server without authentication, killed on drop.
struct Nats {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, format!("listen: {addr}\n")).unwrap();
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (on PATH or NATS_SERVER_BIN)");
        wait_for_port(addr, "nats-server", String::new);
        Nats {
            child,
            addr,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The natsgate binary, optionally under `prlimit --nofile=SOFT:HARD`, killed on drop.
struct Gate {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gate {
    fn config(
        nats: &Nats,
        extra_listener: &str,
    ) -> (tempfile::TempDir, PathBuf, SocketAddr, SocketAddr) {
        let dir = tempfile::tempdir().unwrap();
        let (addr, admin) = (free_addr(), free_addr());
        let config = dir.path().join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "[listener]\nbind = \"{addr}\"\n{extra_listener}\n[upstream]\nservers = [\"{}\"]\n\
                 [admin]\nbind = \"{admin}\"\n[log]\nformat = \"json\"\n",
                nats.url()
            ),
        )
        .unwrap();
        (dir, config, addr, admin)
    }

    fn start(nats: &Nats, nofile: Option<&str>, extra_listener: &str) -> Gate {
        let (dir, config, addr, admin) = Self::config(nats, extra_listener);
        let log = dir.path().join("natsgate.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = command(nofile);
        cmd.arg("--config")
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().expect("start natsgate");
        let gate = Gate {
            child,
            addr,
            admin,

            log,
            _dir: dir,
        };
        wait_for_port(admin, "natsgate", || gate.log());
        gate
    }

    fn pid(&self) -> u32 {
        // prlimit execs the command, so the child is natsgate itself.
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn nofile_soft(&self) -> u64 {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("Max open files");
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    /// Waits until `/readyz` answers 200 (an upstream answered), so clients can be served.
    async fn ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = get(self.admin, "/readyz").await {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "natsgate never became ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(nofile: Option<&str>) -> Command {
    let bin = env!("CARGO_BIN_EXE_natsgate");
    match nofile {
        None => Command::new(bin),
        Some(limits) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={limits}")).arg("--").arg(bin);
            c
        }
    }
}

/// One GET with `Connection: close`; the status code and body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, text))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Reads until the peer closes (EOF or reset); `false` if it is still open at `deadline`.
async fn closed_by(s: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A request/reply through natsgate; the responder sits directly on nats-server.
async fn request_reply(gate: &Gate, nats: &Nats, subject: &str) -> Result<(), String> {
    let responder = async_nats::connect(nats.url())
        .await
        .map_err(|e| format!("responder: {e}"))?;
    let mut sub = responder.subscribe(subject.to_string()).await.unwrap();
    responder.flush().await.unwrap();
    let echo = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
                let _ = responder.flush().await;
            }
        }
    });
    let result = async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(format!("nats://{}", gate.addr))
            .await
            .map_err(|e| format!("connect through natsgate: {e}"))?;
        let reply = client
            .request(subject.to_string(), "ping".into())
            .await
            .map_err(|e| format!("request through natsgate: {e}"))?;
        if &reply.payload[..] != b"ping" {
            return Err(format!("wrong reply {:?}", reply.payload));
        }
        Ok(())
    };
    let r = tokio::time::timeout(Duration::from_secs(10), result)
        .await
        .unwrap_or_else(|_| Err("request/reply took over 10 s".into()));
    echo.abort();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_admin_port_is_closed_and_scrapes_keep_working() {
    need_descriptors(1024);
    let nats = Nats::start();
    let gate = Gate::start(&nats, None, "");
    gate.ready().await;
    for _ in 0..5 {
        assert_eq!(get(gate.admin, "/metrics").await.unwrap().0, 200);
    }
    let rss_before = gate.rss();
    let attack_start = tokio::time::Instant::now();
    let deadline = attack_start + Duration::from_secs(15);
    let closed = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for i in 0..200 {
        let closed = closed.clone();
        let admin = gate.admin;
        attackers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(admin).await.expect("connect admin");
            // Half a header: half of them small (classic slowloris), half about 370 KB
            // (memory pinning), none ever finished.
            let mut head = b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Slow: ".to_vec();
            if i % 2 == 1 {
                head.extend(std::iter::repeat_n(b'a', 370_000));
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&head)).await;
            let was_closed = closed_by(&mut s, deadline).await;
            if was_closed {
                closed.fetch_add(1, Ordering::Relaxed);
            }
            was_closed
        }));
    }
    // A keep-alive connection that asks once and then idles must be closed too.
    let mut idle = TcpStream::connect(gate.admin).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 512];
    let n = idle.read(&mut first).await.unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "livez on a keep-alive connection"
    );

    let mut scrapes = 0;
    let mut max_rss = rss_before;
    while closed.load(Ordering::Relaxed) < 200 && tokio::time::Instant::now() < deadline {
        for path in ["/metrics", "/readyz"] {
            let (status, text) = get(gate.admin, path)
                .await
                .unwrap_or_else(|e| panic!("{path} during the attack: {e}"));
            assert_eq!(status, 200, "{path} during the attack: {text}");
            scrapes += 1;
        }
        max_rss = max_rss.max(gate.rss());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut still_open = 0;
    for a in attackers {
        if !a.await.unwrap() {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "half-header admin connections still open 15 s after the attack began"
    );
    assert!(
        closed_by(&mut idle, deadline).await,
        "an idle keep-alive admin connection was still open after 15 s"
    );
    let grew = max_rss.saturating_sub(rss_before);
    eprintln!(
        "all 200 closed after {:?}; {scrapes} scrapes answered; RSS {} MB -> max {} MB",
        attack_start.elapsed(),
        rss_before >> 20,
        max_rss >> 20
    );
    assert!(
        grew < 20 << 20,
        "RSS grew by {} MB during the attack",
        grew >> 20
    );
    assert!(scrapes >= 4, "too few scrapes to mean anything: {scrapes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_flood_under_1024_descriptors_does_not_stop_clients() {
    need_descriptors(4096);
    let nats = Nats::start();
    let gate = Gate::start(&nats, Some("1024:1024"), "");
    gate.ready().await;
    assert_eq!(gate.nofile_soft(), 1024);
    let cap = Budget::for_limit(Some(1024)).admin_connections;

    // 1,100 idle admin connections, re-opened whenever natsgate closes one, for as long as
    // the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let closed_at_once = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for _ in 0..1100 {
        let (stop, connected, closed_at_once) =
            (stop.clone(), connected.clone(), closed_at_once.clone());
        let admin = gate.admin;
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok(mut s)) =
                    tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(admin)).await
                else {
                    continue;
                };
                connected.fetch_add(1, Ordering::Relaxed);
                let opened = tokio::time::Instant::now();
                let mut buf = [0u8; 64];
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match tokio::time::timeout(Duration::from_millis(250), s.read(&mut buf)).await {
                        Err(_) => continue,
                        Ok(_) => break,
                    }
                }
                if opened.elapsed() < Duration::from_secs(1) {
                    closed_at_once.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    let start = Instant::now();
    while connected.load(Ordering::Relaxed) < 1100 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "only {} admin connections opened",
            connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = gate.open_descriptors();

    let served = request_reply(&gate, &nats, "flood.echo").await;
    let after = gate.open_descriptors();
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        let _ = f.await;
    }
    eprintln!(
        "admin cap {cap}: {} connections opened, {} closed at once; natsgate held {during} \
         then {after} descriptors",
        connected.load(Ordering::Relaxed),
        closed_at_once.load(Ordering::Relaxed)
    );
    served.unwrap_or_else(|e| {
        panic!(
            "a NATS client was not served during the admin flood: {e}\n{}",
            gate.log()
        )
    });
    assert!(
        closed_at_once.load(Ordering::Relaxed) >= 1100 - cap,
        "admin connections beyond the cap of {cap} were not closed at once"
    );
    assert!(
        during < 1024 - 32 && after < 1024 - 32,
        "the admin flood took natsgate to {during}/{after} of 1024 descriptors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_soft_limit_serves_300_clients_and_is_logged() {
    need_descriptors(4096);
    let nats = Nats::start();
    let gate = Gate::start(&nats, Some("256:4096"), "max_pending_per_ip = 1000");
    gate.ready().await;
    assert_eq!(
        gate.nofile_soft(),
        4096,
        "natsgate did not raise its soft limit"
    );
    let log = gate.log();
    assert!(
        log.contains("descriptor limit (RLIMIT_NOFILE) 4096, raised from 256 (hard limit 4096)"),
        "the start-up log does not name the raised limit:\n{log}"
    );

    let url = format!("nats://{}", gate.addr);
    let clients = futures::future::join_all((0..300).map(|_| {
        let url = url.clone();
        async move {
            let c = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            c.flush().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(c)
        }
    }))
    .await;
    let failed: Vec<String> = clients
        .iter()
        .filter_map(|c| c.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 300 clients failed, first: {:?}\n{}",
        failed.len(),
        failed.first(),
        gate.log()
    );
    // All 300 at once, each still served: a round trip on every one of them.
    for c in clients.iter().flatten() {
        c.flush().await.expect("a round trip with 300 clients open");
    }
    assert!(
        gate.open_descriptors() > 600,
        "300 clients and their upstreams"
    );
    request_reply(&gate, &nats, "many.echo")
        .await
        .unwrap_or_else(|e| panic!("with 300 clients open: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_too_small_for_max_connections_is_warned_and_kept_in_reserve() {
    need_descriptors(1024);
    let nats = Nats::start();
    let holds = Budget::for_limit(Some(256)).clients;
    let need = Budget::limit_for(65_536);
    let said = format!(
        "the descriptor limit 256 holds {holds} clients, not listener.max_connections = 65536"
    );
    let would = format!("Raise the limit to at least {need}");

    let (_dir, config, _, _) = Gate::config(&nats, "max_pending_per_ip = 1000");
    let check = command(Some("256:256"))
        .arg("--check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "--check-config failed: {out}");
    assert!(
        out.contains(&format!("warning: {said}")),
        "--check-config:\n{out}"
    );
    assert!(out.contains(&would), "--check-config:\n{out}");

    let gate = Gate::start(&nats, Some("256:256"), "max_pending_per_ip = 1000");
    let log = gate.log();
    assert!(
        log.contains(&said) && log.contains(&would) && log.contains("\"level\":\"WARN\""),
        "the start-up log does not warn:\n{log}"
    );
    gate.ready().await;

    // The budget holds: `holds` clients are served, the next is refused the way a full
    // server refuses, and the admin port still answers.
    let url = format!("nats://{}", gate.addr);
    let clients = futures::future::join_all((0..holds).map(|_| {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .connect(url.clone())
    }))
    .await;
    let served = clients.iter().filter(|c| c.is_ok()).count();
    assert_eq!(served, holds, "clients within the budget\n{}", gate.log());
    let mut extra = TcpStream::connect(gate.addr).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut reply)).await;
    // As nats-server does at its limit: INFO first (so clients report the limit, not a
    // missing INFO), then the -ERR.
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("INFO {")
            && reply.ends_with("} \r\n-ERR 'maximum connections exceeded'\r\n"),
        "the client beyond the budget: {reply:?}"
    );
    assert!(!reply.contains("\"nonce\""), "{reply}");
    assert_eq!(get(gate.admin, "/livez").await.unwrap().0, 200);
    assert!(
        !gate.log().contains("Too many open files"),
        "natsgate ran out of descriptors:\n{}",
        gate.log()
    );
    drop(clients);
}
