//! Secrets never reach the logs (issue 10, item 5): CONNECTs carrying `pass`, `auth_token`,
//! `jwt` and `sig` go through natsgate, which adds an ADR-55 `proxy_sig` made with its seed,
//! while every log event at TRACE (natsgate's, and the `log` records of its dependencies) is
//! captured in text and in JSON. None of the secret values may appear, in plain text, hex or
//! base64.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::logs::Logs;
use common::*;
use tokio::io::AsyncWriteExt;

/// `secret` as it could leak: itself, hex (either case) and base64 (standard and URL-safe).
fn spellings(secret: &str) -> Vec<String> {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_string(),
        hex.to_uppercase(),
        hex,
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_at_trace() {
    let logs = Logs::capture();
    let gate_key = nkeys::KeyPair::new_account();
    let gate_seed = gate_key.seed().unwrap();
    let pass = "pass-Zq81vX4rT0s";
    let token = "token-Hw2mP7cL9d";
    let jwt = "eyJ0eXAiOiJKV1QifQ.jwt-secret-Jm4kR8xN.c2lnbmF0dXJl";
    let sig = "sig-secret-Qe5tY2uB7n";
    let nats = NatsServer::start_with(&format!(
        "proxies {{ trusted: [ {{ key: \"{}\" }} ] }}\n\
         authorization {{ user: {USER}, password: \"{pass}\" }}",
        gate_key.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let seed_file = write_file(dir.path(), "gate.seed", &gate_seed);
    let proxy = nats
        .gate()
        .set(
            "upstream.trusted_proxy_seed_file",
            seed_file.display().to_string(),
        )
        .set("log.level", "trace")
        .start()
        .await;
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"user\":\"{USER}\",\"pass\":\"{pass}\",\"auth_token\":\"{token}\",\
         \"jwt\":\"{jwt}\",\"sig\":\"{sig}\",\"name\":\"secrets\",\"protocol\":1}}"
    );

    // Accepted: the CONNECT reaches nats-server with natsgate's proxy_sig added.
    let (mut s, info) = raw_connect(proxy.addr).await;
    let nonce = info_json(&info)["nonce"]
        .as_str()
        .expect("a nonce")
        .to_string();
    let proxy_sig = URL_SAFE_NO_PAD.encode(gate_key.sign(nonce.as_bytes()).unwrap());
    s.write_all(format!("{connect}\r\nPING\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_op(&mut s).await, "PONG\r\n");
    drop(s);

    // Refused: the same secrets in a CONNECT that natsgate rejects itself.
    let (mut s, _) = raw_connect(proxy.addr).await;
    s.write_all(format!("{connect} trailing\r\n").as_bytes())
        .await
        .unwrap();
    let got = show(&read_to_close(&mut s, Duration::from_secs(5)).await);
    assert!(got.starts_with("-ERR 'Invalid CONNECT Arguments"), "{got}");

    // The capture is real: both connections' last lines are there, with this test's details.
    assert_eventually!(
        logs.text().contains("connection closed") && logs.text().contains("connection refused"),
        "no close lines captured:\n{}",
        logs.text()
    );
    let text = logs.text();
    let in_text = text.contains("client_name=\"secrets\"") || text.contains("client_name=secrets");
    assert!(in_text, "the text close line: {text}");
    assert!(text.contains("\"client_name\":\"secrets\""), "{text}");
    let metrics = proxy.handle.render_metrics();
    for secret in [pass, token, jwt, sig, &gate_seed, &proxy_sig] {
        for spelling in spellings(secret) {
            assert!(
                !text.contains(&spelling),
                "{spelling:?} ({secret}) logged:\n{text}"
            );
            assert!(!metrics.contains(&spelling), "{spelling:?} in metrics");
        }
    }
}
