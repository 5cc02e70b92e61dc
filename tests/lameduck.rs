//! natsgate's own lame duck mode on SIGTERM (the real binary): established clients are told at
//! once (an asynchronous INFO with `"ldm": true`, so clients prefer other servers), then closed
//! spread over `shutdown.drain_timeout`, not all at its end; the process exits 0.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_announces_lame_duck_then_spreads_the_closes() {
    const CLIENTS: usize = 100;
    let nats = NatsServer::start("");
    let gate = nats
        .gate()
        .set("shutdown.drain_timeout", secs(4.0))
        .binary();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (mut s, _) = raw_connect(gate.addr).await;
        s.write_all(format!("{}PING\r\n", connect_line(USER, PASS)).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_op(&mut s).await, "PONG\r\n");
        clients.push(s);
    }

    // SAFETY: kill(2) only sends a signal to natsgate's pid. (Timing starts when it is sent,
    // not when a `kill` process would have been spawned.)
    let pid = gate.pid() as libc::pid_t;
    let term = Instant::now();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // One task per client, reading whole chunks: the test must not be the slow party.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|s| tokio::spawn(watch(s, term)))
        .collect();
    let mut watched = Vec::new();
    for t in tasks {
        watched.push(t.await.unwrap());
    }
    let mut announced: Vec<Duration> = watched.iter().map(|w| w.1).collect();
    announced.sort();
    eprintln!(
        "announced: min {:?} p50 {:?} max {:?}",
        announced[0],
        announced[CLIENTS / 2],
        announced[CLIENTS - 1]
    );
    let mut closes = Vec::new();
    for (line, announced, closed, rest) in &watched {
        assert!(
            line.starts_with("INFO {") && line.contains("\"ldm\":true"),
            "{line:?}"
        );
        assert!(
            *announced < patient(Duration::from_millis(100)),
            "announced after {announced:?}"
        );
        // nats-server's own traffic (its PINGs) may follow; no error from natsgate.
        assert!(!show(rest).contains("-ERR"), "{:?}", show(rest));
        closes.push(*closed);
    }
    // Spread over the 4 s drain: no more than a third of the clients in any one second.
    for second in 0..5 {
        let window = Duration::from_secs(second)..Duration::from_secs(second + 1);
        let n = closes.iter().filter(|c| window.contains(*c)).count();
        assert!(
            n <= CLIENTS / 3,
            "{n} closes in second {second}: {closes:?}"
        );
    }
    let last = closes.iter().max().unwrap();
    assert!(*last < Duration::from_millis(4600), "{last:?}");
    let status = gate.wait().await;
    assert!(status.success(), "{status:?}");
}

/// What one client sees after SIGTERM: the lame-duck INFO line, when its bytes arrived, when
/// the connection closed, and anything after the INFO.
async fn watch(mut s: TcpStream, term: Instant) -> (String, Duration, Duration, Vec<u8>) {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let announced = loop {
        // nats-server may still send its own post-CONNECT INFO (`connect_info`) first.
        if s.readable().await.is_err() {
            break term.elapsed();
        }
        let at = term.elapsed();
        match s.try_read(&mut chunk) {
            Ok(0) => break at,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break at,
        }
        if String::from_utf8_lossy(&got).contains("\"ldm\"") && got.ends_with(b"\r\n") {
            break at;
        }
    };
    let text = String::from_utf8_lossy(&got).to_string();
    let line = text
        .split_inclusive("\r\n")
        .find(|l| l.contains("\"ldm\""))
        .unwrap_or("")
        .to_string();
    let rest = read_to_close(&mut s, Duration::from_secs(10)).await;
    (line, announced, term.elapsed(), rest)
}
