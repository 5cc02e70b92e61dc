//! The pending phase over `tokio::io::duplex` on paused time: the window to the millisecond,
//! TLS-first detection, the CONNECT scan and every refusal's reason and bytes, with no sockets
//! and no wall-clock waits. An in-memory upstream plays nats-server's INFO and records what
//! natsgate forwards; the end-to-end behaviour against real nats-server is in `tests/`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{
    duplex, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf,
};
use tokio::time::{sleep, sleep_until, Instant};

use super::{close_with, Established, Pending, Refusal};
use crate::config::Config;
use crate::metrics::Reject;
use crate::protocol;
use crate::stream::{PeekByte, Stream};
use crate::upstream::{Dial, DialError, UpstreamConn};
use crate::Gateway;

const INFO: &[u8] =
    b"INFO {\"server_id\":\"T\",\"auth_required\":true,\"max_payload\":1048576} \r\n";
const CONNECT: &[u8] = b"CONNECT {\"user\":\"a\",\"pass\":\"b\"}\r\n";
const ADDRS: (SocketAddr, SocketAddr) = (
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50000),
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4222),
);

/// The client end as the session sees it: a duplex with a one-byte look-ahead, standing in for
/// `TcpStream::peek`.
struct PeekDuplex {
    io: DuplexStream,
    peeked: Option<u8>,
}

impl PeekByte for PeekDuplex {
    async fn peek_byte(&mut self) -> std::io::Result<Option<u8>> {
        if self.peeked.is_none() {
            let mut b = [0u8; 1];
            if self.io.read(&mut b).await? == 0 {
                return Ok(None);
            }
            self.peeked = Some(b[0]);
        }
        Ok(self.peeked)
    }
}

impl AsyncRead for PeekDuplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(b) = self.peeked.take() {
            buf.put_slice(&[b]);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeekDuplex {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How the in-memory upstream answers a dial.
#[derive(Clone, Copy)]
enum Answer {
    /// INFO after this delay (past the deadline: [`DialError::Deadline`]).
    InfoAfter(Duration),
    Unavailable,
}

/// An in-memory upstream: sends its INFO ([`INFO`] unless told otherwise) and keeps its end
/// of the socket for inspection.
struct Upstream {
    answer: Answer,
    info: &'static [u8],
    /// What natsgate knows as the latest upstream INFO (from its probes).
    latest: Option<Arc<protocol::Info>>,
    far: Mutex<Option<DuplexStream>>,
}

impl Upstream {
    fn new(answer: Answer) -> Upstream {
        Upstream {
            answer,
            info: INFO,
            latest: None,
            far: Mutex::new(None),
        }
    }

    /// As if a probe had already seen `latest`; dials then answer with `info`.
    fn seen(mut self, latest: &[u8], info: &'static [u8]) -> Upstream {
        self.latest = Some(Arc::new(protocol::parse_info(latest).unwrap()));
        self.info = info;
        self
    }

    /// Everything natsgate wrote upstream, once it has let go of its end.
    async fn received(&self) -> Vec<u8> {
        let far = self.far.lock().unwrap().take();
        let mut out = Vec::new();
        if let Some(mut far) = far {
            far.read_to_end(&mut out).await.unwrap();
        }
        out
    }

    fn dialed(&self) -> bool {
        self.far.lock().unwrap().is_some()
    }
}

impl Dial for Upstream {
    type Io = DuplexStream;

    async fn dial(
        &self,
        deadline: Instant,
        _client: Option<(SocketAddr, SocketAddr)>,
        _relayed: bool,
    ) -> Result<UpstreamConn<DuplexStream>, DialError> {
        let delay = match self.answer {
            Answer::Unavailable => return Err(DialError::Unavailable("refused".into())),
            Answer::InfoAfter(d) => d,
        };
        if Instant::now() + delay >= deadline {
            sleep_until(deadline).await;
            return Err(DialError::Deadline("hung".into()));
        }
        sleep(delay).await;
        let (near, far) = duplex(64 * 1024);
        *self.far.lock().unwrap() = Some(far);
        let info = protocol::parse_info(self.info).unwrap();
        Ok(UpstreamConn {
            stream: near,
            nonce: info.str_field("nonce"),
            info: Arc::new(info),
        })
    }

    fn latest_info(&self) -> Option<Arc<protocol::Info>> {
        self.latest.clone()
    }
}

/// A gateway built from `extra` TOML plus an upstream that is never dialed for real.
fn gateway(extra: &str) -> (Gateway, Arc<Config>) {
    gateway_dialing(extra, "auto")
}

fn gateway_dialing(extra: &str, dial: &str) -> (Gateway, Arc<Config>) {
    let text =
        format!("{extra}\n[upstream]\nservers = [\"nats://127.0.0.1:9\"]\ndial = \"{dial}\"\n");
    let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
    let gateway = Gateway::new(config).unwrap();
    let config = gateway.shared.config.load_full();
    (gateway, config)
}

/// How the pending phase ended, and when (paused time, from accept).
enum End {
    Established(Established<DuplexStream>, Stream<PeekDuplex>),
    Refused(Refusal),
}

/// Runs the pending phase against `script`, which plays the client on the other end. A refused
/// client is answered and closed as in production.
async fn run<F, Fut, T>(
    gw: &Gateway,
    config: &Config,
    up: &Upstream,
    script: F,
) -> (End, Duration, T)
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (client, server) = duplex(64 * 1024);
    let io = PeekDuplex {
        io: server,
        peeked: None,
    };
    let start = Instant::now();
    let mut pending = Pending::new(&gw.shared, config, up, io, ADDRS, 42);
    let session = async {
        let result = pending.establish().await;
        let at = start.elapsed();
        let end = match result {
            Ok(est) => End::Established(est, pending.into_client().unwrap()),
            Err(refusal) => {
                if let (Some(c), Some(reply)) = (pending.into_client(), refusal.reply()) {
                    close_with(c, &reply).await;
                }
                End::Refused(refusal)
            }
        };
        (end, at)
    };
    let ((end, at), seen) = tokio::join!(session, script(client));
    (end, at, seen)
}

async fn read_line(c: &mut DuplexStream) -> Vec<u8> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while c.read(&mut b).await.unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    line
}

async fn read_rest(c: &mut DuplexStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest).await;
    rest
}

fn refusal(end: End) -> Refusal {
    match end {
        End::Refused(r) => r,
        End::Established(..) => panic!("expected a refusal, the connection was established"),
    }
}

fn established(end: End) -> Established<DuplexStream> {
    match end {
        End::Established(e, _) => e,
        End::Refused(r) => panic!("expected an established connection, refused: {r}"),
    }
}

/// Plays a client that reads INFO, waits until `at` after accept, then sends CONNECT and reads
/// what comes back until natsgate closes.
async fn connect_at(mut c: DuplexStream, at: Duration) -> (Vec<u8>, Vec<u8>) {
    let start = Instant::now();
    let info = read_line(&mut c).await;
    sleep_until(start + at).await;
    let _ = c.write_all(CONNECT).await;
    let rest = tokio::time::timeout(Duration::from_secs(5), read_rest(&mut c))
        .await
        .unwrap_or_default();
    (info, rest)
}

#[tokio::test(start_paused = true)]
async fn connect_completed_one_ms_before_the_window_is_served() {
    let (gw, config) = gateway("[authorization]\ntimeout = 1");
    let up = Upstream::new(Answer::InfoAfter(Duration::from_millis(2)));
    let (end, at, _) = run(&gw, &config, &up, |mut c| async move {
        let info = read_line(&mut c).await;
        sleep_until(Instant::now() + Duration::from_millis(997)).await;
        c.write_all(CONNECT).await.unwrap();
        (info, c)
    })
    .await;
    assert_eq!(at, Duration::from_millis(999));
    let est = established(end);
    assert_eq!(est.forwarded, CONNECT.len());
    drop(est.upstream);
    assert_eq!(up.received().await, CONNECT);
}

#[tokio::test(start_paused = true)]
async fn connect_completed_one_ms_after_the_window_is_refused() {
    let (gw, config) = gateway("[authorization]\ntimeout = 1");
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
    let (end, at, (info, rest)) = run(&gw, &config, &up, |c| {
        connect_at(c, Duration::from_millis(1001))
    })
    .await;
    let r = refusal(end);
    assert_eq!(at, Duration::from_secs(1), "refused exactly at the window");
    assert_eq!(r.reason(), Reject::AuthTimeout);
    assert!(info.starts_with(b"INFO {"), "{info:?}");
    assert_eq!(rest, protocol::ERR_AUTH_TIMEOUT);
    assert_eq!(
        up.received().await,
        b"",
        "nothing of a refused client goes upstream"
    );
}

#[tokio::test(start_paused = true)]
async fn a_trickled_connect_is_forwarded_byte_exact() {
    let (gw, config) = gateway("[authorization]\ntimeout = 3");
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
    let (end, at, _c) = run(&gw, &config, &up, |mut c| async move {
        read_line(&mut c).await;
        for b in CONNECT {
            sleep(Duration::from_millis(20)).await;
            c.write_all(&[*b]).await.unwrap();
        }
        c
    })
    .await;
    assert_eq!(at, Duration::from_millis(20 * CONNECT.len() as u64));
    drop(established(end).upstream);
    assert_eq!(up.received().await, CONNECT);
}

#[tokio::test(start_paused = true)]
async fn pipelined_bytes_after_connect_are_kept_in_order() {
    let (gw, config) = gateway("");
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
    let wire = [CONNECT, b"PING\r\nSUB a 1\r\nPUB a 5\r\nhello\r\nPING\r\n"].concat();
    let sent = wire.clone();
    let (end, _, _c) = run(&gw, &config, &up, |mut c| async move {
        read_line(&mut c).await;
        c.write_all(&sent).await.unwrap();
        c
    })
    .await;
    let est = established(end);
    assert_eq!(est.forwarded, wire.len());
    drop(est.upstream);
    assert_eq!(up.received().await, wire);
}

/// Each refusal of the pending phase: its metric reason and the exact bytes the client gets
/// after INFO, before the close.
#[tokio::test(start_paused = true)]
async fn each_refusal_has_its_reason_and_bytes() {
    let long = [b"CONNECT {\"x\":\"".as_slice(), &[b'x'; 5000]].concat();
    let cases: Vec<(&str, Vec<u8>, Reject, Vec<u8>)> = vec![
        (
            "not CONNECT",
            b"PING\r\n".to_vec(),
            Reject::Protocol,
            protocol::ERR_AUTH_VIOLATION.to_vec(),
        ),
        (
            "too long",
            long,
            Reject::Protocol,
            protocol::ERR_MAX_CONTROL_LINE.to_vec(),
        ),
        (
            "not an object",
            b"CONNECT [1]\r\n".to_vec(),
            Reject::Protocol,
            b"-ERR 'Invalid CONNECT Arguments: expected a JSON object".to_vec(),
        ),
        ("closed", Vec::new(), Reject::Protocol, Vec::new()),
    ];
    for (name, send, reason, reply) in cases {
        let (gw, config) = gateway("");
        let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
        let (end, _, rest) = run(&gw, &config, &up, |mut c| async move {
            read_line(&mut c).await;
            c.write_all(&send).await.unwrap();
            if send.is_empty() {
                c.shutdown().await.unwrap();
            }
            read_rest(&mut c).await
        })
        .await;
        let r = refusal(end);
        assert_eq!(r.reason(), reason, "{name}: {r}");
        assert!(
            rest.starts_with(&reply),
            "{name}: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert_eq!(rest.is_empty(), reply.is_empty(), "{name}");
        assert_eq!(up.received().await, b"", "{name}: nothing goes upstream");
    }
}

#[tokio::test(start_paused = true)]
async fn no_upstream_closes_silently_and_counts_upstream_unavailable() {
    let (gw, config) = gateway("");
    let up = Upstream::new(Answer::Unavailable);
    let (end, at, rest) = run(&gw, &config, &up, |mut c| async move {
        let _ = c.write_all(CONNECT).await;
        read_rest(&mut c).await
    })
    .await;
    let r = refusal(end);
    assert_eq!(r.reason(), Reject::UpstreamUnavailable);
    assert_eq!(at, Duration::ZERO);
    assert_eq!(rest, b"", "no INFO, no -ERR");
}

/// A dial cut short by the window is upstream's failure: `upstream_unavailable`, closed without
/// INFO (the client never saw a server), never blamed on the client as `auth_timeout`.
#[tokio::test(start_paused = true)]
async fn a_dial_that_outlasts_the_window_is_upstream_unavailable_without_info() {
    let (gw, config) = gateway("[authorization]\ntimeout = 0.5");
    let up = Upstream::new(Answer::InfoAfter(Duration::from_secs(2)));
    let (end, at, rest) = run(
        &gw,
        &config,
        &up,
        |mut c| async move { read_rest(&mut c).await },
    )
    .await;
    let r = refusal(end);
    assert_eq!(r.reason(), Reject::UpstreamUnavailable);
    assert_eq!(at, Duration::from_millis(500));
    assert_eq!(rest, b"");
    assert!(!up.dialed());
}

/// TLS: a self-signed certificate for `localhost`, written where the config points.
struct Pki {
    _dir: tempfile::TempDir,
    toml: String,
    client: tokio_rustls::TlsConnector,
}

fn pki(tls_keys: &str) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki {
        toml: format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n{tls_keys}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        _dir: dir,
        client: tokio_rustls::TlsConnector::from(Arc::new(client)),
    }
}

fn localhost() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_stalled_tls_handshake_ends_at_the_window_without_bytes() {
    let pki = pki("timeout = 2\nhandshake_first = true");
    let (gw, config) = gateway(&format!("[authorization]\ntimeout = 1\n{}", pki.toml));
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
    let (end, at, rest) = run(&gw, &config, &up, |mut c| async move {
        // The start of a ClientHello record, then nothing.
        c.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8]).await.unwrap();
        read_rest(&mut c).await
    })
    .await;
    let r = refusal(end);
    assert!(matches!(r, Refusal::Window(_)), "{r}");
    assert_eq!(r.reason(), Reject::AuthTimeout);
    assert_eq!(at, Duration::from_secs(1));
    assert_eq!(rest, b"", "mid-handshake there is nothing to send");
    assert!(!up.dialed(), "TLS first: no dial before the handshake");
}

#[tokio::test(start_paused = true)]
async fn tls_timeout_shorter_than_the_window_is_a_handshake_failure() {
    let pki = pki("timeout = 0.5\nhandshake_first = true");
    let (gw, config) = gateway(&format!("[authorization]\ntimeout = 3\n{}", pki.toml));
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
    let (end, at, _) = run(
        &gw,
        &config,
        &up,
        |mut c| async move { read_rest(&mut c).await },
    )
    .await;
    let r = refusal(end);
    assert_eq!(r.reason(), Reject::TlsHandshake);
    assert_eq!(at, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn plaintext_where_tls_is_required_gets_tls_required() {
    let pki = pki("handshake_first = false");
    let (gw, config) = gateway(&pki.toml);
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
    let (end, _, (info, rest)) = run(&gw, &config, &up, |c| connect_at(c, Duration::ZERO)).await;
    let r = refusal(end);
    assert_eq!(r.reason(), Reject::TlsRequired);
    assert!(
        String::from_utf8_lossy(&info).contains("\"tls_required\":true"),
        "{info:?}"
    );
    assert_eq!(rest, protocol::ERR_TLS_REQUIRED);
    assert_eq!(up.received().await, b"");
}

/// `handshake_first = "300ms"`: a silent client gets the classic INFO exactly when the
/// detection delay ends.
#[tokio::test(start_paused = true)]
async fn auto_detection_sends_classic_info_after_its_delay() {
    let pki = pki("handshake_first = \"300ms\"");
    let (gw, config) = gateway(&pki.toml);
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
    let connector = pki.client.clone();
    let (end, _, (info_at, info)) = run(&gw, &config, &up, |c| async move {
        let start = Instant::now();
        let mut c = c;
        let info = read_line(&mut c).await;
        let info_at = start.elapsed();
        // Classic upgrade after INFO, then CONNECT over TLS.
        let mut tls = connector.connect(localhost(), c).await.unwrap();
        tls.write_all(CONNECT).await.unwrap();
        tls.flush().await.unwrap();
        sleep(Duration::from_millis(10)).await;
        (info_at, info)
    })
    .await;
    assert_eq!(info_at, Duration::from_millis(300));
    assert!(info.starts_with(b"INFO {"));
    match end {
        End::Established(est, client) => {
            assert!(client.is_tls());
            drop(est.upstream);
            assert_eq!(up.received().await, CONNECT);
        }
        End::Refused(r) => panic!("refused: {r}"),
    }
}

/// `handshake_first = "300ms"`: a ClientHello within the delay takes the TLS-first path; the
/// INFO comes over TLS.
#[tokio::test(start_paused = true)]
async fn auto_detection_takes_tls_first_on_an_early_client_hello() {
    let pki = pki("handshake_first = \"300ms\"");
    let (gw, config) = gateway(&pki.toml);
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
    let connector = pki.client.clone();
    let (end, at, info) = run(&gw, &config, &up, |c| async move {
        sleep(Duration::from_millis(100)).await;
        let mut tls = connector.connect(localhost(), c).await.unwrap();
        let mut info = vec![0u8; INFO.len() + 64];
        let n = tls.read(&mut info).await.unwrap();
        info.truncate(n);
        tls.write_all(CONNECT).await.unwrap();
        tls.flush().await.unwrap();
        sleep(Duration::from_millis(10)).await;
        info
    })
    .await;
    assert_eq!(
        at,
        Duration::from_millis(100),
        "no wait for the detection delay"
    );
    assert!(info.starts_with(b"INFO {"), "{info:?}");
    match end {
        End::Established(_, client) => assert!(client.is_tls()),
        End::Refused(r) => panic!("refused: {r}"),
    }
}

/// A pending connection's task is this future plus what it holds. The large, short-lived
/// states (TLS handshake, upstream dial, relay) are boxed so that a flood of silent clients
/// costs little; this keeps that true.
#[tokio::test]
async fn a_connection_task_stays_small() {
    let (gw, _) = gateway("");
    let shared = gw.shared.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, peer) = listener.accept().await.unwrap();
    let listener_config = shared.config.load().listener.clone();
    let admission = shared
        .limits
        .admit(peer.ip(), &listener_config, &shared.metrics)
        .unwrap();
    let task = super::serve(shared.clone(), tcp, peer, admission);
    let size = std::mem::size_of_val(&task);
    assert!(size <= 2048, "the per-connection future is {size} bytes");
}

const NONCE_INFO: &[u8] =
    b"INFO {\"server_id\":\"T\",\"auth_required\":true,\"nonce\":\"abc\",\"max_payload\":1048576} \r\n";

/// `after_connect` (the default `auto` with no nonce upstream): natsgate's own INFO, with this
/// client's id and address and every other field as upstream sent it; no dial until CONNECT.
#[tokio::test(start_paused = true)]
async fn without_a_nonce_upstream_a_silent_client_is_never_dialed() {
    let (gw, config) = gateway("[authorization]\ntimeout = 1");
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO)).seen(INFO, INFO);
    let (end, at, (info, rest)) =
        run(&gw, &config, &up, |c| connect_at(c, Duration::from_secs(2))).await;
    let r = refusal(end);
    assert_eq!(r.reason(), Reject::AuthTimeout);
    assert_eq!(at, Duration::from_secs(1));
    assert!(
        !up.dialed(),
        "a client that never sent CONNECT never reached upstream"
    );
    let info = String::from_utf8(info).unwrap();
    assert!(
        info.starts_with("INFO {") && info.ends_with("} \r\n"),
        "{info}"
    );
    for field in [
        "\"auth_required\":true",
        "\"max_payload\":1048576",
        "\"client_id\":42",
        "\"client_ip\":\"127.0.0.1\"",
    ] {
        assert!(info.contains(field), "{field} in {info}");
    }
    assert!(!info.contains("nonce"), "{info}");
    assert_eq!(rest, protocol::ERR_AUTH_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn after_connect_dials_once_connect_is_in_and_forwards_it_with_the_pipeline() {
    let (gw, config) = gateway_dialing("[authorization]\ntimeout = 1", "after_connect");
    let up = Upstream::new(Answer::InfoAfter(Duration::from_millis(30))).seen(INFO, INFO);
    let wire = [CONNECT, b"PING\r\nSUB a 1\r\n"].concat();
    let sent = wire.clone();
    let (end, at, _c) = run(&gw, &config, &up, |mut c| async move {
        read_line(&mut c).await;
        sleep(Duration::from_millis(990)).await;
        c.write_all(&sent).await.unwrap();
        c
    })
    .await;
    // CONNECT at 990 ms, inside the window; the dial after it is not held to the window.
    assert_eq!(at, Duration::from_millis(1020));
    drop(established(end).upstream);
    assert_eq!(up.received().await, wire);
}

/// The upstream's configuration changed to nkey/JWT after natsgate answered with its own INFO:
/// a client that signs (here: carries `nkey` and `sig`) cannot be authenticated, and is told so.
/// A password client is still served (nats-server checks no signature for it).
#[tokio::test(start_paused = true)]
async fn after_connect_refuses_clearly_when_upstream_now_wants_a_nonce() {
    let (gw, config) = gateway("");
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO)).seen(INFO, NONCE_INFO);
    let signed: &'static [u8] = b"CONNECT {\"nkey\":\"UABC\",\"sig\":\"xyz\"}\r\n";
    let (end, _, rest) = run(&gw, &config, &up, |mut c| async move {
        read_line(&mut c).await;
        c.write_all(signed).await.unwrap();
        read_rest(&mut c).await
    })
    .await;
    let r = refusal(end);
    assert!(matches!(r, Refusal::NonceRequired), "{r}");
    assert_eq!(rest, protocol::ERR_NONCE_REQUIRED);
    assert!(String::from_utf8_lossy(&rest).starts_with("-ERR 'Authorization Violation"));

    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO)).seen(INFO, NONCE_INFO);
    let (end, _, _c) = run(&gw, &config, &up, |mut c| async move {
        read_line(&mut c).await;
        c.write_all(CONNECT).await.unwrap();
        c
    })
    .await;
    drop(established(end).upstream);
    assert_eq!(up.received().await, CONNECT);
}

/// `auto` with a nonce upstream (nkey/JWT users): dial at accept and relay nats-server's INFO
/// with its nonce, untouched.
#[tokio::test(start_paused = true)]
async fn auto_dials_on_accept_while_upstream_sends_a_nonce() {
    let (gw, config) = gateway("");
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO)).seen(NONCE_INFO, NONCE_INFO);
    let (end, _, (info, _)) = run(&gw, &config, &up, |c| async move {
        let mut c = c;
        let info = read_line(&mut c).await;
        c.write_all(CONNECT).await.unwrap();
        (info, c)
    })
    .await;
    assert!(String::from_utf8_lossy(&info).contains("\"nonce\":\"abc\""));
    drop(established(end).upstream);
    assert_eq!(up.received().await, CONNECT);
}

/// TLS auto-detection: a client that connects and closes (a TCP health check) is never dialed.
#[tokio::test(start_paused = true)]
async fn a_health_check_during_tls_detection_is_never_dialed() {
    let pki = pki("handshake_first = \"300ms\"");
    let (gw, config) = gateway(&pki.toml);
    let up = Upstream::new(Answer::InfoAfter(Duration::ZERO));
    let (end, at, rest) = run(&gw, &config, &up, |mut c| async move {
        c.shutdown().await.unwrap();
        read_rest(&mut c).await
    })
    .await;
    assert_eq!(refusal(end).reason(), Reject::Protocol);
    assert_eq!(at, Duration::ZERO);
    assert_eq!(rest, b"");
    assert!(!up.dialed());
}

/// The close line's compact identity gives back each field as the client sent it (after the
/// 64-character cut), `""` for the ones it did not send, multi-byte characters included.
#[test]
fn who_keeps_each_field_apart() {
    let identity = protocol::ClientIdentity {
        name: Some("sensor-é-7".into()),
        lang: None,
        version: Some("2.11.0".into()),
        user: Some("ünïcode".repeat(9).chars().take(64).collect()),
    };
    let who = super::Who::new(&identity);
    let [name, lang, version, user] = who.fields();
    assert_eq!(name, "sensor-é-7");
    assert_eq!(lang, "");
    assert_eq!(version, "2.11.0");
    assert_eq!(user, identity.user.as_deref().unwrap());
    let none = super::Who::new(&protocol::ClientIdentity::default());
    assert_eq!(none.fields(), [""; 4]);
}
