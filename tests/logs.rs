//! The log an operator reads, from the real binary writing to a file: no terminal escape
//! codes, and a flood of refused connections summarised instead of one line each, with the
//! counts adding up to the metrics.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use natsgate::metrics::Reject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A field's value in a text-format log line (`key=value` or `key="value"`).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

/// Refusals the log accounts for, by reason: one per individual line plus each summary's count.
fn logged_refusals(log: &str) -> BTreeMap<String, u64> {
    let mut by_reason = BTreeMap::new();
    for line in log.lines() {
        let n = if line.contains("connections refused (summary") {
            field(line, "count")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
        } else if line.contains("connection refused") {
            1
        } else {
            continue;
        };
        let reason = field(line, "reason").unwrap_or("?").to_string();
        *by_reason.entry(reason).or_insert(0) += n;
    }
    by_reason
}

/// One refused client: a bad first line, then read until natsgate closes.
async fn refused_client(addr: SocketAddr) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = s.write_all(b"HELLO\r\n").await;
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_summarised_and_the_log_has_no_escape_codes() {
    let nats = NatsServer::start("");
    // A low connection limit, so the flood is refused in two places: at accept (`limit`) and
    // after the bad first line (`protocol`).
    let gate = nats
        .gate()
        .set("listener.max_connections", 16)
        .set("listener.max_pending", 16)
        .env_remove("NO_COLOR")
        .env_remove("NATSGATE_LOG")
        .binary();
    // natsgate has met its upstream (so no client waits on a dial).
    assert_eventually!(gate.status("/readyz").await == 200);
    let before = gate.log().lines().count();

    const CLIENTS: usize = 5_000;
    const WORKERS: usize = 64;
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let addr = gate.addr;
            tokio::spawn(async move {
                for _ in (w..CLIENTS).step_by(WORKERS) {
                    refused_client(addr).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let flood = started.elapsed();

    let m = gate.metrics().await;
    let counted: BTreeMap<String, u64> = Reject::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), m.rejected(*r) as u64))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(counted.values().sum::<u64>(), CLIENTS as u64, "{m}");
    assert!(
        counted.contains_key("limit") && counted.contains_key("protocol"),
        "both refusal paths are exercised: {counted:?}"
    );
    let log = gate.log();
    assert!(
        !log.contains('\u{1b}'),
        "no terminal escape codes in a log file:\n{log}"
    );
    // The last window's summary is written within a second or so of the flood's end.
    let mut logged: BTreeMap<String, u64>;
    assert_eventually!(
        {
            logged = logged_refusals(&gate.log());
            logged == counted
        },
        "the log accounts for every refusal: log {logged:?}, metrics {counted:?}"
    );
    let log = gate.log();
    let lines = log.lines().count() - before;
    eprintln!("{CLIENTS} refusals in {flood:?}: {lines} log lines, {counted:?}");
    assert!(
        lines < 50,
        "{CLIENTS} refusals in {flood:?} wrote {lines} lines:\n{}",
        log.lines().skip(before).collect::<Vec<_>>().join("\n")
    );
    assert!(
        flood < patient(Duration::from_secs(4)),
        "the flood took {flood:?}: not the flood the budget is about"
    );
    assert!(log.contains("INFO"), "a text-format log: {log}");
}
