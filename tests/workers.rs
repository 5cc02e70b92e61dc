//! `listener.workers` (the real binary): one thread per worker, each with its own event loop
//! and its own `SO_REUSEPORT` socket on the client port. Connections are spread over the
//! workers by the kernel and each worker serves the ones it accepted; the shared port never
//! lets a second natsgate in.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

/// On-CPU nanoseconds of each thread of `pid`, by thread name (`/proc/<pid>/task/*/schedstat`).
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok());
        out.push((name.trim().to_string(), ns.unwrap_or(0)));
    }
    out.sort();
    out
}

/// 300 clients through `workers = 2`: every one is served, and both serving threads (the
/// main one and `natsgate-w1`) did a share of the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_port_and_both_serve_clients() {
    const CLIENTS: usize = 300;
    let nats = NatsServer::start("");
    let gate = nats.gate().set("listener.workers", 2).binary();
    let before = thread_cpu(gate.pid());
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"natsgate-w1"), "threads: {names:?}");
    assert!(!names.contains(&"natsgate-w2"), "threads: {names:?}");

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (mut s, info) = raw_connect(gate.addr).await;
        assert!(info.starts_with("INFO {"), "{info:?}");
        s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_op(&mut s).await, "PONG\r\n");
        clients.push(s);
    }
    let after = thread_cpu(gate.pid());
    let used = |name: &str| {
        let get = |v: &[(String, u64)]| v.iter().find(|(n, _)| n == name).map(|(_, ns)| *ns);
        get(&after).unwrap_or(0) - get(&before).unwrap_or(0)
    };
    // Setting up a connection costs a worker tens of microseconds; the hash of 300 source
    // ports gives each worker about half of them, so each used well over a millisecond.
    let (main, w1) = (used("natsgate"), used("natsgate-w1"));
    eprintln!("CPU while setting up {CLIENTS} clients: main {main} ns, natsgate-w1 {w1} ns");
    assert!(main > 1_000_000, "main thread: {main} ns");
    assert!(w1 > 1_000_000, "natsgate-w1: {w1} ns; it accepted nothing?");
    let m = gate.metrics().await;
    let established = m.get("natsgate_connections_active", &[("phase", "established")]);
    assert_eq!(established, CLIENTS as f64, "{m}");
}

/// With several workers the port is shared with `SO_REUSEPORT`, which would also let a second
/// natsgate of the same user share it and take half of the clients: it must fail to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_natsgate_cannot_share_the_port() {
    let nats = NatsServer::start("");
    let first = nats.gate().set("listener.workers", 2).binary();
    let dir = tempfile::tempdir().unwrap();
    let config = nats
        .gate()
        .set("listener.workers", 2)
        .set("listener.bind", first.addr.to_string())
        .set("admin.bind", format!("127.0.0.1:{}", free_port()))
        .to_toml();
    let path = write_file(dir.path(), "proxy.toml", &config);
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_natsgate"))
            .arg("--config")
            .arg(&path)
            .output(),
    )
    .await
    .expect("the second natsgate did not exit")
    .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("cannot listen on"), "{log}");
    assert!(log.contains("in use"), "{log}");
    // The first one still serves.
    let (_s, info) = raw_connect(first.addr).await;
    assert!(info.starts_with("INFO {"), "{info:?}");
}
