//! The audit log against real nats-server: natsgate's close line names the user (and the
//! client name, lang and version) nats-server read from the CONNECT, however the client
//! spelled it (duplicate keys: the last wins; key names in any case, Go's folding), and no
//! secret a CONNECT carries ever reaches a log line, even at `trace`.
//!
//! natsgate's log is captured in-process: this binary installs a JSON tracing subscriber that
//! writes into a shared buffer (one subscriber per process, shared by the tests here; each test
//! finds its own lines by the client's address).
//!
//! From tests/common this uses only `NatsServer::start_with` (and its `port`, `monitor_port`,
//! `url()`), `Proxy::start` (and `addr`), `raw_connect` and `read_line`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use common::logs::Logs;
use common::{raw_connect, read_line, NatsServer, Proxy};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn logs() -> Logs {
    Logs::capture()
}

fn log_text() -> String {
    Logs::capture().text()
}

/// natsgate's "connection closed" line for the client at `peer`, once it is written.
async fn close_line(peer: SocketAddr) -> Value {
    let peer = peer.to_string();
    let start = Instant::now();
    loop {
        let found = logs()
            .json_fields()
            .into_iter()
            .find(|f| f["message"] == "connection closed" && f["peer"] == peer.as_str());
        if let Some(f) = found {
            return f;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no close line for {peer} in:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// nats-server's own record of its client connections (`/connz?auth=true`).
async fn connz(nats: &NatsServer) -> Vec<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", nats.monitor_port))
        .await
        .expect("monitor port");
    s.write_all(b"GET /connz?auth=true HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("connz within 10s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    json["connections"].as_array().cloned().unwrap_or_default()
}

fn start_nats(extra: &str) -> NatsServer {
    NatsServer::start_with(&format!(
        "{extra}\nauthorization {{ users: [ {{ user: alice, password: alice-pw }}, \
         {{ user: bob, password: bob-pw }} ] }}"
    ))
}

async fn start_proxy(nats: &NatsServer, seed_file: Option<&std::path::Path>) -> Proxy {
    let mut config = nats.gate().window(3.0);
    if let Some(seed) = seed_file {
        config = config.set(
            "upstream.trusted_proxy_seed_file",
            seed.display().to_string(),
        );
    }
    config.start().await
}

/// Sends `connect` and a PING through natsgate; returns the socket, its address, the INFO
/// line and nats-server's answer (the first line after any INFO or `+OK`: nats-server's
/// default is `verbose: true`).
async fn login(proxy: &Proxy, connect: &str) -> (TcpStream, SocketAddr, String, String) {
    let (mut s, info) = raw_connect(proxy.addr).await;
    let me = s.local_addr().unwrap();
    s.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = read_line(&mut s).await;
    while answer.starts_with("INFO ") || answer == "+OK\r\n" {
        answer = read_line(&mut s).await;
    }
    (s, me, info, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_line_names_the_user_nats_server_authenticated() {
    logs();
    let nats = start_nats("");
    let proxy = start_proxy(&nats, None).await;
    // (CONNECT argument, the name nats-server shows for it). Every one carries bob's password,
    // so nats-server lets it in only if it read the user as bob.
    let cases = [
        (
            r#"{"verbose":false,"user":"alice","user":"bob","pass":"bob-pw","name":"dup"}"#,
            "dup",
        ),
        (
            r#"{"user":"alice","USER":"bob","pass":"bob-pw","name":"mixed"}"#,
            "mixed",
        ),
        (
            r#"{"USER":"bob","Pass":"bob-pw","NAME":"upper","Lang":"go","VERSION":"1.2"}"#,
            "upper",
        ),
        // Go folds LONG S to S, so nats-server reads "u\u017fer" as user; it folds DOTLESS I
        // only to itself, so "vers\u0131on" is not version (connz shows none, and natsgate
        // must log none).
        (
            r#"{"u\u017fer":"bob","pass":"bob-pw","name":"folded","vers\u0131on":"9.9","lang":"x","lang":"rust"}"#,
            "folded",
        ),
        // null leaves the field as it was (Go), so bob stays the user.
        (
            r#"{"user":"bob","user":null,"pass":"bob-pw","name":"null"}"#,
            "null",
        ),
    ];
    let mut open = Vec::new();
    for (connect, name) in cases {
        let (s, me, _, answer) = login(&proxy, connect).await;
        assert_eq!(
            answer, "PONG\r\n",
            "{connect}: nats-server did not accept bob"
        );
        open.push((s, me, connect, name));
    }
    let conns = connz(&nats).await;
    for (s, me, connect, name) in open {
        let seen = conns
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in connz: {conns:?}"));
        assert_eq!(seen["authorized_user"], "bob", "{connect}: {seen}");
        drop(s);
        let line = close_line(me).await;
        assert_eq!(line["user"], "bob", "{connect}: {line}");
        // The other logged fields are nats-server's reading too ("" where it has none).
        for (logged, server) in [
            ("client_name", "name"),
            ("client_lang", "lang"),
            ("client_version", "version"),
        ] {
            let server_value = seen[server].as_str().unwrap_or("");
            assert_eq!(
                line[logged], server_value,
                "{connect}: {logged} {line} {seen}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_even_at_trace() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let gate_key = nkeys::KeyPair::new_operator();
    let seed = gate_key.seed().unwrap();
    let seed_file = dir.path().join("gate.seed");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    // Trusting the proxy key makes nats-server send a nonce, so natsgate signs it (proxy_sig).
    let nats = start_nats(&format!(
        "proxies {{ trusted: [ {{ key: \"{}\" }} ] }}",
        gate_key.public_key()
    ));
    let proxy = start_proxy(&nats, Some(&seed_file)).await;

    let secrets = [
        "pw-secret-3f9a",
        "token-secret-77c1",
        "jwt-secret-eyJhbGci",
        "sig-secret-0d4e",
        "psig-secret-b2a8",
        "pw-bad-json-5e6f",
    ];
    let accepted = format!(
        r#"{{"user":"bob","pass":"bob-pw","PASS":"{}","auth_token":"{}","jwt":"{}","sig":"{}","proxy_sig":"{}","name":"leak-check"}}"#,
        secrets[0], secrets[1], secrets[2], secrets[3], secrets[4]
    );
    let (s, me, info, _) = login(&proxy, &accepted).await;
    drop(s);
    close_line(me).await;
    // A CONNECT natsgate refuses (invalid JSON) with a secret in it.
    let (s, me, _, answer) = login(&proxy, &format!(r#"{{"pass":"{}", oops}}"#, secrets[5])).await;
    assert!(
        answer.starts_with("-ERR 'Invalid CONNECT Arguments"),
        "{answer}"
    );
    drop(s);
    let start = Instant::now();
    while !log_text().contains(&me.to_string()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no log line for {me}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The signature natsgate added: ed25519 is deterministic, so it can be computed here.
    let nonce = serde_json::from_str::<Value>(info[5..].trim()).unwrap()["nonce"]
        .as_str()
        .expect("a nonce when a proxy is trusted")
        .to_string();
    let proxy_sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(gate_key.sign(nonce.as_bytes()).unwrap());
    let text = log_text();
    assert!(text.contains("leak-check"), "the connection was not logged");
    for secret in
        secrets
            .iter()
            .copied()
            .chain(["bob-pw", "alice-pw", seed.as_str(), proxy_sig.as_str()])
    {
        assert!(!text.contains(secret), "{secret} is in the log");
    }
}
